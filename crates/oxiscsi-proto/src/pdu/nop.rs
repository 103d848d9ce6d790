//! NOP-Out (RFC 7143 §11.18) and NOP-In (§11.19).

use bytes::Bytes;

use super::{be32, be64, put32, put64, DecodeError, Lun, RESERVED_TAG};
use crate::pdu::codes::Opcode;
use crate::serial::SerialNumber;

/// NOP-Out (§11.18): a ping from the initiator, or the answer to a target's NOP-In.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
    pub data: Bytes,
}

impl NopOut {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        let n = NopOut {
            immediate: b[0] & 0x40 != 0,
            lun: Lun(be64(b, 8)),
            itt: be32(b, 16),
            ttt: be32(b, 20),
            cmd_sn: SerialNumber(be32(b, 24)),
            exp_stat_sn: SerialNumber(be32(b, 28)),
            data,
        };
        // §11.18.1.1: a NOP-Out with ITT 0xffffffff expects no answer, and then "the I
        // bit MUST be set to 1".
        if n.itt == RESERVED_TAG && n.ttt == RESERVED_TAG && !n.immediate {
            return Err(DecodeError::malformed(
                Opcode::NOP_OUT,
                "ITT 0xffffffff without the immediate bit",
                "§11.18.1.1",
            ));
        }
        Ok(n)
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80;
        put64(b, 8, self.lun.0);
        put32(b, 16, self.itt);
        put32(b, 20, self.ttt);
        put32(b, 24, self.cmd_sn.0);
        put32(b, 28, self.exp_stat_sn.0);
    }
}

/// NOP-In (§11.19): a target ping (TTT valid) or the answer to our NOP-Out (ITT valid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NopIn {
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub data: Bytes,
}

impl NopIn {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        let n = NopIn {
            lun: Lun(be64(b, 8)),
            itt: be32(b, 16),
            ttt: be32(b, 20),
            stat_sn: SerialNumber(be32(b, 24)),
            exp_cmd_sn: SerialNumber(be32(b, 28)),
            max_cmd_sn: SerialNumber(be32(b, 32)),
            data,
        };
        // §11.19.1/11.19.2: "Either ITT or TTT MUST be 0xffffffff" (a NOP-In answers
        // a ping or asks for one, never both).
        if n.itt != RESERVED_TAG && n.ttt != RESERVED_TAG {
            return Err(DecodeError::malformed(
                Opcode::NOP_IN,
                "both Initiator Task Tag and Target Transfer Tag are valid",
                "§11.19.2",
            ));
        }
        Ok(n)
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80;
        put64(b, 8, self.lun.0);
        put32(b, 16, self.itt);
        put32(b, 20, self.ttt);
        put32(b, 24, self.stat_sn.0);
        put32(b, 28, self.exp_cmd_sn.0);
        put32(b, 32, self.max_cmd_sn.0);
    }
}
