//! Per-connection counters: what `iscsiadm -m session -s` prints ("iSCSI SNMP") and the
//! raw material for RFC 4544's iscsiConnectionStats / iscsiSessionStats later.
//!
//! The core counts every PDU it emits (in [`poll_transmit`]) and every PDU it is fed,
//! so the numbers do not depend on how the driver batches its writes and reads.
//!
//! [`poll_transmit`]: super::InitiatorConnection::poll_transmit

use crate::pdu::{DecodeError, Opcode, Pdu};

/// Counters of one connection since login. Octet counters count data segments only
/// (RFC 4544 `iscsiSsnTxDataOctets`/`RxDataOctets`), not headers or digests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub tx_data_octets: u64,
    pub rx_data_octets: u64,
    pub nop_out_pdus: u64,
    pub scsi_cmd_pdus: u64,
    pub tmf_cmd_pdus: u64,
    pub login_pdus: u64,
    pub text_pdus: u64,
    pub data_out_pdus: u64,
    pub logout_pdus: u64,
    pub snack_pdus: u64,
    pub nop_in_pdus: u64,
    pub scsi_rsp_pdus: u64,
    pub tmf_rsp_pdus: u64,
    pub text_rsp_pdus: u64,
    pub data_in_pdus: u64,
    pub logout_rsp_pdus: u64,
    pub r2t_pdus: u64,
    pub async_pdus: u64,
    pub reject_pdus: u64,
    /// Header or data digest mismatches seen.
    pub digest_errors: u64,
    /// NOP-Out pings, tasks or logouts that ran out of time.
    pub timeout_errors: u64,
}

impl ConnStats {
    pub(crate) fn sent(&mut self, pdu: &Pdu) {
        self.tx_data_octets += pdu_data_len(pdu);
        let c = match pdu.opcode() {
            Opcode::NOP_OUT => &mut self.nop_out_pdus,
            Opcode::SCSI_COMMAND => &mut self.scsi_cmd_pdus,
            Opcode::TASK_MGMT_REQUEST => &mut self.tmf_cmd_pdus,
            Opcode::LOGIN_REQUEST => &mut self.login_pdus,
            Opcode::TEXT_REQUEST => &mut self.text_pdus,
            Opcode::DATA_OUT => &mut self.data_out_pdus,
            Opcode::LOGOUT_REQUEST => &mut self.logout_pdus,
            Opcode::SNACK_REQUEST => &mut self.snack_pdus,
            _ => return,
        };
        *c += 1;
    }

    /// A received PDU; `placed` is the payload length of a Data-In read in place (its
    /// `data` is empty then).
    pub(crate) fn received(&mut self, opcode: Opcode, data_len: u64) {
        self.rx_data_octets += data_len;
        let c = match opcode {
            Opcode::NOP_IN => &mut self.nop_in_pdus,
            Opcode::SCSI_RESPONSE => &mut self.scsi_rsp_pdus,
            Opcode::TASK_MGMT_RESPONSE => &mut self.tmf_rsp_pdus,
            Opcode::LOGIN_RESPONSE => &mut self.login_pdus,
            Opcode::TEXT_RESPONSE => &mut self.text_rsp_pdus,
            Opcode::DATA_IN => &mut self.data_in_pdus,
            Opcode::LOGOUT_RESPONSE => &mut self.logout_rsp_pdus,
            Opcode::R2T => &mut self.r2t_pdus,
            Opcode::ASYNC_MESSAGE => &mut self.async_pdus,
            Opcode::REJECT => &mut self.reject_pdus,
            _ => return,
        };
        *c += 1;
    }

    pub(crate) fn decode_error(&mut self, e: &DecodeError) {
        if matches!(
            e,
            DecodeError::HeaderDigest { .. } | DecodeError::DataDigest { .. }
        ) {
            self.digest_errors += 1;
        }
    }
}

pub(crate) fn pdu_data_len(pdu: &Pdu) -> u64 {
    match pdu {
        Pdu::ScsiCommand(p) => p.data.len() as u64,
        Pdu::DataOut(p) => p.data.len() as u64,
        Pdu::DataIn(p) => p.data.len() as u64,
        Pdu::ScsiResponse(p) => p.data.len() as u64,
        _ => 0,
    }
}
