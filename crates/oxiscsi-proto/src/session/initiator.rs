//! The initiator's full-feature-phase connection (RFC 7143 §4, §7 at ErrorRecoveryLevel
//! 0, §11): a sans-IO state machine in the shape of quinn-proto's `Connection`.
//!
//! Call order for a driver:
//! 1. [`InitiatorConnection::new`] with the [`LoginOutcome`];
//! 2. feed every received PDU to [`handle_pdu`](InitiatorConnection::handle_pdu) (or a
//!    framing failure to [`handle_frame_error`](InitiatorConnection::handle_frame_error));
//!    submit work with [`submit`](InitiatorConnection::submit),
//!    [`submit_tmf`](InitiatorConnection::submit_tmf), [`send_text`](InitiatorConnection::send_text),
//!    [`logout`](InitiatorConnection::logout);
//! 3. after each input: drain [`poll_transmit`](InitiatorConnection::poll_transmit) to the
//!    socket and [`poll_event`](InitiatorConnection::poll_event) to callers, then sleep
//!    until [`poll_timeout`](InitiatorConnection::poll_timeout) and call
//!    [`handle_timeout`](InitiatorConnection::handle_timeout).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{ProtocolError, TaskError};
use super::tags::TagTable;
use super::task::{
    data_out_sequence, unsolicited_plan, Command, Residual, ScsiResult, Task, TaskKind,
    UNSOLICITED_TTT,
};
use super::timers::{Timer, TimerTable};
use super::window::CmdWindow;
use crate::digest::Digest;
use crate::login::LoginOutcome;
use crate::pdu::codec::FrameError;
use crate::pdu::*;
use crate::serial::SerialNumber;
use crate::text::{encode_pairs, parse_pairs};

/// Timers and limits of a connection. Defaults follow open-iscsi's iscsid.conf
/// (noop_out_interval 5, noop_out_timeout 5, cmds_max 128) and the SCSI layer's 30 s
/// command timeout.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Ping the target after this long without receiving anything; `None` disables.
    pub nop_interval: Option<Duration>,
    pub nop_timeout: Duration,
    pub task_timeout: Duration,
    pub abort_timeout: Duration,
    pub logout_timeout: Duration,
    pub queue_depth: usize,
    /// Upper bound for text a target sends in answer to one Text Request.
    pub max_text_response: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            nop_interval: Some(Duration::from_secs(5)),
            nop_timeout: Duration::from_secs(5),
            task_timeout: Duration::from_secs(30),
            abort_timeout: Duration::from_secs(15),
            logout_timeout: Duration::from_secs(15),
            queue_depth: 128,
            max_text_response: 1 << 20,
        }
    }
}

/// Identifies a task (it is the task's ITT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId(pub u32);

/// What the connection tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A SCSI command ended.
    Completed {
        id: TaskId,
        result: Result<ScsiResult, TaskError>,
    },
    /// A task management function ended.
    TmfCompleted { id: TaskId, response: TmfResponse },
    /// A text exchange ended.
    TextCompleted {
        id: TaskId,
        result: Result<Vec<(String, String)>, TaskError>,
    },
    /// An asynchronous SCSI event or a vendor event (§11.9).
    Async {
        event: AsyncEvent,
        lun: Lun,
        sense: Bytes,
        parameters: [u16; 3],
    },
    /// The target asked us to log out (Async event 1); we drain and log out by then.
    LogoutRequested { within: Duration },
    /// Logout finished; the connection is closed.
    LoggedOut {
        response: LogoutResponseCode,
        time2wait: u16,
        time2retain: u16,
    },
    /// The connection failed and must be closed.
    Failed(ProtocolError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    /// Target requested logout: no new commands, log out once in-flight ones end.
    Draining,
    LoggingOut {
        sent: bool,
    },
    Closed,
}

/// How many ended task tags to remember, so late PDUs for tasks we gave up on (aborts,
/// timeouts) are dropped rather than treated as unknown.
const RECENT: usize = 512;
/// Room after a discarded payload in the scratch buffer: padding (3), data digest (4) and
/// the next header with its AHS room and digest, read together with the payload.
const SCRATCH_SLACK: usize = 256;

/// An initiator connection in the full feature phase.
pub struct InitiatorConnection {
    cfg: ConnectionConfig,
    params: crate::text::OperationalParams,
    rx: Framer,
    cid: u16,
    window: CmdWindow,
    exp_stat_sn: SerialNumber,
    tasks: TagTable<Task>,
    /// Tasks waiting for the command window, in submission order.
    queue: VecDeque<u32>,
    next_itt: u32,
    outq: VecDeque<Pdu>,
    events: VecDeque<Event>,
    timers: TimerTable,
    state: State,
    nop_itt: Option<u32>,
    logout_itt: Option<u32>,
    recent: VecDeque<u32>,
    stats: super::stats::ConnStats,
    /// Where the payloads of discarding reads are placed, one after another (one buffer
    /// for all of them, so it stays in cache).
    scratch: bytes::BytesMut,
}

impl std::fmt::Debug for InitiatorConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorConnection")
            .field("state", &self.state)
            .field("window", &self.window)
            .field("exp_stat_sn", &self.exp_stat_sn)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

impl InitiatorConnection {
    pub fn new(login: &LoginOutcome, cfg: ConnectionConfig, now: Instant) -> Self {
        let params = login.params.clone();
        let rx = Framer {
            header_digest: params.header_digest,
            data_digest: params.data_digest,
            max_recv_data_segment: params.max_recv_data_segment_length,
        };
        let mut timers = TimerTable::default();
        if let Some(i) = cfg.nop_interval {
            timers.set(Timer::NopInterval, now + i);
        }
        InitiatorConnection {
            window: CmdWindow::new(login.cmd_sn, login.exp_cmd_sn, login.max_cmd_sn),
            exp_stat_sn: login.exp_stat_sn,
            cid: login.cid,
            cfg,
            params,
            rx,
            tasks: TagTable::default(),
            queue: VecDeque::new(),
            next_itt: 0x100,
            outq: VecDeque::new(),
            events: VecDeque::new(),
            timers,
            state: State::Active,
            nop_itt: None,
            logout_itt: None,
            recent: VecDeque::new(),
            stats: super::stats::ConnStats::default(),
            scratch: bytes::BytesMut::new(),
        }
    }

    /// Framing for received bytes (our digests and MaxRecvDataSegmentLength).
    pub fn rx_framer(&self) -> Framer {
        self.rx
    }

    /// Digests to apply to PDUs we send.
    pub fn tx_digests(&self) -> (Digest, Digest) {
        (self.params.header_digest, self.params.data_digest)
    }

    pub fn params(&self) -> &crate::text::OperationalParams {
        &self.params
    }

    pub fn config(&self) -> &ConnectionConfig {
        &self.cfg
    }

    pub fn window(&self) -> CmdWindow {
        self.window
    }

    pub fn exp_stat_sn(&self) -> SerialNumber {
        self.exp_stat_sn
    }

    /// Tasks in the table (sent or waiting for the window).
    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True once no new commands are accepted (logout requested or under way).
    pub fn is_draining(&self) -> bool {
        !matches!(self.state, State::Active)
    }

    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        let pdu = self.outq.pop_front()?;
        self.stats.sent(&pdu);
        Some(pdu)
    }

    /// Counters since login (PDUs by opcode, data octets, digest and timeout errors).
    pub fn stats(&self) -> super::stats::ConnStats {
        self.stats
    }

    /// Count the login exchange (which the login core ran before this connection
    /// existed) so the totals cover the whole connection.
    pub fn count_login_pdus(&mut self, n: u64) {
        self.stats.login_pdus += n;
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        self.timers.next_timeout()
    }

    fn alloc_itt(&mut self) -> u32 {
        loop {
            let itt = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt != RESERVED_TAG && !self.tasks.contains_key(&itt) && Some(itt) != self.nop_itt {
                return itt;
            }
        }
    }

    fn remember(&mut self, itt: u32) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(itt);
    }

    fn ensure_task_check(&mut self, now: Instant) {
        if self.timers.get(Timer::TaskCheck).is_none() {
            self.timers
                .set(Timer::TaskCheck, now + Duration::from_secs(1));
        }
    }

    /// Submit a SCSI command. It is sent at once when the command window is open, else
    /// when the target opens it.
    pub fn submit(&mut self, now: Instant, cmd: Command) -> Result<TaskId, TaskError> {
        if self.state != State::Active {
            return Err(TaskError::LoggingOut);
        }
        if cmd.cdb.is_empty() || cmd.cdb.len() > 260 {
            return Err(TaskError::TooLarge(format!(
                "CDB of {} bytes (1 to 260 allowed)",
                cmd.cdb.len()
            )));
        }
        if cmd.data_out.len() > u32::MAX as usize {
            return Err(TaskError::TooLarge(format!(
                "{} bytes of write data",
                cmd.data_out.len()
            )));
        }
        let itt = self.alloc_itt();
        let deadline = now + cmd.timeout.unwrap_or(self.cfg.task_timeout);
        self.tasks
            .insert_with(itt, || Task::new(itt, TaskKind::Scsi, cmd, Some(deadline)));
        self.queue.push_back(itt);
        self.ensure_task_check(now);
        self.flush_queue();
        Ok(TaskId(itt))
    }

    /// Start a text exchange (e.g. `SendTargets=All`, §13.3) and collect the answer.
    pub fn send_text(
        &mut self,
        now: Instant,
        pairs: &[(String, String)],
    ) -> Result<TaskId, TaskError> {
        if self.state != State::Active {
            return Err(TaskError::LoggingOut);
        }
        let text = encode_pairs(pairs);
        if text.len() > self.params.max_xmit_data_segment_length as usize {
            return Err(TaskError::TooLarge(format!(
                "text of {} bytes exceeds the target's MaxRecvDataSegmentLength",
                text.len()
            )));
        }
        let itt = self.alloc_itt();
        let cmd = Command::new(Lun(0), vec![0u8]).with_data_out(Bytes::from(text));
        let deadline = now + self.cfg.task_timeout;
        self.tasks.insert(
            itt,
            Task::new(itt, TaskKind::Text { internal: false }, cmd, Some(deadline)),
        );
        self.queue.push_back(itt);
        self.ensure_task_check(now);
        self.flush_queue();
        Ok(TaskId(itt))
    }

    /// Send a task management function (immediate, §11.5). For ABORT TASK, `referenced`
    /// names the task.
    pub fn submit_tmf(
        &mut self,
        now: Instant,
        function: TmfFunction,
        lun: Lun,
        referenced: Option<TaskId>,
    ) -> Result<TaskId, TaskError> {
        if self.state == State::Closed {
            return Err(TaskError::LoggingOut);
        }
        if function == TmfFunction::ABORT_TASK {
            if let Some(r) = referenced {
                // Not yet sent: abort locally, nothing to tell the target.
                if self.tasks.get(&r.0).is_some_and(|t| t.cmd_sn.is_none()) {
                    self.queue.retain(|i| *i != r.0);
                    self.tasks.remove(&r.0);
                    self.events.push_back(Event::Completed {
                        id: r,
                        result: Err(TaskError::Aborted),
                    });
                    let id = self.alloc_itt();
                    self.events.push_back(Event::TmfCompleted {
                        id: TaskId(id),
                        response: TmfResponse::COMPLETE,
                    });
                    return Ok(TaskId(id));
                }
            }
        }
        Ok(TaskId(self.send_tmf(
            now,
            function,
            lun,
            referenced.map(|t| t.0),
            false,
        )))
    }

    fn send_tmf(
        &mut self,
        now: Instant,
        function: TmfFunction,
        lun: Lun,
        referenced: Option<u32>,
        internal: bool,
    ) -> u32 {
        let itt = self.alloc_itt();
        let (ref_cmd_sn, exp_data_sn) = match referenced.and_then(|r| self.tasks.get(&r)) {
            Some(t) => (t.cmd_sn.unwrap_or(self.window.cmd_sn), t.next_data_sn),
            None => (self.window.cmd_sn, 0),
        };
        let mut cmd = Command::new(lun, vec![0u8]);
        cmd.timeout = Some(self.cfg.abort_timeout);
        let mut task = Task::new(
            itt,
            TaskKind::Tmf {
                function,
                referenced,
                internal,
            },
            cmd,
            None,
        );
        task.cmd_sn = Some(self.window.cmd_sn);
        task.aborting = Some((itt, now + self.cfg.abort_timeout));
        self.tasks.insert(itt, task);
        self.ensure_task_check(now);
        self.outq.push_back(Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function,
            lun,
            itt,
            referenced_task_tag: referenced.unwrap_or(RESERVED_TAG),
            cmd_sn: self.window.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn,
        }));
        itt
    }

    /// Log out (close the session, §11.14) once in-flight commands have ended; commands
    /// still waiting for the window fail with [`TaskError::LoggingOut`].
    pub fn logout(&mut self, now: Instant) {
        if matches!(self.state, State::LoggingOut { .. } | State::Closed) {
            return;
        }
        self.state = State::LoggingOut { sent: false };
        let waiting: Vec<u32> = self.queue.drain(..).collect();
        for itt in waiting {
            if let Some(t) = self.tasks.remove(&itt) {
                self.complete_unsent(t, TaskError::LoggingOut);
            }
        }
        self.timers
            .set(Timer::Logout, now + self.cfg.logout_timeout);
        self.maybe_send_logout();
    }

    fn complete_unsent(&mut self, t: Task, err: TaskError) {
        let id = TaskId(t.itt);
        match t.kind {
            TaskKind::Scsi => self.events.push_back(Event::Completed {
                id,
                result: Err(err),
            }),
            TaskKind::Text { internal: false } => self.events.push_back(Event::TextCompleted {
                id,
                result: Err(err),
            }),
            _ => {}
        }
    }

    fn maybe_send_logout(&mut self) {
        let State::LoggingOut { sent: false } = self.state else {
            return;
        };
        if self.tasks.values().any(|t| t.cmd_sn.is_some()) {
            return;
        }
        let itt = self.alloc_itt();
        self.logout_itt = Some(itt);
        self.state = State::LoggingOut { sent: true };
        self.outq.push_back(Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: LogoutReason::CLOSE_SESSION,
            itt,
            cid: self.cid,
            cmd_sn: self.window.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        }));
    }

    /// Send queued commands while the window is open.
    fn flush_queue(&mut self) {
        while let Some(&itt) = self.queue.front() {
            if !self.window.is_open() {
                break;
            }
            self.queue.pop_front();
            self.send_command(itt);
        }
    }

    fn send_command(&mut self, itt: u32) {
        let cmd_sn = self.window.take();
        let exp_stat_sn = self.exp_stat_sn;
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        task.cmd_sn = Some(cmd_sn);
        match task.kind {
            TaskKind::Scsi => {
                let write_len = task.cmd.data_out.len() as u32;
                let read = task.cmd.read_length > 0;
                let write = write_len > 0;
                let (imm, unsol_end) = if write {
                    unsolicited_plan(&self.params, write_len)
                } else {
                    (0, 0)
                };
                let edtl = if write {
                    write_len
                } else {
                    task.cmd.read_length
                };
                self.outq.push_back(Pdu::ScsiCommand(ScsiCommand {
                    immediate: false,
                    // §11.3.1: F is set when no unsolicited Data-Out follows.
                    final_: unsol_end == imm,
                    read,
                    write,
                    attr: task.cmd.attr,
                    lun: task.cmd.lun,
                    itt,
                    expected_data_transfer_length: edtl,
                    cmd_sn,
                    exp_stat_sn,
                    cdb: task.cmd.cdb.clone(),
                    bidi_read_length: (read && write).then_some(task.cmd.read_length),
                    data: task.cmd.data_out.slice(..imm as usize),
                }));
                if unsol_end > imm {
                    let mxdsl = self.params.max_xmit_data_segment_length;
                    for d in data_out_sequence(
                        task,
                        UNSOLICITED_TTT,
                        imm,
                        unsol_end - imm,
                        mxdsl,
                        exp_stat_sn,
                    ) {
                        self.outq.push_back(Pdu::DataOut(d));
                    }
                }
            }
            TaskKind::Text { .. } => {
                self.outq.push_back(Pdu::TextRequest(TextRequest {
                    immediate: false,
                    final_: true,
                    continue_: false,
                    lun: Lun(0),
                    itt,
                    ttt: RESERVED_TAG,
                    cmd_sn,
                    exp_stat_sn,
                    data: task.cmd.data_out.clone(),
                }));
            }
            TaskKind::Tmf { .. } => {}
        }
    }

    /// The connection failed: every task ends with `ConnectionLost` and one `Failed`
    /// event is emitted.
    fn fail(&mut self, err: ProtocolError) {
        if self.state == State::Closed {
            return;
        }
        tracing::debug!(error = %err, "connection failed");
        self.state = State::Closed;
        self.outq.clear();
        self.queue.clear();
        let msg = err.to_string();
        let tasks: Vec<Task> = self.tasks.drain().map(|(_, t)| t).collect();
        for t in tasks {
            self.complete_unsent(t, TaskError::ConnectionLost(msg.clone()));
        }
        self.events.push_back(Event::Failed(err));
    }

    /// The driver saw the socket close or fail.
    pub fn handle_closed(&mut self, why: &str) {
        self.fail(ProtocolError::Closed(why.to_string()));
    }

    /// Bytes could not be framed or decoded. At ErrorRecoveryLevel 0 every such error is
    /// a connection failure (§7.1.4, §7.8); PDUs are never half-applied.
    pub fn handle_frame_error(&mut self, err: FrameError) {
        self.stats.decode_error(&err.error);
        self.fail(ProtocolError::Decode(err));
    }

    /// StatSN of a status-carrying PDU must be the next one (§4.2.2.2); older values are
    /// duplicates and ignored.
    fn check_stat_sn(&mut self, opcode: Opcode, sn: SerialNumber) -> Result<(), ProtocolError> {
        if sn == self.exp_stat_sn {
            self.exp_stat_sn = sn.next();
            Ok(())
        } else if sn.gt(self.exp_stat_sn) {
            Err(ProtocolError::StatSnGap {
                opcode,
                expected: self.exp_stat_sn,
                got: sn,
            })
        } else {
            tracing::debug!(%opcode, %sn, expected = %self.exp_stat_sn, "stale StatSN ignored");
            Ok(())
        }
    }

    /// Lenient form for Reject and Async Message, whose StatSN handling varies among
    /// targets: advance when it is the next one, otherwise leave it.
    fn soft_stat_sn(&mut self, sn: SerialNumber) {
        if sn == self.exp_stat_sn {
            self.exp_stat_sn = sn.next();
        }
    }

    fn update_window(&mut self, exp: SerialNumber, max: SerialNumber) {
        self.window.update(exp, max);
        self.flush_queue();
    }

    /// Feed one received PDU.
    pub fn handle_pdu(&mut self, now: Instant, pdu: Pdu) {
        if self.state == State::Closed {
            return;
        }
        self.stats
            .received(pdu.opcode(), super::stats::pdu_data_len(&pdu));
        if let Some(i) = self.cfg.nop_interval {
            self.timers.set(Timer::NopInterval, now + i);
        }
        if let Err(e) = self.dispatch(now, pdu) {
            self.fail(e);
        }
        if self.state == State::Draining && self.tasks.values().all(|t| t.cmd_sn.is_none()) {
            self.logout(now);
        }
        self.maybe_send_logout();
    }

    fn unknown(&self, opcode: Opcode, itt: u32) -> Result<(), ProtocolError> {
        if self.recent.contains(&itt) {
            tracing::debug!(%opcode, itt, "late PDU for an ended task dropped");
            return Ok(());
        }
        Err(ProtocolError::UnknownItt { opcode, itt })
    }

    fn dispatch(&mut self, now: Instant, pdu: Pdu) -> Result<(), ProtocolError> {
        match pdu {
            Pdu::NopIn(n) => self.on_nop_in(n),
            Pdu::ScsiResponse(r) => self.on_scsi_response(r),
            Pdu::DataIn(d) => self.on_data_in(d),
            Pdu::R2t(r) => self.on_r2t(r),
            Pdu::TaskMgmtResponse(t) => self.on_tmf_response(t),
            Pdu::TextResponse(t) => self.on_text_response(t),
            Pdu::LogoutResponse(l) => self.on_logout_response(l),
            Pdu::AsyncMessage(a) => self.on_async(now, a),
            Pdu::Reject(r) => self.on_reject(now, r),
            Pdu::LoginResponse(_) => Err(ProtocolError::Unexpected {
                opcode: Opcode::LOGIN_RESPONSE,
                what: "a Login Response after login completed",
                rule: "§6",
            }),
            other => Err(ProtocolError::Unexpected {
                opcode: other.opcode(),
                what: "an initiator opcode sent by the target",
                rule: "§11.2.1.2",
            }),
        }
    }

    fn on_nop_in(&mut self, n: NopIn) -> Result<(), ProtocolError> {
        self.update_window(n.exp_cmd_sn, n.max_cmd_sn);
        if n.ttt != RESERVED_TAG {
            // §11.19: a target ping; answer with the same TTT and an immediate NOP-Out.
            let max = self.params.max_xmit_data_segment_length as usize;
            let data = if n.data.len() > max {
                n.data.slice(..max)
            } else {
                n.data
            };
            self.outq.push_back(Pdu::NopOut(NopOut {
                immediate: true,
                lun: n.lun,
                itt: RESERVED_TAG,
                ttt: n.ttt,
                cmd_sn: self.window.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data,
            }));
            return Ok(());
        }
        if n.itt == RESERVED_TAG {
            // An unsolicited window update (§11.19.1): StatSN not advanced.
            return Ok(());
        }
        if Some(n.itt) != self.nop_itt {
            return self.unknown(Opcode::NOP_IN, n.itt);
        }
        self.check_stat_sn(Opcode::NOP_IN, n.stat_sn)?;
        self.nop_itt = None;
        self.timers.stop(Timer::NopResponse);
        Ok(())
    }

    fn on_scsi_response(&mut self, r: ScsiResponse) -> Result<(), ProtocolError> {
        if !self
            .tasks
            .get(&r.itt)
            .is_some_and(|t| t.kind == TaskKind::Scsi && t.cmd_sn.is_some())
        {
            self.check_stat_sn(Opcode::SCSI_RESPONSE, r.stat_sn)?;
            self.update_window(r.exp_cmd_sn, r.max_cmd_sn);
            return self.unknown(Opcode::SCSI_RESPONSE, r.itt);
        }
        self.check_stat_sn(Opcode::SCSI_RESPONSE, r.stat_sn)?;
        let sense = r.sense()?;
        let Some(mut task) = self.tasks.remove(&r.itt) else {
            return Ok(());
        };
        let result = if r.response != ServiceResponse::COMPLETED {
            Err(TaskError::TargetFailure)
        } else {
            Ok(ScsiResult {
                status: r.status,
                sense,
                data: task.take_data_in(),
                residual: residual(r.underflow, r.overflow, r.residual_count),
            })
        };
        self.events.push_back(Event::Completed {
            id: TaskId(r.itt),
            result,
        });
        self.update_window(r.exp_cmd_sn, r.max_cmd_sn);
        Ok(())
    }

    fn on_data_in(&mut self, mut d: DataIn) -> Result<(), ProtocolError> {
        let Some(task) = self
            .tasks
            .get_mut(&d.itt)
            .filter(|t| t.kind == TaskKind::Scsi && t.cmd_sn.is_some())
        else {
            self.update_window(d.exp_cmd_sn, d.max_cmd_sn);
            return self.unknown(Opcode::DATA_IN, d.itt);
        };
        if task.cmd.read_length == 0 && !d.data.is_empty() {
            return Err(ProtocolError::BadTransfer {
                opcode: Opcode::DATA_IN,
                itt: d.itt,
                what: "read data for a command that reads nothing".into(),
                rule: "§11.7",
            });
        }
        let data = std::mem::take(&mut d.data);
        task.accept_data_in(d.data_sn, d.buffer_offset, data)?;
        self.finish_data_in(d)
    }

    /// Status in the last Data-In (§11.7.4) and the window update every Data-In carries.
    fn finish_data_in(&mut self, d: DataIn) -> Result<(), ProtocolError> {
        if d.status_present {
            self.check_stat_sn(Opcode::DATA_IN, d.stat_sn)?;
            // Taken in place and dropped there: moving the whole task out cost a copy.
            if let Some(data) = self.tasks.get_mut(&d.itt).map(Task::take_data_in) {
                self.tasks.discard(&d.itt);
                let result = Ok(ScsiResult {
                    status: d.status,
                    sense: Bytes::new(),
                    data,
                    residual: residual(d.underflow, d.overflow, d.residual_count),
                });
                self.events.push_back(Event::Completed {
                    id: TaskId(d.itt),
                    result,
                });
            }
        }
        self.update_window(d.exp_cmd_sn, d.max_cmd_sn);
        Ok(())
    }

    /// Where the payload of a Data-In (whose header `d` was decoded, data empty) of
    /// `len` bytes may be read in place. `None` when it is not for a read in progress or
    /// not the next bytes in order: the driver then reads the PDU normally and
    /// [`handle_pdu`](Self::handle_pdu) reports any violation.
    pub fn data_in_placement(&mut self, d: &DataIn, len: u32) -> Option<bytes::BytesMut> {
        if self.state == State::Closed || len == 0 {
            return None;
        }
        let task = self
            .tasks
            .get_mut(&d.itt)
            .filter(|t| t.kind == TaskKind::Scsi && t.cmd_sn.is_some())?;
        if task.cmd.read_length == 0 || d.data_sn != task.next_data_sn {
            return None;
        }
        if task.cmd.discard_read {
            if !task.fits_next(d.buffer_offset, len) {
                return None;
            }
            // Room for the payload, its padding/digest and the next header, so the
            // driver can take them in one read.
            let want = len as usize + SCRATCH_SLACK;
            let mut b = std::mem::take(&mut self.scratch);
            b.clear();
            if b.capacity() < want {
                // Sized once for the largest payload we accept (MaxRecvDataSegmentLength).
                let max = self.rx.max_recv_data_segment as usize + SCRATCH_SLACK;
                b = bytes::BytesMut::with_capacity(want.max(max));
            }
            return Some(b);
        }
        task.placement(d.buffer_offset, len)
    }

    /// Feed a Data-In whose payload the driver read into the buffer from
    /// [`data_in_placement`](Self::data_in_placement) (`d.data` is empty).
    pub fn handle_placed_data_in(&mut self, now: Instant, d: DataIn, placed: bytes::BytesMut) {
        if self.state == State::Closed {
            return;
        }
        self.stats.received(Opcode::DATA_IN, placed.len() as u64);
        if let Some(i) = self.cfg.nop_interval {
            self.timers.set(Timer::NopInterval, now + i);
        }
        let r = match self.tasks.get_mut(&d.itt) {
            Some(task) => task
                .accept_placed(d.data_sn, d.buffer_offset, placed)
                .map(|back| {
                    if let Some(b) = back {
                        self.scratch = b;
                    }
                }),
            None => Err(ProtocolError::UnknownItt {
                opcode: Opcode::DATA_IN,
                itt: d.itt,
            }),
        };
        if let Err(e) = r.and_then(|()| self.finish_data_in(d)) {
            self.fail(e);
        }
        if self.state == State::Draining && self.tasks.values().all(|t| t.cmd_sn.is_none()) {
            self.logout(now);
        }
        self.maybe_send_logout();
    }

    fn on_r2t(&mut self, r: R2t) -> Result<(), ProtocolError> {
        self.update_window(r.exp_cmd_sn, r.max_cmd_sn);
        let mbl = self.params.max_burst_length;
        let mxdsl = self.params.max_xmit_data_segment_length;
        let exp_stat_sn = self.exp_stat_sn;
        let Some(task) = self
            .tasks
            .get_mut(&r.itt)
            .filter(|t| t.kind == TaskKind::Scsi && t.cmd_sn.is_some())
        else {
            return self.unknown(Opcode::R2T, r.itt);
        };
        let bad = |what: String, rule| ProtocolError::BadTransfer {
            opcode: Opcode::R2T,
            itt: r.itt,
            what,
            rule,
        };
        if !task.is_write() {
            return Err(bad("R2T for a command that writes nothing".into(), "§11.8"));
        }
        if r.r2t_sn != task.next_r2t_sn {
            return Err(bad(
                format!("R2TSN {} where {} was expected", r.r2t_sn, task.next_r2t_sn),
                "§11.8.5",
            ));
        }
        let len = task.cmd.data_out.len() as u64;
        if u64::from(r.buffer_offset) + u64::from(r.desired_data_transfer_length) > len {
            return Err(bad(
                format!(
                    "asks for {} bytes at offset {}, past the {len}-byte write",
                    r.desired_data_transfer_length, r.buffer_offset
                ),
                "§11.8.6",
            ));
        }
        if r.desired_data_transfer_length > mbl {
            return Err(bad(
                format!(
                    "Desired Data Transfer Length {} exceeds MaxBurstLength {mbl}",
                    r.desired_data_transfer_length
                ),
                "§11.8.4",
            ));
        }
        task.next_r2t_sn = task.next_r2t_sn.wrapping_add(1);
        for d in data_out_sequence(
            task,
            r.ttt,
            r.buffer_offset,
            r.desired_data_transfer_length,
            mxdsl,
            exp_stat_sn,
        ) {
            self.outq.push_back(Pdu::DataOut(d));
        }
        Ok(())
    }

    fn on_tmf_response(&mut self, t: TaskMgmtResponse) -> Result<(), ProtocolError> {
        self.check_stat_sn(Opcode::TASK_MGMT_RESPONSE, t.stat_sn)?;
        self.update_window(t.exp_cmd_sn, t.max_cmd_sn);
        let Some(task) = self.tasks.remove(&t.itt) else {
            return self.unknown(Opcode::TASK_MGMT_RESPONSE, t.itt);
        };
        let TaskKind::Tmf {
            function,
            referenced,
            internal,
        } = task.kind
        else {
            return Err(ProtocolError::Unexpected {
                opcode: Opcode::TASK_MGMT_RESPONSE,
                what: "a TMF response for a task that is not a TMF",
                rule: "§11.6",
            });
        };
        let lun = task.cmd.lun;
        let done =
            t.response == TmfResponse::COMPLETE || t.response == TmfResponse::TASK_DOES_NOT_EXIST;
        if done {
            let victims: Vec<u32> = match function {
                TmfFunction::ABORT_TASK => referenced.into_iter().collect(),
                TmfFunction::ABORT_TASK_SET
                | TmfFunction::CLEAR_TASK_SET
                | TmfFunction::LOGICAL_UNIT_RESET => self
                    .tasks
                    .values()
                    .filter(|x| x.kind == TaskKind::Scsi && x.cmd.lun == lun && x.cmd_sn.is_some())
                    .map(|x| x.itt)
                    .collect(),
                TmfFunction::TARGET_WARM_RESET | TmfFunction::TARGET_COLD_RESET => self
                    .tasks
                    .values()
                    .filter(|x| x.kind == TaskKind::Scsi && x.cmd_sn.is_some())
                    .map(|x| x.itt)
                    .collect(),
                _ => Vec::new(),
            };
            for itt in victims {
                if let Some(v) = self.tasks.remove(&itt) {
                    let err = if internal {
                        TaskError::Timeout(v.cmd.timeout.unwrap_or(self.cfg.task_timeout))
                    } else {
                        TaskError::Aborted
                    };
                    self.remember(itt);
                    self.events.push_back(Event::Completed {
                        id: TaskId(itt),
                        result: Err(err),
                    });
                }
            }
        } else if internal {
            // The target would not abort a timed-out task: at ERL 0 the only way out is
            // to drop the connection (§7.1.4).
            return Err(ProtocolError::AbortTimeout {
                itt: referenced.unwrap_or(0),
                timeout: self.cfg.abort_timeout,
            });
        }
        if !internal {
            self.events.push_back(Event::TmfCompleted {
                id: TaskId(t.itt),
                response: t.response,
            });
        }
        Ok(())
    }

    fn on_text_response(&mut self, t: TextResponse) -> Result<(), ProtocolError> {
        self.check_stat_sn(Opcode::TEXT_RESPONSE, t.stat_sn)?;
        self.update_window(t.exp_cmd_sn, t.max_cmd_sn);
        let limit = self.cfg.max_text_response;
        let Some(task) = self
            .tasks
            .get_mut(&t.itt)
            .filter(|x| matches!(x.kind, TaskKind::Text { .. }))
        else {
            return self.unknown(Opcode::TEXT_RESPONSE, t.itt);
        };
        if task.text.len() + t.data.len() > limit {
            return Err(ProtocolError::BadTransfer {
                opcode: Opcode::TEXT_RESPONSE,
                itt: t.itt,
                what: format!("text response exceeds {limit} bytes"),
                rule: "§11.11",
            });
        }
        task.text.extend_from_slice(&t.data);
        if t.continue_ || !t.final_ {
            // §11.10.4: ask for the rest with an empty Text Request carrying the TTT.
            let cmd_sn = self.window.take();
            self.outq.push_back(Pdu::TextRequest(TextRequest {
                immediate: false,
                final_: true,
                continue_: false,
                lun: Lun(0),
                itt: t.itt,
                ttt: t.ttt,
                cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data: Bytes::new(),
            }));
            return Ok(());
        }
        let Some(task) = self.tasks.remove(&t.itt) else {
            return Ok(());
        };
        let parsed = parse_pairs(&task.text);
        match task.kind {
            TaskKind::Text { internal: true } => {
                if let Ok(pairs) = parsed {
                    if let Some(v) = pairs.iter().find(|(k, _)| k == "MaxRecvDataSegmentLength") {
                        if let Some(n) = crate::text::keys::parse_number(&v.1)
                            .filter(|n| (512..1 << 24).contains(n))
                        {
                            self.params.max_xmit_data_segment_length = n as u32;
                        }
                    }
                }
            }
            _ => {
                let result = parsed.map_err(|e| TaskError::TooLarge(e.to_string()));
                self.events.push_back(Event::TextCompleted {
                    id: TaskId(t.itt),
                    result,
                });
            }
        }
        Ok(())
    }

    fn on_logout_response(&mut self, l: LogoutResponse) -> Result<(), ProtocolError> {
        if Some(l.itt) != self.logout_itt {
            return self.unknown(Opcode::LOGOUT_RESPONSE, l.itt);
        }
        self.check_stat_sn(Opcode::LOGOUT_RESPONSE, l.stat_sn)?;
        self.state = State::Closed;
        self.timers = TimerTable::default();
        let tasks: Vec<Task> = self.tasks.drain().map(|(_, t)| t).collect();
        for t in tasks {
            self.complete_unsent(t, TaskError::LoggingOut);
        }
        self.events.push_back(Event::LoggedOut {
            response: l.response,
            time2wait: l.time2wait,
            time2retain: l.time2retain,
        });
        Ok(())
    }

    fn on_async(&mut self, now: Instant, a: AsyncMessage) -> Result<(), ProtocolError> {
        self.soft_stat_sn(a.stat_sn);
        self.update_window(a.exp_cmd_sn, a.max_cmd_sn);
        match a.event {
            AsyncEvent::LOGOUT_REQUEST => {
                // §11.9.1: "the initiator ... should issue a Logout Request ... within
                // Parameter3 seconds".
                let within = Duration::from_secs(u64::from(a.parameter3));
                self.events.push_back(Event::LogoutRequested { within });
                if self.state == State::Active {
                    self.state = State::Draining;
                    self.timers.set(Timer::LogoutRequested, now + within);
                    if self.tasks.values().all(|t| t.cmd_sn.is_none()) {
                        self.logout(now);
                    }
                }
                Ok(())
            }
            AsyncEvent::DROP_CONNECTION | AsyncEvent::DROP_ALL_CONNECTIONS => {
                Err(ProtocolError::TargetDropped { event: a.event })
            }
            AsyncEvent::RENEGOTIATE => {
                // §11.9.1 event 4: renegotiate; we re-declare MaxRecvDataSegmentLength and
                // take the target's declaration from its answer.
                let itt = self.alloc_itt();
                let text = encode_pairs(&[(
                    "MaxRecvDataSegmentLength",
                    self.params.max_recv_data_segment_length.to_string(),
                )]);
                let cmd = Command::new(Lun(0), vec![0u8]).with_data_out(Bytes::from(text));
                let deadline = now + self.cfg.task_timeout;
                self.tasks.insert(
                    itt,
                    Task::new(itt, TaskKind::Text { internal: true }, cmd, Some(deadline)),
                );
                self.queue.push_back(itt);
                self.flush_queue();
                Ok(())
            }
            AsyncEvent::TASK_TERMINATION => {
                let victims: Vec<u32> = self
                    .tasks
                    .values()
                    .filter(|t| {
                        t.kind == TaskKind::Scsi && t.cmd.lun == a.lun && t.cmd_sn.is_some()
                    })
                    .map(|t| t.itt)
                    .collect();
                for itt in victims {
                    self.tasks.remove(&itt);
                    self.remember(itt);
                    self.events.push_back(Event::Completed {
                        id: TaskId(itt),
                        result: Err(TaskError::Aborted),
                    });
                }
                Ok(())
            }
            event => {
                let sense = a.sense().unwrap_or_default();
                self.events.push_back(Event::Async {
                    event,
                    lun: a.lun,
                    sense,
                    parameters: [a.parameter1, a.parameter2, a.parameter3],
                });
                Ok(())
            }
        }
    }

    fn on_reject(&mut self, now: Instant, r: Reject) -> Result<(), ProtocolError> {
        self.soft_stat_sn(r.stat_sn);
        self.update_window(r.exp_cmd_sn, r.max_cmd_sn);
        let Some((opcode, itt)) = r.rejected_header() else {
            tracing::debug!(reason = ?r.reason, "Reject without the rejected header");
            return Ok(());
        };
        if Some(itt) == self.nop_itt {
            self.nop_itt = None;
            self.timers.stop(Timer::NopResponse);
            return Ok(());
        }
        if Some(itt) == self.logout_itt {
            return Err(ProtocolError::Rejected {
                opcode,
                reason: r.reason,
            });
        }
        let Some(task) = self.tasks.remove(&itt) else {
            tracing::debug!(%opcode, itt, reason = ?r.reason, "Reject for no known task");
            return Ok(());
        };
        let id = TaskId(itt);
        self.remember(itt);
        match task.kind {
            TaskKind::Scsi => {
                self.events.push_back(Event::Completed {
                    id,
                    result: Err(TaskError::Rejected(r.reason)),
                });
                // A rejected Data-Out leaves the command open at the target; clean it up.
                if opcode == Opcode::DATA_OUT {
                    self.send_tmf(now, TmfFunction::ABORT_TASK, task.cmd.lun, Some(itt), true);
                }
            }
            TaskKind::Text { internal: false } => self.events.push_back(Event::TextCompleted {
                id,
                result: Err(TaskError::Rejected(r.reason)),
            }),
            TaskKind::Tmf {
                internal: false, ..
            } => self.events.push_back(Event::TmfCompleted {
                id,
                response: TmfResponse::REJECTED,
            }),
            _ => {}
        }
        Ok(())
    }

    /// Run expired timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        for t in self.timers.expired(now) {
            match t {
                Timer::NopInterval => self.on_nop_interval(now),
                Timer::NopResponse => {
                    self.stats.timeout_errors += 1;
                    self.fail(ProtocolError::NopTimeout(self.cfg.nop_timeout));
                    return;
                }
                Timer::Logout => {
                    self.stats.timeout_errors += 1;
                    self.fail(ProtocolError::LogoutTimeout(self.cfg.logout_timeout));
                    return;
                }
                Timer::LogoutRequested => {
                    // Time is up: log out even with tasks in flight (§11.9.1).
                    self.state = State::LoggingOut { sent: false };
                    for task in self.tasks.values_mut() {
                        task.cmd_sn = None;
                    }
                    let all: Vec<Task> = self.tasks.drain().map(|(_, t)| t).collect();
                    for t in all {
                        self.complete_unsent(t, TaskError::LoggingOut);
                    }
                    self.timers
                        .set(Timer::Logout, now + self.cfg.logout_timeout);
                    self.maybe_send_logout();
                }
                Timer::TaskCheck => {
                    if let Err(e) = self.check_tasks(now) {
                        self.stats.timeout_errors += 1;
                        self.fail(e);
                        return;
                    }
                    if !self.tasks.is_empty() {
                        self.timers
                            .set(Timer::TaskCheck, now + Duration::from_secs(1));
                    }
                }
            }
        }
        self.maybe_send_logout();
    }

    fn on_nop_interval(&mut self, now: Instant) {
        let Some(interval) = self.cfg.nop_interval else {
            return;
        };
        self.timers.set(Timer::NopInterval, now + interval);
        if self.nop_itt.is_some() || matches!(self.state, State::LoggingOut { sent: true }) {
            return;
        }
        let itt = self.alloc_itt();
        self.nop_itt = Some(itt);
        self.outq.push_back(Pdu::NopOut(NopOut {
            immediate: true,
            lun: Lun(0),
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.window.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: Bytes::new(),
        }));
        self.timers
            .set(Timer::NopResponse, now + self.cfg.nop_timeout);
    }

    fn check_tasks(&mut self, now: Instant) -> Result<(), ProtocolError> {
        let mut expired = Vec::new();
        for t in self.tasks.values() {
            if let Some((_, at)) = t.aborting {
                if at <= now {
                    return Err(ProtocolError::AbortTimeout {
                        itt: match t.kind {
                            TaskKind::Tmf {
                                referenced: Some(r),
                                ..
                            } => r,
                            _ => t.itt,
                        },
                        timeout: self.cfg.abort_timeout,
                    });
                }
            } else if t.deadline.is_some_and(|d| d <= now) {
                expired.push(t.itt);
            }
        }
        self.stats.timeout_errors += expired.len() as u64;
        for itt in expired {
            let Some(task) = self.tasks.get_mut(&itt) else {
                continue;
            };
            task.deadline = None;
            let timeout = task.cmd.timeout.unwrap_or(self.cfg.task_timeout);
            if task.cmd_sn.is_none() {
                let t = self.tasks.remove(&itt);
                self.queue.retain(|i| *i != itt);
                if let Some(t) = t {
                    self.complete_unsent(t, TaskError::Timeout(timeout));
                }
            } else if task.kind == TaskKind::Scsi {
                let lun = task.cmd.lun;
                tracing::debug!(itt, "task timed out; sending ABORT TASK");
                self.send_tmf(now, TmfFunction::ABORT_TASK, lun, Some(itt), true);
                if let Some(t) = self.tasks.get_mut(&itt) {
                    t.aborting = Some((itt, now + self.cfg.abort_timeout));
                }
            } else if let Some(t) = self.tasks.remove(&itt) {
                self.remember(itt);
                self.complete_unsent(t, TaskError::Timeout(timeout));
            }
        }
        Ok(())
    }
}

fn residual(underflow: bool, overflow: bool, count: u32) -> Residual {
    if underflow {
        Residual::Underflow(count)
    } else if overflow {
        Residual::Overflow(count)
    } else {
        Residual::None
    }
}

#[cfg(test)]
mod tests;
