//! The connection driver: a loop that reads the socket, feeds the core, writes what it
//! polls and sleeps until its deadline (STYLE §3). No protocol decision is made here.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use oxiscsi_proto::pdu::{Framer, Lun, TmfFunction, TmfResponse};
use oxiscsi_proto::session::{Command, ConnStats, Event, InitiatorConnection, ScsiResult, TaskId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use crate::error::Error;
use crate::rx::Reader;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

pub(crate) enum Request {
    Command {
        cmd: Command,
        reply: Reply<ScsiResult>,
        permit: OwnedSemaphorePermit,
        /// Told the task's id once the core has taken the command (for ABORT TASK).
        id: Option<oneshot::Sender<TaskId>>,
    },
    Tmf {
        function: TmfFunction,
        lun: Lun,
        referenced: Option<TaskId>,
        reply: Reply<TmfResponse>,
    },
    Text {
        pairs: Vec<(String, String)>,
        reply: Reply<Vec<(String, String)>>,
    },
    Logout {
        reply: Reply<()>,
    },
    /// A snapshot of the connection's counters.
    Stats {
        reply: oneshot::Sender<ConnStats>,
    },
}

enum Waiter {
    Command(Reply<ScsiResult>, OwnedSemaphorePermit),
    Tmf(Reply<TmfResponse>),
    Text(Reply<Vec<(String, String)>>),
}

/// Shared state the handle reads.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Why the session ended, once it has.
    pub closed: Option<String>,
}

/// Wakes [`crate::Session::closed`] waiters when the driver ends.
pub(crate) type ClosedSignal = Arc<tokio::sync::Notify>;

const MAX_IOV: usize = 64;

pub(crate) async fn run(
    mut conn: InitiatorConnection,
    stream: TcpStream,
    leftover: BytesMut,
    mut rx: mpsc::Receiver<Request>,
    shared: Arc<Mutex<Shared>>,
    portal: String,
    closed_signal: ClosedSignal,
) {
    let (mut rd, mut wr) = stream.into_split();
    let framer: Framer = conn.rx_framer();
    let (hd, dd) = conn.tx_digests();
    let mut outq: VecDeque<Bytes> = VecDeque::new();
    let mut waiters: HashMap<TaskId, Waiter> = HashMap::new();
    let mut logout_waiters: Vec<Reply<()>> = Vec::new();
    let mut failure: Option<String> = None;
    let mut accepting = true;
    let mut reader = Reader::new(framer, leftover);
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    let mut armed: Option<tokio::time::Instant> = None;
    // Bytes that arrived with the final Login Response.
    reader.feed(&mut conn);
    loop {
        while let Some(pdu) = conn.poll_transmit() {
            let enc = Framer::encode(&pdu, hd, dd);
            outq.push_back(enc.head.clone());
            if !enc.data.is_empty() {
                outq.push_back(enc.data.clone());
            }
            if !enc.tail().is_empty() {
                outq.push_back(Bytes::copy_from_slice(enc.tail()));
            }
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Completed { id, result } => {
                    if let Some(Waiter::Command(reply, permit)) = waiters.remove(&id) {
                        let _ = reply.send(result.map_err(Error::Task));
                        drop(permit);
                    }
                }
                Event::TmfCompleted { id, response } => {
                    if let Some(Waiter::Tmf(reply)) = waiters.remove(&id) {
                        let _ = reply.send(Ok(response));
                    }
                }
                Event::TextCompleted { id, result } => {
                    if let Some(Waiter::Text(reply)) = waiters.remove(&id) {
                        let _ = reply.send(result.map_err(Error::Task));
                    }
                }
                Event::Async {
                    event, lun, sense, ..
                } => {
                    tracing::info!(%event, ?lun, sense_len = sense.len(), "asynchronous event from target");
                }
                Event::LogoutRequested { within } => {
                    tracing::warn!(?within, "target requested logout; draining and logging out");
                }
                Event::LoggedOut {
                    response,
                    time2wait,
                    ..
                } => {
                    tracing::info!(%response, time2wait, "logged out");
                    for r in logout_waiters.drain(..) {
                        let _ = r.send(Ok(()));
                    }
                    failure.get_or_insert_with(|| "logged out".to_string());
                }
                Event::Failed(e) => {
                    tracing::warn!(error = %e, "connection failed");
                    failure = Some(format!("connection to {portal} failed: {e}"));
                }
            }
        }
        if conn.is_closed() {
            // Flush what is queued (a final NOP answer, say) without waiting long.
            if !outq.is_empty() {
                let _ = tokio::time::timeout(std::time::Duration::from_millis(200), async {
                    while let Some(b) = outq.pop_front() {
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                })
                .await;
            }
            break;
        }
        // Send what we can without waiting; the select below waits only if the socket
        // is full.
        while !outq.is_empty() {
            let slices: Vec<IoSlice<'_>> =
                outq.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
            match wr.as_ref().try_write_vectored(&slices) {
                Ok(0) => break,
                Ok(n) => advance(&mut outq, n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    conn.handle_closed(&format!("write error: {e}"));
                    break;
                }
            }
        }
        if conn.is_closed() {
            continue;
        }
        let deadline = conn.poll_timeout().map(tokio::time::Instant::from_std);
        if deadline != armed {
            // Re-arm the one timer only when the core's deadline moves.
            if let Some(at) = deadline {
                sleep.as_mut().reset(at);
            }
            armed = deadline;
        }
        let (read_into, limit) = reader.target();
        let mut limited = (&mut rd).take(limit);
        tokio::select! {
            r = limited.read_buf(read_into) => match r {
                Ok(0) => conn.handle_closed("the target closed the TCP connection"),
                Ok(_) => {
                    reader.feed(&mut conn);
                    read_more(&rd, &mut reader, &mut conn);
                }
                Err(e) => conn.handle_closed(&format!("read error: {e}")),
            },
            w = write_some(&mut wr, &outq), if !outq.is_empty() => match w {
                Ok(n) => advance(&mut outq, n),
                Err(e) => conn.handle_closed(&format!("write error: {e}")),
            },
            req = rx.recv(), if accepting => match req {
                Some(req) => {
                    submit(&mut conn, req, &mut waiters, &mut logout_waiters);
                    // tokio runs a task woken by the running one next (its LIFO slot),
                    // so without this the driver would flush after every single send:
                    // one writev per command (strace: 312K writev for 310K commands).
                    // Yield once so the other callers woken by the last read queue their
                    // commands, then take them all and write them together. With nothing
                    // else in flight no other caller is about to submit: skip it (QD1).
                    if conn.in_flight() > 1 {
                        tokio::task::yield_now().await;
                    }
                    for _ in 0..MAX_IOV * 4 {
                        match rx.try_recv() {
                            Ok(req) => submit(&mut conn, req, &mut waiters, &mut logout_waiters),
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    // Every handle is gone: log out cleanly.
                    accepting = false;
                    conn.logout(Instant::now());
                }
            },
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                conn.handle_timeout(Instant::now());
            }
        }
    }
    let reason = failure.unwrap_or_else(|| "connection closed".into());
    if let Ok(mut s) = shared.lock() {
        s.closed = Some(reason.clone());
    }
    closed_signal.notify_waiters();
    for (_, w) in waiters.drain() {
        let e = || Error::Closed(reason.clone());
        match w {
            Waiter::Command(r, _) => {
                let _ = r.send(Err(e()));
            }
            Waiter::Tmf(r) => {
                let _ = r.send(Err(e()));
            }
            Waiter::Text(r) => {
                let _ = r.send(Err(e()));
            }
        }
    }
    for r in logout_waiters.drain(..) {
        let _ = r.send(Err(Error::Closed(reason.clone())));
    }
    rx.close();
    while let Ok(req) = rx.try_recv() {
        reject(req, &reason);
    }
}

/// Reads at most this many times more after a wake-up before going back to the loop.
const MORE_READS: usize = 16;

/// After a read, keep reading what the socket already holds, without going back through
/// the `select!` (which re-registers every waker and checks the timers each time: perf
/// showed that bookkeeping as most of the driver's user-space time on 1 MiB reads, which
/// arrive in ~9 reads each). Stops at the first `WouldBlock`, or after [`MORE_READS`] so
/// completions and queued commands are not held back.
fn read_more(
    rd: &tokio::net::tcp::OwnedReadHalf,
    reader: &mut Reader,
    conn: &mut InitiatorConnection,
) {
    for _ in 0..MORE_READS {
        if conn.is_closed() {
            return;
        }
        let (into, limit) = reader.target();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        match rd.as_ref().try_read_buf(&mut into.limit(limit)) {
            Ok(0) => return conn.handle_closed("the target closed the TCP connection"),
            Ok(_) => reader.feed(conn),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => return conn.handle_closed(&format!("read error: {e}")),
        }
    }
}

fn reject(req: Request, reason: &str) {
    let e = || Error::Closed(reason.to_string());
    match req {
        Request::Command { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Request::Tmf { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Request::Text { reply, .. } => {
            let _ = reply.send(Err(e()));
        }
        Request::Logout { reply } => {
            let _ = reply.send(Ok(()));
        }
        Request::Stats { .. } => {}
    }
}

fn submit(
    conn: &mut InitiatorConnection,
    req: Request,
    waiters: &mut HashMap<TaskId, Waiter>,
    logout_waiters: &mut Vec<Reply<()>>,
) {
    let now = Instant::now();
    match req {
        Request::Command {
            cmd,
            reply,
            permit,
            id: tell,
        } => match conn.submit(now, cmd) {
            Ok(id) => {
                if let Some(tell) = tell {
                    let _ = tell.send(id);
                }
                waiters.insert(id, Waiter::Command(reply, permit));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Task(e)));
            }
        },
        Request::Tmf {
            function,
            lun,
            referenced,
            reply,
        } => match conn.submit_tmf(now, function, lun, referenced) {
            Ok(id) => {
                waiters.insert(id, Waiter::Tmf(reply));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Task(e)));
            }
        },
        Request::Text { pairs, reply } => match conn.send_text(now, &pairs) {
            Ok(id) => {
                waiters.insert(id, Waiter::Text(reply));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Task(e)));
            }
        },
        Request::Logout { reply } => {
            logout_waiters.push(reply);
            conn.logout(now);
        }
        Request::Stats { reply } => {
            let _ = reply.send(conn.stats());
        }
    }
}

async fn write_some(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    outq: &VecDeque<Bytes>,
) -> std::io::Result<usize> {
    let slices: Vec<IoSlice<'_>> = outq.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
    let n = wr.write_vectored(&slices).await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "socket accepted no bytes",
        ));
    }
    Ok(n)
}

fn advance(outq: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = outq.front_mut() else {
            return;
        };
        if front.len() <= n {
            n -= front.len();
            outq.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

/// The error callers get once the driver has ended.
pub(crate) fn closed_error(shared: &Mutex<Shared>) -> Error {
    let why = shared
        .lock()
        .ok()
        .and_then(|s| s.closed.clone())
        .unwrap_or_else(|| "session ended".into());
    Error::Closed(why)
}
