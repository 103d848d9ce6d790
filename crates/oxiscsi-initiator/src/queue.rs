//! A completion queue: many SCSI commands in flight from one task, without a future per
//! command.
//!
//! [`Session::execute`](crate::Session::execute) and friends cost one awaiting future
//! per command, and so a task wake-up and a lock per completion. A caller that keeps a
//! queue full (a benchmark, a block-device server) can instead submit into a [`Queue`]
//! and collect what finished in batches: the driver hands over every completion of one
//! read pass with a single wake-up, and the caller takes them all under one lock. This is
//! the shape of libiscsi's asynchronous API (callbacks from one event loop) and of
//! io_uring's completion queue.

use std::future::poll_fn;

use oxiscsi_proto::session::{Command, ScsiResult};

use crate::driver::{Outcome, QueueId};
use crate::error::Error;
use crate::session::{scsi_outcome, Session};

/// A finished command from a [`Queue`]: the token it was submitted with and its outcome
/// (any SCSI status, as [`Session::execute`](crate::Session::execute) returns it).
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub result: Result<ScsiResult, Error>,
}

/// A command a [`Queue`] did not take, and why. `command` is the caller's again (its
/// write data, its read buffer): submit it once a completion has freed a slot. It is None
/// only when the protocol core refused the command itself (its CDB or write data too
/// large, or the session logging out), which `error` says.
#[derive(Debug)]
pub struct Rejected {
    pub error: Error,
    pub command: Option<Command>,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl From<Rejected> for Error {
    fn from(r: Rejected) -> Error {
        r.error
    }
}

/// Commands submitted without waiting, collected as they finish; from
/// [`Session::queue`]. Dropping it leaves the session consistent: commands still in
/// flight end at the target and their outcomes are dropped.
pub struct Queue {
    session: Session,
    id: QueueId,
    in_flight: usize,
    scratch: Vec<(u64, Outcome)>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("session", &self.session)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Queue {
    pub(crate) fn new(session: Session) -> Queue {
        let id = session.shared().lock().open_queue();
        Queue {
            session,
            id,
            in_flight: 0,
            scratch: Vec::new(),
        }
    }

    /// Queue `cmd` to be sent; its [`Completion`] carries `token` (any value: an index
    /// into the caller's own table, say). It takes one of the session's command slots at
    /// once, or fails with [`Error::QueueFull`] while all are in use (or others wait for
    /// one), so keep at most the session's queue depth in flight. A refused command comes
    /// back in [`Rejected`], nothing of it lost.
    ///
    /// As with io_uring, submitting does not send: what was submitted leaves in one write
    /// when [`next`](Self::next) is called (the usual loop: submit, then wait) or at
    /// [`flush`](Self::flush); the session's driver also sends it whenever it runs for
    /// another reason (a response, another caller, its timer). Compared with sending
    /// from `submit` (a wake-up of the driver per batch), this measured 10-13 % fewer
    /// user-space instructions per I/O at 4K QD32 and 128K QD8, and a quarter fewer
    /// system calls at 4K QD32.
    // The command handed back by value, as the library's errors are (see scsi_outcome).
    #[allow(clippy::result_large_err)]
    pub fn submit(&mut self, token: u64, cmd: Command) -> Result<(), Rejected> {
        let shared = self.session.shared();
        let mut core = shared.lock();
        core.queue_submit(self.id, token, cmd, std::time::Instant::now())?;
        shared.after_call_deferred(&mut core);
        self.in_flight += 1;
        Ok(())
    }

    /// Send what was submitted now, without waiting for anything.
    pub fn flush(&mut self) {
        let shared = self.session.shared();
        shared.flush_queued(&mut shared.lock());
    }

    /// Commands submitted whose completion has not been collected yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Send what was submitted, wait until at least one command has finished, then
    /// append every finished one to `out` and return how many; 0 at once when nothing
    /// is in flight. A session that ends fails each command in flight with
    /// [`Error::Closed`]. Cancellation-safe: a dropped call loses nothing, the next one
    /// collects.
    pub async fn next(&mut self, out: &mut Vec<Completion>) -> usize {
        let shared = self.session.shared();
        let id = self.id;
        let scratch = &mut self.scratch;
        let n = poll_fn(|cx| {
            let mut core = shared.lock();
            shared.flush_queued(&mut core);
            core.poll_queue(id, cx, scratch)
        })
        .await;
        self.in_flight -= n;
        out.extend(self.scratch.drain(..).map(|(token, o)| Completion {
            token,
            result: scsi_outcome(o),
        }));
        n
    }
}

impl Drop for Queue {
    /// Commands already submitted still go out (they hold their place in the command
    /// sequence); their outcomes are dropped.
    fn drop(&mut self) {
        let shared = self.session.shared();
        let mut core = shared.lock();
        core.close_queue(self.id);
        shared.flush_queued(&mut core);
    }
}
