//! The [`Session`] handle: SCSI commands over one logged-in connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use oxiscsi_proto::login::{ChapAlgorithm, SessionType};
use oxiscsi_proto::pdu::{CdbBuf, Framer, Isid, Lun, TmfFunction, TmfResponse};
use oxiscsi_proto::session::{Command, InitiatorConnection, ScsiResult, TaskId};
use oxiscsi_proto::text::OperationalParams;
use oxiscsi_scsi::cdb::{unmap_parameter_list, Cdb};
use oxiscsi_scsi::data::{Capacity, StandardInquiry};
use tracing::Instrument;

use crate::config::SessionConfig;
use crate::driver::{self, Outcome, Shared};
use crate::error::Error;
use crate::ops;
use crate::queue::Queue;
use crate::transport;

/// What a session negotiated and where it runs.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub target: String,
    pub portal: String,
    pub initiator_name: String,
    pub isid: Isid,
    pub tsih: u16,
    pub params: OperationalParams,
    pub chap: Option<ChapAlgorithm>,
    pub mutual_chap: bool,
    pub queue_depth: usize,
    /// Our end of the connection (what open-iscsi shows as the iface's IP address).
    pub local_address: Option<std::net::SocketAddr>,
}

struct Inner {
    shared: Arc<Shared>,
    info: SessionInfo,
    block_sizes: Mutex<HashMap<u16, u32>>,
}

impl Drop for Inner {
    /// Every handle is gone: log out cleanly once in-flight commands end (the driver
    /// keeps running until then).
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        if core.closed.is_none() {
            core.conn.logout(std::time::Instant::now());
            self.shared.after_call(&mut core);
        }
    }
}

/// A logged-in iSCSI session (one connection, ErrorRecoveryLevel 0). Clone it to issue
/// commands from several tasks; dropping every clone logs out.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.inner.info.target)
            .field("portal", &self.inner.info.portal)
            .field("isid", &self.inner.info.isid)
            .field("tsih", &self.inner.info.tsih)
            .finish()
    }
}

/// A command in flight, from [`Session::start`].
pub struct Pending {
    id: TaskId,
    lun: u16,
    wait: driver::Wait,
    /// Keeps the session (and so the connection) up while the command runs.
    _session: Session,
}

impl Pending {
    /// The task's id (its Initiator Task Tag).
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Wait for the command's outcome (any SCSI status).
    pub async fn wait(self) -> Result<ScsiResult, Error> {
        scsi_outcome(self.wait.await)
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("lun", &self.lun)
            .finish()
    }
}

/// A session logged in but its socket or timer could not be set up (the cause, and for
/// the open-file limit what to do, are in `e`). The connection is closed as the error
/// returns; nothing was sent in the full feature phase yet.
pub(crate) fn after_login(e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("logged in, but {e}; the connection is closed"),
    ))
}

/// A connection in its full feature phase, ready for a driver.
pub(crate) struct Opened {
    pub conn: InitiatorConnection,
    pub info: SessionInfo,
    /// Carries ISID, TSIH, target and portal for everything the driver logs.
    pub span: tracing::Span,
    pub framer: Framer,
    pub stream: tokio::net::TcpStream,
    /// Bytes read past the final Login Response.
    pub leftover: BytesMut,
}

/// Validate `cfg`, connect and log in (following redirects).
pub(crate) async fn log_in(cfg: &SessionConfig, st: SessionType) -> Result<Opened, Error> {
    cfg.validate().map_err(Error::Config)?;
    let isid = transport::new_isid();
    let li = transport::login(cfg, st, isid).await?;
    let outcome = li.outcome;
    let info = SessionInfo {
        target: if st == SessionType::Discovery {
            String::new()
        } else {
            cfg.target.clone()
        },
        portal: li.portal.clone(),
        initiator_name: cfg.initiator_name.clone(),
        isid,
        tsih: outcome.tsih,
        params: outcome.params.clone(),
        chap: outcome.chap,
        mutual_chap: outcome.mutual,
        queue_depth: cfg.connection.queue_depth,
        local_address: li.stream.local_addr().ok(),
    };
    let span = tracing::info_span!(
        "session",
        isid = %isid,
        tsih = outcome.tsih,
        target = %info.target,
        portal = %info.portal,
    );
    span.in_scope(|| tracing::info!(params = ?outcome.params, "logged in"));
    let mut conn =
        InitiatorConnection::new(&outcome, cfg.connection.clone(), std::time::Instant::now());
    conn.count_login_pdus(li.login_pdus);
    let framer = conn.rx_framer();
    Ok(Opened {
        conn,
        info,
        span,
        framer,
        stream: li.stream,
        leftover: li.leftover,
    })
}

impl Session {
    /// Connect and log in to `cfg.target` at `cfg.portal`.
    pub async fn connect(cfg: SessionConfig) -> Result<Session, Error> {
        Self::open(cfg, SessionType::Normal).await
    }

    pub(crate) async fn open(cfg: SessionConfig, st: SessionType) -> Result<Session, Error> {
        let o = log_in(&cfg, st).await?;
        let socket = crate::sock::Socket::new(o.stream).map_err(after_login)?;
        let shared = Shared::new(
            o.conn,
            socket,
            cfg.connection.queue_depth,
            o.span.clone(),
            o.info.portal.clone(),
        );
        let driver = o
            .span
            .in_scope(|| driver::Driver::new(shared.clone(), o.framer, o.leftover))
            .map_err(after_login)?;
        tokio::spawn(driver.instrument(o.span));
        Ok(Session {
            inner: Arc::new(Inner {
                shared,
                info: o.info,
                block_sizes: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn info(&self) -> &SessionInfo {
        &self.inner.info
    }

    /// Why the session ended, if it has.
    pub fn closed_reason(&self) -> Option<String> {
        self.inner.shared.lock().closed.clone()
    }

    /// Run a raw command and return its outcome whatever the SCSI status.
    /// Cancellation-safe: dropping the future leaves the session consistent (the command
    /// still completes at the target and its queue slot is released then).
    pub async fn execute(
        &self,
        lun: u16,
        cdb: impl Into<CdbBuf>,
        data_out: Bytes,
        read_len: u32,
    ) -> Result<ScsiResult, Error> {
        let cmd = Command::new(Lun::from_number(lun), cdb)
            .with_data_out(data_out)
            .with_read(read_len);
        self.submit(cmd).await
    }

    /// Like [`execute`](Self::execute), reading into `buf` (contents replaced, grown to
    /// fit). Get the buffer back for the next command with `result.data.try_into_mut()`
    /// once nothing else holds the data: reused buffers stay in cache, as libiscsi's
    /// caller-supplied iovecs do.
    pub async fn execute_into(
        &self,
        lun: u16,
        cdb: impl Into<CdbBuf>,
        read_len: u32,
        buf: bytes::BytesMut,
    ) -> Result<ScsiResult, Error> {
        let cmd = Command::new(Lun::from_number(lun), cdb).with_read_into(read_len, buf);
        self.submit(cmd).await
    }

    /// Like [`execute`](Self::execute) for a read whose data is not needed: the data is
    /// checked (order, length, digests) and counted, then dropped, and `data` comes back
    /// empty. Large payloads all land in one connection-wide scratch buffer, so this costs
    /// what iscsi-perf's reads into one shared iovec cost: for benchmarks, path checks
    /// (multipath's readsector0) and media scans.
    pub async fn execute_discard(
        &self,
        lun: u16,
        cdb: impl Into<CdbBuf>,
        read_len: u32,
    ) -> Result<ScsiResult, Error> {
        let cmd = Command::new(Lun::from_number(lun), cdb).with_read_discarded(read_len);
        self.submit(cmd).await
    }

    /// Start a raw command and return at once with a handle that names it, so it can
    /// be aborted ([`abort`](Self::abort)) while in flight; await [`Pending::wait`] for
    /// the outcome.
    pub async fn start(
        &self,
        lun: u16,
        cdb: impl Into<CdbBuf>,
        data_out: Bytes,
        read_len: u32,
    ) -> Result<Pending, Error> {
        let cmd = Command::new(Lun::from_number(lun), cdb)
            .with_data_out(data_out)
            .with_read(read_len);
        let id = driver::Submit::new(&self.inner.shared, cmd).await?;
        Ok(Pending {
            id,
            lun,
            wait: driver::Wait::new(self.inner.shared.clone(), id),
            _session: self.clone(),
        })
    }

    /// ABORT TASK (RFC 7143 §11.5.1) for a command started with [`start`](Self::start).
    /// The command then ends with `TaskError::Aborted` unless its response was already on
    /// the way (the target answers "task does not exist" then).
    pub async fn abort(&self, pending: &Pending) -> Result<TmfResponse, Error> {
        self.task_management(TmfFunction::ABORT_TASK, pending.lun, Some(pending.id))
            .await
    }

    /// A completion queue on this session: submit commands without awaiting each, collect
    /// their outcomes in batches (see [`Queue`]).
    pub fn queue(&self) -> Queue {
        Queue::new(self.clone())
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Take a queue slot (released when the target answers, whatever the caller does),
    /// submit and wait. Cancellation-safe at every await.
    async fn submit(&self, cmd: Command) -> Result<ScsiResult, Error> {
        let shared = &self.inner.shared;
        let id = driver::Submit::new(shared, cmd).await?;
        scsi_outcome(driver::Wait::after_submit(&**shared, id).await)
    }

    /// Run a command; a status other than GOOD becomes [`Error::Scsi`] with decoded
    /// sense. UNIT ATTENTION and BUSY are retried a few times, as the SCSI midlayer does
    /// ([`ops::judge`](crate::ops::judge)).
    pub async fn execute_checked(
        &self,
        lun: u16,
        cdb: impl Into<CdbBuf>,
        data_out: Bytes,
        read_len: u32,
    ) -> Result<ScsiResult, Error> {
        let cmd = Command::new(Lun::from_number(lun), cdb)
            .with_data_out(data_out)
            .with_read(read_len);
        ops::execute_checked(self, cmd).await
    }

    /// Standard INQUIRY.
    pub async fn inquiry(&self, lun: u16) -> Result<StandardInquiry, Error> {
        ops::inquiry(self, lun).await
    }

    /// A VPD page's raw bytes (header included).
    pub async fn inquiry_vpd(&self, lun: u16, page: u8) -> Result<Bytes, Error> {
        let alloc = 4096u16;
        let cdb = Cdb::Inquiry {
            evpd: true,
            page,
            alloc,
        }
        .to_bytes();
        let r = self
            .execute_checked(lun, cdb, Bytes::new(), u32::from(alloc))
            .await?;
        if r.data.len() >= 2 && r.data[1] != page {
            return Err(Error::BadData(format!(
                "asked for VPD page 0x{page:02x}, got 0x{:02x}",
                r.data[1]
            )));
        }
        Ok(r.data)
    }

    /// READ CAPACITY(16), falling back to (10) when the target does not support it.
    pub async fn read_capacity(&self, lun: u16) -> Result<Capacity, Error> {
        let cap = ops::read_capacity(self, lun).await?;
        if let Ok(mut m) = self.inner.block_sizes.lock() {
            m.insert(lun, cap.block_size);
        }
        Ok(cap)
    }

    /// LUN numbers from REPORT LUNS (LUN 0 addresses the target).
    pub async fn report_luns(&self) -> Result<Vec<u16>, Error> {
        ops::report_luns(self).await
    }

    pub async fn test_unit_ready(&self, lun: u16) -> Result<(), Error> {
        self.execute_checked(lun, Cdb::TestUnitReady.to_bytes(), Bytes::new(), 0)
            .await
            .map(|_| ())
    }

    /// The LUN's block size (READ CAPACITY on first use).
    pub async fn block_size(&self, lun: u16) -> Result<u32, Error> {
        if let Some(bs) = self
            .inner
            .block_sizes
            .lock()
            .ok()
            .and_then(|m| m.get(&lun).copied())
        {
            return Ok(bs);
        }
        Ok(self.read_capacity(lun).await?.block_size)
    }

    /// Read `blocks` blocks at `lba`. A short transfer is an error.
    pub async fn read(&self, lun: u16, lba: u64, blocks: u32) -> Result<Bytes, Error> {
        let bs = self.block_size(lun).await?;
        let len = u64::from(blocks) * u64::from(bs);
        let len = u32::try_from(len)
            .map_err(|_| Error::Config(format!("read of {len} bytes is too large")))?;
        let r = self
            .execute_checked(lun, Cdb::read(lba, blocks).to_bytes(), Bytes::new(), len)
            .await?;
        if r.data.len() != len as usize {
            return Err(Error::BadData(format!(
                "short read at LBA {lba}: {} of {len} bytes (residual {:?})",
                r.data.len(),
                r.residual
            )));
        }
        Ok(r.data)
    }

    /// Write `data` (a whole number of blocks) at `lba`.
    pub async fn write(&self, lun: u16, lba: u64, data: Bytes) -> Result<(), Error> {
        self.write_opts(lun, lba, data, false).await
    }

    /// Write with FUA (force unit access) when `fua` is set.
    pub async fn write_opts(
        &self,
        lun: u16,
        lba: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), Error> {
        let bs = self.block_size(lun).await?;
        if data.is_empty() || !data.len().is_multiple_of(bs as usize) {
            return Err(Error::Config(format!(
                "write of {} bytes is not a whole number of {bs}-byte blocks",
                data.len()
            )));
        }
        let blocks = u32::try_from(data.len() / bs as usize)
            .map_err(|_| Error::Config(format!("write of {} bytes is too large", data.len())))?;
        let r = self
            .execute_checked(lun, Cdb::write(lba, blocks, fua).to_bytes(), data, 0)
            .await?;
        if let oxiscsi_proto::session::Residual::Underflow(n) = r.residual {
            if n > 0 {
                return Err(Error::BadData(format!(
                    "short write at LBA {lba}: target took {n} bytes fewer"
                )));
            }
        }
        Ok(())
    }

    /// SYNCHRONIZE CACHE over the whole LUN.
    pub async fn flush(&self, lun: u16) -> Result<(), Error> {
        ops::flush(self, lun).await
    }

    /// UNMAP the given (LBA, blocks) ranges.
    pub async fn unmap(&self, lun: u16, ranges: &[(u64, u32)]) -> Result<(), Error> {
        let params = unmap_parameter_list(ranges);
        let len = u16::try_from(params.len())
            .map_err(|_| Error::Config("too many UNMAP ranges".into()))?;
        let cdb = Cdb::Unmap {
            anchor: false,
            param_len: len,
        }
        .to_bytes();
        self.execute_checked(lun, cdb, Bytes::from(params), 0)
            .await
            .map(|_| ())
    }

    /// WRITE SAME(16) of one block's `pattern` over `blocks` blocks, optionally unmapping.
    pub async fn write_same(
        &self,
        lun: u16,
        lba: u64,
        blocks: u32,
        pattern: Bytes,
        unmap: bool,
    ) -> Result<(), Error> {
        let cmd = ops::write_same(lun, lba, blocks, pattern, unmap);
        ops::execute_checked(self, cmd).await.map(|_| ())
    }

    /// MODE SENSE(10) of a page (0x3f for all), current values.
    pub async fn mode_sense(&self, lun: u16, page: u8) -> Result<Bytes, Error> {
        let cdb = Cdb::ModeSense10 {
            llbaa: false,
            dbd: true,
            pc: 0,
            page,
            subpage: 0,
            alloc: 4096,
        }
        .to_bytes();
        Ok(self
            .execute_checked(lun, cdb, Bytes::new(), 4096)
            .await?
            .data)
    }

    /// A task management function (ABORT TASK needs `referenced`).
    pub async fn task_management(
        &self,
        function: TmfFunction,
        lun: u16,
        referenced: Option<TaskId>,
    ) -> Result<TmfResponse, Error> {
        let outcome = driver::call(&self.inner.shared, |conn, now| {
            conn.submit_tmf(now, function, Lun::from_number(lun), referenced)
        })
        .await?;
        match outcome {
            Outcome::Tmf(r) => r.map_err(|e| *e),
            Outcome::Scsi(Err(e)) | Outcome::Text(Err(e)) => Err(*e),
            _ => Err(self.inner.shared.closed_error()),
        }
    }

    /// A text exchange in the full feature phase.
    pub async fn text(&self, pairs: Vec<(String, String)>) -> Result<Vec<(String, String)>, Error> {
        let outcome =
            driver::call(&self.inner.shared, |conn, now| conn.send_text(now, &pairs)).await?;
        match outcome {
            Outcome::Text(r) => r.map_err(|e| *e),
            Outcome::Scsi(Err(e)) | Outcome::Tmf(Err(e)) => Err(*e),
            _ => Err(self.inner.shared.closed_error()),
        }
    }

    /// Log out after in-flight commands finish.
    /// Wait until the session has ended (failed, logged out or closed by the target)
    /// and say why.
    pub async fn closed(&self) -> String {
        loop {
            // Created before the check: `notify_waiters` reaches it even unpolled.
            let wait = self.inner.shared.closed_signal.notified();
            if let Some(why) = self.closed_reason() {
                return why;
            }
            wait.await;
        }
    }

    /// The connection's counters (PDUs by opcode, data octets, digest and timeout
    /// errors), as `iscsiadm -m session -s` prints them.
    pub async fn stats(&self) -> Result<oxiscsi_proto::session::ConnStats, Error> {
        let core = self.inner.shared.lock();
        match &core.closed {
            Some(why) => Err(Error::Closed(why.clone())),
            None => Ok(core.conn.stats()),
        }
    }

    pub async fn logout(&self) -> Result<(), Error> {
        {
            let mut core = self.inner.shared.lock();
            if core.closed.is_some() {
                return Ok(());
            }
            core.conn.logout(std::time::Instant::now());
            self.inner.shared.after_call(&mut core);
        }
        let why = self.closed().await;
        if self.inner.shared.lock().logged_out() {
            Ok(())
        } else {
            Err(Error::Closed(why))
        }
    }
}

impl ops::Execute for Session {
    fn execute_command(
        &self,
        cmd: Command,
    ) -> impl std::future::Future<Output = Result<ScsiResult, Error>> + Send {
        self.submit(cmd)
    }
}

/// A SCSI command's outcome (a TMF or text outcome cannot answer one).
// The library's one error type is returned by value everywhere (the async methods are
// not linted); this helper follows suit.
#[allow(clippy::result_large_err)]
pub(crate) fn scsi_outcome(o: Outcome) -> Result<ScsiResult, Error> {
    match o {
        Outcome::Scsi(r) => r.map_err(|e| *e),
        Outcome::Tmf(Err(e)) | Outcome::Text(Err(e)) => Err(*e),
        _ => Err(Error::Closed(
            "the session answered with the wrong kind of outcome".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_setup_failure_after_login_says_so() {
        let cause = crate::limits::fd_error(
            "cannot duplicate the session's socket",
            std::io::Error::from_raw_os_error(libc::EMFILE),
        );
        let m = super::after_login(cause).to_string();
        assert!(
            m.starts_with("logged in, but cannot duplicate the session's socket: "),
            "{m}"
        );
        assert!(
            m.contains("ulimit -n") && m.ends_with("the connection is closed"),
            "{m}"
        );
    }
}
