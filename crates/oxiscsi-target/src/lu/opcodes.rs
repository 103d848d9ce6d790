//! REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35): what this LU implements, all at once
//! or one command with its CDB usage map, with command timeouts descriptors on RCTD.

use oxiscsi_proto::session::ScsiOutcome;

use super::{alloc_truncate, LogicalUnit, Result, ScsiError};

/// Opcode, service action (for commands that have one), CDB length.
const COMMANDS: &[(u8, Option<u16>, u16)] = &[
    (0x00, None, 6),        // TEST UNIT READY
    (0x03, None, 6),        // REQUEST SENSE
    (0x08, None, 6),        // READ (6)
    (0x0a, None, 6),        // WRITE (6)
    (0x12, None, 6),        // INQUIRY
    (0x15, None, 6),        // MODE SELECT (6)
    (0x16, None, 6),        // RESERVE (6)
    (0x17, None, 6),        // RELEASE (6)
    (0x1a, None, 6),        // MODE SENSE (6)
    (0x1b, None, 6),        // START STOP UNIT
    (0x1e, None, 6),        // PREVENT ALLOW MEDIUM REMOVAL
    (0x25, None, 10),       // READ CAPACITY (10)
    (0x28, None, 10),       // READ (10)
    (0x2a, None, 10),       // WRITE (10)
    (0x2e, None, 10),       // WRITE AND VERIFY (10)
    (0x2f, None, 10),       // VERIFY (10)
    (0x34, None, 10),       // PRE-FETCH (10)
    (0x35, None, 10),       // SYNCHRONIZE CACHE (10)
    (0x41, None, 10),       // WRITE SAME (10)
    (0x42, None, 10),       // UNMAP
    (0x55, None, 10),       // MODE SELECT (10)
    (0x5a, None, 10),       // MODE SENSE (10)
    (0x5e, Some(0x00), 10), // PERSISTENT RESERVE IN: READ KEYS
    (0x5e, Some(0x01), 10), // READ RESERVATION
    (0x5e, Some(0x02), 10), // REPORT CAPABILITIES
    (0x5e, Some(0x03), 10), // READ FULL STATUS
    (0x5f, Some(0x00), 10), // PERSISTENT RESERVE OUT: REGISTER
    (0x5f, Some(0x01), 10), // RESERVE
    (0x5f, Some(0x02), 10), // RELEASE
    (0x5f, Some(0x03), 10), // CLEAR
    (0x5f, Some(0x04), 10), // PREEMPT
    (0x5f, Some(0x05), 10), // PREEMPT AND ABORT
    (0x5f, Some(0x06), 10), // REGISTER AND IGNORE EXISTING KEY
    (0x88, None, 16),       // READ (16)
    (0x89, None, 16),       // COMPARE AND WRITE
    (0x8a, None, 16),       // WRITE (16)
    (0x8b, None, 16),       // ORWRITE (16)
    (0x8e, None, 16),       // WRITE AND VERIFY (16)
    (0x8f, None, 16),       // VERIFY (16)
    (0x90, None, 16),       // PRE-FETCH (16)
    (0x91, None, 16),       // SYNCHRONIZE CACHE (16)
    (0x93, None, 16),       // WRITE SAME (16)
    (0x9e, Some(0x10), 16), // SERVICE ACTION IN: READ CAPACITY (16)
    (0x9e, Some(0x12), 16), // GET LBA STATUS
    (0xa0, None, 12),       // REPORT LUNS
    (0xa3, Some(0x0c), 12), // MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES
    (0xa8, None, 12),       // READ (12)
    (0xaa, None, 12),       // WRITE (12)
    (0xae, None, 12),       // WRITE AND VERIFY (12)
    (0xaf, None, 12),       // VERIFY (12)
];

/// CDB usage data: the opcode, every bit of the fields in use, the service action bits
/// for commands that have one, and the control byte's NACA and link bits reserved.
fn usage(op: u8, sa: Option<u16>, len: u16) -> Vec<u8> {
    let mut u = vec![0xffu8; usize::from(len)];
    u[0] = op;
    if let Some(sa) = sa {
        u[1] = (u[1] & 0xe0) | (sa as u8 & 0x1f);
    }
    if let Some(last) = u.last_mut() {
        *last = 0x00;
    }
    u
}

/// A command timeouts descriptor (SPC-4 §6.35.4): no recommendation.
const TIMEOUTS: [u8; 12] = [0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

impl LogicalUnit {
    pub(super) fn report_supported_opcodes(&self, cdb: &[u8]) -> Result<ScsiOutcome> {
        let rctd = cdb[2] & 0x80 != 0;
        let options = cdb[2] & 0x07;
        let op = cdb[3];
        let sa = u16::from_be_bytes([cdb[4], cdb[5]]);
        let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]) as usize;
        let has_sa = |o: u8| COMMANDS.iter().any(|(c, s, _)| *c == o && s.is_some());
        let one = |found: Option<&(u8, Option<u16>, u16)>| {
            let mut d = vec![0u8; 4];
            match found {
                Some(&(o, s, len)) => {
                    d[1] = 0x03 | if rctd { 0x80 } else { 0 };
                    d[2..4].copy_from_slice(&len.to_be_bytes());
                    d.extend(usage(o, s, len));
                    if rctd {
                        d.extend_from_slice(&TIMEOUTS);
                    }
                }
                // Not supported: SUPPORT 001b, no usage data.
                None => d[1] = 0x01,
            }
            d
        };
        let d = match options {
            0 => {
                let mut d = vec![0u8; 4];
                for &(o, s, len) in COMMANDS {
                    let mut e = [0u8; 8];
                    e[0] = o;
                    e[2..4].copy_from_slice(&s.unwrap_or(0).to_be_bytes());
                    e[5] = u8::from(s.is_some()) | if rctd { 0x02 } else { 0 };
                    e[6..8].copy_from_slice(&len.to_be_bytes());
                    d.extend_from_slice(&e);
                    if rctd {
                        d.extend_from_slice(&TIMEOUTS);
                    }
                }
                let n = (d.len() - 4) as u32;
                d[..4].copy_from_slice(&n.to_be_bytes());
                d
            }
            1 => {
                // By opcode alone: a command with service actions is a bad request.
                if has_sa(op) {
                    return Err(ScsiError::INVALID_FIELD_IN_CDB);
                }
                one(COMMANDS.iter().find(|(o, s, _)| *o == op && s.is_none()))
            }
            2 => {
                if !has_sa(op) && COMMANDS.iter().any(|(o, _, _)| *o == op) {
                    return Err(ScsiError::INVALID_FIELD_IN_CDB);
                }
                one(COMMANDS.iter().find(|(o, s, _)| *o == op && *s == Some(sa)))
            }
            3 => one(COMMANDS
                .iter()
                .find(|(o, s, _)| *o == op && (s.is_none() || *s == Some(sa)))),
            _ => return Err(ScsiError::INVALID_FIELD_IN_CDB),
        };
        Ok(alloc_truncate(d, alloc))
    }
}
