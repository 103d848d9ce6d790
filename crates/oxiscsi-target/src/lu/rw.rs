//! Media access: READ/WRITE 6/10/12/16, VERIFY 10/12/16, SYNCHRONIZE CACHE 10/16,
//! WRITE SAME 10/16 (with UNMAP), UNMAP (SBC-3 §5). A write is acknowledged only after
//! the backend took it; FUA, and every write while the write cache is off, reach
//! fdatasync before the status is sent.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use oxiscsi_proto::session::{ScsiOutcome, ScsiTask};

use super::{LogicalUnit, Result, ScsiError, MAX_TRANSFER_BYTES};

/// LBA, block count and the FUA bit of a READ/WRITE/VERIFY CDB.
struct Range {
    lba: u64,
    blocks: u64,
    fua: bool,
}

fn be16(b: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([b[0], b[1]]))
}
fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn decode_range(op: u8, cdb: &[u8]) -> Range {
    match op {
        // 6-byte: 21-bit LBA, 0 blocks means 256 (SBC-3 §5.16).
        0x08 | 0x0a => {
            let lba = (u64::from(cdb[1] & 0x1f) << 16) | be16(&cdb[2..4]);
            let n = u64::from(cdb[4]);
            Range {
                lba,
                blocks: if n == 0 { 256 } else { n },
                fua: false,
            }
        }
        0x28 | 0x2a | 0x2f | 0x35 | 0x41 => Range {
            lba: be32(&cdb[2..6]),
            blocks: be16(&cdb[7..9]),
            fua: cdb[1] & 0x08 != 0,
        },
        0xa8 | 0xaa | 0xaf => Range {
            lba: be32(&cdb[2..6]),
            blocks: be32(&cdb[6..10]),
            fua: cdb[1] & 0x08 != 0,
        },
        _ => Range {
            lba: be64(&cdb[2..10]),
            blocks: be32(&cdb[10..14]),
            fua: cdb[1] & 0x08 != 0,
        },
    }
}

impl LogicalUnit {
    fn check_range(&self, r: &Range) -> Result<()> {
        self.check_lba_range(r.lba, r.blocks)
    }

    pub(super) fn check_lba_range(&self, lba: u64, blocks: u64) -> Result<()> {
        let end = lba.checked_add(blocks).ok_or(ScsiError::LBA_OUT_OF_RANGE)?;
        if end > self.blocks {
            return Err(ScsiError::LBA_OUT_OF_RANGE);
        }
        Ok(())
    }

    pub(super) fn byte_len(&self, blocks: u64) -> u64 {
        self.bytes(blocks)
    }

    pub(super) fn sync_after_write(&self, fua: bool) -> Result<()> {
        self.sync_if(fua)
    }

    fn bytes(&self, blocks: u64) -> u64 {
        blocks * u64::from(self.cfg.block_size)
    }

    fn check_transfer(&self, r: &Range) -> Result<()> {
        self.check_range(r)?;
        if self.bytes(r.blocks) > MAX_TRANSFER_BYTES {
            // VPD B0 MAXIMUM TRANSFER LENGTH exceeded.
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        Ok(())
    }

    fn offset(&self, lba: u64) -> u64 {
        self.bytes(lba)
    }

    pub(super) fn read(&self, op: u8, cdb: &[u8], _task: &ScsiTask) -> Result<ScsiOutcome> {
        let r = decode_range(op, cdb);
        // RDPROTECT needs protection information, which these LUs do not have.
        if op != 0x08 && cdb[1] & 0xe0 != 0 {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        self.check_transfer(&r)?;
        let mut buf = vec![0u8; self.bytes(r.blocks) as usize];
        let _g = self.io_lock.read().map_err(|_| ScsiError::READ_ERROR)?;
        self.backend
            .read_at(self.offset(r.lba), &mut buf)
            .map_err(|e| {
                tracing::warn!(error = %e, lba = r.lba, blocks = r.blocks, "backend read failed");
                ScsiError::READ_ERROR
            })?;
        Ok(ScsiOutcome {
            data: Bytes::from(buf),
            ..Default::default()
        })
    }

    /// Persist after a write when FUA asks for it or the write cache is off.
    fn sync_if(&self, fua: bool) -> Result<()> {
        if fua || !self.wce.load(Ordering::Relaxed) {
            self.backend.flush().map_err(|e| {
                tracing::warn!(error = %e, "backend flush failed");
                ScsiError::WRITE_ERROR
            })?;
        }
        Ok(())
    }

    pub(super) fn write(&self, op: u8, cdb: &[u8], task: &ScsiTask) -> Result<ScsiOutcome> {
        let r = decode_range(op, cdb);
        if op != 0x0a && cdb[1] & 0xe0 != 0 {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        self.check_transfer(&r)?;
        if self.write_protected() {
            return Err(ScsiError::WRITE_PROTECTED);
        }
        let need = self.bytes(r.blocks) as usize;
        // Write what arrived, in whole blocks, and report any difference against the CDB
        // as a residual (RFC 7143 §11.4.5.1).
        let have = task.data_out.len().min(need);
        let whole = have - have % self.cfg.block_size as usize;
        if whole > 0 {
            let _g = self.io_lock.read().map_err(|_| ScsiError::WRITE_ERROR)?;
            self.backend
                .write_at(self.offset(r.lba), &task.data_out[..whole])
                .map_err(|e| {
                    tracing::warn!(error = %e, lba = r.lba, blocks = r.blocks, "backend write failed");
                    ScsiError::WRITE_ERROR
                })?;
        }
        self.sync_if(r.fua)?;
        Ok(ScsiOutcome {
            write_len_needed: Some(need as u32),
            ..Default::default()
        })
    }

    pub(super) fn verify(&self, op: u8, cdb: &[u8], task: &ScsiTask) -> Result<ScsiOutcome> {
        let r = decode_range(op, cdb);
        if cdb[1] & 0xe0 != 0 {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        self.check_transfer(&r)?;
        let bytchk = (cdb[1] >> 1) & 0x03;
        match bytchk {
            // Medium verification only: our media has no errors to find.
            0 => Ok(ScsiOutcome::default()),
            1 => {
                let need = self.bytes(r.blocks) as usize;
                if task.data_out.len() < need {
                    return Err(ScsiError::INVALID_FIELD_IN_CDB);
                }
                let mut buf = vec![0u8; need];
                self.backend
                    .read_at(self.offset(r.lba), &mut buf)
                    .map_err(|_| ScsiError::READ_ERROR)?;
                if buf[..] != task.data_out[..need] {
                    return Err(ScsiError::MISCOMPARE);
                }
                Ok(ScsiOutcome::default())
            }
            _ => Err(ScsiError::INVALID_FIELD_IN_CDB),
        }
    }

    pub(super) fn synchronize_cache(&self, op: u8, cdb: &[u8]) -> Result<ScsiOutcome> {
        let r = decode_range(op, cdb);
        self.check_range(&r)?;
        self.backend.flush().map_err(|e| {
            tracing::warn!(error = %e, "backend flush failed");
            ScsiError::WRITE_ERROR
        })?;
        Ok(ScsiOutcome::default())
    }

    pub(super) fn write_same(&self, op: u8, cdb: &[u8], task: &ScsiTask) -> Result<ScsiOutcome> {
        let r = decode_range(op, cdb);
        let unmap = cdb[1] & 0x08 != 0;
        let ndob = op == 0x93 && cdb[1] & 0x01 != 0;
        // WRPROTECT needs protection information; ANCHOR needs ANC_SUP (VPD B2 says
        // no); bit 0 of WRITE SAME (10) is reserved.
        if cdb[1] & 0xe0 != 0 || cdb[1] & 0x10 != 0 || (op == 0x41 && cdb[1] & 0x01 != 0) {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        // WSNZ is set in VPD B0: zero blocks is refused.
        // ... and more than MAXIMUM WRITE SAME LENGTH (VPD B0) is refused.
        if r.blocks == 0 || self.bytes(r.blocks) > MAX_TRANSFER_BYTES {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        self.check_range(&r)?;
        if self.write_protected() {
            return Err(ScsiError::WRITE_PROTECTED);
        }
        let bs = self.cfg.block_size as usize;
        let block: Vec<u8> = if ndob {
            vec![0u8; bs]
        } else {
            if task.data_out.len() < bs {
                return Err(ScsiError::PARAMETER_LIST_LENGTH);
            }
            task.data_out[..bs].to_vec()
        };
        let zeros = block.iter().all(|&b| b == 0);
        if unmap && zeros {
            self.backend
                .punch_hole(self.offset(r.lba), self.bytes(r.blocks))
                .map_err(|_| ScsiError::WRITE_ERROR)?;
        } else {
            // Write in chunks of up to 1 MiB of repeated blocks.
            let per = (1usize << 20) / bs;
            let chunk: Vec<u8> = block.iter().copied().cycle().take(per * bs).collect();
            let mut lba = r.lba;
            let end = r.lba + r.blocks;
            while lba < end {
                let n = (end - lba).min(per as u64) as usize;
                self.backend
                    .write_at(self.offset(lba), &chunk[..n * bs])
                    .map_err(|_| ScsiError::WRITE_ERROR)?;
                lba += n as u64;
            }
        }
        self.sync_if(r.fua)?;
        Ok(ScsiOutcome::default())
    }

    pub(super) fn unmap(&self, cdb: &[u8], task: &ScsiTask) -> Result<ScsiOutcome> {
        // ANCHOR is not supported.
        if cdb[1] & 0x01 != 0 {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        let len = be16(&cdb[7..9]) as usize;
        if self.write_protected() {
            return Err(ScsiError::WRITE_PROTECTED);
        }
        if len == 0 {
            return Ok(ScsiOutcome::default());
        }
        let p = &task.data_out[..task.data_out.len().min(len)];
        if p.len() < 8 {
            return Err(ScsiError::PARAMETER_LIST_LENGTH);
        }
        let bd_len = be16(&p[2..4]) as usize;
        if !bd_len.is_multiple_of(16) || 8 + bd_len > p.len() {
            return Err(ScsiError::PARAMETER_LIST_LENGTH);
        }
        let descs: Vec<Range> = p[8..8 + bd_len]
            .chunks_exact(16)
            .map(|d| Range {
                lba: be64(&d[0..8]),
                blocks: be32(&d[8..12]),
                fua: false,
            })
            .collect();
        if descs.len() > 256 {
            return Err(ScsiError::INVALID_FIELD_IN_PARAMETER_LIST);
        }
        // Check every range before changing anything.
        for d in &descs {
            self.check_range(d)?;
        }
        for d in descs.iter().filter(|d| d.blocks > 0) {
            self.backend
                .punch_hole(self.offset(d.lba), self.bytes(d.blocks))
                .map_err(|_| ScsiError::WRITE_ERROR)?;
        }
        Ok(ScsiOutcome::default())
    }
}
