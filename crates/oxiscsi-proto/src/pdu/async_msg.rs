//! Asynchronous Message (RFC 7143 §11.9).

use bytes::Bytes;

use super::{be16, be32, be64, put16, put32, put64, DecodeError, Lun};
use crate::pdu::codes::{AsyncEvent, Opcode};
use crate::serial::SerialNumber;

/// Asynchronous Message (§11.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: Lun,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub event: AsyncEvent,
    pub vcode: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
    /// SenseLength + sense data + iSCSI event data (§11.9.4).
    pub data: Bytes,
}

impl AsyncMessage {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        // §11.9: the ITT field "MUST be set to 0xffffffff" ... tolerated when not, as
        // open-iscsi does; only the event fields drive behaviour.
        let m = AsyncMessage {
            lun: Lun(be64(b, 8)),
            stat_sn: SerialNumber(be32(b, 24)),
            exp_cmd_sn: SerialNumber(be32(b, 28)),
            max_cmd_sn: SerialNumber(be32(b, 32)),
            event: AsyncEvent(b[36]),
            vcode: b[37],
            parameter1: be16(b, 38),
            parameter2: be16(b, 40),
            parameter3: be16(b, 42),
            data,
        };
        Ok(m)
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80;
        put64(b, 8, self.lun.0);
        put32(b, 16, super::RESERVED_TAG);
        put32(b, 24, self.stat_sn.0);
        put32(b, 28, self.exp_cmd_sn.0);
        put32(b, 32, self.max_cmd_sn.0);
        b[36] = self.event.0;
        b[37] = self.vcode;
        put16(b, 38, self.parameter1);
        put16(b, 40, self.parameter2);
        put16(b, 42, self.parameter3);
    }

    /// Sense data of a SCSI asynchronous event (event 0).
    pub fn sense(&self) -> Result<Bytes, DecodeError> {
        super::scsi::split_sense(&self.data, Opcode::ASYNC_MESSAGE)
    }
}
