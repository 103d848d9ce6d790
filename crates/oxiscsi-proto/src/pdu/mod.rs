//! iSCSI PDUs (RFC 7143 §11), both directions.
//!
//! Two levels, after smoltcp's `wire`: the 48-byte Basic Header Segment is read through
//! fixed field offsets once its length is checked, and turned into a typed [`Pdu`]. Data
//! segments are `Bytes` slices of the receive buffer and are never copied on the read path.
//! Framing, digests and length limits live in [`codec`].

use bytes::Bytes;

pub mod async_msg;
pub mod cdb;
pub mod codec;
pub mod codes;
pub mod data;
pub mod login;
pub mod logout;
pub mod nop;
pub mod reject;
pub mod scsi;
pub mod snack;
pub mod text;
pub mod tmf;

pub use async_msg::AsyncMessage;
pub use cdb::CdbBuf;
pub use codec::{DecodeError, EncodedPdu, Framer, HEADER_INLINE};
pub use codes::*;
pub use data::{DataIn, DataOut, R2t};
pub use login::{Isid, LoginRequest, LoginResponse, Stage};
pub use logout::{LogoutRequest, LogoutResponse};
pub use nop::{NopIn, NopOut};
pub use reject::Reject;
pub use scsi::{ScsiCommand, ScsiResponse, TaskAttr};
pub use snack::SnackRequest;
pub use text::{TextRequest, TextResponse};
pub use tmf::{TaskMgmtRequest, TaskMgmtResponse};

/// Length of the Basic Header Segment (§11.2.1).
pub const BHS_LEN: usize = 48;
/// The reserved tag value 0xffffffff (§11.2.1.8: ITT; §11.7.4: TTT).
pub const RESERVED_TAG: u32 = 0xffff_ffff;
/// Largest DataSegmentLength the 24-bit field can carry.
pub const MAX_DATA_SEGMENT: u32 = 0x00ff_ffff;

pub(crate) fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}
pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

/// The 8-byte LUN field as carried in the BHS (SAM-5 §4.7), stored big-endian.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lun(pub u64);

impl Lun {
    /// Encode a LUN number: peripheral device addressing below 256, flat space addressing
    /// up to 16383 (SAM-5 §4.7.6 / §4.7.7), as Linux' `int_to_scsilun` does.
    pub fn from_number(n: u16) -> Lun {
        let n = u64::from(n & 0x3fff);
        if n < 256 {
            Lun(n << 48)
        } else {
            Lun((0x4000 | n) << 48)
        }
    }

    /// The LUN number of a single-level peripheral or flat address; `None` for other forms.
    pub fn number(self) -> Option<u16> {
        let first = (self.0 >> 48) as u16;
        if self.0 & 0x0000_ffff_ffff_ffff != 0 {
            return None;
        }
        match first >> 14 {
            0 if first >> 8 == 0 => Some(first & 0xff),
            1 => Some(first & 0x3fff),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Lun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.number() {
            Some(n) => write!(f, "Lun({n})"),
            None => write!(f, "Lun({:#018x})", self.0),
        }
    }
}

/// One Additional Header Segment (§11.2.2), borrowed from the header buffer.
#[derive(Debug, Clone, Copy)]
pub struct Ahs<'a> {
    pub length: u16,
    pub ahs_type: u8,
    /// The type-specific bytes after AHSLength and AHSType, padded to 4 bytes.
    pub value: &'a [u8],
}

/// Split the AHS area into segments (§11.2.2). Each segment is 3 bytes of header plus
/// AHSLength bytes, padded to a multiple of 4.
pub fn parse_ahs(op: Opcode, mut area: &[u8]) -> Result<Vec<Ahs<'_>>, DecodeError> {
    let mut out = Vec::new();
    while !area.is_empty() {
        if area.len() < 4 {
            return Err(DecodeError::malformed(
                op,
                "truncated AHS header",
                "§11.2.2",
            ));
        }
        let length = be16(area, 0);
        let ahs_type = area[2];
        let total = (3 + usize::from(length)).div_ceil(4) * 4;
        if total > area.len() {
            return Err(DecodeError::malformed(
                op,
                "AHSLength runs past TotalAHSLength",
                "§11.2.1.4",
            ));
        }
        out.push(Ahs {
            length,
            ahs_type,
            value: &area[3..total],
        });
        area = &area[total..];
    }
    Ok(out)
}

/// A typed iSCSI PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

impl Pdu {
    pub fn opcode(&self) -> Opcode {
        match self {
            Pdu::NopOut(_) => Opcode::NOP_OUT,
            Pdu::ScsiCommand(_) => Opcode::SCSI_COMMAND,
            Pdu::TaskMgmtRequest(_) => Opcode::TASK_MGMT_REQUEST,
            Pdu::LoginRequest(_) => Opcode::LOGIN_REQUEST,
            Pdu::TextRequest(_) => Opcode::TEXT_REQUEST,
            Pdu::DataOut(_) => Opcode::DATA_OUT,
            Pdu::LogoutRequest(_) => Opcode::LOGOUT_REQUEST,
            Pdu::SnackRequest(_) => Opcode::SNACK_REQUEST,
            Pdu::NopIn(_) => Opcode::NOP_IN,
            Pdu::ScsiResponse(_) => Opcode::SCSI_RESPONSE,
            Pdu::TaskMgmtResponse(_) => Opcode::TASK_MGMT_RESPONSE,
            Pdu::LoginResponse(_) => Opcode::LOGIN_RESPONSE,
            Pdu::TextResponse(_) => Opcode::TEXT_RESPONSE,
            Pdu::DataIn(_) => Opcode::DATA_IN,
            Pdu::LogoutResponse(_) => Opcode::LOGOUT_RESPONSE,
            Pdu::R2t(_) => Opcode::R2T,
            Pdu::AsyncMessage(_) => Opcode::ASYNC_MESSAGE,
            Pdu::Reject(_) => Opcode::REJECT,
        }
    }

    /// The immediate (I) bit; a Login Request always has it (§11.12).
    pub fn immediate(&self) -> bool {
        match self {
            Pdu::NopOut(p) => p.immediate,
            Pdu::ScsiCommand(p) => p.immediate,
            Pdu::TaskMgmtRequest(p) => p.immediate,
            Pdu::LoginRequest(_) => true,
            Pdu::TextRequest(p) => p.immediate,
            Pdu::LogoutRequest(p) => p.immediate,
            _ => false,
        }
    }

    /// Initiator Task Tag, where the PDU has one.
    pub fn itt(&self) -> u32 {
        match self {
            Pdu::NopOut(p) => p.itt,
            Pdu::ScsiCommand(p) => p.itt,
            Pdu::TaskMgmtRequest(p) => p.itt,
            Pdu::LoginRequest(p) => p.itt,
            Pdu::TextRequest(p) => p.itt,
            Pdu::DataOut(p) => p.itt,
            Pdu::LogoutRequest(p) => p.itt,
            Pdu::SnackRequest(p) => p.itt,
            Pdu::NopIn(p) => p.itt,
            Pdu::ScsiResponse(p) => p.itt,
            Pdu::TaskMgmtResponse(p) => p.itt,
            Pdu::LoginResponse(p) => p.itt,
            Pdu::TextResponse(p) => p.itt,
            Pdu::DataIn(p) => p.itt,
            Pdu::LogoutResponse(p) => p.itt,
            Pdu::R2t(p) => p.itt,
            Pdu::AsyncMessage(_) | Pdu::Reject(_) => RESERVED_TAG,
        }
    }

    /// The data segment (empty for PDUs that carry none).
    pub fn data(&self) -> Bytes {
        match self {
            Pdu::NopOut(p) => p.data.clone(),
            Pdu::ScsiCommand(p) => p.data.clone(),
            Pdu::LoginRequest(p) => p.data.clone(),
            Pdu::TextRequest(p) => p.data.clone(),
            Pdu::DataOut(p) => p.data.clone(),
            Pdu::NopIn(p) => p.data.clone(),
            Pdu::ScsiResponse(p) => p.data.clone(),
            Pdu::LoginResponse(p) => p.data.clone(),
            Pdu::TextResponse(p) => p.data.clone(),
            Pdu::DataIn(p) => p.data.clone(),
            Pdu::AsyncMessage(p) => p.data.clone(),
            Pdu::Reject(p) => p.data.clone(),
            _ => Bytes::new(),
        }
    }

    /// Decode a PDU from its BHS, its AHS area and its (unpadded) data segment.
    pub fn decode(bhs: &[u8; 48], ahs_area: &[u8], data: Bytes) -> Result<Pdu, DecodeError> {
        let op = Opcode(bhs[0] & 0x3f);
        let ahs = parse_ahs(op, ahs_area)?;
        if !ahs.is_empty() && op != Opcode::SCSI_COMMAND {
            // §11.2.1.4: only the SCSI Command defines AHS types today.
            return Err(DecodeError::malformed(
                op,
                "AHS present on a PDU that defines none",
                "§11.2.2",
            ));
        }
        let no_data = |d: &Bytes| -> Result<(), DecodeError> {
            if d.is_empty() {
                Ok(())
            } else {
                Err(DecodeError::malformed(
                    op,
                    "data segment on a PDU that carries none",
                    "§11.2.1.5",
                ))
            }
        };
        Ok(match op {
            Opcode::NOP_OUT => Pdu::NopOut(NopOut::decode(bhs, data)?),
            Opcode::SCSI_COMMAND => Pdu::ScsiCommand(ScsiCommand::decode(bhs, &ahs, data)?),
            Opcode::TASK_MGMT_REQUEST => {
                no_data(&data)?;
                Pdu::TaskMgmtRequest(TaskMgmtRequest::decode(bhs)?)
            }
            Opcode::LOGIN_REQUEST => Pdu::LoginRequest(LoginRequest::decode(bhs, data)?),
            Opcode::TEXT_REQUEST => Pdu::TextRequest(TextRequest::decode(bhs, data)?),
            Opcode::DATA_OUT => Pdu::DataOut(DataOut::decode(bhs, data)?),
            Opcode::LOGOUT_REQUEST => {
                no_data(&data)?;
                Pdu::LogoutRequest(LogoutRequest::decode(bhs)?)
            }
            Opcode::SNACK_REQUEST => {
                no_data(&data)?;
                Pdu::SnackRequest(SnackRequest::decode(bhs)?)
            }
            Opcode::NOP_IN => Pdu::NopIn(NopIn::decode(bhs, data)?),
            Opcode::SCSI_RESPONSE => Pdu::ScsiResponse(ScsiResponse::decode(bhs, data)?),
            Opcode::TASK_MGMT_RESPONSE => {
                no_data(&data)?;
                Pdu::TaskMgmtResponse(TaskMgmtResponse::decode(bhs)?)
            }
            Opcode::LOGIN_RESPONSE => Pdu::LoginResponse(LoginResponse::decode(bhs, data)?),
            Opcode::TEXT_RESPONSE => Pdu::TextResponse(TextResponse::decode(bhs, data)?),
            Opcode::DATA_IN => Pdu::DataIn(DataIn::decode(bhs, data)?),
            Opcode::LOGOUT_RESPONSE => {
                no_data(&data)?;
                Pdu::LogoutResponse(LogoutResponse::decode(bhs)?)
            }
            Opcode::R2T => {
                no_data(&data)?;
                Pdu::R2t(R2t::decode(bhs)?)
            }
            Opcode::ASYNC_MESSAGE => Pdu::AsyncMessage(AsyncMessage::decode(bhs, data)?),
            Opcode::REJECT => Pdu::Reject(Reject::decode(bhs, data)?),
            other => {
                return Err(DecodeError::UnknownOpcode {
                    opcode: other,
                    itt: be32(bhs, 16),
                })
            }
        })
    }

    /// Write this PDU's BHS; returns the AHS bytes (padded) to follow it.
    pub fn encode_bhs(&self, b: &mut [u8; 48]) -> Vec<u8> {
        *b = [0u8; 48];
        let mut ahs = Vec::new();
        match self {
            Pdu::NopOut(p) => p.encode_bhs(b),
            Pdu::ScsiCommand(p) => {
                p.encode_bhs(b);
                ahs = p.ahs_bytes();
            }
            Pdu::TaskMgmtRequest(p) => p.encode_bhs(b),
            Pdu::LoginRequest(p) => p.encode_bhs(b),
            Pdu::TextRequest(p) => p.encode_bhs(b),
            Pdu::DataOut(p) => p.encode_bhs(b),
            Pdu::LogoutRequest(p) => p.encode_bhs(b),
            Pdu::SnackRequest(p) => p.encode_bhs(b),
            Pdu::NopIn(p) => p.encode_bhs(b),
            Pdu::ScsiResponse(p) => p.encode_bhs(b),
            Pdu::TaskMgmtResponse(p) => p.encode_bhs(b),
            Pdu::LoginResponse(p) => p.encode_bhs(b),
            Pdu::TextResponse(p) => p.encode_bhs(b),
            Pdu::DataIn(p) => p.encode_bhs(b),
            Pdu::LogoutResponse(p) => p.encode_bhs(b),
            Pdu::R2t(p) => p.encode_bhs(b),
            Pdu::AsyncMessage(p) => p.encode_bhs(b),
            Pdu::Reject(p) => p.encode_bhs(b),
        }
        b[0] = u8::from(self.immediate()) << 6 | self.opcode().0;
        b[4] = (ahs.len() / 4) as u8;
        let dsl = self.data().len() as u32;
        b[5..8].copy_from_slice(&dsl.to_be_bytes()[1..]);
        ahs
    }
}

#[cfg(test)]
mod tests;
