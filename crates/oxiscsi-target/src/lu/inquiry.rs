//! INQUIRY: standard data and the VPD pages 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2 (SPC-4
//! §6.6, §7.8; SBC-3 §6.6).

use oxiscsi_proto::session::ScsiOutcome;

use super::{alloc_truncate, LogicalUnit, Result, ScsiError, MAX_TRANSFER_BYTES};

const VENDOR: &[u8; 8] = b"OXISCSI ";

fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (o, c) in out
        .iter_mut()
        .zip(s.bytes().filter(|c| c.is_ascii_graphic() || *c == b' '))
    {
        *o = c;
    }
    out
}

impl LogicalUnit {
    pub(super) fn inquiry(&self, cdb: &[u8]) -> Result<ScsiOutcome> {
        let evpd = cdb[1] & 1 == 1;
        let page = cdb[2];
        let alloc = usize::from(u16::from_be_bytes([cdb[3], cdb[4]]));
        if cdb[1] & 0xfe != 0 {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        if !evpd {
            if page != 0 {
                return Err(ScsiError::INVALID_FIELD_IN_CDB);
            }
            return Ok(alloc_truncate(self.standard_inquiry(), alloc));
        }
        let body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2],
            0x80 => self.serial.as_bytes().to_vec(),
            0x83 => self.designators(),
            0xb0 => self.block_limits(),
            0xb1 => {
                // Non-rotating medium, form factor not reported.
                let mut v = vec![0u8; 60];
                v[1] = 1;
                v
            }
            0xb2 => {
                // LBPU (UNMAP), LBPWS (WRITE SAME 16 unmap), LBPWS10; thin provisioned,
                // unmapped blocks read as zeros (LBPRZ).
                let mut v = vec![0u8; 4];
                v[1] = 0x80 | 0x40 | 0x20 | 0x04;
                v[2] = 0x02;
                v
            }
            _ => return Err(ScsiError::INVALID_FIELD_IN_CDB),
        };
        let mut d = Vec::with_capacity(4 + body.len());
        d.push(0x00); // peripheral qualifier 0, direct-access block device
        d.push(page);
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&body);
        Ok(alloc_truncate(d, alloc))
    }

    fn standard_inquiry(&self) -> Vec<u8> {
        let mut d = vec![0u8; 66];
        d[0] = 0x00;
        d[2] = 0x06; // SPC-4
        d[3] = 0x12; // HiSup, response data format 2
        d[4] = (d.len() - 5) as u8;
        d[7] = 0x02; // CmdQue
        d[8..16].copy_from_slice(VENDOR);
        d[16..32].copy_from_slice(&padded::<16>(&self.cfg.product));
        d[32..36].copy_from_slice(b"0001");
        // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
        for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
            d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
        d
    }

    fn designators(&self) -> Vec<u8> {
        let mut v = Vec::new();
        // NAA, binary, associated with the LU.
        v.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
        v.extend_from_slice(&self.naa);
        // T10 vendor ID, ASCII: vendor + serial.
        let t10: Vec<u8> = VENDOR.iter().copied().chain(self.serial.bytes()).collect();
        v.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
        v.extend_from_slice(&t10);
        v
    }

    fn block_limits(&self) -> Vec<u8> {
        let bs = u64::from(self.cfg.block_size);
        let max_blocks = (MAX_TRANSFER_BYTES / bs) as u32;
        let mut v = vec![0u8; 60];
        v[0] = 0x01; // WSNZ: WRITE SAME with 0 blocks is refused
        v[1] = super::extra::MAX_CAW_BLOCKS as u8; // MAXIMUM COMPARE AND WRITE LENGTH
        v[2..4].copy_from_slice(&1u16.to_be_bytes()); // optimal transfer length granularity
        v[4..8].copy_from_slice(&max_blocks.to_be_bytes()); // maximum transfer length
        v[8..12].copy_from_slice(&max_blocks.to_be_bytes()); // optimal transfer length
        v[12..16].copy_from_slice(&max_blocks.to_be_bytes()); // maximum prefetch length
        v[16..20].copy_from_slice(&0xffff_ffffu32.to_be_bytes()); // max unmap LBA count
        v[20..24].copy_from_slice(&256u32.to_be_bytes()); // max unmap block descriptors
        v[24..28].copy_from_slice(&1u32.to_be_bytes()); // unmap granularity
        v[32..40].copy_from_slice(&u64::from(max_blocks).to_be_bytes()); // max write same
        v
    }
}
