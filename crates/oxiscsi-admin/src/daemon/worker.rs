//! One thread per session: it owns the session's connection (a
//! [`Poller`]) and the FUSE connections of its LUN files, and
//! waits on all of them in one poll(2) loop.
//!
//! Why one thread: a WRITE through the loop device is read from /dev/fuse straight into
//! the buffer its SCSI command then sends, on the thread that writes the socket, and
//! the target's answer is turned into the FUSE answer on the thread that read it; no
//! hand-off between threads, no copy of ours, no payload gone cold in between. The next
//! request is read only once the socket has taken the last (`wants_write`), so the
//! kernel's queue, not ours, holds what the network cannot take yet. This is the design
//! `bench/fuse_ceiling.py` measured within 1.3x of `oxiscsi perf` for 1 MiB writes.
//!
//! The fast path is a READ or WRITE of whole blocks answered GOOD. Everything else runs
//! as a task on the daemon's runtime over [`Worker`], which submits its commands through
//! this thread: writes of partial blocks (read-modify-write), punch-hole (UNMAP or WRITE
//! SAME), fsync (SYNCHRONIZE CACHE), and the retry of a READ or WRITE that did not come
//! back GOOD (UNIT ATTENTION, BUSY: [`ops::execute_checked`]). A read-modify-write or a
//! punch runs alone among the writes to its LUN: writes that arrive meanwhile wait in
//! order, and it starts only when the writes before it have been answered.
//!
//! The daemon's own commands (REPORT LUNS, INQUIRY, READ CAPACITY, SYNCHRONIZE CACHE at
//! logout) come through the same channel ([`ops::Execute`] for [`Worker`]).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use oxiscsi_initiator::ops::{self, Verdict};
use oxiscsi_initiator::proto::pdu::Lun;
use oxiscsi_initiator::proto::session::{Command, ConnStats, Residual, ScsiResult};
use oxiscsi_initiator::scsi::cdb::Cdb;
use oxiscsi_initiator::{Completion, Error as InitError, Poller, SessionInfo};
use tokio::sync::{oneshot, watch};

use crate::fuse::abi::{self, Header, Request};
use crate::fuse::dev::{self, Got};

/// Largest FUSE WRITE (and so SCSI WRITE) the kernel sends: 256 KiB, the FirstBurstLength
/// oxiscsi's target and open-iscsi default to, so a WRITE goes out whole as immediate
/// data; where the target's is smaller, the rest follows its R2Ts.
pub const MAX_WRITE: usize = 256 << 10;
/// Largest FUSE READ: 1 MiB, so the loop driver's 1 MiB reads are one command each (a
/// READ request itself is small; only its answer is large).
const MAX_READ: u32 = 1 << 20;
/// Each read of /dev/fuse gets a buffer this large (a WRITE's header and payload).
const READ_BUF: usize = MAX_WRITE + abi::MIN_READ_EXTRA;
/// Asynchronous FUSE requests the kernel keeps in flight per file: the loop driver's
/// direct I/O counts as background requests, and the default of 12 would cap a QD32
/// workload.
const MAX_BACKGROUND: u16 = 256;
/// Requests read from one FUSE file in a row before the others get their turn.
const BATCH: usize = 16;
/// Attributes (the size) are cached by the kernel this long.
const ATTR_SECS: u64 = 1;
const STOPPED: &str = "the session's worker thread has stopped";

/// One LUN file, as the daemon and the worker both see it.
#[derive(Debug)]
pub struct LunFile {
    pub name: String,
    pub lun: u16,
    pub block_size: u32,
    pub blocks: AtomicU64,
    /// Unmapped blocks read back as zeros (LBPME and LBPRZ), so UNMAP can punch holes.
    pub unmap_zeroes: bool,
    /// Opens of the file (the loop device's included).
    pub opens: AtomicU32,
}

impl LunFile {
    pub fn size(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed) * u64::from(self.block_size)
    }
}

enum Ctl {
    Exec {
        cmd: Command,
        tx: oneshot::Sender<Result<ScsiResult, InitError>>,
    },
    AddLun {
        id: u64,
        fd: OwnedFd,
        file: Arc<LunFile>,
    },
    RemoveLun {
        id: u64,
        tx: oneshot::Sender<()>,
    },
    /// A task the worker started for a LUN has answered its request.
    SlowDone {
        id: u64,
        gate: Gate,
    },
    Stats {
        tx: oneshot::Sender<Result<ConnStats, InitError>>,
    },
    Logout {
        tx: oneshot::Sender<Result<(), InitError>>,
    },
}

/// What a task started for a LUN holds of its write gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Nothing (a read, an fsync).
    None,
    /// One write in flight (the retry of a fast-path write).
    Write,
    /// The LUN's writes to itself (read-modify-write, punch).
    Exclusive,
}

struct Inner {
    info: SessionInfo,
    tx: mpsc::Sender<Ctl>,
    wake: OwnedFd,
    closed: watch::Receiver<Option<String>>,
}

impl Inner {
    /// The error for a request the thread will not answer: why the session ended
    /// ("logged out", or what failed), when the thread said so.
    fn gone(&self) -> InitError {
        InitError::Closed(
            self.closed
                .borrow()
                .clone()
                .unwrap_or_else(|| STOPPED.into()),
        )
    }

    /// False when the thread has stopped.
    fn send(&self, c: Ctl) -> bool {
        let sent = self.tx.send(c).is_ok();
        wake(self.wake.as_raw_fd());
        sent
    }
}

impl Drop for Inner {
    /// The last handle is gone: the worker sees the channel closed and ends the session.
    fn drop(&mut self) {
        wake(self.wake.as_raw_fd());
    }
}

fn wake(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live array to an eventfd. A full counter (EAGAIN)
    // still leaves the worker woken, so the result needs no check.
    let _ = unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
}

/// A handle on a session's worker thread; clone it freely.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("target", &self.inner.info.target)
            .field("isid", &self.inner.info.isid)
            .finish()
    }
}

impl ops::Execute for Worker {
    fn execute_command(
        &self,
        cmd: Command,
    ) -> impl std::future::Future<Output = Result<ScsiResult, InitError>> + Send {
        let (tx, rx) = oneshot::channel();
        let sent = self.inner.send(Ctl::Exec { cmd, tx });
        let inner = self.inner.clone();
        async move {
            if !sent {
                return Err(inner.gone());
            }
            rx.await.map_err(|_| inner.gone())?
        }
    }
}

impl Worker {
    /// Start the thread that drives `p` from now on. Tasks for what is not the fast
    /// path run on `rt`.
    pub fn spawn(p: Poller, rt: tokio::runtime::Handle) -> Result<Worker, String> {
        // SAFETY: eventfd(2) with valid flags; the descriptor is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(format!(
                "cannot create an eventfd for the session's worker: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: just created, owned by nobody else.
        let wake = unsafe { OwnedFd::from_raw_fd(efd) };
        let wake_fd = wake.as_raw_fd();
        let (tx, rx) = mpsc::channel();
        let (closed_tx, closed) = watch::channel(None);
        let info = p.info().clone();
        let inner = Arc::new(Inner {
            info,
            tx,
            wake,
            closed,
        });
        let depth = p.queue_depth();
        let t = Thread {
            p: Some(p),
            depth,
            rx,
            wake: wake_fd,
            closed_tx,
            luns: HashMap::new(),
            ops: HashMap::new(),
            backlog: VecDeque::new(),
            next_token: 0,
            me: Arc::downgrade(&inner),
            rt,
            rbuf: BytesMut::with_capacity(READ_BUF),
            done: Vec::new(),
            logout: None,
        };
        let name = format!("oxiscsi-{}", inner.info.tsih);
        let span = tracing::info_span!("session", isid = %inner.info.isid, tsih = inner.info.tsih, target = %inner.info.target);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || span.in_scope(|| t.run()))
            .map_err(|e| format!("cannot start the session's worker thread: {e}"))?;
        Ok(Worker { inner })
    }

    pub fn info(&self) -> &SessionInfo {
        &self.inner.info
    }

    /// Why the session ended, if it has.
    pub fn closed_reason(&self) -> Option<String> {
        self.inner.closed.borrow().clone()
    }

    /// Wait until the session has ended and say why.
    pub async fn closed(&self) -> String {
        let mut rx = self.inner.closed.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return STOPPED.into();
            }
        }
    }

    /// The connection's counters.
    pub async fn stats(&self) -> Result<ConnStats, InitError> {
        let (tx, rx) = oneshot::channel();
        if !self.inner.send(Ctl::Stats { tx }) {
            return Err(self.inner.gone());
        }
        rx.await.map_err(|_| self.inner.gone())?
    }

    /// Log out once the commands in flight have ended; the thread ends with it.
    pub async fn logout(&self) -> Result<(), InitError> {
        let (tx, rx) = oneshot::channel();
        if !self.inner.send(Ctl::Logout { tx }) {
            return Err(self.inner.gone());
        }
        rx.await.map_err(|_| self.inner.gone())?
    }

    /// Serve `file` on the FUSE connection `fd` (mounted, INIT not answered yet) as `id`.
    pub fn add_lun(&self, id: u64, fd: OwnedFd, file: Arc<LunFile>) -> Result<(), String> {
        match self.inner.send(Ctl::AddLun { id, fd, file }) {
            true => Ok(()),
            false => Err(STOPPED.into()),
        }
    }

    /// Stop serving `id` and close its FUSE connection (after its unmount: a process
    /// that still has the file open gets errors from now on).
    pub async fn remove_lun(&self, id: u64) {
        let (tx, rx) = oneshot::channel();
        if self.inner.send(Ctl::RemoveLun { id, tx }) {
            let _ = rx.await;
        }
    }

    fn slow_done(&self, id: u64, gate: Gate) {
        let _ = self.inner.send(Ctl::SlowDone { id, gate });
    }
}

/// A LUN file the thread serves.
struct Served {
    fd: Arc<OwnedFd>,
    file: Arc<LunFile>,
    /// Writes in flight (fast path, or retried by a task).
    writes: usize,
    /// A read-modify-write or punch is running.
    exclusive: bool,
    /// Requests waiting for the gate, in arrival order.
    deferred: VecDeque<(Header, Request, BytesMut)>,
}

/// What a submitted command is for.
enum Op {
    Read {
        id: u64,
        unique: u64,
        skip: usize,
        len: usize,
        cmd: Command,
    },
    Write {
        id: u64,
        unique: u64,
        len: u32,
        cmd: Command,
    },
    Ctl(oneshot::Sender<Result<ScsiResult, InitError>>),
}

struct Thread {
    /// None once logged out.
    p: Option<Poller>,
    depth: usize,
    rx: mpsc::Receiver<Ctl>,
    wake: RawFd,
    closed_tx: watch::Sender<Option<String>>,
    luns: HashMap<u64, Served>,
    ops: HashMap<u64, Op>,
    /// The daemon's commands waiting for a queue slot.
    backlog: VecDeque<(Command, oneshot::Sender<Result<ScsiResult, InitError>>)>,
    next_token: u64,
    me: Weak<Inner>,
    rt: tokio::runtime::Handle,
    rbuf: BytesMut,
    done: Vec<Completion>,
    logout: Option<oneshot::Sender<Result<(), InitError>>>,
}

fn closed_error(why: &Option<String>) -> InitError {
    InitError::Closed(
        why.clone()
            .unwrap_or_else(|| "the session has ended".into()),
    )
}

impl Thread {
    fn run(mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut ids: Vec<u64> = Vec::new();
        loop {
            if !self.take_ctl() {
                break;
            }
            if let Some(tx) = self.logout.take() {
                if self.ops.is_empty() || self.p.is_none() {
                    self.finish_logout(tx);
                    break;
                }
                self.logout = Some(tx);
            }
            let alive = self.p.is_some();
            let take = match &self.p {
                Some(p) => !p.wants_write() && p.in_flight() < self.depth && self.logout.is_none(),
                None => true,
            };
            fds.clear();
            ids.clear();
            fds.push(pollfd(self.wake, libc::POLLIN));
            if let Some(p) = &self.p {
                let out = if p.wants_write() { libc::POLLOUT } else { 0 };
                fds.push(pollfd(p.as_raw_fd(), libc::POLLIN | out));
            }
            for (id, s) in &self.luns {
                fds.push(pollfd(
                    s.fd.as_raw_fd(),
                    if take { libc::POLLIN } else { 0 },
                ));
                ids.push(*id);
            }
            let timeout = self.p.as_ref().and_then(|p| p.deadline()).map_or(-1, |d| {
                let left = d.saturating_duration_since(Instant::now());
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            });
            // SAFETY: polls `fds.len()` pollfd structs in a live vector.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                tracing::error!("poll failed: {}", std::io::Error::last_os_error());
                self.fail("the worker's poll(2) failed".into());
                continue;
            }
            if fds[0].revents != 0 {
                let mut n = [0u8; 8];
                // SAFETY: reads 8 bytes from an eventfd into a live array.
                let _ = unsafe { libc::read(self.wake, n.as_mut_ptr().cast(), 8) };
            }
            if alive {
                let readable = fds[1].revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
                self.service(readable);
            }
            let first = if alive { 2 } else { 1 };
            for (k, id) in ids.iter().enumerate() {
                let ev = fds[first + k].revents;
                if ev & libc::POLLIN != 0 {
                    self.take_requests(*id);
                } else if ev & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    // Unmounted or aborted under us; the daemon removes it.
                    if let Some(s) = self.luns.remove(id) {
                        tracing::info!(file = %s.file.name, "FUSE connection ended");
                    }
                }
            }
        }
        tracing::debug!("session worker ends");
    }

    /// Take what the daemon sent. False when every handle is gone.
    fn take_ctl(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(c) => self.ctl(c),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn ctl(&mut self, c: Ctl) {
        match c {
            Ctl::Exec { cmd, tx } => {
                self.backlog.push_back((cmd, tx));
                self.submit_backlog();
            }
            Ctl::AddLun { id, fd, file } => {
                self.luns.insert(
                    id,
                    Served {
                        fd: Arc::new(fd),
                        file,
                        writes: 0,
                        exclusive: false,
                        deferred: VecDeque::new(),
                    },
                );
            }
            Ctl::RemoveLun { id, tx } => {
                if let Some(mut s) = self.luns.remove(&id) {
                    for (h, _, _) in s.deferred.drain(..) {
                        let _ = dev::reply_err(s.fd.as_raw_fd(), h.unique, libc::EIO);
                    }
                }
                let _ = tx.send(());
            }
            Ctl::SlowDone { id, gate } => {
                if let Some(s) = self.luns.get_mut(&id) {
                    match gate {
                        Gate::None => {}
                        Gate::Write => s.writes = s.writes.saturating_sub(1),
                        Gate::Exclusive => s.exclusive = false,
                    }
                }
                self.drain_deferred(id);
            }
            Ctl::Stats { tx } => {
                let r = match &self.p {
                    Some(p) => Ok(p.stats()),
                    None => Err(closed_error(&self.closed_tx.borrow())),
                };
                let _ = tx.send(r);
            }
            Ctl::Logout { tx } => self.logout = Some(tx),
        }
    }

    fn finish_logout(&mut self, tx: oneshot::Sender<Result<(), InitError>>) {
        let r = match self.p.take() {
            Some(p) => p.logout(),
            None => {
                let why = self.closed_tx.borrow().clone();
                Err(closed_error(&why))
            }
        };
        let why = match &r {
            Ok(()) => "logged out".to_string(),
            Err(e) => e.to_string(),
        };
        self.closed_tx.send_if_modified(|c| {
            let first = c.is_none();
            if first {
                *c = Some(why);
            }
            first
        });
        let _ = tx.send(r);
    }

    /// The session has ended: everything in flight and waiting fails, later requests
    /// get EIO at once.
    fn fail(&mut self, why: String) {
        tracing::warn!("session failed: {why}");
        self.p = None;
        let err = || InitError::Closed(why.clone());
        for (_, op) in self.ops.drain() {
            match op {
                Op::Read { id, unique, .. } | Op::Write { id, unique, .. } => {
                    if let Some(s) = self.luns.get(&id) {
                        let _ = dev::reply_err(s.fd.as_raw_fd(), unique, libc::EIO);
                    }
                }
                Op::Ctl(tx) => {
                    let _ = tx.send(Err(err()));
                }
            }
        }
        for (_, tx) in self.backlog.drain(..) {
            let _ = tx.send(Err(err()));
        }
        for s in self.luns.values_mut() {
            s.writes = 0;
        }
        self.closed_tx.send_if_modified(|c| {
            let first = c.is_none();
            if first {
                *c = Some(why.clone());
            }
            first
        });
        let ids: Vec<u64> = self.luns.keys().copied().collect();
        for id in ids {
            self.drain_deferred(id);
        }
    }

    fn service(&mut self, readable: bool) {
        let Some(p) = self.p.as_mut() else { return };
        let mut done = std::mem::take(&mut self.done);
        let r = p.service_ready(readable, &mut done);
        for c in done.drain(..) {
            self.complete(c);
        }
        self.done = done;
        if let Err(e) = r {
            self.fail(e.to_string());
            return;
        }
        self.submit_backlog();
        let waiting: Vec<u64> = (self.luns.iter())
            .filter(|(_, s)| !s.deferred.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.drain_deferred(id);
        }
    }

    fn submit_backlog(&mut self) {
        while let Some((cmd, tx)) = self.backlog.pop_front() {
            let Some(p) = self.p.as_mut() else {
                let _ = tx.send(Err(closed_error(&self.closed_tx.borrow())));
                continue;
            };
            let token = self.next_token;
            match p.submit(token, cmd) {
                Ok(()) => {
                    self.next_token += 1;
                    self.ops.insert(token, Op::Ctl(tx));
                }
                Err(r) => match (r.error, r.command) {
                    (InitError::QueueFull { .. }, Some(cmd)) => {
                        self.backlog.push_front((cmd, tx));
                        break;
                    }
                    (e, _) => {
                        let _ = tx.send(Err(e));
                    }
                },
            }
        }
        if let Some(p) = self.p.as_mut() {
            if let Err(e) = p.flush() {
                self.fail(e.to_string());
            }
        }
    }

    /// A command came back.
    fn complete(&mut self, c: Completion) {
        let Some(op) = self.ops.remove(&c.token) else {
            return;
        };
        match op {
            Op::Ctl(tx) => {
                let _ = tx.send(c.result);
            }
            Op::Read {
                id,
                unique,
                skip,
                len,
                cmd,
            } => {
                let Some(s) = self.luns.get(&id) else { return };
                let fd = s.fd.as_raw_fd();
                match c.result {
                    Ok(r) if matches!(ops::judge(&r, 0), Verdict::Done) => {
                        answer_read(fd, &s.file, unique, &r, skip, len);
                    }
                    Ok(_) => self.slow_read(id, unique, cmd, skip, len),
                    Err(e) => {
                        tracing::error!(file = %s.file.name, "READ failed: {e}");
                        let _ = dev::reply_err(fd, unique, libc::EIO);
                    }
                }
            }
            Op::Write {
                id,
                unique,
                len,
                cmd,
            } => {
                let Some(s) = self.luns.get_mut(&id) else {
                    return;
                };
                let fd = s.fd.as_raw_fd();
                match c.result {
                    Ok(r) if matches!(ops::judge(&r, 0), Verdict::Done) => {
                        s.writes = s.writes.saturating_sub(1);
                        answer_write(fd, &s.file, unique, &r, len);
                        self.drain_deferred(id);
                    }
                    // The write stays counted until the task's retry answers.
                    Ok(_) => self.slow_write_retry(id, unique, cmd, len),
                    Err(e) => {
                        s.writes = s.writes.saturating_sub(1);
                        tracing::error!(file = %s.file.name, "WRITE failed: {e}");
                        let _ = dev::reply_err(fd, unique, libc::EIO);
                        self.drain_deferred(id);
                    }
                }
            }
        }
    }

    /// Read requests from LUN `id`'s FUSE connection while the session takes more.
    fn take_requests(&mut self, id: u64) {
        for _ in 0..BATCH {
            if let Some(p) = &self.p {
                if p.wants_write() || p.in_flight() >= self.depth {
                    return;
                }
            }
            let Some(s) = self.luns.get(&id) else { return };
            let fd = s.fd.as_raw_fd();
            let n = match dev::read(fd, &mut self.rbuf, READ_BUF) {
                Ok(Got::Request(n)) => n,
                Ok(Got::Nothing) => return,
                Ok(Got::Gone) => {
                    if let Some(s) = self.luns.remove(&id) {
                        tracing::info!(file = %s.file.name, "FUSE connection ended");
                    }
                    return;
                }
                Err(e) => {
                    // Not a condition that passes (poll would report it again at once):
                    // close the connection, so its users get errors instead of a hang.
                    tracing::error!(file = %s.file.name, "{e}; closing its FUSE connection");
                    self.luns.remove(&id);
                    return;
                }
            };
            let parsed = abi::parse(&self.rbuf[..n]);
            match parsed {
                Ok((h, r)) => {
                    // A WRITE's buffer goes with its command; the next read gets a new one.
                    let buf = if matches!(r, Request::Write { .. }) {
                        std::mem::replace(&mut self.rbuf, BytesMut::with_capacity(READ_BUF))
                    } else {
                        BytesMut::new()
                    };
                    self.request(id, h, r, buf);
                }
                Err(e) => {
                    tracing::error!(file = %s.file.name, "bad FUSE request: {e}");
                    if let Some(unique) = self.rbuf.get(8..16).and_then(|b| b.try_into().ok()) {
                        let _ = dev::reply_err(fd, u64::from_le_bytes(unique), libc::EIO);
                    }
                }
            }
        }
    }

    /// Answer or start one request; `buf` holds a WRITE's payload.
    fn request(&mut self, id: u64, h: Header, r: Request, buf: BytesMut) {
        let Some(s) = self.luns.get_mut(&id) else {
            return;
        };
        let fd = s.fd.clone();
        let dfd = fd.as_raw_fd();
        let file = s.file.clone();
        let ans = |e: i32, body: &[&[u8]]| {
            if let Err(err) = dev::reply(dfd, h.unique, e, body) {
                tracing::error!(file = %file.name, "{err}");
            }
        };
        match r {
            Request::Init { max_readahead } => ans(
                0,
                &[&abi::init_out(
                    max_readahead,
                    MAX_WRITE as u32,
                    MAX_READ,
                    MAX_BACKGROUND,
                )],
            ),
            Request::Getattr => ans(
                0,
                &[&abi::attr_out(abi::ROOT, file.size(), 0o100600, ATTR_SECS)],
            ),
            Request::Statfs => {
                let bs = file.block_size;
                ans(
                    0,
                    &[&abi::statfs_out(file.blocks.load(Ordering::Relaxed), bs)],
                )
            }
            Request::Open => {
                file.opens.fetch_add(1, Ordering::Relaxed);
                // No page cache here: the loop device (or the caller) caches, and every
                // write reaches the target before it is answered.
                ans(0, &[&abi::open_out(abi::FOPEN_DIRECT_IO)])
            }
            Request::Release => {
                file.opens.fetch_sub(1, Ordering::Relaxed);
                ans(0, &[])
            }
            // Writes are write-through: close has nothing to push.
            Request::Flush | Request::Destroy => ans(0, &[]),
            Request::Lookup { .. } => ans(-libc::ENOENT, &[]),
            Request::Opendir | Request::Releasedir => ans(-libc::ENOTDIR, &[]),
            Request::NoReply => {}
            Request::Other(_) => ans(-libc::ENOSYS, &[]),
            Request::Read { offset, size } => self.read(id, h, offset, size),
            Request::Write { offset, data } => {
                let len = data.len() as u64;
                if offset.checked_add(len).is_none_or(|end| end > file.size()) {
                    // A LUN does not grow.
                    return ans(-libc::ENOSPC, &[]);
                }
                let bs = u64::from(file.block_size);
                let whole = offset.is_multiple_of(bs) && len.is_multiple_of(bs) && len > 0;
                if s.exclusive || !s.deferred.is_empty() || (!whole && s.writes > 0) {
                    s.deferred
                        .push_back((h, Request::Write { offset, data }, buf));
                    return;
                }
                let payload = buf.freeze().slice(data);
                if whole {
                    self.fast_write(id, h.unique, offset, payload);
                } else {
                    s.exclusive = true;
                    let job = move |w: Worker, f: Arc<LunFile>| async move {
                        rmw_write(&w, &f, offset, payload)
                            .await
                            .map(|()| Reply::Written(len as u32))
                    };
                    self.slow(id, h.unique, Gate::Exclusive, "WRITE", libc::EIO, job);
                }
            }
            Request::Fsync => {
                if self.p.is_none() {
                    return ans(-libc::EIO, &[]);
                }
                let job = |w: Worker, f: Arc<LunFile>| async move {
                    ops::flush(&w, f.lun)
                        .await
                        .map_err(|e| e.to_string())
                        .map(|()| Reply::Empty)
                };
                self.slow(
                    id,
                    h.unique,
                    Gate::None,
                    "SYNCHRONIZE CACHE",
                    libc::EIO,
                    job,
                );
            }
            Request::Fallocate {
                offset,
                length,
                mode,
            } => {
                if mode == 0 || mode == abi::FALLOC_FL_KEEP_SIZE {
                    // Allocation inside a fixed-size LUN: nothing to do; beyond it, no room.
                    if mode == 0 && offset.saturating_add(length) > file.size() {
                        return ans(-libc::ENOSPC, &[]);
                    }
                    return ans(0, &[]);
                }
                if mode != abi::FALLOC_FL_PUNCH_HOLE | abi::FALLOC_FL_KEEP_SIZE {
                    return ans(-libc::EOPNOTSUPP, &[]);
                }
                if s.exclusive || !s.deferred.is_empty() || s.writes > 0 {
                    let r = Request::Fallocate {
                        offset,
                        length,
                        mode,
                    };
                    s.deferred.push_back((h, r, buf));
                    return;
                }
                s.exclusive = true;
                let job = move |w: Worker, f: Arc<LunFile>| async move {
                    punch(&w, &f, offset, length).await.map(|()| Reply::Empty)
                };
                // EOPNOTSUPP: the caller (the loop driver, blkdiscard) may zero it itself.
                self.slow(
                    id,
                    h.unique,
                    Gate::Exclusive,
                    "punch hole",
                    libc::EOPNOTSUPP,
                    job,
                );
            }
        }
    }

    fn read(&mut self, id: u64, h: Header, offset: u64, size: u32) {
        let Some(s) = self.luns.get(&id) else { return };
        let dfd = s.fd.as_raw_fd();
        let total = s.file.size();
        if offset >= total || size == 0 {
            let _ = dev::reply(dfd, h.unique, 0, &[]);
            return;
        }
        let len = u64::from(size).min(total - offset);
        let bs = u64::from(s.file.block_size);
        let first = offset / bs;
        let last = (offset + len).div_ceil(bs);
        let (Ok(blocks), Ok(read_len)) = (
            u32::try_from(last - first),
            u32::try_from((last - first) * bs),
        ) else {
            let _ = dev::reply_err(dfd, h.unique, libc::EIO);
            return;
        };
        let skip = (offset - first * bs) as usize;
        let cmd = Command::new(
            Lun::from_number(s.file.lun),
            Cdb::read(first, blocks).to_bytes(),
        )
        .with_read(read_len);
        let op = Op::Read {
            id,
            unique: h.unique,
            skip,
            len: len as usize,
            cmd: cmd.clone(),
        };
        self.submit(id, h.unique, cmd, op);
    }

    fn fast_write(&mut self, id: u64, unique: u64, offset: u64, payload: Bytes) {
        let Some(s) = self.luns.get_mut(&id) else {
            return;
        };
        let bs = u64::from(s.file.block_size);
        let len = payload.len() as u32;
        let blocks = (payload.len() as u64 / bs) as u32;
        let cdb = Cdb::write(offset / bs, blocks, false).to_bytes();
        let cmd = Command::new(Lun::from_number(s.file.lun), cdb).with_data_out(payload);
        s.writes += 1;
        let op = Op::Write {
            id,
            unique,
            len,
            cmd: cmd.clone(),
        };
        self.submit(id, unique, cmd, op);
    }

    /// Submit a FUSE request's command. The queue has room (requests are read only
    /// then); a session that ended answers EIO.
    fn submit(&mut self, id: u64, unique: u64, cmd: Command, op: Op) {
        let token = self.next_token;
        let r = match self.p.as_mut() {
            Some(p) => p.submit(token, cmd).map_err(|r| r.error),
            None => Err(closed_error(&self.closed_tx.borrow())),
        };
        match r {
            Ok(()) => {
                self.next_token += 1;
                self.ops.insert(token, op);
                if let Some(p) = self.p.as_mut() {
                    if let Err(e) = p.flush() {
                        self.fail(e.to_string());
                    }
                }
            }
            Err(e) => {
                let Some(s) = self.luns.get_mut(&id) else {
                    return;
                };
                tracing::error!(file = %s.file.name, "cannot start a command: {e}");
                if matches!(op, Op::Write { .. }) {
                    s.writes = s.writes.saturating_sub(1);
                }
                let _ = dev::reply_err(s.fd.as_raw_fd(), unique, libc::EIO);
            }
        }
    }

    /// Start the requests that waited for the gate, in order, as far as it allows.
    fn drain_deferred(&mut self, id: u64) {
        loop {
            let Some(s) = self.luns.get_mut(&id) else {
                return;
            };
            if s.exclusive {
                return;
            }
            if let Some(p) = &self.p {
                if p.wants_write() || p.in_flight() >= self.depth {
                    // The next completion drains on.
                    return;
                }
            }
            let Some((_, r, _)) = s.deferred.front() else {
                return;
            };
            let needs_alone = match r {
                Request::Write { offset, data } => {
                    let bs = u64::from(s.file.block_size);
                    !(offset.is_multiple_of(bs) && (data.len() as u64).is_multiple_of(bs))
                }
                _ => true,
            };
            if needs_alone && s.writes > 0 {
                return;
            }
            let Some((h, r, buf)) = s.deferred.pop_front() else {
                return;
            };
            // Put back in front of the gate's checks: nothing is deferred ahead of it now.
            let rest = std::mem::take(&mut s.deferred);
            self.request(id, h, r, buf);
            if let Some(s) = self.luns.get_mut(&id) {
                let mut newer = std::mem::replace(&mut s.deferred, rest);
                s.deferred.append(&mut newer);
            }
        }
    }

    fn slow_read(&mut self, id: u64, unique: u64, cmd: Command, skip: usize, len: usize) {
        let job = move |w: Worker, _f| async move {
            let r = ops::execute_checked(&w, cmd)
                .await
                .map_err(|e| e.to_string())?;
            match r.data.get(skip..skip + len) {
                Some(_) => Ok(Reply::Data(r.data.slice(skip..skip + len))),
                None => Err(format!(
                    "short read: {} of {} bytes",
                    r.data.len(),
                    skip + len
                )),
            }
        };
        self.slow(id, unique, Gate::None, "READ", libc::EIO, job);
    }

    fn slow_write_retry(&mut self, id: u64, unique: u64, cmd: Command, len: u32) {
        let job = move |w: Worker, _f| async move {
            let r = ops::execute_checked(&w, cmd)
                .await
                .map_err(|e| e.to_string())?;
            check_write(&r, len).map(|()| Reply::Written(len))
        };
        self.slow(id, unique, Gate::Write, "WRITE", libc::EIO, job);
    }

    /// Run `job` as a task on the runtime; answer request `unique` with its result (a
    /// failure is logged with `what` and answered `errno`) and give back what it held of
    /// the LUN's gate.
    fn slow<F, Fut>(
        &mut self,
        id: u64,
        unique: u64,
        gate: Gate,
        what: &'static str,
        errno: i32,
        job: F,
    ) where
        F: FnOnce(Worker, Arc<LunFile>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Reply, String>> + Send + 'static,
    {
        let Some(s) = self.luns.get(&id) else { return };
        let (fd, file) = (s.fd.clone(), s.file.clone());
        let Some(inner) = self.me.upgrade() else {
            let _ = dev::reply_err(fd.as_raw_fd(), unique, libc::EIO);
            return;
        };
        let w = Worker { inner };
        self.rt.spawn(async move {
            let r = job(w.clone(), file.clone()).await;
            let dfd = fd.as_raw_fd();
            let sent = match r {
                Ok(Reply::Written(n)) => dev::reply(dfd, unique, 0, &[&abi::write_out(n)]),
                Ok(Reply::Empty) => dev::reply(dfd, unique, 0, &[]),
                Ok(Reply::Data(d)) => dev::reply(dfd, unique, 0, &[&d]),
                Err(e) => {
                    tracing::error!(file = %file.name, "{what} failed: {e}");
                    dev::reply_err(dfd, unique, errno)
                }
            };
            if let Err(e) = sent {
                tracing::error!(file = %file.name, "{e}");
            }
            w.slow_done(id, gate);
        });
    }
}

/// What a task answers its FUSE request with.
enum Reply {
    /// `fuse_write_out` with the byte count.
    Written(u32),
    Empty,
    Data(Bytes),
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Answer a READ from its command's data.
fn answer_read(fd: RawFd, file: &LunFile, unique: u64, r: &ScsiResult, skip: usize, len: usize) {
    let sent = match r.data.get(skip..skip + len) {
        Some(d) => dev::reply(fd, unique, 0, &[d]),
        None => {
            tracing::error!(file = %file.name, "short read: {} of {} bytes", r.data.len(), skip + len);
            dev::reply_err(fd, unique, libc::EIO)
        }
    };
    if let Err(e) = sent {
        tracing::error!(file = %file.name, "{e}");
    }
}

/// A WRITE answered GOOD took everything, or the target says how much it did not.
fn check_write(r: &ScsiResult, len: u32) -> Result<(), String> {
    match r.residual {
        Residual::Underflow(n) if n > 0 => Err(format!(
            "short write: the target took {n} of {len} bytes fewer"
        )),
        _ => Ok(()),
    }
}

fn answer_write(fd: RawFd, file: &LunFile, unique: u64, r: &ScsiResult, len: u32) {
    let sent = match check_write(r, len) {
        Ok(()) => dev::reply(fd, unique, 0, &[&abi::write_out(len)]),
        Err(e) => {
            tracing::error!(file = %file.name, "{e}");
            dev::reply_err(fd, unique, libc::EIO)
        }
    };
    if let Err(e) = sent {
        tracing::error!(file = %file.name, "{e}");
    }
}

async fn read_blocks(w: &Worker, f: &LunFile, first: u64, blocks: u32) -> Result<Bytes, String> {
    let len = u64::from(blocks) * u64::from(f.block_size);
    let len = u32::try_from(len).map_err(|_| format!("read of {len} bytes is too large"))?;
    let cmd =
        Command::new(Lun::from_number(f.lun), Cdb::read(first, blocks).to_bytes()).with_read(len);
    let r = ops::execute_checked(w, cmd)
        .await
        .map_err(|e| e.to_string())?;
    if r.data.len() != len as usize {
        return Err(format!("short read: {} of {len} bytes", r.data.len()));
    }
    Ok(r.data)
}

async fn write_blocks(w: &Worker, f: &LunFile, first: u64, data: Bytes) -> Result<(), String> {
    let len = u32::try_from(data.len()).map_err(|_| "write too large".to_string())?;
    let blocks = len / f.block_size;
    let cmd = Command::new(
        Lun::from_number(f.lun),
        Cdb::write(first, blocks, false).to_bytes(),
    )
    .with_data_out(data);
    let r = ops::execute_checked(w, cmd)
        .await
        .map_err(|e| e.to_string())?;
    check_write(&r, len)
}

/// Write `data` at a byte offset that is not whole blocks: read the covering blocks,
/// patch, write back. The caller holds the LUN's write gate alone.
async fn rmw_write(w: &Worker, f: &LunFile, offset: u64, data: Bytes) -> Result<(), String> {
    let bs = u64::from(f.block_size);
    let first = offset / bs;
    let last = (offset + data.len() as u64).div_ceil(bs);
    let blocks = u32::try_from(last - first).map_err(|_| "write too large".to_string())?;
    let old = read_blocks(w, f, first, blocks).await?;
    let mut buf = BytesMut::from(&old[..]);
    let start = (offset - first * bs) as usize;
    buf[start..start + data.len()].copy_from_slice(&data);
    write_blocks(w, f, first, buf.freeze()).await
}

/// Deallocate `[offset, offset+len)` so it reads back as zeros: whole blocks by UNMAP
/// (or WRITE SAME with UNMAP where unmapped blocks might not read back as zeros),
/// partial blocks by writing zeros. The caller holds the LUN's write gate alone.
async fn punch(w: &Worker, f: &LunFile, offset: u64, len: u64) -> Result<(), String> {
    let bs = u64::from(f.block_size);
    let end = offset.saturating_add(len).min(f.size());
    if offset >= end {
        return Ok(());
    }
    let first_full = offset.div_ceil(bs);
    let last_full = end / bs;
    let zeros = |n: u64| Bytes::from(vec![0u8; n as usize]);
    if offset < first_full * bs {
        let to = (first_full * bs).min(end);
        rmw_write(w, f, offset, zeros(to - offset)).await?;
    }
    let mut lba = first_full;
    while lba < last_full {
        let n = (last_full - lba).min(1 << 22) as u32;
        let cmd = if f.unmap_zeroes {
            let params = oxiscsi_initiator::scsi::cdb::unmap_parameter_list(&[(lba, n)]);
            let cdb = Cdb::Unmap {
                anchor: false,
                param_len: params.len() as u16,
            };
            Command::new(Lun::from_number(f.lun), cdb.to_bytes()).with_data_out(Bytes::from(params))
        } else {
            ops::write_same(f.lun, lba, n, zeros(bs), true)
        };
        ops::execute_checked(w, cmd)
            .await
            .map_err(|e| e.to_string())?;
        lba += u64::from(n);
    }
    if last_full * bs < end && last_full >= first_full {
        let from = (last_full * bs).max(offset);
        rmw_write(w, f, from, zeros(end - from)).await?;
    }
    Ok(())
}
