//! The connection's shared state and its driver, in quinn's shape (STYLE §3): the
//! protocol core sits behind one mutex; a caller locks it, submits its command and, when
//! nothing else is in flight, writes the PDU itself; the driver task reads the socket,
//! feeds the core, runs its timer and writes what callers left queued. Completions go
//! straight to the waiting caller's waker. No protocol decision is made here.
//!
//! Why not a channel to a driver task: every command then cost two task hops (caller →
//! driver → socket, socket → driver → caller) and a channel send, a semaphore permit and a
//! oneshot; perf showed that bookkeeping as most of the initiator's user-space time.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use oxiscsi_proto::pdu::{Framer, TmfResponse};
use oxiscsi_proto::session::tags::TagTable;
use oxiscsi_proto::session::{Command, Event, InitiatorConnection, ScsiResult, TaskError, TaskId};
use tokio::sync::Notify;

use crate::error::Error;
use crate::queue::Rejected;
use crate::rx::Reader;
use crate::sock::{set_lowat, Socket};
use crate::time::{OneShot, Timer};
use crate::tx::TxQueue;

/// Reads per driver wake-up before it lets the callers it woke run.
const MORE_READS: usize = 16;

/// What a finished exchange hands its caller. Errors are boxed: an outcome is moved
/// several times per command (into its waiter, out of it, up through the futures), and
/// at 88 bytes instead of 160 those moves are inline stores instead of memmove calls
/// (a 4K read made 19 memmove calls before, 9 after).
pub(crate) enum Outcome {
    Scsi(Result<ScsiResult, Box<Error>>),
    Tmf(Result<TmfResponse, Box<Error>>),
    Text(Result<Vec<(String, String)>, Box<Error>>),
}

struct Waiter {
    waker: Option<Waker>,
    /// Delivered to a completion queue ([`crate::Queue`]) with the caller's token
    /// instead of to a waiting future.
    to_queue: Option<(QueueId, u64)>,
    outcome: Option<Outcome>,
    /// A SCSI command holding one of the session's queue slots until the target answers.
    holds_slot: bool,
    /// False once the caller stopped waiting (its future was dropped): the outcome is
    /// dropped when it comes.
    listening: bool,
}

/// Names a completion queue: its index in the core's table and that index's generation,
/// so an id kept past [`Core::close_queue`] never reaches the queue that reuses the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueId {
    index: u32,
    generation: u32,
}

#[derive(Default)]
struct QueueState {
    generation: u32,
    open: bool,
    /// Commands submitted through the queue and not yet handed back by
    /// [`Core::poll_queue`] (finished ones waiting in `done` included).
    in_flight: usize,
    done: Vec<(u64, Outcome)>,
    /// The consumer's waker, taken by the first completion: one wake-up per batch.
    waker: Option<Waker>,
}

impl QueueState {
    fn deliver(&mut self, token: u64, outcome: Outcome) {
        self.done.push((token, outcome));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// Everything callers and the driver share, behind [`Shared::core`].
pub(crate) struct Core {
    pub conn: InitiatorConnection,
    /// Encoded PDUs not yet written.
    outq: TxQueue,
    waiters: TagTable<Waiter>,
    /// Commands holding a queue slot, and how many may (like open-iscsi's cmds_max).
    active: usize,
    queue_depth: usize,
    /// Callers waiting for a slot, first come first served.
    slot_queue: VecDeque<(u64, Waker)>,
    /// Completion queues by index; a closed one's index is reused with a new generation.
    queues: Vec<QueueState>,
    next_ticket: u64,
    /// The driver's waker, and whether a caller has already asked it to run.
    driver: Option<Waker>,
    kicked: bool,
    /// The deadline the driver's timer is set to.
    armed: Option<Instant>,
    portal: String,
    failure: Option<String>,
    logged_out: bool,
    /// Why the session ended, once it has.
    pub closed: Option<String>,
}

pub(crate) struct Shared {
    pub core: Mutex<Core>,
    /// Read only by the driver; written under the core's lock, so PDUs never interleave.
    stream: Socket,
    /// Wakes [`crate::Session::closed`] waiters when the driver ends.
    pub closed_signal: Notify,
    span: tracing::Span,
}

impl Shared {
    pub(crate) fn new(
        conn: InitiatorConnection,
        stream: Socket,
        queue_depth: usize,
        span: tracing::Span,
        portal: String,
    ) -> Arc<Shared> {
        let outq = TxQueue::new(conn.tx_digests());
        Arc::new(Shared {
            core: Mutex::new(Core {
                conn,
                outq,
                waiters: TagTable::default(),
                active: 0,
                queue_depth: queue_depth.max(1),
                slot_queue: VecDeque::new(),
                queues: Vec::new(),
                next_ticket: 0,
                driver: None,
                kicked: false,
                armed: None,
                portal,
                failure: None,
                logged_out: false,
                closed: None,
            }),
            stream,
            closed_signal: Notify::new(),
            span,
        })
    }

    /// The lock is only poisoned by a panic while holding it; the core's state is still
    /// whole then (it is never left half-updated across a call), so go on with it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a caller changed the core: queue what it produced, then write it now when
    /// nothing else is in flight (QD1: no task hop), else leave it to the driver, which
    /// runs after the other callers woken with this one and writes all of theirs in one
    /// `writev` (strace before batching: one writev per command).
    pub(crate) fn after_call(&self, core: &mut Core) {
        self.after_call_deferred(core);
        if !core.outq.is_empty() {
            if core.conn.in_flight() <= 1 {
                core.flush(&self.stream);
            } else {
                core.kick();
            }
        }
    }

    /// As [`after_call`](Self::after_call), but what was queued for the wire stays
    /// queued for [`flush_queued`](Self::flush_queued) (a completion queue's caller
    /// sends its batch when it goes to wait) or the driver's next run.
    pub(crate) fn after_call_deferred(&self, core: &mut Core) {
        core.pump(&self.span);
        if core.conn.is_closed() {
            core.kick();
        } else if let Some(at) = core.conn.poll_timeout() {
            if core.armed.is_none_or(|armed| at < armed) {
                core.kick();
            }
        }
    }

    /// Write what is queued now, without waiting (a full socket leaves the rest to the
    /// driver).
    pub(crate) fn flush_queued(&self, core: &mut Core) {
        if !core.outq.is_empty() {
            core.flush(&self.stream);
        }
    }

    /// The error callers get once the session has ended.
    pub(crate) fn closed_error(&self) -> Error {
        let why = self
            .lock()
            .closed
            .clone()
            .unwrap_or_else(|| "session ended".into());
        Error::Closed(why)
    }
}

impl Core {
    /// Register a caller's exchange, already accepted by the core.
    pub(crate) fn add_waiter(&mut self, id: TaskId, waker: Option<Waker>, holds_slot: bool) {
        self.waiters.insert(
            id.0,
            Waiter {
                waker,
                to_queue: None,
                outcome: None,
                holds_slot,
                listening: true,
            },
        );
    }

    pub(crate) fn logged_out(&self) -> bool {
        self.logged_out
    }

    /// Ask the driver to run (to write, re-arm its timer or end).
    fn kick(&mut self) {
        if !self.kicked {
            self.kicked = true;
            if let Some(w) = &self.driver {
                w.wake_by_ref();
            }
        }
    }

    /// Move the core's output to the write queue and its events to their callers.
    fn pump(&mut self, span: &tracing::Span) {
        while let Some(pdu) = self.conn.poll_transmit() {
            self.outq.push(&pdu);
        }
        while let Some(ev) = self.conn.poll_event() {
            match route(ev, span, &self.portal) {
                Routed::Done(id, outcome) => self.complete(id, outcome),
                Routed::LoggedOut => {
                    self.logged_out = true;
                    self.failure.get_or_insert_with(|| LOGGED_OUT.into());
                }
                Routed::Failed(why) => self.failure = Some(why),
                Routed::Logged => {}
            }
        }
    }

    fn complete(&mut self, id: TaskId, outcome: Outcome) {
        let Some(w) = self.waiters.get_mut(&id.0) else {
            return;
        };
        let holds_slot = std::mem::take(&mut w.holds_slot);
        if let Some((q, token)) = w.to_queue {
            self.waiters.remove(&id.0);
            // Dropped when the queue was closed meanwhile.
            if let Some(st) = self.queue_mut(q) {
                st.deliver(token, outcome);
            }
        } else if w.listening {
            w.outcome = Some(outcome);
            if let Some(k) = w.waker.take() {
                k.wake();
            }
        } else {
            self.waiters.remove(&id.0);
        }
        if holds_slot {
            self.release_slot();
        }
    }

    fn release_slot(&mut self) {
        self.active = self.active.saturating_sub(1);
        if let Some((_, w)) = self.slot_queue.front() {
            w.wake_by_ref();
        }
    }

    /// Write what is queued without waiting. A full socket leaves the rest for the
    /// driver, which waits until it is writable.
    fn flush(&mut self, stream: &Socket) {
        match self
            .outq
            .write_with(|slices| stream.try_write_vectored(slices))
        {
            Ok(true) => {}
            Ok(false) => self.kick(),
            Err(why) => {
                self.conn.handle_closed(&why);
                self.kick();
            }
        }
    }

    /// Look for a caller's outcome; register its waker when there is none yet.
    fn poll_outcome(&mut self, id: TaskId, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(w) = self.waiters.get_mut(&id.0) else {
            // Only a driver that ended and already failed every waiter gets here.
            let why = self
                .closed
                .clone()
                .unwrap_or_else(|| "session ended".into());
            return Poll::Ready(Outcome::Scsi(Err(Box::new(Error::Closed(why)))));
        };
        if let Some(o) = w.outcome.take() {
            self.waiters.remove(&id.0);
            return Poll::Ready(o);
        }
        match &w.waker {
            Some(k) if k.will_wake(cx.waker()) => {}
            _ => w.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn queue_mut(&mut self, q: QueueId) -> Option<&mut QueueState> {
        self.queues
            .get_mut(q.index as usize)
            .filter(|st| st.open && st.generation == q.generation)
    }

    /// A new completion queue (see [`crate::Queue`]).
    pub(crate) fn open_queue(&mut self) -> QueueId {
        let index = match self.queues.iter().position(|st| !st.open) {
            Some(i) => i,
            None => {
                self.queues.push(QueueState::default());
                self.queues.len() - 1
            }
        };
        let st = &mut self.queues[index];
        st.open = true;
        QueueId {
            index: index as u32,
            generation: st.generation,
        }
    }

    /// The queue's owner is gone: its commands still run to their end at the target
    /// (keeping their slots until then) and their outcomes are dropped, as for a dropped
    /// [`Wait`]: the new generation no longer matches the id their waiters carry.
    pub(crate) fn close_queue(&mut self, q: QueueId) {
        let Some(st) = self.queue_mut(q) else { return };
        *st = QueueState {
            generation: st.generation.wrapping_add(1),
            ..QueueState::default()
        };
    }

    /// Submit a SCSI command whose outcome goes to queue `q` with `token`. It takes a
    /// queue slot at once or fails: a caller waiting in line for one goes first. A
    /// refusal before the protocol core took the command hands it back.
    #[allow(clippy::result_large_err)] // the command comes back by value (Queue::submit)
    pub(crate) fn queue_submit(
        &mut self,
        q: QueueId,
        token: u64,
        cmd: Command,
        now: Instant,
    ) -> Result<(), Rejected> {
        let refused = |error, command| Rejected {
            error,
            command: Some(command),
        };
        if let Some(why) = &self.closed {
            return Err(refused(Error::Closed(why.clone()), cmd));
        }
        if self.active >= self.queue_depth || !self.slot_queue.is_empty() {
            let depth = self.queue_depth;
            return Err(refused(Error::QueueFull { depth }, cmd));
        }
        if self.queue_mut(q).is_none() {
            let why = "the completion queue was closed".into();
            return Err(refused(Error::Closed(why), cmd));
        }
        self.active += 1;
        match self.conn.submit(now, cmd) {
            Ok(id) => {
                self.waiters.insert(
                    id.0,
                    Waiter {
                        waker: None,
                        to_queue: Some((q, token)),
                        outcome: None,
                        holds_slot: true,
                        listening: true,
                    },
                );
                if let Some(st) = self.queue_mut(q) {
                    st.in_flight += 1;
                }
                Ok(())
            }
            Err(e) => {
                self.release_slot();
                Err(Rejected {
                    error: Error::Task(e),
                    command: None,
                })
            }
        }
    }

    /// Move queue `q`'s finished commands to `out`; register the caller's waker when
    /// there are none yet. Ready with 0 when nothing is in flight.
    pub(crate) fn poll_queue(
        &mut self,
        q: QueueId,
        cx: &mut Context<'_>,
        out: &mut Vec<(u64, Outcome)>,
    ) -> Poll<usize> {
        let Some(st) = self.queue_mut(q) else {
            return Poll::Ready(0);
        };
        if !st.done.is_empty() {
            let n = st.done.len();
            st.in_flight -= n;
            out.append(&mut st.done);
            return Poll::Ready(n);
        }
        if st.in_flight == 0 {
            return Poll::Ready(0);
        }
        match &st.waker {
            Some(k) if k.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The caller stopped waiting: the command still runs to its end at the target (and
    /// keeps its queue slot until then), its outcome is dropped.
    fn forget(&mut self, id: TaskId) {
        if let Some(w) = self.waiters.get_mut(&id.0) {
            if w.outcome.is_some() {
                self.waiters.remove(&id.0);
            } else {
                w.listening = false;
                w.waker = None;
            }
        }
    }
}

/// What a driver does with one of the core's events.
pub(crate) enum Routed {
    /// An exchange finished: its outcome goes to whoever waits for it.
    Done(TaskId, Outcome),
    /// The target answered our Logout: the session ends cleanly.
    LoggedOut,
    /// The connection failed, for this reason.
    Failed(String),
    /// Logged (on `span`), nothing else to do.
    Logged,
}

/// Why a session ended after a clean logout (what callers see in `Error::Closed`).
pub(crate) const LOGGED_OUT: &str = "logged out";

/// Sort one of the core's events for a driver (both drivers decide the same way).
pub(crate) fn route(ev: Event, span: &tracing::Span, portal: &str) -> Routed {
    match ev {
        Event::Completed { id, result } => {
            Routed::Done(id, Outcome::Scsi(result.map_err(task_error)))
        }
        Event::TmfCompleted { id, response } => Routed::Done(id, Outcome::Tmf(Ok(response))),
        Event::TextCompleted { id, result } => {
            Routed::Done(id, Outcome::Text(result.map_err(task_error)))
        }
        Event::Async {
            event, lun, sense, ..
        } => {
            span.in_scope(|| {
                tracing::info!(%event, ?lun, sense_len = sense.len(), "asynchronous event from target")
            });
            Routed::Logged
        }
        Event::LogoutRequested { within } => {
            span.in_scope(|| {
                tracing::warn!(?within, "target requested logout; draining and logging out")
            });
            Routed::Logged
        }
        Event::LoggedOut {
            response,
            time2wait,
            ..
        } => {
            span.in_scope(|| tracing::info!(%response, time2wait, "logged out"));
            Routed::LoggedOut
        }
        Event::Failed(e) => {
            span.in_scope(|| tracing::warn!(error = %e, "connection failed"));
            Routed::Failed(format!("connection to {portal} failed: {e}"))
        }
    }
}

fn task_error(e: TaskError) -> Box<Error> {
    Box::new(Error::Task(e))
}

/// Read what the socket holds (bounded), feeding the core after each read. The lock
/// taken for feeding is kept in `guard` for the caller, and over the next small read
/// (one lock per wake-up, not one per read). On a multi-thread runtime it is not held
/// over a large payload's read, so callers on other workers can submit meanwhile; on a
/// current-thread runtime nobody else can take it while this task runs. Returns true
/// when reading stopped early with more possibly waiting.
fn read<'a>(
    shared: &'a Shared,
    reader: &mut Reader,
    cx: &mut Context<'_>,
    guard: &mut Option<MutexGuard<'a, Core>>,
    current_thread: bool,
    lowat: &mut usize,
) -> bool {
    let stream = &shared.stream;
    for _ in 0..MORE_READS {
        if !current_thread && reader.reads_large() {
            *guard = None;
        }
        let (into, limit) = reader.target();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let room = limit.min(into.capacity() - into.len());
        let why = match stream.try_read_buf(&mut into.limit(limit)) {
            Ok(0) => "the target closed the TCP connection".to_string(),
            Ok(n) => {
                let core = guard.get_or_insert_with(|| shared.lock());
                reader.feed(&mut core.conn);
                if core.conn.is_closed() {
                    return false;
                }
                if !(n < room && current_thread && reader.at_boundary()) {
                    // Mid-frame, the rest is on its way: read again.
                    continue;
                }
                // A short read that ended on a PDU boundary took all the socket held (as
                // nginx assumes): mark it not ready rather than pay a read that fails
                // with EAGAIN, and wait for the next edge now (bytes that arrive later
                // raise one, which wakes the reader).
                stream.clear_read_ready();
                set_lowat(stream.as_raw_fd(), lowat, 0);
                match stream.poll_read_ready(cx) {
                    Poll::Pending => return false,
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => format!("read error: {e}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                set_lowat(stream.as_raw_fd(), lowat, reader.frame_remaining());
                match stream.poll_read_ready(cx) {
                    Poll::Pending => return false,
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => format!("read error: {e}"),
                }
            }
            Err(e) => format!("read error: {e}"),
        };
        guard
            .get_or_insert_with(|| shared.lock())
            .conn
            .handle_closed(&why);
        return false;
    }
    true
}

/// Takes a queue slot (first come, first served) and submits one SCSI command; resolves
/// to its task id. The command's waiter is registered with this future's waker, so the
/// caller that goes on to [`Wait`] is woken by its completion without another lock.
pub(crate) struct Submit<'a> {
    shared: &'a Shared,
    cmd: Option<Command>,
    ticket: Option<u64>,
}

impl<'a> Submit<'a> {
    pub(crate) fn new(shared: &'a Shared, cmd: Command) -> Submit<'a> {
        Submit {
            shared,
            cmd: Some(cmd),
            ticket: None,
        }
    }
}

impl Future for Submit<'_> {
    type Output = Result<TaskId, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Submit {
            shared,
            cmd,
            ticket,
        } = self.get_mut();
        let shared: &Shared = shared;
        let mut core = shared.lock();
        if let Some(why) = &core.closed {
            return Poll::Ready(Err(Error::Closed(why.clone())));
        }
        let first = match *ticket {
            None => core.slot_queue.is_empty(),
            Some(t) => core.slot_queue.front().is_some_and(|(f, _)| *f == t),
        };
        if !first || core.active >= core.queue_depth {
            match *ticket {
                None => {
                    let t = core.next_ticket;
                    core.next_ticket += 1;
                    core.slot_queue.push_back((t, cx.waker().clone()));
                    *ticket = Some(t);
                }
                Some(t) => {
                    if let Some((_, w)) = core.slot_queue.iter_mut().find(|(x, _)| *x == t) {
                        if !w.will_wake(cx.waker()) {
                            *w = cx.waker().clone();
                        }
                    }
                }
            }
            return Poll::Pending;
        }
        if ticket.take().is_some() {
            core.slot_queue.pop_front();
        }
        let Some(cmd) = cmd.take() else {
            return Poll::Ready(Err(Error::Closed("command already submitted".into())));
        };
        core.active += 1;
        if core.active < core.queue_depth {
            // More slots are free: let the next caller in line take one.
            if let Some((_, w)) = core.slot_queue.front() {
                w.wake_by_ref();
            }
        }
        match core.conn.submit(Instant::now(), cmd) {
            Ok(id) => {
                core.add_waiter(id, Some(cx.waker().clone()), true);
                shared.after_call(&mut core);
                Poll::Ready(Ok(id))
            }
            Err(e) => {
                core.release_slot();
                Poll::Ready(Err(Error::Task(e)))
            }
        }
    }
}

impl Drop for Submit<'_> {
    fn drop(&mut self) {
        let Some(t) = self.ticket else { return };
        let mut core = self.shared.lock();
        let was_first = core.slot_queue.front().is_some_and(|(f, _)| *f == t);
        core.slot_queue.retain(|(x, _)| *x != t);
        if was_first && core.active < core.queue_depth {
            if let Some((_, w)) = core.slot_queue.front() {
                w.wake_by_ref();
            }
        }
    }
}

/// Waits for the outcome of an exchange the core accepted. Dropping it leaves the
/// session consistent: the exchange ends at the target and its outcome is dropped.
///
/// `S` is how it reaches the session: borrowed while the caller awaits it in place (no
/// reference count to touch per command), an `Arc` when it outlives the call
/// ([`Pending`](crate::session::Pending)).
pub(crate) struct Wait<S: Deref<Target = Shared> = Arc<Shared>> {
    shared: S,
    id: TaskId,
    done: bool,
    /// The waiter already holds this task's waker (registered by [`Submit`] in the same
    /// poll), so the first poll need not look.
    registered: bool,
}

impl<S: Deref<Target = Shared>> Wait<S> {
    pub(crate) fn new(shared: S, id: TaskId) -> Wait<S> {
        Wait {
            shared,
            id,
            done: false,
            registered: false,
        }
    }

    /// For the task that just ran [`Submit`] to completion and polls this next, in the
    /// same poll: the completion wakes that waker, so the first poll returns at once.
    pub(crate) fn after_submit(shared: S, id: TaskId) -> Wait<S> {
        let mut w = Wait::new(shared, id);
        w.registered = true;
        w
    }
}

impl<S: Deref<Target = Shared> + Unpin> Future for Wait<S> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        if std::mem::take(&mut this.registered) {
            return Poll::Pending;
        }
        let r = this.shared.lock().poll_outcome(this.id, cx);
        if r.is_ready() {
            this.done = true;
        }
        r
    }
}

impl<S: Deref<Target = Shared>> Drop for Wait<S> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.lock().forget(self.id);
        }
    }
}

/// Submit a TMF or text exchange (no queue slot) and wait for its outcome.
pub(crate) async fn call(
    shared: &Arc<Shared>,
    start: impl FnOnce(&mut InitiatorConnection, Instant) -> Result<TaskId, TaskError>,
) -> Result<Outcome, Error> {
    let id = {
        let mut core = shared.lock();
        if let Some(why) = &core.closed {
            return Err(Error::Closed(why.clone()));
        }
        let id = start(&mut core.conn, Instant::now()).map_err(Error::Task)?;
        core.add_waiter(id, None, false);
        shared.after_call(&mut core);
        id
    };
    Ok(Wait::new(&**shared, id).await)
}

/// Whether the driver's timer must be set again for the core's next deadline. Only when
/// that deadline comes before the one armed: a later one (the NOP-interval timer moves
/// out with every PDU received) waits until the armed timer fires, which costs one
/// early wake-up instead of a timerfd_settime per PDU, and a deadline that went away
/// leaves a stale one to fire once for nothing. The core handles a timeout that finds
/// nothing due as a no-op.
pub(crate) fn needs_rearm(deadline: Option<Instant>, armed: Option<Instant>) -> bool {
    match (deadline, armed) {
        (Some(d), Some(a)) => d < a,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The driver task: reads and feeds the core, runs its timer, writes what callers left
/// queued, and at the end fails whatever still waits.
pub(crate) struct Driver {
    shared: Arc<Shared>,
    reader: Reader,
    /// The core's next deadline (see [`crate::time`] for why not tokio's timer).
    timer: Timer,
    /// A multi-thread runtime runs a task woken by the running one next (its LIFO slot),
    /// so the driver, kicked by the first caller of a batch, would write that caller's
    /// command alone: there it yields once first. A current-thread runtime already runs
    /// it after every caller woken before it.
    yield_before_flush: bool,
    yielded: bool,
    /// The socket's `SO_RCVLOWAT` as last set (see [`crate::sock::set_lowat`]).
    lowat: usize,
    /// On a current-thread runtime the I/O driver only runs while this thread parks, so
    /// readiness cannot change between a short read and clearing it (on a multi-thread
    /// runtime another worker may record a new edge in between, and clearing it would
    /// lose that wake-up: there the driver reads until EAGAIN), and no other task can
    /// want the core's lock while the driver holds it.
    current_thread: bool,
}

impl Driver {
    pub(crate) fn new(
        shared: Arc<Shared>,
        framer: Framer,
        leftover: BytesMut,
    ) -> std::io::Result<Driver> {
        let current_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        let mut reader = Reader::new(framer, leftover);
        // Bytes that arrived with the final Login Response.
        reader.feed(&mut shared.lock().conn);
        Ok(Driver {
            shared,
            reader,
            timer: Timer::new()?,
            yield_before_flush: !current_thread,
            yielded: false,
            lowat: 1,
            current_thread,
        })
    }
}

/// The connection is closed: write what is left if the socket takes it at once, close
/// the socket, and fail every caller still waiting.
fn finish(shared: &Shared, core: &mut Core) {
    core.flush(&shared.stream);
    // SAFETY: shutdown(2) on the socket's own open descriptor; no memory is involved.
    unsafe {
        libc::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&shared.stream),
            libc::SHUT_RDWR,
        );
    }
    let reason = core
        .failure
        .take()
        .unwrap_or_else(|| "connection closed".into());
    core.closed = Some(reason.clone());
    let mut to_queues = Vec::new();
    for (_, w) in core.waiters.iter_mut() {
        if let Some(to) = w.to_queue {
            to_queues.push(to);
        } else if w.outcome.is_none() {
            // The caller's future maps a SCSI-shaped error onto whatever it waits for.
            w.outcome = Some(Outcome::Scsi(Err(Box::new(Error::Closed(reason.clone())))));
            if let Some(k) = w.waker.take() {
                k.wake();
            }
        }
    }
    // Kept: futures still to collect their outcome. Queued commands get theirs below.
    core.waiters
        .retain(|_, w| w.listening && w.to_queue.is_none());
    for (q, token) in to_queues {
        let err = Error::Closed(reason.clone());
        if let Some(st) = core.queue_mut(q) {
            st.deliver(token, Outcome::Scsi(Err(Box::new(err))));
        }
    }
    for (_, w) in core.slot_queue.drain(..) {
        w.wake();
    }
    core.driver = None;
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Driver {
            shared,
            reader,
            timer,
            yield_before_flush,
            yielded,
            current_thread,
            lowat,
        } = self.get_mut();
        let shared: &Shared = shared;
        let _enter = shared.span.enter();
        loop {
            let mut guard = None;
            let more = read(shared, reader, cx, &mut guard, *current_thread, lowat);
            let mut core = match guard {
                Some(g) => g,
                None => shared.lock(),
            };
            // The timer wakes this task when it fires; until then no clock is read.
            if core.armed.is_some() && timer.poll_expired(cx).is_ready() {
                core.armed = None;
                core.conn.handle_timeout(Instant::now());
            }
            core.pump(&shared.span);
            if core.conn.is_closed() {
                finish(shared, &mut core);
                drop(core);
                shared.closed_signal.notify_waiters();
                return Poll::Ready(());
            }
            if !core.outq.is_empty() {
                if *yield_before_flush && core.kicked && !*yielded && core.conn.in_flight() > 1 {
                    // Let the other callers woken with the one that kicked queue theirs.
                    *yielded = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                core.flush(&shared.stream);
                *yielded = false;
                if core.conn.is_closed() {
                    continue;
                }
            }
            match &core.driver {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => core.driver = Some(cx.waker().clone()),
            }
            core.kicked = false;
            let deadline = core.conn.poll_timeout();
            if needs_rearm(deadline, core.armed) {
                core.armed = deadline;
                if let Err(e) = timer.set(deadline) {
                    core.conn
                        .handle_closed(&format!("the session's timer failed: {e}"));
                    continue;
                }
                if deadline.is_some() && timer.poll_expired(cx).is_ready() {
                    // Already due (the poll also registered this task for the expiry
                    // otherwise).
                    core.armed = None;
                    core.conn.handle_timeout(Instant::now());
                    continue;
                }
            }
            let blocked = !core.outq.is_empty();
            drop(core);
            if blocked && shared.stream.poll_write_ready(cx).is_ready() {
                continue;
            }
            if more {
                // Let the callers just woken run before reading on.
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_is_set_again_only_for_an_earlier_deadline() {
        use std::time::Duration;
        let t0 = Instant::now();
        let (early, late) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(5));
        assert!(needs_rearm(Some(late), None), "nothing armed");
        assert!(needs_rearm(Some(early), Some(late)), "an earlier deadline");
        assert!(
            !needs_rearm(Some(late), Some(early)),
            "later: wait for the armed one"
        );
        assert!(!needs_rearm(Some(early), Some(early)), "unchanged");
        assert!(
            !needs_rearm(None, Some(early)),
            "gone: the stale one fires once"
        );
        assert!(!needs_rearm(None, None));
    }
}
