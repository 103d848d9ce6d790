//! Logout Request (RFC 7143 §11.14) and Logout Response (§11.15).

use super::{be16, be32, put16, put32, DecodeError};
use crate::pdu::codes::{LogoutReason, LogoutResponseCode};
use crate::serial::SerialNumber;

/// Logout Request (§11.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: LogoutReason,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
}

impl LogoutRequest {
    pub(super) fn decode(b: &[u8; 48]) -> Result<Self, DecodeError> {
        Ok(LogoutRequest {
            immediate: b[0] & 0x40 != 0,
            reason: LogoutReason(b[1] & 0x7f),
            itt: be32(b, 16),
            cid: be16(b, 20),
            cmd_sn: SerialNumber(be32(b, 24)),
            exp_stat_sn: SerialNumber(be32(b, 28)),
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80 | (self.reason.0 & 0x7f);
        put32(b, 16, self.itt);
        put16(b, 20, self.cid);
        put32(b, 24, self.cmd_sn.0);
        put32(b, 28, self.exp_stat_sn.0);
    }
}

/// Logout Response (§11.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutResponse {
    pub response: LogoutResponseCode,
    pub itt: u32,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub time2wait: u16,
    pub time2retain: u16,
}

impl LogoutResponse {
    pub(super) fn decode(b: &[u8; 48]) -> Result<Self, DecodeError> {
        Ok(LogoutResponse {
            response: LogoutResponseCode(b[2]),
            itt: be32(b, 16),
            stat_sn: SerialNumber(be32(b, 24)),
            exp_cmd_sn: SerialNumber(be32(b, 28)),
            max_cmd_sn: SerialNumber(be32(b, 32)),
            time2wait: be16(b, 40),
            time2retain: be16(b, 42),
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80;
        b[2] = self.response.0;
        put32(b, 16, self.itt);
        put32(b, 24, self.stat_sn.0);
        put32(b, 28, self.exp_cmd_sn.0);
        put32(b, 32, self.max_cmd_sn.0);
        put16(b, 40, self.time2wait);
        put16(b, 42, self.time2retain);
    }
}
