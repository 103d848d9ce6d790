//! Text Request (RFC 7143 §11.10) and Text Response (§11.11).

use bytes::Bytes;

use super::{be32, be64, put32, put64, DecodeError, Lun};
use crate::pdu::codes::Opcode;
use crate::serial::SerialNumber;

/// Text Request (§11.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub continue_: bool,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
    pub data: Bytes,
}

fn fc(b: &[u8; 48], op: Opcode) -> Result<(bool, bool), DecodeError> {
    let f = b[1] & 0x80 != 0;
    let c = b[1] & 0x40 != 0;
    // §11.10.2 / §11.11.2: "If the F bit is set to 1, the C bit MUST be set to 0."
    if f && c {
        return Err(DecodeError::malformed(
            op,
            "both the F (final) and C (continue) bits are set",
            "§11.10.2",
        ));
    }
    Ok((f, c))
}

impl TextRequest {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        let (final_, continue_) = fc(b, Opcode::TEXT_REQUEST)?;
        Ok(TextRequest {
            immediate: b[0] & 0x40 != 0,
            final_,
            continue_,
            lun: Lun(be64(b, 8)),
            itt: be32(b, 16),
            ttt: be32(b, 20),
            cmd_sn: SerialNumber(be32(b, 24)),
            exp_stat_sn: SerialNumber(be32(b, 28)),
            data,
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = u8::from(self.final_) << 7 | u8::from(self.continue_) << 6;
        put64(b, 8, self.lun.0);
        put32(b, 16, self.itt);
        put32(b, 20, self.ttt);
        put32(b, 24, self.cmd_sn.0);
        put32(b, 28, self.exp_stat_sn.0);
    }
}

/// Text Response (§11.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextResponse {
    pub final_: bool,
    pub continue_: bool,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub data: Bytes,
}

impl TextResponse {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        let (final_, continue_) = fc(b, Opcode::TEXT_RESPONSE)?;
        Ok(TextResponse {
            final_,
            continue_,
            lun: Lun(be64(b, 8)),
            itt: be32(b, 16),
            ttt: be32(b, 20),
            stat_sn: SerialNumber(be32(b, 24)),
            exp_cmd_sn: SerialNumber(be32(b, 28)),
            max_cmd_sn: SerialNumber(be32(b, 32)),
            data,
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = u8::from(self.final_) << 7 | u8::from(self.continue_) << 6;
        put64(b, 8, self.lun.0);
        put32(b, 16, self.itt);
        put32(b, 20, self.ttt);
        put32(b, 24, self.stat_sn.0);
        put32(b, 28, self.exp_cmd_sn.0);
        put32(b, 32, self.max_cmd_sn.0);
    }
}
