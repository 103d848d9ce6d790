//! Task Management Function Request (RFC 7143 §11.5) and Response (§11.6).

use super::{be32, be64, put32, put64, DecodeError, Lun};
use crate::pdu::codes::{TmfFunction, TmfResponse};
use crate::serial::SerialNumber;

/// Task Management Function Request (§11.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: TmfFunction,
    pub lun: Lun,
    pub itt: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
    pub ref_cmd_sn: SerialNumber,
    pub exp_data_sn: u32,
}

impl TaskMgmtRequest {
    pub(super) fn decode(b: &[u8; 48]) -> Result<Self, DecodeError> {
        Ok(TaskMgmtRequest {
            immediate: b[0] & 0x40 != 0,
            function: TmfFunction(b[1] & 0x7f),
            lun: Lun(be64(b, 8)),
            itt: be32(b, 16),
            referenced_task_tag: be32(b, 20),
            cmd_sn: SerialNumber(be32(b, 24)),
            exp_stat_sn: SerialNumber(be32(b, 28)),
            ref_cmd_sn: SerialNumber(be32(b, 32)),
            exp_data_sn: be32(b, 36),
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80 | (self.function.0 & 0x7f);
        put64(b, 8, self.lun.0);
        put32(b, 16, self.itt);
        put32(b, 20, self.referenced_task_tag);
        put32(b, 24, self.cmd_sn.0);
        put32(b, 28, self.exp_stat_sn.0);
        put32(b, 32, self.ref_cmd_sn.0);
        put32(b, 36, self.exp_data_sn);
    }
}

/// Task Management Function Response (§11.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    pub response: TmfResponse,
    pub itt: u32,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
}

impl TaskMgmtResponse {
    pub(super) fn decode(b: &[u8; 48]) -> Result<Self, DecodeError> {
        Ok(TaskMgmtResponse {
            response: TmfResponse(b[2]),
            itt: be32(b, 16),
            stat_sn: SerialNumber(be32(b, 24)),
            exp_cmd_sn: SerialNumber(be32(b, 28)),
            max_cmd_sn: SerialNumber(be32(b, 32)),
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        b[1] = 0x80;
        b[2] = self.response.0;
        put32(b, 16, self.itt);
        put32(b, 24, self.stat_sn.0);
        put32(b, 28, self.exp_cmd_sn.0);
        put32(b, 32, self.max_cmd_sn.0);
    }
}
