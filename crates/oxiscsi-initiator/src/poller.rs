//! A session driven by its caller's thread: libiscsi's event loop (`iscsi_service`)
//! over the sans-IO core, with no async runtime, task, lock or waker after login.
//!
//! [`Session`](crate::Session) runs a driver task next to its callers; every completion
//! crosses from that task to the caller's through a lock and a wake-up. A [`Poller`] is
//! owned by one thread, which submits commands and then calls
//! [`service`](Poller::service): that writes what was submitted, reads the socket, feeds
//! the core, runs its timers (NOP-Out pings, their timeouts, logout) and hands back what
//! finished. It is what a benchmark, a block-device server with its own thread per
//! session, or a program with its own event loop (QEMU's, say) uses, as they use
//! libiscsi's asynchronous API. Like libiscsi, the session only makes progress while its
//! owner services it; between calls the target's pings wait in the socket and are
//! answered at the next one (keep calls within the target's NOP timeout).

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use bytes::BufMut;
use oxiscsi_proto::login::SessionType;
use oxiscsi_proto::pdu::{Lun, TmfFunction, TmfResponse};
use oxiscsi_proto::session::tags::TagTable;
use oxiscsi_proto::session::{Command, InitiatorConnection, ScsiResult, TaskId};

use crate::config::SessionConfig;
use crate::driver::{needs_rearm, route, Outcome, Routed, LOGGED_OUT};
use crate::error::Error;
use crate::queue::{Completion, Rejected};
use crate::rx::Reader;
use crate::session::{after_login, log_in, scsi_outcome, SessionInfo};
use crate::sock::{recv_into, set_lowat};
use crate::time::timerfd;
use crate::tx::TxQueue;

/// Reads in one [`Poller::service`] pass before it hands over what finished.
const MORE_READS: usize = 16;

/// A logged-in session (one connection, ErrorRecoveryLevel 0) driven by the thread that
/// owns it. Submit commands with [`submit`](Self::submit), collect them with
/// [`service`](Self::service). Every read waits at most until the core's next deadline
/// (NOP-Out interval, NOP response, logout) or the caller's timeout.
///
/// Dropping it without [`logout`](Self::logout) sends a Logout request if the socket
/// takes it at once, then closes the connection; commands in flight are abandoned.
///
/// ```no_run
/// use oxiscsi_initiator::proto::pdu::{CdbBuf, Lun};
/// use oxiscsi_initiator::proto::session::Command;
/// use oxiscsi_initiator::scsi::cdb::Cdb;
/// use oxiscsi_initiator::{Poller, SessionConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = SessionConfig::new("127.0.0.1:3260", "iqn.2026-11.test:tgt1");
/// let mut p = Poller::connect_blocking(cfg)?;
/// // Eight 64 KiB reads of LUN 1 in flight, the token naming each one's first block.
/// let read = |lba: u64| {
///     let (cdb, n) = Cdb::Read16 { lba, blocks: 128, fua: false, dpo: false }.to_array();
///     Command::new(Lun::from_number(1), CdbBuf::from_array(cdb, n)).with_read(128 * 512)
/// };
/// for i in 0..8 {
///     p.submit(i * 128, read(i * 128))?;
/// }
/// let mut done = Vec::new();
/// while p.in_flight() > 0 {
///     p.service(&mut done, None)?;
/// }
/// for c in &done {
///     println!("LBA {}: {:?}", c.token, c.result.as_ref().map(|r| r.status));
/// }
/// p.logout()?;
/// # Ok(())
/// # }
/// ```
pub struct Poller {
    conn: InitiatorConnection,
    stream: TcpStream,
    reader: Reader,
    tx: TxQueue,
    /// Who waits for each exchange in flight, by task id.
    tokens: TagTable<Waiter>,
    /// The outcome a blocking call ([`execute`](Poller::execute),
    /// [`task_management`](Poller::task_management)) waits for, once it came.
    answer: Option<Outcome>,
    /// Finished and not handed over yet.
    done: Vec<Completion>,
    queue_depth: usize,
    /// The socket was read dry (a read came back empty, or short at a PDU boundary):
    /// wait for its next edge before reading again.
    drained: bool,
    /// The socket's `SO_RCVLOWAT` as last set.
    lowat: usize,
    /// Waits for the socket and the session's timer.
    events: Events,
    /// Why the session is ending, once the core said so.
    failure: Option<String>,
    /// Why the session ended, once it has.
    closed: Option<String>,
    /// The target answered our Logout.
    logged_out: bool,
    info: SessionInfo,
    span: tracing::Span,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("target", &self.info.target)
            .field("portal", &self.info.portal)
            .field("isid", &self.info.isid)
            .field("tsih", &self.info.tsih)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

// The library's one error type is returned by value, as from Session's async methods
// (which the lint does not see).
#[allow(clippy::result_large_err)]
impl Poller {
    /// Connect and log in to `cfg.target` at `cfg.portal` (following redirects), as
    /// [`Session::connect`](crate::Session::connect) does; the connection is then the
    /// caller's to drive, from any thread.
    pub async fn connect(cfg: SessionConfig) -> Result<Poller, Error> {
        let o = log_in(&cfg, SessionType::Normal).await?;
        let stream = o.stream.into_std().map_err(|e| {
            after_login(crate::limits::fd_error(
                "cannot take the session's socket over from tokio",
                e,
            ))
        })?;
        // Every read and write must return at once (waits go through `Events`, which
        // have deadlines); tokio hands the socket over non-blocking, but say so here
        // rather than depend on it.
        stream.set_nonblocking(true).map_err(|e| {
            after_login(std::io::Error::new(
                e.kind(),
                format!("cannot make the session's socket non-blocking: {e}"),
            ))
        })?;
        let events = Events::new(stream.as_raw_fd()).map_err(after_login)?;
        let mut reader = Reader::new(o.framer, o.leftover);
        let mut conn = o.conn;
        // Bytes that arrived with the final Login Response.
        reader.feed(&mut conn);
        let mut p = Poller {
            tx: TxQueue::new(conn.tx_digests()),
            conn,
            stream,
            reader,
            tokens: TagTable::default(),
            answer: None,
            done: Vec::new(),
            queue_depth: cfg.connection.queue_depth.max(1),
            drained: false,
            lowat: 1,
            events,
            failure: None,
            closed: None,
            logged_out: false,
            info: o.info,
            span: o.span,
        };
        p.settle();
        Ok(p)
    }

    /// [`connect`](Self::connect) for a caller without an async runtime: logs in on a
    /// runtime of its own that ends with the call. From inside a tokio runtime, use
    /// `connect` instead (this refuses, as blocking a runtime's thread would stall it).
    pub fn connect_blocking(cfg: SessionConfig) -> Result<Poller, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::Config(
                "Poller::connect_blocking was called inside a tokio runtime; use Poller::connect(cfg).await there".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("cannot start the runtime for login: {e}"),
                ))
            })?;
        rt.block_on(Self::connect(cfg))
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Why the session ended, if it has.
    pub fn closed_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Commands submitted and not handed back by [`service`](Self::service) yet
    /// (finished ones waiting to be collected included).
    pub fn in_flight(&self) -> usize {
        self.tokens.len() + self.done.len()
    }

    /// How many commands [`submit`](Self::submit) takes in flight at once.
    pub fn queue_depth(&self) -> usize {
        self.queue_depth
    }

    /// Queue `cmd` to be sent; its [`Completion`] carries `token`. It fails with
    /// [`Error::QueueFull`] while the session's queue depth of commands is in flight,
    /// and with [`Error::Closed`] once the session has ended; the command then comes back
    /// in [`Rejected`], nothing of it lost. As with [`Queue`](crate::Queue), nothing is
    /// sent until [`service`](Self::service) or [`flush`](Self::flush).
    pub fn submit(&mut self, token: u64, cmd: Command) -> Result<(), Rejected> {
        self.start(Some(token), cmd)
    }

    /// Run one command to its end and return its outcome (any SCSI status), as
    /// [`Session::execute`](crate::Session::execute) does; commands submitted before it
    /// go on meanwhile and are collected by the next [`service`](Self::service). It
    /// waits at most until the core gives up on the command (the connection's task
    /// timeout, or the session failing). It is not refused for a full queue: one
    /// command more than the queue depth, still within the target's command window.
    pub fn execute(&mut self, cmd: Command) -> Result<ScsiResult, Error> {
        self.start(None, cmd)?;
        self.answer().and_then(scsi_outcome)
    }

    /// Ask the target to abort the command submitted with `token` (ABORT TASK, RFC 7143
    /// §11.5) and wait for its answer (at most the connection's abort timeout). The
    /// command itself still comes back through [`service`](Self::service): failed as
    /// aborted, or with its outcome when the target had already finished it. A command
    /// that is no longer in flight (finished, or never submitted) gets
    /// `TASK_DOES_NOT_EXIST` without asking the target, which is what it would answer.
    pub fn abort(&mut self, token: u64) -> Result<TmfResponse, Error> {
        let found = self.tokens.iter().find_map(|(itt, w)| match w {
            Waiter::Queued { token: t, lun } if *t == token => Some((TaskId(*itt), *lun)),
            _ => None,
        });
        let Some((id, lun)) = found else {
            return Ok(TmfResponse::TASK_DOES_NOT_EXIST);
        };
        self.tmf(TmfFunction::ABORT_TASK, lun, Some(id))
    }

    /// A task management function for a whole LUN or the target (ABORT TASK SET, LUN
    /// RESET, TARGET WARM RESET, ...; use [`abort`](Self::abort) for one command), waiting
    /// for the target's answer. Commands it ends come back through
    /// [`service`](Self::service).
    pub fn task_management(
        &mut self,
        function: TmfFunction,
        lun: u16,
    ) -> Result<TmfResponse, Error> {
        self.tmf(function, Lun::from_number(lun), None)
    }

    fn tmf(
        &mut self,
        function: TmfFunction,
        lun: Lun,
        referenced: Option<TaskId>,
    ) -> Result<TmfResponse, Error> {
        if let Some(why) = &self.closed {
            return Err(Error::Closed(why.clone()));
        }
        let id = self
            .conn
            .submit_tmf(Instant::now(), function, lun, referenced)
            .map_err(Error::Task)?;
        self.tokens.insert(id.0, Waiter::Blocking);
        self.settle();
        match self.answer()? {
            Outcome::Tmf(r) => r.map_err(|e| *e),
            other => scsi_outcome(other).and(Err(Error::Closed(
                "the session answered a task management request with a SCSI outcome".into(),
            ))),
        }
    }

    /// Run the session until the outcome a blocking call waits for comes.
    fn answer(&mut self) -> Result<Outcome, Error> {
        loop {
            self.pass();
            if let Some(o) = self.answer.take() {
                return Ok(o);
            }
            if let Some(why) = &self.closed {
                return Err(Error::Closed(why.clone()));
            }
            self.wait_until(None);
        }
    }

    fn start(&mut self, token: Option<u64>, cmd: Command) -> Result<(), Rejected> {
        if let Some(why) = &self.closed {
            return Err(Rejected {
                error: Error::Closed(why.clone()),
                command: Some(cmd),
            });
        }
        if token.is_some() && self.tokens.len() >= self.queue_depth {
            let depth = self.queue_depth;
            return Err(Rejected {
                error: Error::QueueFull { depth },
                command: Some(cmd),
            });
        }
        let lun = cmd.lun;
        match self.conn.submit(Instant::now(), cmd) {
            Ok(id) => {
                let waiter = match token {
                    Some(token) => Waiter::Queued { token, lun },
                    None => Waiter::Blocking,
                };
                self.tokens.insert(id.0, waiter);
                self.settle();
                Ok(())
            }
            Err(e) => Err(Rejected {
                error: Error::Task(e),
                command: None,
            }),
        }
    }

    /// Send what was submitted, without waiting (what the socket does not take now goes
    /// at the next call).
    pub fn flush(&mut self) -> Result<(), Error> {
        self.write();
        self.settle();
        match &self.closed {
            Some(why) if self.done.is_empty() => Err(Error::Closed(why.clone())),
            _ => Ok(()),
        }
    }

    /// Send what was submitted, then wait until at least one command has finished or
    /// `timeout` has passed, running the session's timers meanwhile; append every
    /// finished command to `out` and return how many. With nothing in flight and no
    /// `timeout` it returns 0 at once; with a `timeout` it services the connection (the
    /// target's pings, our own) for that long. A session that ends hands each command
    /// in flight back with [`Error::Closed`]; once all are handed back, calls fail with
    /// it.
    pub fn service(
        &mut self,
        out: &mut Vec<Completion>,
        timeout: Option<Duration>,
    ) -> Result<usize, Error> {
        let until = timeout.map(|t| Instant::now() + t);
        loop {
            self.pass();
            if !self.done.is_empty() {
                let n = self.done.len();
                out.append(&mut self.done);
                return Ok(n);
            }
            if let Some(why) = &self.closed {
                return Err(Error::Closed(why.clone()));
            }
            if self.tokens.is_empty() && until.is_none() {
                return Ok(0);
            }
            if !self.wait_until(until) {
                return Ok(0);
            }
        }
    }

    /// Write, read what is there, and hand the core's output on.
    fn pass(&mut self) {
        if self.closed.is_none() {
            self.write();
            if !self.drained {
                self.read();
            }
            self.settle();
        }
    }

    /// Run the core's timer if it is due, or wait for the socket until it is, or until
    /// `until`. False once `until` has passed.
    fn wait_until(&mut self, until: Option<Instant>) -> bool {
        let deadline = self.conn.poll_timeout();
        let now = (deadline.is_some() || until.is_some()).then(Instant::now);
        if let (Some(d), Some(now)) = (deadline, now) {
            if d <= now {
                self.conn.handle_timeout(now);
                self.settle();
                return true;
            }
        }
        if let (Some(u), Some(now)) = (until, now) {
            if u <= now {
                return false;
            }
        }
        if !self.drained {
            // Reading stopped with more to read: no edge will come for it.
            return true;
        }
        let fd = self.stream.as_raw_fd();
        // With a large payload half read, wait for all of it at once.
        set_lowat(fd, &mut self.lowat, self.reader.frame_remaining());
        let timeout = until.zip(now).map(|(u, now)| u - now);
        match self.events.wait(fd, !self.tx.is_empty(), deadline, timeout) {
            Ok(readable) => self.drained &= !readable,
            Err(e) => self
                .conn
                .handle_closed(&format!("waiting for the socket failed: {e}")),
        }
        self.settle();
        true
    }

    /// For a caller with its own event loop (libiscsi's `iscsi_get_fd`,
    /// `iscsi_which_events`, `iscsi_service`): wait on [`as_raw_fd`](AsRawFd::as_raw_fd)
    /// for reading, and for writing while [`wants_write`](Self::wants_write), at most
    /// until [`deadline`](Self::deadline); then call this, saying whether the socket was
    /// readable. It never blocks. Returns as [`service`](Self::service) does.
    pub fn service_ready(
        &mut self,
        readable: bool,
        out: &mut Vec<Completion>,
    ) -> Result<usize, Error> {
        if readable {
            self.drained = false;
        }
        self.service(out, Some(Duration::ZERO))
    }

    /// Bytes are waiting for the socket to take them (wait for it to be writable).
    pub fn wants_write(&self) -> bool {
        !self.tx.is_empty()
    }

    /// When the session's next timer is due (call [`service_ready`](Self::service_ready)
    /// by then, readable or not).
    pub fn deadline(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// The connection's counters, as [`Session::stats`](crate::Session::stats) gives them.
    pub fn stats(&self) -> oxiscsi_proto::session::ConnStats {
        self.conn.stats()
    }

    /// Log out (RFC 7143 §11.14) once the commands in flight have ended, waiting at most
    /// the connection's logout timeout; their completions are dropped (collect them with
    /// [`service`](Self::service) first to keep them). A session that already ended fails
    /// with [`Error::Closed`] and its reason, unless it ended by logging out.
    pub fn logout(mut self) -> Result<(), Error> {
        if self.logged_out {
            // The target asked for it and the core already logged out.
            return Ok(());
        }
        if let Some(why) = &self.closed {
            return Err(Error::Closed(why.clone()));
        }
        self.conn.logout(Instant::now());
        self.settle();
        let mut scratch = Vec::new();
        loop {
            match self.service(&mut scratch, Some(Duration::from_secs(1))) {
                Ok(_) => scratch.clear(),
                Err(_) if self.logged_out => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Write what is queued until done or the socket is full.
    fn write(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        let stream = &self.stream;
        if let Err(why) = self.tx.write_with(|s| (&*stream).write_vectored(s)) {
            self.conn.handle_closed(&why);
        }
    }

    /// Read what the socket holds, feeding the core after each read, until a read comes
    /// back short or empty, or [`MORE_READS`] reads.
    fn read(&mut self) {
        let fd = self.stream.as_raw_fd();
        for _ in 0..MORE_READS {
            let (into, limit) = self.reader.target();
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let room = limit.min(into.capacity() - into.len());
            let why = match recv_into(fd, &mut into.limit(limit)) {
                Ok(0) => "the target closed the TCP connection".to_string(),
                Ok(n) => {
                    self.reader.feed(&mut self.conn);
                    if self.conn.is_closed() {
                        return;
                    }
                    if n < room && self.reader.at_boundary() {
                        // A short read took all the socket held, and ended on a PDU
                        // boundary: wait for the next edge. Mid-frame the rest is on
                        // its way, often by the time of the next read.
                        self.drained = true;
                        return;
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    return;
                }
                Err(e) => format!("read error: {e}"),
            };
            self.conn.handle_closed(&why);
            return;
        }
    }

    /// Move the core's output to the write queue and its events to the caller; once the
    /// core has closed, end the session.
    fn settle(&mut self) {
        while let Some(pdu) = self.conn.poll_transmit() {
            self.tx.push(&pdu);
        }
        while let Some(ev) = self.conn.poll_event() {
            match route(ev, &self.span, &self.info.portal) {
                Routed::Done(id, outcome) => match self.tokens.remove(&id.0) {
                    Some(Waiter::Queued { token, .. }) => self.done.push(Completion {
                        token,
                        result: scsi_outcome(outcome),
                    }),
                    Some(Waiter::Blocking) => self.answer = Some(outcome),
                    None => {}
                },
                Routed::LoggedOut => {
                    self.logged_out = true;
                    self.failure.get_or_insert_with(|| LOGGED_OUT.into());
                }
                Routed::Failed(why) => self.failure = Some(why),
                Routed::Logged => {}
            }
        }
        if self.conn.is_closed() && self.closed.is_none() {
            self.finish();
        }
    }

    /// The connection is closed: write what is left if the socket takes it at once,
    /// close the socket, and hand every command in flight back failed.
    fn finish(&mut self) {
        let stream = &self.stream;
        let _ = self.tx.write_with(|s| (&*stream).write_vectored(s));
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        let why = self
            .failure
            .take()
            .unwrap_or_else(|| "connection closed".into());
        for (_, waiter) in self.tokens.drain() {
            let error = Error::Closed(why.clone());
            match waiter {
                Waiter::Queued { token, .. } => self.done.push(Completion {
                    token,
                    result: Err(error),
                }),
                Waiter::Blocking => self.answer = Some(Outcome::Scsi(Err(Box::new(error)))),
            }
        }
        self.closed = Some(why);
    }
}

/// Who waits for an exchange in flight.
enum Waiter {
    /// A command from [`Poller::submit`]: its completion goes to `service` with `token`.
    Queued { token: u64, lun: Lun },
    /// The exchange a blocking call waits for.
    Blocking,
}

/// Waiting for the session's socket and timer: one epoll instance watching both, set up
/// once (`poll` registered with the socket's wait queue on every call), edge-triggered
/// (level-triggered, every wait looked at the socket once more after it was read dry:
/// ~0.5K kernel instructions per I/O at 4K QD1), so the socket is waited for only after
/// a read came back short or empty, which leaves nothing unread for an edge to miss.
/// The session's deadlines are not a timeout of the wait (that arms and cancels
/// a kernel timer each time: ~1.5K kernel instructions per I/O at 4K QD1) but a
/// timerfd, set again only when the deadline comes earlier (see [`needs_rearm`]).
struct Events {
    epoll: OwnedFd,
    timer: OwnedFd,
    /// The deadline the timer is set to.
    armed: Option<Instant>,
    /// The socket is watched for writing too.
    out: bool,
}

/// `epoll_event.u64` of each descriptor.
const SOCKET: u64 = 0;
const TIMER: u64 = 1;

impl Events {
    fn new(socket: RawFd) -> std::io::Result<Events> {
        // SAFETY: epoll_create1 takes no pointers; a descriptor it returns is ours.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(crate::limits::fd_error(
                "cannot set up waiting for the session's socket (epoll_create1)",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `ep` is a new descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        let timer = timerfd::create()?;
        let ev = Events {
            epoll,
            timer,
            armed: None,
            out: false,
        };
        ev.ctl(libc::EPOLL_CTL_ADD, socket, SOCKET, false)?;
        ev.ctl(libc::EPOLL_CTL_ADD, ev.timer.as_raw_fd(), TIMER, false)?;
        Ok(ev)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, key: u64, out: bool) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32
                | if out { libc::EPOLLOUT as u32 } else { 0 },
            u64: key,
        };
        // SAFETY: both descriptors are open; `ev` is valid for the call.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(std::io::Error::other(format!(
                "cannot watch the session's socket (epoll_ctl): {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Wait until `socket` is readable (or writable, when `out`), `deadline` comes, or
    /// `timeout` passes (rounded up to whole milliseconds, so it is never cut short).
    /// True when the socket is readable (or failed).
    fn wait(
        &mut self,
        socket: RawFd,
        out: bool,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> std::io::Result<bool> {
        if out != self.out {
            self.ctl(libc::EPOLL_CTL_MOD, socket, SOCKET, out)?;
            self.out = out;
        }
        if needs_rearm(deadline, self.armed) {
            timerfd::arm(self.timer.as_raw_fd(), deadline)?;
            self.armed = deadline;
        }
        let ms = timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX)
        });
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // SAFETY: room for two events, valid for the call.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), evs.as_mut_ptr(), 2, ms) };
        let Ok(n) = usize::try_from(n) else {
            let e = std::io::Error::last_os_error();
            // Interrupted: the caller's loop looks again.
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        };
        let mut readable = false;
        for ev in &evs[..n.min(evs.len())] {
            let (key, seen) = (ev.u64, ev.events);
            if key == TIMER {
                // Fired: take the expiry count so the timer stops being readable. The
                // caller compares the deadline with the clock itself.
                let mut count = [0u8; 8];
                // SAFETY: reads at most 8 bytes into a local array from our timerfd.
                unsafe { libc::read(self.timer.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                self.armed = None;
            } else {
                let input = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP;
                readable |= seen & input as u32 != 0;
            }
        }
        Ok(readable)
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl Drop for Poller {
    /// Say goodbye if the socket takes it at once; never wait.
    fn drop(&mut self) {
        if self.closed.is_none() {
            self.conn.logout(Instant::now());
            while let Some(pdu) = self.conn.poll_transmit() {
                self.tx.push(&pdu);
            }
            self.write();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_blocking_refuses_inside_a_runtime() {
        let cfg = SessionConfig::new("127.0.0.1:1", "iqn.2026-11.test:none");
        let e = Poller::connect_blocking(cfg).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        assert!(e.to_string().contains("Poller::connect(cfg).await"), "{e}");
    }
}
