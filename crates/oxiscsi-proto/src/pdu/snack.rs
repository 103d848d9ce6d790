//! SNACK Request (RFC 7143 §11.16). Only used at ErrorRecoveryLevel > 0; decoded and
//! encoded here so a target can answer it and a later ERL 1 initiator can send it.

use super::{be32, be64, put32, put64, DecodeError, Lun};
use crate::pdu::codes::SnackType;
use crate::serial::SerialNumber;

/// SNACK Request (§11.16).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnackRequest {
    pub snack_type: SnackType,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: SerialNumber,
    pub beg_run: u32,
    pub run_length: u32,
}

impl SnackRequest {
    pub(super) fn decode(b: &[u8; 48]) -> Result<Self, DecodeError> {
        Ok(SnackRequest {
            snack_type: SnackType(b[1] & 0x0f),
            lun: Lun(be64(b, 8)),
            itt: be32(b, 16),
            ttt: be32(b, 20),
            exp_stat_sn: SerialNumber(be32(b, 28)),
            beg_run: be32(b, 40),
            run_length: be32(b, 44),
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80 | (self.snack_type.0 & 0x0f);
        put64(b, 8, self.lun.0);
        put32(b, 16, self.itt);
        put32(b, 20, self.ttt);
        put32(b, 28, self.exp_stat_sn.0);
        put32(b, 40, self.beg_run);
        put32(b, 44, self.run_length);
    }
}
