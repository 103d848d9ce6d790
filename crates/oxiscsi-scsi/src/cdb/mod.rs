//! Command descriptor blocks (SPC-4, SBC-3) built and parsed. One variant per command
//! oxiscsi uses; anything else parses as [`Cdb::Other`].

#[cfg(test)]
mod tests;

/// A CDB could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdbError {
    #[error("CDB is empty")]
    Empty,
    #[error("{name} CDB must be {need} bytes, got {got}")]
    Short {
        name: &'static str,
        need: usize,
        got: usize,
    },
}

/// Operation codes.
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    /// SERVICE ACTION IN(16) service action of READ CAPACITY(16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
}

/// The commands oxiscsi builds and parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cdb {
    TestUnitReady,
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u16,
    },
    ModeSense6 {
        dbd: bool,
        pc: u8,
        page: u8,
        subpage: u8,
        alloc: u8,
    },
    ModeSense10 {
        llbaa: bool,
        dbd: bool,
        pc: u8,
        page: u8,
        subpage: u8,
        alloc: u16,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    Read10 {
        lba: u32,
        blocks: u16,
        fua: bool,
        dpo: bool,
    },
    Read16 {
        lba: u64,
        blocks: u32,
        fua: bool,
        dpo: bool,
    },
    Write10 {
        lba: u32,
        blocks: u16,
        fua: bool,
        dpo: bool,
    },
    Write16 {
        lba: u64,
        blocks: u32,
        fua: bool,
        dpo: bool,
    },
    SynchronizeCache10 {
        lba: u32,
        blocks: u16,
        immed: bool,
    },
    SynchronizeCache16 {
        lba: u64,
        blocks: u32,
        immed: bool,
    },
    Unmap {
        anchor: bool,
        param_len: u16,
    },
    WriteSame16 {
        lba: u64,
        blocks: u32,
        unmap: bool,
        anchor: bool,
        ndob: bool,
    },
    ReportLuns {
        select_report: u8,
        alloc: u32,
    },
    /// Any other command, by operation code.
    Other(u8),
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    (u64::from(be32(b, o)) << 32) | u64::from(be32(b, o + 4))
}

fn need(b: &[u8], name: &'static str, n: usize) -> Result<(), CdbError> {
    if b.len() < n {
        Err(CdbError::Short {
            name,
            need: n,
            got: b.len(),
        })
    } else {
        Ok(())
    }
}

impl Cdb {
    /// A read of `blocks` at `lba`, READ(10) when it fits, else READ(16).
    pub fn read(lba: u64, blocks: u32) -> Cdb {
        match (u32::try_from(lba), u16::try_from(blocks)) {
            (Ok(l), Ok(b)) if u64::from(l) + u64::from(b) <= u64::from(u32::MAX) + 1 => {
                Cdb::Read10 {
                    lba: l,
                    blocks: b,
                    fua: false,
                    dpo: false,
                }
            }
            _ => Cdb::Read16 {
                lba,
                blocks,
                fua: false,
                dpo: false,
            },
        }
    }

    /// A write of `blocks` at `lba`, WRITE(10) when it fits, else WRITE(16).
    pub fn write(lba: u64, blocks: u32, fua: bool) -> Cdb {
        match (u32::try_from(lba), u16::try_from(blocks)) {
            (Ok(l), Ok(b)) if u64::from(l) + u64::from(b) <= u64::from(u32::MAX) + 1 => {
                Cdb::Write10 {
                    lba: l,
                    blocks: b,
                    fua,
                    dpo: false,
                }
            }
            _ => Cdb::Write16 {
                lba,
                blocks,
                fua,
                dpo: false,
            },
        }
    }

    pub fn opcode(&self) -> u8 {
        match self {
            Cdb::TestUnitReady => op::TEST_UNIT_READY,
            Cdb::Inquiry { .. } => op::INQUIRY,
            Cdb::ModeSense6 { .. } => op::MODE_SENSE_6,
            Cdb::ModeSense10 { .. } => op::MODE_SENSE_10,
            Cdb::ReadCapacity10 => op::READ_CAPACITY_10,
            Cdb::ReadCapacity16 { .. } => op::SERVICE_ACTION_IN_16,
            Cdb::Read10 { .. } => op::READ_10,
            Cdb::Read16 { .. } => op::READ_16,
            Cdb::Write10 { .. } => op::WRITE_10,
            Cdb::Write16 { .. } => op::WRITE_16,
            Cdb::SynchronizeCache10 { .. } => op::SYNCHRONIZE_CACHE_10,
            Cdb::SynchronizeCache16 { .. } => op::SYNCHRONIZE_CACHE_16,
            Cdb::Unmap { .. } => op::UNMAP,
            Cdb::WriteSame16 { .. } => op::WRITE_SAME_16,
            Cdb::ReportLuns { .. } => op::REPORT_LUNS,
            Cdb::Other(o) => *o,
        }
    }

    /// Encode to CDB bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (bytes, len) = self.to_array();
        bytes[..len].to_vec()
    }

    /// Encode without allocating: every CDB built here fits the 16 bytes a SCSI Command
    /// PDU carries in its header, so a command's CDB never needs the heap. Returns the
    /// bytes and the CDB's length.
    pub fn to_array(&self) -> ([u8; 16], usize) {
        let rw_flags = |fua: bool, dpo: bool| u8::from(dpo) << 4 | u8::from(fua) << 3;
        let mut v = [0u8; 16];
        let len = match *self {
            Cdb::TestUnitReady => 6,
            Cdb::Inquiry { evpd, page, alloc } => {
                v[..6].copy_from_slice(&[op::INQUIRY, u8::from(evpd), page, 0, 0, 0]);
                v[3..5].copy_from_slice(&alloc.to_be_bytes());
                6
            }
            Cdb::ModeSense6 {
                dbd,
                pc,
                page,
                subpage,
                alloc,
            } => {
                v[..6].copy_from_slice(&[
                    op::MODE_SENSE_6,
                    u8::from(dbd) << 3,
                    (pc & 3) << 6 | (page & 0x3f),
                    subpage,
                    alloc,
                    0,
                ]);
                6
            }
            Cdb::ModeSense10 {
                llbaa,
                dbd,
                pc,
                page,
                subpage,
                alloc,
            } => {
                v[0] = op::MODE_SENSE_10;
                v[1] = u8::from(llbaa) << 4 | u8::from(dbd) << 3;
                v[2] = (pc & 3) << 6 | (page & 0x3f);
                v[3] = subpage;
                v[7..9].copy_from_slice(&alloc.to_be_bytes());
                10
            }
            Cdb::ReadCapacity10 => {
                v[0] = op::READ_CAPACITY_10;
                10
            }
            Cdb::ReadCapacity16 { alloc } => {
                v[0] = op::SERVICE_ACTION_IN_16;
                v[1] = op::SA_READ_CAPACITY_16;
                v[10..14].copy_from_slice(&alloc.to_be_bytes());
                16
            }
            Cdb::Read10 {
                lba,
                blocks,
                fua,
                dpo,
            }
            | Cdb::Write10 {
                lba,
                blocks,
                fua,
                dpo,
            } => {
                v[0] = self.opcode();
                v[1] = rw_flags(fua, dpo);
                v[2..6].copy_from_slice(&lba.to_be_bytes());
                v[7..9].copy_from_slice(&blocks.to_be_bytes());
                10
            }
            Cdb::Read16 {
                lba,
                blocks,
                fua,
                dpo,
            }
            | Cdb::Write16 {
                lba,
                blocks,
                fua,
                dpo,
            } => {
                v[0] = self.opcode();
                v[1] = rw_flags(fua, dpo);
                v[2..10].copy_from_slice(&lba.to_be_bytes());
                v[10..14].copy_from_slice(&blocks.to_be_bytes());
                16
            }
            Cdb::SynchronizeCache10 { lba, blocks, immed } => {
                v[0] = op::SYNCHRONIZE_CACHE_10;
                v[1] = u8::from(immed) << 1;
                v[2..6].copy_from_slice(&lba.to_be_bytes());
                v[7..9].copy_from_slice(&blocks.to_be_bytes());
                10
            }
            Cdb::SynchronizeCache16 { lba, blocks, immed } => {
                v[0] = op::SYNCHRONIZE_CACHE_16;
                v[1] = u8::from(immed) << 1;
                v[2..10].copy_from_slice(&lba.to_be_bytes());
                v[10..14].copy_from_slice(&blocks.to_be_bytes());
                16
            }
            Cdb::Unmap { anchor, param_len } => {
                v[0] = op::UNMAP;
                v[1] = u8::from(anchor);
                v[7..9].copy_from_slice(&param_len.to_be_bytes());
                10
            }
            Cdb::WriteSame16 {
                lba,
                blocks,
                unmap,
                anchor,
                ndob,
            } => {
                v[0] = op::WRITE_SAME_16;
                v[1] = u8::from(anchor) << 4 | u8::from(unmap) << 3 | u8::from(ndob);
                v[2..10].copy_from_slice(&lba.to_be_bytes());
                v[10..14].copy_from_slice(&blocks.to_be_bytes());
                16
            }
            Cdb::ReportLuns {
                select_report,
                alloc,
            } => {
                v[0] = op::REPORT_LUNS;
                v[2] = select_report;
                v[6..10].copy_from_slice(&alloc.to_be_bytes());
                12
            }
            Cdb::Other(o) => {
                v[0] = o;
                6
            }
        };
        (v, len)
    }

    /// Parse CDB bytes.
    pub fn parse(b: &[u8]) -> Result<Cdb, CdbError> {
        let opc = *b.first().ok_or(CdbError::Empty)?;
        let fua = |b: &[u8]| b[1] & 0x08 != 0;
        let dpo = |b: &[u8]| b[1] & 0x10 != 0;
        Ok(match opc {
            op::TEST_UNIT_READY => {
                need(b, "TEST UNIT READY", 6)?;
                Cdb::TestUnitReady
            }
            op::INQUIRY => {
                need(b, "INQUIRY", 6)?;
                Cdb::Inquiry {
                    evpd: b[1] & 1 != 0,
                    page: b[2],
                    alloc: be16(b, 3),
                }
            }
            op::MODE_SENSE_6 => {
                need(b, "MODE SENSE(6)", 6)?;
                Cdb::ModeSense6 {
                    dbd: b[1] & 8 != 0,
                    pc: b[2] >> 6,
                    page: b[2] & 0x3f,
                    subpage: b[3],
                    alloc: b[4],
                }
            }
            op::MODE_SENSE_10 => {
                need(b, "MODE SENSE(10)", 10)?;
                Cdb::ModeSense10 {
                    llbaa: b[1] & 0x10 != 0,
                    dbd: b[1] & 8 != 0,
                    pc: b[2] >> 6,
                    page: b[2] & 0x3f,
                    subpage: b[3],
                    alloc: be16(b, 7),
                }
            }
            op::READ_CAPACITY_10 => {
                need(b, "READ CAPACITY(10)", 10)?;
                Cdb::ReadCapacity10
            }
            op::SERVICE_ACTION_IN_16
                if b.get(1).map(|v| v & 0x1f) == Some(op::SA_READ_CAPACITY_16) =>
            {
                need(b, "READ CAPACITY(16)", 16)?;
                Cdb::ReadCapacity16 { alloc: be32(b, 10) }
            }
            op::READ_10 | op::WRITE_10 | op::READ_16 | op::WRITE_16 => {
                let (name, len) = match opc {
                    op::READ_10 => ("READ(10)", 10),
                    op::WRITE_10 => ("WRITE(10)", 10),
                    op::READ_16 => ("READ(16)", 16),
                    _ => ("WRITE(16)", 16),
                };
                need(b, name, len)?;
                let (fua, dpo) = (fua(b), dpo(b));
                match opc {
                    op::READ_10 => Cdb::Read10 {
                        lba: be32(b, 2),
                        blocks: be16(b, 7),
                        fua,
                        dpo,
                    },
                    op::WRITE_10 => Cdb::Write10 {
                        lba: be32(b, 2),
                        blocks: be16(b, 7),
                        fua,
                        dpo,
                    },
                    op::READ_16 => Cdb::Read16 {
                        lba: be64(b, 2),
                        blocks: be32(b, 10),
                        fua,
                        dpo,
                    },
                    _ => Cdb::Write16 {
                        lba: be64(b, 2),
                        blocks: be32(b, 10),
                        fua,
                        dpo,
                    },
                }
            }
            op::SYNCHRONIZE_CACHE_10 => {
                need(b, "SYNCHRONIZE CACHE(10)", 10)?;
                Cdb::SynchronizeCache10 {
                    lba: be32(b, 2),
                    blocks: be16(b, 7),
                    immed: b[1] & 2 != 0,
                }
            }
            op::SYNCHRONIZE_CACHE_16 => {
                need(b, "SYNCHRONIZE CACHE(16)", 16)?;
                Cdb::SynchronizeCache16 {
                    lba: be64(b, 2),
                    blocks: be32(b, 10),
                    immed: b[1] & 2 != 0,
                }
            }
            op::UNMAP => {
                need(b, "UNMAP", 10)?;
                Cdb::Unmap {
                    anchor: b[1] & 1 != 0,
                    param_len: be16(b, 7),
                }
            }
            op::WRITE_SAME_16 => {
                need(b, "WRITE SAME(16)", 16)?;
                Cdb::WriteSame16 {
                    lba: be64(b, 2),
                    blocks: be32(b, 10),
                    unmap: b[1] & 8 != 0,
                    anchor: b[1] & 0x10 != 0,
                    ndob: b[1] & 1 != 0,
                }
            }
            op::REPORT_LUNS => {
                need(b, "REPORT LUNS", 12)?;
                Cdb::ReportLuns {
                    select_report: b[2],
                    alloc: be32(b, 6),
                }
            }
            other => Cdb::Other(other),
        })
    }
}

/// UNMAP parameter list (SBC-3 §5.28.2) for the given (LBA, block count) ranges.
pub fn unmap_parameter_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let desc_len = ranges.len() * 16;
    let mut v = vec![0u8; 8 + desc_len];
    v[0..2].copy_from_slice(&((6 + desc_len) as u16).to_be_bytes());
    v[2..4].copy_from_slice(&(desc_len as u16).to_be_bytes());
    for (i, (lba, n)) in ranges.iter().enumerate() {
        let o = 8 + i * 16;
        v[o..o + 8].copy_from_slice(&lba.to_be_bytes());
        v[o + 8..o + 12].copy_from_slice(&n.to_be_bytes());
    }
    v
}
