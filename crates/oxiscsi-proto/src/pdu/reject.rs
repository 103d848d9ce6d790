//! Reject (RFC 7143 §11.17).

use bytes::Bytes;

use super::{be32, put32, DecodeError, BHS_LEN};
use crate::pdu::codes::{Opcode, RejectReason};
use crate::serial::SerialNumber;

/// Reject (§11.17). The data segment carries the complete header of the rejected PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub data_sn_or_r2t_sn: u32,
    pub data: Bytes,
}

impl Reject {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        Ok(Reject {
            reason: RejectReason(b[2]),
            stat_sn: SerialNumber(be32(b, 24)),
            exp_cmd_sn: SerialNumber(be32(b, 28)),
            max_cmd_sn: SerialNumber(be32(b, 32)),
            data_sn_or_r2t_sn: be32(b, 36),
            data,
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80;
        b[2] = self.reason.0;
        put32(b, 16, super::RESERVED_TAG);
        put32(b, 24, self.stat_sn.0);
        put32(b, 28, self.exp_cmd_sn.0);
        put32(b, 32, self.max_cmd_sn.0);
        put32(b, 36, self.data_sn_or_r2t_sn);
    }

    /// Opcode and ITT of the rejected PDU, when the data segment holds its header.
    pub fn rejected_header(&self) -> Option<(Opcode, u32)> {
        if self.data.len() < BHS_LEN {
            return None;
        }
        Some((Opcode(self.data[0] & 0x3f), be32(&self.data, 16)))
    }
}
