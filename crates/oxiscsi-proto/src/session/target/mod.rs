//! The full feature phase of a target connection at ErrorRecoveryLevel 0 (RFC 7143 §4.2,
//! §11). Sans-IO, like [`super::InitiatorConnection`]: feed PDUs and `now`, poll PDUs to
//! send, events for the SCSI layer, and the next deadline. SCSI semantics are not decided
//! here: a command whose data has all arrived becomes [`TargetEvent::Execute`], and its
//! outcome comes back through [`TargetConnection::complete`].
//!
//! Call order per wake-up: `handle_pdu`/`handle_timeout`/`complete`, then drain
//! `poll_transmit` and `poll_event`, then sleep until `poll_timeout`.

mod write;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::pdu::codec::FrameError;
use crate::pdu::{
    AsyncEvent, AsyncMessage, DataIn, LogoutRequest, LogoutResponse, LogoutResponseCode, Lun,
    NopIn, NopOut, Pdu, Reject, RejectReason, ScsiCommand, ScsiResponse, ScsiStatus,
    ServiceResponse, TaskAttr, TaskMgmtRequest, TaskMgmtResponse, TextRequest, TextResponse,
    TmfFunction, TmfResponse,
};
use crate::serial::SerialNumber;
use crate::text::pairs::{encode_pairs, TextAssembler};
use crate::text::OperationalParams;

use write::WriteState;

/// Tag value meaning "none" (§11.2.1.8).
const NO_TAG: u32 = 0xffff_ffff;
/// Immediate commands (outside the CmdSN window) one connection may have running.
pub const MAX_IMMEDIATE: usize = 16;
/// Text one Text Request may gather across continued PDUs.
const MAX_TEXT: usize = 64 * 1024;

/// Target connection settings.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Commands the initiator may have outstanding: MaxCmdSN = ExpCmdSN + depth − 1 with
    /// nothing running (§4.2.2.1).
    pub queue_depth: u32,
    /// Largest write (ExpectedDataTransferLength) we buffer; larger ones fail with
    /// CHECK CONDITION before any data is taken.
    pub max_write_len: u32,
    /// Ping the initiator (NOP-In) after this long without a PDU from it.
    pub nop_interval: Option<Duration>,
    /// Close the connection when a ping is not answered within this.
    pub nop_timeout: Duration,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            queue_depth: 128,
            max_write_len: 32 * 1024 * 1024,
            nop_interval: Some(Duration::from_secs(10)),
            nop_timeout: Duration::from_secs(15),
        }
    }
}

/// A command ready for the SCSI layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiTask {
    pub itt: u32,
    pub lun: Lun,
    pub cdb: crate::pdu::CdbBuf,
    pub attr: TaskAttr,
    pub cmd_sn: SerialNumber,
    /// ExpectedDataTransferLength for a read (R bit), else 0.
    pub read_len: u32,
    /// ExpectedDataTransferLength for a write (W bit), else 0.
    pub write_len: u32,
    /// All the write data (`write_len` bytes).
    pub data_out: Bytes,
}

/// The SCSI layer's answer to a [`ScsiTask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiOutcome {
    pub status: ScsiStatus,
    /// Sense data (fixed or descriptor format), sent in the SCSI Response.
    pub sense: Bytes,
    /// Data for the initiator; longer than the read length means overflow (truncated).
    pub data: Bytes,
    /// For writes: the bytes the CDB asked to transfer, to report residuals against
    /// ExpectedDataTransferLength (§11.4.5). None = as expected.
    pub write_len_needed: Option<u32>,
}

impl Default for ScsiOutcome {
    fn default() -> Self {
        ScsiOutcome {
            status: ScsiStatus::GOOD,
            sense: Bytes::new(),
            data: Bytes::new(),
            write_len_needed: None,
        }
    }
}

/// What the SCSI layer or the server must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetEvent {
    /// Run this command and call [`TargetConnection::complete`].
    Execute(ScsiTask),
    /// A task management function that touches the logical unit or the target beyond this
    /// connection's tasks (LUN RESET, TARGET WARM/COLD RESET, CLEAR TASK SET): raise unit
    /// attentions, end other sessions' tasks as SAM requires.
    Reset { function: TmfFunction, lun: Lun },
    /// A Text Request (SendTargets and the like): answer with
    /// [`TargetConnection::respond_text`].
    Text {
        itt: u32,
        pairs: Vec<(String, String)>,
    },
    /// Close the connection once the PDUs queued so far are sent.
    Close { reason: String },
}

#[derive(Debug)]
enum TaskState {
    /// Gathering write data.
    Collecting(Box<WriteState>),
    /// Handed to the SCSI layer.
    Executing,
}

#[derive(Debug)]
struct Task {
    lun: Lun,
    cdb: crate::pdu::CdbBuf,
    attr: TaskAttr,
    cmd_sn: SerialNumber,
    immediate: bool,
    read_len: u32,
    write_len: u32,
    state: TaskState,
    /// Aborted by a TMF: its outcome is dropped.
    aborted: bool,
    /// R2Ts sent (for ExpDataSN in the SCSI Response of a write).
    r2ts_sent: u32,
}

#[derive(Debug)]
struct PendingTmf {
    itt: u32,
    response: TmfResponse,
    waiting: BTreeSet<u32>,
    close_after: bool,
}

/// A response to a Text Request that spans several PDUs (§11.10: C bit, TTT).
#[derive(Debug)]
struct TextReply {
    itt: u32,
    ttt: u32,
    rest: Bytes,
}

/// Target connection state machine.
#[derive(Debug)]
pub struct TargetConnection {
    params: OperationalParams,
    cfg: TargetConfig,
    exp_cmd_sn: SerialNumber,
    max_cmd_sn: SerialNumber,
    /// CmdSNs received beyond ExpCmdSN (a gap before them).
    ahead: BTreeSet<u32>,
    stat_sn: SerialNumber,
    tasks: HashMap<u32, Task>,
    /// Commands whose data is complete but that wait for earlier CmdSNs (§4.2.2.1:
    /// delivered to SCSI in CmdSN order).
    waiting_order: Vec<u32>,
    tmfs: Vec<PendingTmf>,
    /// Writes failed on a bad Data-Out, whose remaining Data-Out is dropped (bounded).
    failed_writes: VecDeque<u32>,
    outq: VecDeque<Pdu>,
    events: VecDeque<TargetEvent>,
    next_ttt: u32,
    text: TextAssembler,
    text_reply: Option<TextReply>,
    logout: Option<LogoutRequest>,
    closed: bool,
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
    logout_deadline: Option<Instant>,
}

impl TargetConnection {
    /// Start the full feature phase. `exp_cmd_sn`/`stat_sn` come from the login.
    pub fn new(
        params: OperationalParams,
        cfg: TargetConfig,
        exp_cmd_sn: SerialNumber,
        stat_sn: SerialNumber,
        now: Instant,
    ) -> TargetConnection {
        let depth = cfg.queue_depth.max(1);
        TargetConnection {
            params,
            exp_cmd_sn,
            max_cmd_sn: exp_cmd_sn.plus(depth - 1),
            cfg,
            ahead: BTreeSet::new(),
            stat_sn,
            tasks: HashMap::new(),
            waiting_order: Vec::new(),
            tmfs: Vec::new(),
            failed_writes: VecDeque::new(),
            outq: VecDeque::new(),
            events: VecDeque::new(),
            next_ttt: 1,
            text: TextAssembler::new(MAX_TEXT),
            text_reply: None,
            logout: None,
            closed: false,
            last_rx: now,
            ping: None,
            logout_deadline: None,
        }
    }

    pub fn params(&self) -> &OperationalParams {
        &self.params
    }

    pub fn exp_cmd_sn(&self) -> SerialNumber {
        self.exp_cmd_sn
    }

    pub fn max_cmd_sn(&self) -> SerialNumber {
        self.max_cmd_sn
    }

    /// Tasks gathering data or running.
    pub fn active_tasks(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        self.outq.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TargetEvent> {
        self.events.pop_front()
    }

    /// The next deadline (NOP-In ping, its answer, a requested logout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let ping = match (self.ping, self.cfg.nop_interval) {
            (Some((_, at)), _) => Some(at + self.cfg.nop_timeout),
            (None, Some(iv)) => Some(self.last_rx + iv),
            (None, None) => None,
        };
        [ping, self.logout_deadline].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if let Some((ttt, sent)) = self.ping {
            if now >= sent + self.cfg.nop_timeout {
                return self.close(format!(
                    "initiator did not answer our NOP-In ping (TTT {ttt:#x}) within {:?}",
                    self.cfg.nop_timeout
                ));
            }
        } else if let Some(iv) = self.cfg.nop_interval {
            if now >= self.last_rx + iv {
                let ttt = self.take_ttt();
                self.ping = Some((ttt, now));
                // §11.19: a ping carries ITT 0xffffffff; StatSN is not advanced.
                self.outq.push_back(Pdu::NopIn(NopIn {
                    lun: Lun(0),
                    itt: NO_TAG,
                    ttt,
                    stat_sn: self.stat_sn,
                    exp_cmd_sn: self.exp_cmd_sn,
                    max_cmd_sn: self.max_cmd_sn,
                    data: Bytes::new(),
                }));
            }
        }
        if self.logout_deadline.is_some_and(|d| now >= d) {
            self.close("initiator did not log out in the time the target gave it".into());
        }
    }

    /// The transport is gone (EOF or error).
    pub fn handle_closed(&mut self, why: &str) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(TargetEvent::Close {
                reason: why.to_string(),
            });
        }
    }

    fn close(&mut self, reason: String) {
        if !self.closed {
            self.closed = true;
            self.events.push_back(TargetEvent::Close { reason });
        }
    }

    fn take_ttt(&mut self) -> u32 {
        next_tag(&mut self.next_ttt)
    }

    /// Next StatSN for a status-carrying PDU (advances).
    fn status_sn(&mut self) -> SerialNumber {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.next();
        s
    }

    /// Recompute MaxCmdSN from the free queue slots; never moves it back (§4.2.2.1: the
    /// initiator may already use the window we gave).
    fn update_window(&mut self) {
        let depth = self.cfg.queue_depth.max(1);
        let busy = self.tasks.values().filter(|t| !t.immediate).count() as u32;
        let free = depth.saturating_sub(busy);
        let max = self.exp_cmd_sn.plus(free).plus(u32::MAX); // exp + free - 1
        if max.gt(self.max_cmd_sn) {
            self.max_cmd_sn = max;
        }
    }

    /// A decode failure (§7.8, §11.17): answer a resynced PDU with a Reject carrying its
    /// header; close when the stream cannot be trusted.
    pub fn handle_frame_error(&mut self, err: FrameError) {
        match (err.error.reject_reason(), err.resynced, err.bhs) {
            (Some(reason), true, Some(bhs)) => {
                self.reject(reason, Bytes::copy_from_slice(&bhs));
                if reason == RejectReason::DATA_DIGEST_ERROR {
                    // ERL 0 cannot recover the lost data (§7.8): end the connection.
                    self.close(err.to_string());
                }
            }
            _ => self.close(err.to_string()),
        }
    }

    fn reject(&mut self, reason: RejectReason, header: Bytes) {
        let stat_sn = self.status_sn();
        self.outq.push_back(Pdu::Reject(Reject {
            reason,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            data_sn_or_r2t_sn: 0,
            data: header,
        }));
    }

    fn reject_pdu(&mut self, reason: RejectReason, pdu: &Pdu) {
        let mut bhs = [0u8; 48];
        let _ = pdu.encode_bhs(&mut bhs);
        self.reject(reason, Bytes::copy_from_slice(&bhs));
    }

    /// A protocol violation the connection does not survive (ERL 0): Reject, then close.
    fn violation(&mut self, pdu: &Pdu, what: String) {
        self.reject_pdu(RejectReason::PROTOCOL_ERROR, pdu);
        self.close(format!("initiator protocol error: {what}"));
    }

    /// §4.2.2.1: is this non-immediate CmdSN in the window? Accepting it advances
    /// ExpCmdSN (over any CmdSNs that arrived early).
    fn accept_cmd_sn(&mut self, cmd_sn: SerialNumber) -> bool {
        if cmd_sn.lt(self.exp_cmd_sn) || cmd_sn.gt(self.max_cmd_sn) {
            return false;
        }
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.next();
            while self.ahead.remove(&self.exp_cmd_sn.0) {
                self.exp_cmd_sn = self.exp_cmd_sn.next();
            }
            true
        } else {
            // A duplicate of one already ahead is dropped like any out-of-window one.
            self.ahead.insert(cmd_sn.0)
        }
    }

    /// Feed one PDU from the initiator.
    pub fn handle_pdu(&mut self, now: Instant, pdu: Pdu) {
        if self.closed {
            return;
        }
        self.last_rx = now;
        match pdu {
            Pdu::ScsiCommand(c) => self.scsi_command(c),
            Pdu::DataOut(d) => self.data_out(d),
            Pdu::NopOut(n) => self.nop_out(n),
            Pdu::TaskMgmtRequest(t) => self.tmf(t),
            Pdu::TextRequest(t) => self.text_request(t),
            Pdu::LogoutRequest(l) => self.logout_request(l),
            p @ Pdu::SnackRequest(_) => {
                // ERL 0: SNACK is not supported (§7.1.4.1 needs ERL ≥ 1).
                self.reject_pdu(RejectReason::COMMAND_NOT_SUPPORTED, &p);
            }
            p @ Pdu::LoginRequest(_) => {
                self.violation(
                    &p,
                    "Login Request in full feature phase (RFC 7143 §6)".into(),
                );
            }
            p => {
                // Target-to-initiator opcodes.
                self.reject_pdu(RejectReason::PROTOCOL_ERROR, &p);
            }
        }
        self.release_ordered();
        self.update_window();
    }

    fn scsi_command(&mut self, c: ScsiCommand) {
        let pdu_for_reject = || Pdu::ScsiCommand(c.clone());
        if !c.immediate && !self.accept_cmd_sn(c.cmd_sn) {
            tracing::debug!(
                cmd_sn = c.cmd_sn.0,
                exp = self.exp_cmd_sn.0,
                max = self.max_cmd_sn.0,
                "SCSI Command outside the CmdSN window dropped (RFC 7143 §4.2.2.1)"
            );
            return;
        }
        if self.logout.is_some() {
            return self.reject_pdu(RejectReason::WAITING_FOR_LOGOUT, &pdu_for_reject());
        }
        if c.immediate && self.tasks.values().filter(|t| t.immediate).count() >= MAX_IMMEDIATE {
            // Immediate commands bypass the window; bound them (§11.17.1 reason 6).
            return self.reject_pdu(RejectReason::IMMEDIATE_COMMAND_REJECT, &pdu_for_reject());
        }
        if self.tasks.contains_key(&c.itt) || c.itt == NO_TAG {
            // §11.2.1.8: the ITT identifies one task; reusing a live one is an error.
            return self.reject_pdu(RejectReason::INVALID_PDU_FIELD, &pdu_for_reject());
        }
        let edtl = c.expected_data_transfer_length;
        let imm_len = c.data.len() as u32;
        if imm_len > 0 {
            if !c.write {
                return self.violation(
                    &pdu_for_reject(),
                    "data segment on a command without the W bit (RFC 7143 §11.4.1)".into(),
                );
            }
            if !self.params.immediate_data {
                return self.violation(
                    &pdu_for_reject(),
                    "immediate data although ImmediateData=No (RFC 7143 §13.11)".into(),
                );
            }
            if imm_len > self.params.first_burst_length || imm_len > edtl {
                return self.violation(
                    &pdu_for_reject(),
                    format!(
                        "{imm_len} bytes of immediate data, over FirstBurstLength {} or the expected length {edtl} (RFC 7143 §13.14)",
                        self.params.first_burst_length
                    ),
                );
            }
        }
        let write_len = if c.write { edtl } else { 0 };
        let read_len = if c.read { edtl } else { 0 };
        let mut task = Task {
            lun: c.lun,
            cdb: c.cdb.clone(),
            attr: c.attr,
            cmd_sn: c.cmd_sn,
            immediate: c.immediate,
            read_len,
            write_len,
            state: TaskState::Executing,
            aborted: false,
            r2ts_sent: 0,
        };
        if write_len > self.cfg.max_write_len {
            // Refuse before buffering anything; stray Data-Out for it is then ignored.
            self.tasks.insert(c.itt, task);
            let sense = invalid_field_sense();
            self.finish(
                c.itt,
                ScsiOutcome {
                    status: ScsiStatus::CHECK_CONDITION,
                    sense: Bytes::from(sense),
                    ..Default::default()
                },
            );
            return;
        }
        if write_len > 0 {
            let ws = WriteState::new(&self.params, write_len, c.data.clone(), !c.final_);
            task.state = TaskState::Collecting(Box::new(ws));
        }
        self.tasks.insert(c.itt, task);
        self.advance_write(c.itt);
    }

    /// Send R2Ts a write may have now, and hand it over once all data is in.
    fn advance_write(&mut self, itt: u32) {
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        let TaskState::Collecting(ws) = &mut task.state else {
            self.waiting_order.push(itt);
            return;
        };
        let mut r2ts = Vec::new();
        while let Some((offset, len)) = ws.next_r2t(&self.params) {
            // (Not take_ttt: `task` borrows self.tasks.)
            let ttt = next_tag(&mut self.next_ttt);
            let r2t_sn = ws.add_r2t(ttt, offset, len);
            r2ts.push((ttt, offset, len, r2t_sn));
        }
        task.r2ts_sent += r2ts.len() as u32;
        let lun = task.lun;
        let complete = ws.is_complete();
        for (ttt, offset, len, r2t_sn) in r2ts {
            self.outq.push_back(Pdu::R2t(crate::pdu::R2t {
                lun,
                itt,
                ttt,
                stat_sn: self.stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn,
                r2t_sn,
                buffer_offset: offset,
                desired_data_transfer_length: len,
            }));
        }
        if complete {
            self.waiting_order.push(itt);
        }
    }

    /// Hand ready commands to the SCSI layer, in CmdSN order for non-immediate ones.
    fn release_ordered(&mut self) {
        if self.waiting_order.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.waiting_order);
        ready.sort_by(|a, b| {
            let (ta, tb) = (&self.tasks[a], &self.tasks[b]);
            if ta.cmd_sn.lt(tb.cmd_sn) {
                std::cmp::Ordering::Less
            } else if ta.cmd_sn == tb.cmd_sn {
                std::cmp::Ordering::Equal
            } else {
                std::cmp::Ordering::Greater
            }
        });
        // Earliest CmdSN still missing before which everything has arrived.
        let first_gap = self.ahead.iter().next().map(|_| self.exp_cmd_sn);
        for itt in ready {
            let Some(task) = self.tasks.get_mut(&itt) else {
                continue;
            };
            if !task.immediate && first_gap.is_some_and(|gap| task.cmd_sn.gt(gap)) {
                self.waiting_order.push(itt);
                continue;
            }
            let data_out = match std::mem::replace(&mut task.state, TaskState::Executing) {
                TaskState::Collecting(ws) => ws.into_data(),
                TaskState::Executing => Bytes::new(),
            };
            self.events.push_back(TargetEvent::Execute(ScsiTask {
                itt,
                lun: task.lun,
                cdb: task.cdb.clone(),
                attr: task.attr,
                cmd_sn: task.cmd_sn,
                read_len: task.read_len,
                write_len: task.write_len,
                data_out,
            }));
        }
    }

    fn data_out(&mut self, d: crate::pdu::DataOut) {
        if self.failed_writes.contains(&d.itt) {
            // The rest of a write we already failed: nothing of it is kept.
            return;
        }
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            if d.ttt == NO_TAG {
                // Unsolicited data for a command already answered (refused or aborted).
                tracing::debug!(itt = d.itt, "unsolicited Data-Out for no live task ignored");
                return;
            }
            let p = Pdu::DataOut(d);
            return self.reject_pdu(RejectReason::INVALID_PDU_FIELD, &p);
        };
        let TaskState::Collecting(ws) = &mut task.state else {
            if d.ttt == NO_TAG && task.aborted {
                return;
            }
            let p = Pdu::DataOut(d);
            return self.reject_pdu(RejectReason::INVALID_PDU_FIELD, &p);
        };
        match ws.accept(&d) {
            Ok(()) => {
                let itt = d.itt;
                self.advance_write(itt);
            }
            Err(why) => {
                // The write fails as a whole and nothing of it reaches the medium; the
                // connection goes on (ERL 0 cannot recover the data, but the initiator
                // learns which command failed). Later Data-Out for it is dropped.
                tracing::debug!(itt = d.itt, %why, "write failed on a bad Data-Out");
                self.failed_writes.push_back(d.itt);
                if self.failed_writes.len() > 64 {
                    self.failed_writes.pop_front();
                }
                let sense = data_phase_error_sense();
                if let Some(t) = self.tasks.get_mut(&d.itt) {
                    t.state = TaskState::Executing;
                }
                self.finish(
                    d.itt,
                    ScsiOutcome {
                        status: ScsiStatus::CHECK_CONDITION,
                        sense: Bytes::from(sense),
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// The SCSI layer's outcome for an [`TargetEvent::Execute`]d task.
    pub fn complete(&mut self, itt: u32, outcome: ScsiOutcome) {
        let aborted = match self.tasks.get(&itt) {
            Some(t) => t.aborted,
            None => return,
        };
        if aborted {
            self.tasks.remove(&itt);
            self.tmf_progress(itt);
        } else if !self.closed {
            self.finish(itt, outcome);
        } else {
            self.tasks.remove(&itt);
        }
        self.maybe_logout_response();
        self.update_window();
    }

    /// Send Data-In and the status for a task, and forget it.
    fn finish(&mut self, itt: u32, outcome: ScsiOutcome) {
        let Some(task) = self.tasks.remove(&itt) else {
            return;
        };
        let mrdsl = self.params.max_xmit_data_segment_length.max(512) as usize;
        let mbl = self.params.max_burst_length.max(512) as usize;
        let data = outcome.data;
        let edtl = task.read_len as usize;
        let send = data.len().min(edtl);
        // §11.4.5: residuals against ExpectedDataTransferLength. For a write, what the
        // CDB asked to transfer against what the initiator said it would send; for
        // anything else, the data produced against the read length.
        let (over, under, residual) = match outcome.write_len_needed {
            Some(need) if need > task.write_len => (true, false, need - task.write_len),
            Some(need) => (false, need < task.write_len, task.write_len - need),
            None if data.len() > edtl => (true, false, (data.len() - edtl) as u32),
            None if task.read_len > 0 => (false, edtl > data.len(), (edtl - data.len()) as u32),
            None => (false, false, 0),
        };
        // Status rides on the last Data-In when there is no sense to send (§11.7.4).
        let collapse = send > 0 && outcome.sense.is_empty();
        let mut off = 0usize;
        let mut data_sn = 0u32;
        let mut burst = 0usize;
        while off < send {
            let n = mrdsl.min(send - off).min(mbl - burst);
            burst += n;
            let last = off + n == send;
            let end_of_burst = last || burst == mbl;
            let status_here = last && collapse;
            let stat_sn = if status_here {
                self.status_sn()
            } else {
                SerialNumber(0)
            };
            self.outq.push_back(Pdu::DataIn(DataIn {
                final_: end_of_burst,
                ack: false,
                overflow: status_here && over,
                underflow: status_here && under,
                status_present: status_here,
                status: if status_here {
                    outcome.status
                } else {
                    ScsiStatus::GOOD
                },
                lun: task.lun,
                itt,
                ttt: NO_TAG,
                stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn,
                data_sn,
                buffer_offset: off as u32,
                residual_count: if status_here { residual } else { 0 },
                data: data.slice(off..off + n),
            }));
            data_sn += 1;
            off += n;
            if end_of_burst {
                burst = 0;
            }
        }
        if !collapse {
            let stat_sn = self.status_sn();
            let exp_data_sn = if task.write_len > 0 {
                task.r2ts_sent
            } else {
                data_sn
            };
            self.outq.push_back(Pdu::ScsiResponse(ScsiResponse {
                bidi_overflow: false,
                bidi_underflow: false,
                overflow: over,
                underflow: under,
                response: ServiceResponse::COMPLETED,
                status: outcome.status,
                itt,
                snack_tag: 0,
                stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn,
                exp_data_sn,
                bidi_read_residual_count: 0,
                residual_count: if over || under { residual } else { 0 },
                data: if outcome.sense.is_empty() {
                    Bytes::new()
                } else {
                    ScsiResponse::sense_segment(&outcome.sense)
                },
            }));
        }
    }

    fn nop_out(&mut self, n: NopOut) {
        if n.ttt != NO_TAG {
            // An answer to our ping (§11.18: ITT 0xffffffff, our TTT).
            if self.ping.is_some_and(|(t, _)| t == n.ttt) {
                self.ping = None;
            }
            return;
        }
        if n.itt == NO_TAG {
            // Just an ExpStatSN update; must be immediate (§11.18).
            return;
        }
        if !n.immediate && !self.accept_cmd_sn(n.cmd_sn) {
            return;
        }
        // A ping: echo its data (§11.19); StatSN advances because ITT is set.
        let stat_sn = self.status_sn();
        self.outq.push_back(Pdu::NopIn(NopIn {
            lun: n.lun,
            itt: n.itt,
            ttt: NO_TAG,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            data: n.data,
        }));
    }

    fn tmf(&mut self, t: TaskMgmtRequest) {
        if !t.immediate && !self.accept_cmd_sn(t.cmd_sn) {
            return;
        }
        let mut close_after = false;
        let (response, affected): (TmfResponse, Vec<u32>) = match t.function {
            TmfFunction::ABORT_TASK => {
                let hit = self
                    .tasks
                    .get(&t.referenced_task_tag)
                    .is_some_and(|task| task.lun == t.lun);
                if hit {
                    (TmfResponse::COMPLETE, vec![t.referenced_task_tag])
                } else {
                    (TmfResponse::TASK_DOES_NOT_EXIST, Vec::new())
                }
            }
            TmfFunction::ABORT_TASK_SET
            | TmfFunction::CLEAR_TASK_SET
            | TmfFunction::LOGICAL_UNIT_RESET => {
                let v = self
                    .tasks
                    .iter()
                    .filter(|(_, task)| task.lun == t.lun)
                    .map(|(itt, _)| *itt)
                    .collect();
                (TmfResponse::COMPLETE, v)
            }
            TmfFunction::TARGET_WARM_RESET | TmfFunction::TARGET_COLD_RESET => {
                close_after = t.function == TmfFunction::TARGET_COLD_RESET;
                (TmfResponse::COMPLETE, self.tasks.keys().copied().collect())
            }
            TmfFunction::TASK_REASSIGN => (TmfResponse::REASSIGNMENT_NOT_SUPPORTED, Vec::new()),
            TmfFunction::CLEAR_ACA => (TmfResponse::NOT_SUPPORTED, Vec::new()),
            _ => (TmfResponse::REJECTED, Vec::new()),
        };
        if response == TmfResponse::COMPLETE
            && matches!(
                t.function,
                TmfFunction::CLEAR_TASK_SET
                    | TmfFunction::LOGICAL_UNIT_RESET
                    | TmfFunction::TARGET_WARM_RESET
                    | TmfFunction::TARGET_COLD_RESET
            )
        {
            self.events.push_back(TargetEvent::Reset {
                function: t.function,
                lun: t.lun,
            });
        }
        let mut waiting = BTreeSet::new();
        for itt in affected {
            let Some(task) = self.tasks.get_mut(&itt) else {
                continue;
            };
            match task.state {
                TaskState::Collecting(_) => {
                    // Never reached the SCSI layer: gone at once.
                    self.tasks.remove(&itt);
                    self.waiting_order.retain(|i| *i != itt);
                }
                TaskState::Executing if self.waiting_order.contains(&itt) => {
                    self.tasks.remove(&itt);
                    self.waiting_order.retain(|i| *i != itt);
                }
                TaskState::Executing => {
                    // Running: its outcome is dropped; answer the TMF once it is back,
                    // so a write the TMF "aborted" cannot land after the response.
                    task.aborted = true;
                    waiting.insert(itt);
                }
            }
        }
        self.tmfs.push(PendingTmf {
            itt: t.itt,
            response,
            waiting,
            close_after,
        });
        self.tmf_progress(NO_TAG);
    }

    /// An aborted task came back (or a TMF was queued): send the TMF responses whose
    /// tasks are all gone.
    fn tmf_progress(&mut self, done_itt: u32) {
        for p in &mut self.tmfs {
            p.waiting.remove(&done_itt);
        }
        let (ready, rest): (Vec<PendingTmf>, Vec<PendingTmf>) = std::mem::take(&mut self.tmfs)
            .into_iter()
            .partition(|p| p.waiting.is_empty());
        self.tmfs = rest;
        for p in ready {
            let stat_sn = self.status_sn();
            self.outq.push_back(Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: p.response,
                itt: p.itt,
                stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn,
            }));
            if p.close_after {
                // §11.5.1: after TARGET COLD RESET the target drops all connections.
                self.close("TARGET COLD RESET".into());
            }
        }
    }

    fn text_request(&mut self, t: TextRequest) {
        if !t.immediate && !self.accept_cmd_sn(t.cmd_sn) {
            return;
        }
        if t.continue_ && t.final_ {
            let p = Pdu::TextRequest(t);
            return self.violation(
                &p,
                "Text Request with both C and F set (RFC 7143 §11.10.2)".into(),
            );
        }
        if t.ttt != NO_TAG {
            // The initiator asks for the next part of our long response.
            match &mut self.text_reply {
                Some(r) if r.ttt == t.ttt && r.itt == t.itt => {
                    let rest = std::mem::take(&mut r.rest);
                    self.text_reply = None;
                    self.send_text(t.itt, rest);
                }
                _ => {
                    let p = Pdu::TextRequest(t);
                    self.reject_pdu(RejectReason::INVALID_PDU_FIELD, &p);
                }
            }
            return;
        }
        self.text_reply = None;
        if let Err(e) = self.text.push(&t.data) {
            let p = Pdu::TextRequest(t);
            return self.violation(&p, e.to_string());
        }
        if t.continue_ {
            // Acknowledge and wait for the rest (§11.10.2).
            let stat_sn = self.status_sn();
            let ttt = self.take_ttt();
            self.outq.push_back(Pdu::TextResponse(TextResponse {
                final_: false,
                continue_: false,
                lun: t.lun,
                itt: t.itt,
                ttt,
                stat_sn,
                exp_cmd_sn: self.exp_cmd_sn,
                max_cmd_sn: self.max_cmd_sn,
                data: Bytes::new(),
            }));
            return;
        }
        match self.text.finish() {
            Ok(pairs) => self
                .events
                .push_back(TargetEvent::Text { itt: t.itt, pairs }),
            Err(e) => {
                let p = Pdu::TextRequest(t);
                self.violation(&p, e.to_string());
            }
        }
    }

    /// Answer a [`TargetEvent::Text`]; long answers go out in parts (§11.11: C bit).
    pub fn respond_text(&mut self, itt: u32, pairs: &[(String, String)]) {
        let text = Bytes::from(encode_pairs(pairs));
        self.send_text(itt, text);
    }

    fn send_text(&mut self, itt: u32, text: Bytes) {
        let max = self.params.max_xmit_data_segment_length.max(512) as usize;
        let more = text.len() > max;
        let (now_part, rest) = if more {
            (text.slice(..max), text.slice(max..))
        } else {
            (text, Bytes::new())
        };
        let ttt = if more { self.take_ttt() } else { NO_TAG };
        let stat_sn = self.status_sn();
        self.outq.push_back(Pdu::TextResponse(TextResponse {
            final_: !more,
            continue_: more,
            lun: Lun(0),
            itt,
            ttt,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            data: now_part,
        }));
        if more {
            self.text_reply = Some(TextReply { itt, ttt, rest });
        }
    }

    fn logout_request(&mut self, l: LogoutRequest) {
        if !l.immediate && !self.accept_cmd_sn(l.cmd_sn) {
            return;
        }
        self.logout = Some(l);
        self.logout_deadline = None;
        self.maybe_logout_response();
    }

    /// Answer the Logout Request once no task is running (so every acknowledged write is
    /// on the backend before the session ends).
    fn maybe_logout_response(&mut self) {
        let Some(l) = &self.logout else { return };
        if self
            .tasks
            .values()
            .any(|t| matches!(t.state, TaskState::Executing))
        {
            return;
        }
        let itt = l.itt;
        self.logout = None;
        // Writes still gathering data never reached the medium; drop them.
        self.tasks.clear();
        let stat_sn = self.status_sn();
        self.outq.push_back(Pdu::LogoutResponse(LogoutResponse {
            response: LogoutResponseCode::SUCCESS,
            itt,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            time2wait: 0,
            time2retain: 0,
        }));
        self.close("initiator logged out".into());
    }

    /// Ask the initiator to log out within `within` seconds (Async event 1, §11.9.1);
    /// close the connection if it has not by then (plus a grace second).
    pub fn request_logout(&mut self, now: Instant, within: u16) {
        if self.closed {
            return;
        }
        let stat_sn = self.status_sn();
        self.outq.push_back(Pdu::AsyncMessage(AsyncMessage {
            lun: Lun(0),
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
            event: AsyncEvent::LOGOUT_REQUEST,
            vcode: 0,
            parameter1: 0,
            parameter2: 0,
            parameter3: within,
            data: Bytes::new(),
        }));
        self.logout_deadline = Some(now + Duration::from_secs(u64::from(within) + 1));
    }

    /// Tell the initiator all active tasks for `lun` were terminated (Async event 5), as
    /// after a reset from another session.
    pub fn abort_lun_tasks(&mut self, lun: Lun) {
        let itts: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.lun == lun)
            .map(|(i, _)| *i)
            .collect();
        for itt in itts {
            if let Some(t) = self.tasks.get_mut(&itt) {
                if matches!(t.state, TaskState::Collecting(_)) {
                    self.tasks.remove(&itt);
                } else {
                    t.aborted = true;
                }
            }
            self.waiting_order.retain(|i| *i != itt);
        }
    }
}

/// ABORTED COMMAND, DATA PHASE ERROR (0x4b/0x00), fixed format: a write whose
/// Data-Out broke the sequence rules.
fn data_phase_error_sense() -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = 0x0b;
    s[7] = 10;
    s[12] = 0x4b;
    s
}

/// Hand out a Target Transfer Tag: never 0xffffffff (reserved, §11.2.1.8), never 0.
fn next_tag(next: &mut u32) -> u32 {
    let t = *next;
    *next = next.wrapping_add(1);
    if *next == NO_TAG {
        *next = 1;
    }
    t
}

/// ILLEGAL REQUEST, INVALID FIELD IN CDB, fixed format.
fn invalid_field_sense() -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = 0x05;
    s[7] = 10;
    s[12] = 0x24;
    s
}

#[cfg(test)]
mod tests;
