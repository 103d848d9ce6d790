//! The less common media commands: WRITE AND VERIFY 10/12/16, ORWRITE 16, PRE-FETCH
//! 10/16, COMPARE AND WRITE, GET LBA STATUS (SBC-3 §5). COMPARE AND WRITE and ORWRITE
//! read and write under the LU's exclusive I/O lock, so no other write lands between
//! their read and their write.

use bytes::Bytes;
use oxiscsi_proto::pdu::ScsiStatus;
use oxiscsi_proto::session::{ScsiOutcome, ScsiTask};
use oxiscsi_scsi::SenseKey;

use super::{alloc_truncate, LogicalUnit, Result, ScsiError, MAX_TRANSFER_BYTES};

/// Largest COMPARE AND WRITE, in blocks (VPD B0 MAXIMUM COMPARE AND WRITE LENGTH).
pub const MAX_CAW_BLOCKS: u64 = 255;

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl LogicalUnit {
    /// WRITE AND VERIFY: the write, then a verification our media cannot fail (with
    /// BYTCHK the data just written is what is compared).
    pub(super) fn write_and_verify(
        &self,
        op: u8,
        cdb: &[u8],
        task: &ScsiTask,
    ) -> Result<ScsiOutcome> {
        // BYTCHK 2 and 3 are reserved for this command.
        if (cdb[1] >> 1) & 0x03 > 1 {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        let as_write = match op {
            0x2e => 0x2a,
            0xae => 0xaa,
            _ => 0x8a,
        };
        let mut c = cdb.to_vec();
        c[0] = as_write;
        // No FUA bit in WRITE AND VERIFY; the verify implies the medium has the data.
        c[1] &= 0xe0;
        let o = self.write(as_write, &c, task)?;
        self.backend.flush().map_err(|_| ScsiError::WRITE_ERROR)?;
        Ok(o)
    }

    /// ORWRITE (16): medium := medium OR data, atomically.
    pub(super) fn orwrite(&self, cdb: &[u8], task: &ScsiTask) -> Result<ScsiOutcome> {
        if cdb[1] & 0xe0 != 0 {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        let lba = be64(&cdb[2..10]);
        let blocks = be32(&cdb[10..14]);
        self.check_lba_range(lba, blocks)?;
        if self.write_protected() {
            return Err(ScsiError::WRITE_PROTECTED);
        }
        let len = self.byte_len(blocks) as usize;
        if len as u64 > MAX_TRANSFER_BYTES {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        if task.data_out.len() < len {
            return Err(ScsiError::PARAMETER_LIST_LENGTH);
        }
        let _g = self.io_lock.write().map_err(|_| ScsiError::WRITE_ERROR)?;
        let mut cur = vec![0u8; len];
        let off = self.byte_len(lba);
        self.backend
            .read_at(off, &mut cur)
            .map_err(|_| ScsiError::READ_ERROR)?;
        for (c, d) in cur.iter_mut().zip(task.data_out.iter()) {
            *c |= *d;
        }
        self.backend
            .write_at(off, &cur)
            .map_err(|_| ScsiError::WRITE_ERROR)?;
        Ok(ScsiOutcome {
            write_len_needed: Some(len as u32),
            ..Default::default()
        })
    }

    /// PRE-FETCH 10/16: the range fits in the cache, so CONDITION MET (SBC-3 §5.9).
    pub(super) fn prefetch(&self, op: u8, cdb: &[u8]) -> Result<ScsiOutcome> {
        let (lba, blocks) = if op == 0x34 {
            (
                be32(&cdb[2..6]),
                u64::from(u16::from_be_bytes([cdb[7], cdb[8]])),
            )
        } else {
            (be64(&cdb[2..10]), be32(&cdb[10..14]))
        };
        self.check_lba_range(lba, blocks)?;
        Ok(ScsiOutcome {
            status: ScsiStatus::CONDITION_MET,
            ..Default::default()
        })
    }

    /// COMPARE AND WRITE (SBC-3 §5.2): compare the first half of the data with the
    /// medium; if equal, write the second half; both under the exclusive I/O lock.
    pub(super) fn compare_and_write(&self, cdb: &[u8], task: &ScsiTask) -> Result<ScsiOutcome> {
        if cdb[1] & 0xe0 != 0 {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        let lba = be64(&cdb[2..10]);
        let blocks = u64::from(cdb[13]);
        if blocks == 0 {
            // SBC-3: zero blocks is no operation - unless data came with it, which
            // means the initiator meant more than the one-byte field holds (256 wraps
            // to 0): refuse that rather than drop the data silently.
            if task.data_out.is_empty() {
                return Ok(ScsiOutcome::default());
            }
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        if blocks > MAX_CAW_BLOCKS {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        self.check_lba_range(lba, blocks)?;
        if self.write_protected() {
            return Err(ScsiError::WRITE_PROTECTED);
        }
        let len = self.byte_len(blocks) as usize;
        if task.data_out.len() < 2 * len {
            return Err(ScsiError::PARAMETER_LIST_LENGTH);
        }
        let off = self.byte_len(lba);
        let _g = self.io_lock.write().map_err(|_| ScsiError::WRITE_ERROR)?;
        let mut cur = vec![0u8; len];
        self.backend
            .read_at(off, &mut cur)
            .map_err(|_| ScsiError::READ_ERROR)?;
        if let Some(at) = cur
            .iter()
            .zip(&task.data_out[..len])
            .position(|(a, b)| a != b)
        {
            // MISCOMPARE DURING VERIFY OPERATION with the offset of the first differing
            // byte in INFORMATION (SBC-3 §5.2).
            let mut s = vec![0u8; 18];
            s[0] = 0xf0;
            s[2] = SenseKey::MISCOMPARE.0;
            s[3..7].copy_from_slice(&(at as u32).to_be_bytes());
            s[7] = 10;
            s[12] = 0x1d;
            return Ok(ScsiOutcome {
                status: ScsiStatus::CHECK_CONDITION,
                sense: Bytes::from(s),
                write_len_needed: Some(2 * len as u32),
                ..Default::default()
            });
        }
        self.backend
            .write_at(off, &task.data_out[len..2 * len])
            .map_err(|_| ScsiError::WRITE_ERROR)?;
        self.sync_after_write(cdb[1] & 0x08 != 0)?;
        Ok(ScsiOutcome {
            write_len_needed: Some(2 * len as u32),
            ..Default::default()
        })
    }

    /// GET LBA STATUS (SBC-3 §5.7): runs of mapped and deallocated blocks from the
    /// starting LBA, from the backend's allocation map.
    pub(super) fn get_lba_status(&self, cdb: &[u8]) -> Result<ScsiOutcome> {
        let lba = be64(&cdb[2..10]);
        let alloc = be32(&cdb[10..14]) as usize;
        if lba >= self.blocks {
            return Err(ScsiError::LBA_OUT_OF_RANGE);
        }
        let bs = u64::from(self.cfg.block_size);
        // Describe up to 32 MiB or 64 runs from the starting LBA.
        let span = (self.blocks - lba).min((32 << 20) / bs);
        let runs = self
            .backend
            .allocation(lba * bs, span * bs)
            .map_err(|_| ScsiError::READ_ERROR)?;
        let mut d = vec![0u8; 8];
        for (start, len, mapped) in runs.into_iter().take(64) {
            let first = start / bs;
            let n = len.div_ceil(bs);
            if n == 0 {
                continue;
            }
            let mut e = [0u8; 16];
            e[..8].copy_from_slice(&first.to_be_bytes());
            e[8..12].copy_from_slice(&(n.min(u64::from(u32::MAX)) as u32).to_be_bytes());
            e[12] = if mapped { 0 } else { 1 };
            d.extend_from_slice(&e);
        }
        let plen = (d.len() - 4) as u32;
        d[..4].copy_from_slice(&plen.to_be_bytes());
        Ok(alloc_truncate(d, alloc))
    }
}
