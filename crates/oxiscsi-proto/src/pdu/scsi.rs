//! SCSI Command (RFC 7143 §11.3) and SCSI Response (§11.4).

use bytes::Bytes;

use super::cdb::CdbBuf;
use super::{be32, be64, put32, put64, Ahs, DecodeError, Lun};
use crate::pdu::codes::{Opcode, ScsiStatus, ServiceResponse};
use crate::serial::SerialNumber;

/// Task attribute, low 3 bits of SCSI Command byte 1 (§11.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TaskAttr {
    Untagged,
    #[default]
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
    Reserved(u8),
}

impl TaskAttr {
    fn from_bits(b: u8) -> Self {
        match b & 7 {
            0 => TaskAttr::Untagged,
            1 => TaskAttr::Simple,
            2 => TaskAttr::Ordered,
            3 => TaskAttr::HeadOfQueue,
            4 => TaskAttr::Aca,
            v => TaskAttr::Reserved(v),
        }
    }
    fn bits(self) -> u8 {
        match self {
            TaskAttr::Untagged => 0,
            TaskAttr::Simple => 1,
            TaskAttr::Ordered => 2,
            TaskAttr::HeadOfQueue => 3,
            TaskAttr::Aca => 4,
            TaskAttr::Reserved(v) => v & 7,
        }
    }
}

/// SCSI Command PDU (§11.3). CDBs longer than 16 bytes travel in an Extended CDB AHS
/// (§11.3.5); `cdb` always holds the whole CDB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attr: TaskAttr,
    pub lun: Lun,
    pub itt: u32,
    pub expected_data_transfer_length: u32,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
    pub cdb: CdbBuf,
    /// Bidirectional Read Expected Data-Transfer Length AHS (§11.3.6), if any.
    pub bidi_read_length: Option<u32>,
    /// Immediate data.
    pub data: Bytes,
}

impl ScsiCommand {
    pub(super) fn decode(b: &[u8; 48], ahs: &[Ahs<'_>], data: Bytes) -> Result<Self, DecodeError> {
        let mut head = [0u8; 16];
        head.copy_from_slice(&b[32..48]);
        let mut cdb = CdbBuf::from_array(head, 16);
        let mut bidi_read_length = None;
        for a in ahs {
            match a.ahs_type {
                // §11.3.5: ExtendedCDB AHS: AHSLength = CDB length - 15, one reserved byte,
                // then the bytes beyond the first 16.
                1 => {
                    if a.value.is_empty() {
                        return Err(DecodeError::malformed(
                            Opcode::SCSI_COMMAND,
                            "empty Extended CDB AHS",
                            "§11.3.5",
                        ));
                    }
                    let extra = a.length.checked_sub(1).ok_or_else(|| {
                        DecodeError::malformed(
                            Opcode::SCSI_COMMAND,
                            "Extended CDB AHS too short",
                            "§11.3.5",
                        )
                    })?;
                    let mut long = Vec::with_capacity(16 + usize::from(extra));
                    long.extend_from_slice(&cdb);
                    long.extend_from_slice(&a.value[1..1 + usize::from(extra)]);
                    cdb = CdbBuf::from(long);
                }
                // §11.3.6: Bidirectional Read Expected Data-Transfer Length AHS, AHSLength 5.
                2 => {
                    if a.length != 5 || a.value.len() < 5 {
                        return Err(DecodeError::malformed(
                            Opcode::SCSI_COMMAND,
                            "Bidirectional Read Expected Data-Transfer Length AHS must have AHSLength 5",
                            "§11.3.6",
                        ));
                    }
                    bidi_read_length = Some(be32(a.value, 1));
                }
                _ => {
                    return Err(DecodeError::malformed(
                        Opcode::SCSI_COMMAND,
                        "unknown AHS type",
                        "§11.2.2",
                    ));
                }
            }
        }
        Ok(ScsiCommand {
            immediate: b[0] & 0x40 != 0,
            final_: b[1] & 0x80 != 0,
            read: b[1] & 0x40 != 0,
            write: b[1] & 0x20 != 0,
            attr: TaskAttr::from_bits(b[1]),
            lun: Lun(be64(b, 8)),
            itt: be32(b, 16),
            expected_data_transfer_length: be32(b, 20),
            cmd_sn: SerialNumber(be32(b, 24)),
            exp_stat_sn: SerialNumber(be32(b, 28)),
            cdb,
            bidi_read_length,
            data,
        })
    }

    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = u8::from(self.final_) << 7
            | u8::from(self.read) << 6
            | u8::from(self.write) << 5
            | self.attr.bits();
        put64(b, 8, self.lun.0);
        put32(b, 16, self.itt);
        put32(b, 20, self.expected_data_transfer_length);
        put32(b, 24, self.cmd_sn.0);
        put32(b, 28, self.exp_stat_sn.0);
        let n = self.cdb.len().min(16);
        b[32..32 + n].copy_from_slice(&self.cdb[..n]);
    }

    /// The AHS bytes this command needs (already padded to 4 bytes).
    pub(super) fn ahs_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.cdb.len() > 16 {
            let extra = &self.cdb[16..];
            let ahs_len = (extra.len() + 1) as u16;
            out.extend_from_slice(&ahs_len.to_be_bytes());
            out.push(1);
            out.push(0);
            out.extend_from_slice(extra);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
        if let Some(len) = self.bidi_read_length {
            out.extend_from_slice(&5u16.to_be_bytes());
            out.push(2);
            out.push(0);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out
    }
}

/// SCSI Response PDU (§11.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub response: ServiceResponse,
    pub status: ScsiStatus,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub exp_data_sn: u32,
    pub bidi_read_residual_count: u32,
    pub residual_count: u32,
    /// Data segment: SenseLength (2 bytes) + sense data + response data (§11.4.7).
    pub data: Bytes,
}

impl ScsiResponse {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        let r = ScsiResponse {
            bidi_overflow: b[1] & 0x10 != 0,
            bidi_underflow: b[1] & 0x08 != 0,
            overflow: b[1] & 0x04 != 0,
            underflow: b[1] & 0x02 != 0,
            response: ServiceResponse(b[2]),
            status: ScsiStatus(b[3]),
            itt: be32(b, 16),
            snack_tag: be32(b, 20),
            stat_sn: SerialNumber(be32(b, 24)),
            exp_cmd_sn: SerialNumber(be32(b, 28)),
            max_cmd_sn: SerialNumber(be32(b, 32)),
            exp_data_sn: be32(b, 36),
            bidi_read_residual_count: be32(b, 40),
            residual_count: be32(b, 44),
            data,
        };
        // §11.4.5.1: "Bits O and U ... are mutually exclusive".
        if r.overflow && r.underflow {
            return Err(DecodeError::malformed(
                Opcode::SCSI_RESPONSE,
                "both residual overflow (O) and underflow (U) bits set",
                "§11.4.5.1",
            ));
        }
        if r.bidi_overflow && r.bidi_underflow {
            return Err(DecodeError::malformed(
                Opcode::SCSI_RESPONSE,
                "both bidirectional overflow (o) and underflow (u) bits set",
                "§11.4.5.1",
            ));
        }
        Ok(r)
    }

    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80
            | u8::from(self.bidi_overflow) << 4
            | u8::from(self.bidi_underflow) << 3
            | u8::from(self.overflow) << 2
            | u8::from(self.underflow) << 1;
        b[2] = self.response.0;
        b[3] = self.status.0;
        put32(b, 16, self.itt);
        put32(b, 20, self.snack_tag);
        put32(b, 24, self.stat_sn.0);
        put32(b, 28, self.exp_cmd_sn.0);
        put32(b, 32, self.max_cmd_sn.0);
        put32(b, 36, self.exp_data_sn);
        put32(b, 40, self.bidi_read_residual_count);
        put32(b, 44, self.residual_count);
    }

    /// The sense data carried in the data segment (§11.4.7.2), empty when none.
    pub fn sense(&self) -> Result<Bytes, DecodeError> {
        split_sense(&self.data, Opcode::SCSI_RESPONSE)
    }

    /// Build a data segment carrying `sense`.
    pub fn sense_segment(sense: &[u8]) -> Bytes {
        let mut v = Vec::with_capacity(2 + sense.len());
        v.extend_from_slice(&(sense.len() as u16).to_be_bytes());
        v.extend_from_slice(sense);
        Bytes::from(v)
    }
}

pub(super) fn split_sense(data: &Bytes, op: Opcode) -> Result<Bytes, DecodeError> {
    if data.is_empty() {
        return Ok(Bytes::new());
    }
    if data.len() < 2 {
        return Err(DecodeError::malformed(
            op,
            "data segment shorter than its SenseLength field",
            "§11.4.7.1",
        ));
    }
    let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
    if 2 + len > data.len() {
        return Err(DecodeError::malformed(
            op,
            "SenseLength exceeds the data segment",
            "§11.4.7.1",
        ));
    }
    Ok(data.slice(2..2 + len))
}
