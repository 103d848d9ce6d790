//! SCSI Data-Out (RFC 7143 §11.7), SCSI Data-In (§11.7) and R2T (§11.8).

use bytes::Bytes;

use super::{be32, be64, put32, put64, DecodeError, Lun};
use crate::pdu::codes::{Opcode, ScsiStatus};
use crate::serial::SerialNumber;

/// SCSI Data-Out (§11.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataOut {
    pub final_: bool,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: SerialNumber,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Bytes,
}

impl DataOut {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        Ok(DataOut {
            final_: b[1] & 0x80 != 0,
            lun: Lun(be64(b, 8)),
            itt: be32(b, 16),
            ttt: be32(b, 20),
            exp_stat_sn: SerialNumber(be32(b, 28)),
            data_sn: be32(b, 36),
            buffer_offset: be32(b, 40),
            data,
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = u8::from(self.final_) << 7;
        put64(b, 8, self.lun.0);
        put32(b, 16, self.itt);
        put32(b, 20, self.ttt);
        put32(b, 28, self.exp_stat_sn.0);
        put32(b, 36, self.data_sn);
        put32(b, 40, self.buffer_offset);
    }
}

/// SCSI Data-In (§11.7). With the S bit it also carries the command's status (§11.7.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataIn {
    pub final_: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// Status present (S bit): `status`, `stat_sn` and the residual are valid.
    pub status_present: bool,
    pub status: ScsiStatus,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual_count: u32,
    pub data: Bytes,
}

impl DataIn {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        let d = DataIn {
            final_: b[1] & 0x80 != 0,
            ack: b[1] & 0x40 != 0,
            overflow: b[1] & 0x04 != 0,
            underflow: b[1] & 0x02 != 0,
            status_present: b[1] & 0x01 != 0,
            // §11.7.4: the status byte is valid only with the S bit; ignore it otherwise.
            status: if b[1] & 0x01 != 0 {
                ScsiStatus(b[3])
            } else {
                ScsiStatus::GOOD
            },
            lun: Lun(be64(b, 8)),
            itt: be32(b, 16),
            ttt: be32(b, 20),
            stat_sn: SerialNumber(be32(b, 24)),
            exp_cmd_sn: SerialNumber(be32(b, 28)),
            max_cmd_sn: SerialNumber(be32(b, 32)),
            data_sn: be32(b, 36),
            buffer_offset: be32(b, 40),
            residual_count: be32(b, 44),
            data,
        };
        // §11.7.1: "If the S bit is set to 1, the F bit MUST also be set to 1."
        if d.status_present && !d.final_ {
            return Err(DecodeError::malformed(
                Opcode::DATA_IN,
                "S (status) bit set without the F (final) bit",
                "§11.7.1",
            ));
        }
        if d.overflow && d.underflow {
            return Err(DecodeError::malformed(
                Opcode::DATA_IN,
                "both O and U bits set",
                "§11.7.5",
            ));
        }
        Ok(d)
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = u8::from(self.final_) << 7
            | u8::from(self.ack) << 6
            | u8::from(self.overflow) << 2
            | u8::from(self.underflow) << 1
            | u8::from(self.status_present);
        b[3] = if self.status_present {
            self.status.0
        } else {
            0
        };
        put64(b, 8, self.lun.0);
        put32(b, 16, self.itt);
        put32(b, 20, self.ttt);
        put32(b, 24, self.stat_sn.0);
        put32(b, 28, self.exp_cmd_sn.0);
        put32(b, 32, self.max_cmd_sn.0);
        put32(b, 36, self.data_sn);
        put32(b, 40, self.buffer_offset);
        put32(b, 44, self.residual_count);
    }
}

/// Ready To Transfer (§11.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct R2t {
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_data_transfer_length: u32,
}

impl R2t {
    pub(super) fn decode(b: &[u8; 48]) -> Result<Self, DecodeError> {
        let r = R2t {
            lun: Lun(be64(b, 8)),
            itt: be32(b, 16),
            ttt: be32(b, 20),
            stat_sn: SerialNumber(be32(b, 24)),
            exp_cmd_sn: SerialNumber(be32(b, 28)),
            max_cmd_sn: SerialNumber(be32(b, 32)),
            r2t_sn: be32(b, 36),
            buffer_offset: be32(b, 40),
            desired_data_transfer_length: be32(b, 44),
        };
        // §11.8.4: "The Desired Data Transfer Length MUST NOT be 0".
        if r.desired_data_transfer_length == 0 {
            return Err(DecodeError::malformed(
                Opcode::R2T,
                "Desired Data Transfer Length is 0",
                "§11.8.4",
            ));
        }
        // §11.8.3: the target assigns a TTT "other than 0xffffffff".
        if r.ttt == super::RESERVED_TAG {
            return Err(DecodeError::malformed(
                Opcode::R2T,
                "Target Transfer Tag is the reserved 0xffffffff",
                "§11.8.3",
            ));
        }
        Ok(r)
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80;
        put64(b, 8, self.lun.0);
        put32(b, 16, self.itt);
        put32(b, 20, self.ttt);
        put32(b, 24, self.stat_sn.0);
        put32(b, 28, self.exp_cmd_sn.0);
        put32(b, 32, self.max_cmd_sn.0);
        put32(b, 36, self.r2t_sn);
        put32(b, 40, self.buffer_offset);
        put32(b, 44, self.desired_data_transfer_length);
    }
}
