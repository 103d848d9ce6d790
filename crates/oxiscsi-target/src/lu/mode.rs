//! MODE SENSE (6) and (10) with the caching (0x08) and control (0x0a) pages
//! (SPC-4 §6.11–6.12, §7.5; SBC-3 §6.5.5). The caching page says the truth: WCE is set
//! because writes land in the page cache until SYNCHRONIZE CACHE or FUA.

use std::sync::atomic::Ordering;

use oxiscsi_proto::session::ScsiOutcome;

use super::{alloc_truncate, LogicalUnit, Result, ScsiError};

impl LogicalUnit {
    fn caching_page(&self, changeable: bool) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x08;
        p[1] = 0x12;
        // WCE: changeable, and set while the write cache is on.
        if changeable || self.wce.load(Ordering::Relaxed) {
            p[2] = 0x04;
        }
        p
    }

    fn control_page(&self, changeable: bool) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p[0] = 0x0a;
        p[1] = 0x0a;
        if changeable {
            p[2] = 0x04; // D_SENSE
            p[4] = 0x08; // SWP
        } else {
            if self.d_sense.load(Ordering::Relaxed) {
                p[2] |= 0x04;
            }
            p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
            if self.swp.load(Ordering::Relaxed) {
                p[4] |= 0x08;
            }
            p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
        }
        p
    }

    pub(super) fn mode_sense(&self, cdb: &[u8]) -> Result<ScsiOutcome> {
        let ten = cdb[0] == 0x5a;
        let dbd = cdb[1] & 0x08 != 0;
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3f;
        let subpage = cdb[3];
        let alloc = if ten {
            usize::from(u16::from_be_bytes([cdb[7], cdb[8]]))
        } else {
            usize::from(cdb[4])
        };
        if pc == 3 {
            // Saved values are not supported (SPC-4 §6.11: SAVING PARAMETERS NOT SUPPORTED).
            return Err(ScsiError::new(
                oxiscsi_scsi::SenseKey::ILLEGAL_REQUEST,
                0x39,
                0x00,
            ));
        }
        let changeable = pc == 1;
        let mut pages = Vec::new();
        match (page, subpage) {
            (0x08, 0) => pages.extend(self.caching_page(changeable)),
            (0x0a, 0) => pages.extend(self.control_page(changeable)),
            (0x3f, 0 | 0xff) => {
                pages.extend(self.caching_page(changeable));
                pages.extend(self.control_page(changeable));
            }
            _ => return Err(ScsiError::INVALID_FIELD_IN_CDB),
        }
        let mut bd = Vec::new();
        if !dbd {
            bd = vec![0u8; 8];
            let n = self.blocks.min(0xffff_ffff) as u32;
            bd[..4].copy_from_slice(&n.to_be_bytes());
            bd[5..8].copy_from_slice(&self.cfg.block_size.to_be_bytes()[1..]);
        }
        // Device-specific parameter: WP, DPOFUA (FUA honoured).
        let dsp = if self.write_protected() { 0x80 } else { 0 } | 0x10;
        let mut d = Vec::new();
        if ten {
            let len = (6 + bd.len() + pages.len()) as u16;
            d.extend_from_slice(&len.to_be_bytes());
            d.extend_from_slice(&[0, dsp, 0, 0]);
            d.extend_from_slice(&(bd.len() as u16).to_be_bytes());
        } else {
            let len = (3 + bd.len() + pages.len()).min(255) as u8;
            d.extend_from_slice(&[len, 0, dsp, bd.len() as u8]);
        }
        d.extend_from_slice(&bd);
        d.extend_from_slice(&pages);
        Ok(alloc_truncate(d, alloc))
    }
}

impl LogicalUnit {
    /// MODE SELECT (6)/(10) (SPC-4 §6.9–6.10): the caching page's WCE and the control
    /// page's D_SENSE and SWP can change; anything else that differs from the current
    /// value is an error. Other nexuses then see MODE PARAMETERS CHANGED.
    pub(super) fn mode_select(
        &self,
        nexus: &str,
        cdb: &[u8],
        task: &oxiscsi_proto::session::ScsiTask,
    ) -> Result<ScsiOutcome> {
        let ten = cdb[0] == 0x55;
        let pf = cdb[1] & 0x10 != 0;
        let sp = cdb[1] & 0x01 != 0;
        let len = if ten {
            usize::from(u16::from_be_bytes([cdb[7], cdb[8]]))
        } else {
            usize::from(cdb[4])
        };
        if sp {
            return Err(ScsiError::new(
                oxiscsi_scsi::SenseKey::ILLEGAL_REQUEST,
                0x39,
                0x00,
            ));
        }
        if len == 0 {
            return Ok(ScsiOutcome::default());
        }
        if !pf {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        let bad = ScsiError::INVALID_FIELD_IN_PARAMETER_LIST;
        let p = task
            .data_out
            .get(..len)
            .ok_or(ScsiError::PARAMETER_LIST_LENGTH)?;
        let (hdr, bd_len) = if ten {
            if p.len() < 8 {
                return Err(ScsiError::PARAMETER_LIST_LENGTH);
            }
            (8, usize::from(u16::from_be_bytes([p[6], p[7]])))
        } else {
            if p.len() < 4 {
                return Err(ScsiError::PARAMETER_LIST_LENGTH);
            }
            (4, usize::from(p[3]))
        };
        let mut pages = p
            .get(hdr + bd_len..)
            .ok_or(ScsiError::PARAMETER_LIST_LENGTH)?;
        let mut wce = self.wce.load(Ordering::Relaxed);
        let mut d_sense = self.d_sense.load(Ordering::Relaxed);
        let mut swp = self.swp.load(Ordering::Relaxed);
        while !pages.is_empty() {
            if pages.len() < 2 {
                return Err(ScsiError::PARAMETER_LIST_LENGTH);
            }
            let code = pages[0] & 0x3f;
            if pages[0] & 0x40 != 0 {
                return Err(bad); // subpage format: none of ours
            }
            let plen = usize::from(pages[1]) + 2;
            let page = pages.get(..plen).ok_or(ScsiError::PARAMETER_LIST_LENGTH)?;
            let (current, changeable) = match code {
                0x08 => (self.caching_page(false), self.caching_page(true)),
                0x0a => (self.control_page(false), self.control_page(true)),
                _ => return Err(bad),
            };
            if page.len() != current.len() {
                return Err(bad);
            }
            // Bits outside the changeable mask must equal the current values (the PS bit
            // of byte 0 is ignored).
            for i in 1..page.len() {
                if (page[i] ^ current[i]) & !changeable[i] != 0 {
                    return Err(bad);
                }
            }
            match code {
                0x08 => wce = page[2] & 0x04 != 0,
                _ => {
                    d_sense = page[2] & 0x04 != 0;
                    swp = page[4] & 0x08 != 0;
                }
            }
            pages = &pages[plen..];
        }
        self.wce.store(wce, Ordering::Relaxed);
        self.d_sense.store(d_sense, Ordering::Relaxed);
        self.swp.store(swp, Ordering::Relaxed);
        if !wce {
            // Turning the write cache off: what was cached goes to the medium now.
            self.backend.flush().map_err(|_| ScsiError::WRITE_ERROR)?;
        }
        self.unit_attention_others(
            nexus,
            ScsiError::new(oxiscsi_scsi::SenseKey::UNIT_ATTENTION, 0x2a, 0x01),
        );
        Ok(ScsiOutcome::default())
    }
}
