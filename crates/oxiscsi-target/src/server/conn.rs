//! One connection: login under a deadline, then the full feature phase. A loop that
//! reads the socket, feeds the sans-IO core, runs what it hands out on the logical
//! units, and writes what it polls (STYLE §3). Every read has a deadline: the login
//! timeout during login, NOP-In pings and their timeout after.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use oxiscsi_proto::digest::Digest;
use oxiscsi_proto::login::target::{TargetLogin, TargetLoginConfig, TargetLoginStep};
use oxiscsi_proto::login::SessionType;
use oxiscsi_proto::pdu::{Framer, LoginResponse, LoginStatus, Pdu, TmfFunction};
use oxiscsi_proto::serial::SerialNumber;
use oxiscsi_proto::session::{ScsiOutcome, ScsiTask, TargetConfig, TargetConnection, TargetEvent};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{LoginDirectory, Shared, Target};
use crate::lu::{ScsiError, MAX_TRANSFER_BYTES};

const MAX_IOV: usize = 64;

/// Seconds an initiator gets to log out when the target stops (Async event 1).
const LOGOUT_WITHIN: u16 = 2;

pub(super) async fn run(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    tag: u16,
    stop: watch::Receiver<bool>,
) {
    let local = sock.local_addr().ok();
    let span = tracing::info_span!("conn", %peer);
    let _e = span.enter();
    drop(_e);
    if let Err(e) = serve(shared, sock, peer, local, tag, stop).await {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// Why no login PDU could be read: the message for the log, and the header of a
/// malformed Login Request (to answer it with "initiator error").
struct LoginReadError {
    why: String,
    bad_login_bhs: Option<[u8; 48]>,
}

impl From<String> for LoginReadError {
    fn from(why: String) -> Self {
        LoginReadError {
            why,
            bad_login_bhs: None,
        }
    }
}

/// Read one PDU (login-phase framing) by `deadline`.
async fn read_pdu(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    framer: &Framer,
    deadline: tokio::time::Instant,
) -> Result<Pdu, LoginReadError> {
    loop {
        match framer.decode(buf) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => {
                let bad_login_bhs = e.bhs.filter(|b| b[0] & 0x3f == 0x03 && e.resynced);
                return Err(LoginReadError {
                    why: format!("bad PDU during login: {e}"),
                    bad_login_bhs,
                });
            }
        }
        buf.reserve(8192);
        match tokio::time::timeout_at(deadline, rd.read_buf(buf)).await {
            Err(_) => {
                return Err(String::from("login timed out: the initiator stopped sending").into())
            }
            Ok(Ok(0)) => {
                return Err(String::from("initiator closed the connection during login").into())
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("read error during login: {e}").into()),
        }
    }
}

/// Answer a malformed Login Request (C and T both set, bad stage codes, ...) with
/// "initiator error" (RFC 7143 §11.13.5) built from its raw header; other read failures
/// just close. Returns the reason for the log.
async fn refuse_malformed(wr: &mut OwnedWriteHalf, e: LoginReadError) -> String {
    if let Some(b) = e.bad_login_bhs {
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b[8..14]);
        let rsp = Pdu::LoginResponse(LoginResponse {
            transit: false,
            continue_: false,
            csg: oxiscsi_proto::pdu::Stage::Security,
            nsg: oxiscsi_proto::pdu::Stage::Security,
            version_max: 0,
            version_active: 0,
            isid: oxiscsi_proto::pdu::Isid(isid),
            tsih: 0,
            itt: be32(16),
            stat_sn: SerialNumber(0),
            exp_cmd_sn: SerialNumber(be32(24)),
            max_cmd_sn: SerialNumber(be32(24)),
            status: LoginStatus::INITIATOR_ERROR,
            data: Bytes::new(),
        });
        let _ = write_pdus(
            wr,
            [rsp],
            (Digest::None, Digest::None),
            Duration::from_secs(2),
        )
        .await;
    }
    e.why
}

/// Write PDUs; each write must make progress within `stall` (the login timeout during
/// login, the NOP timeout after), so an initiator that stops reading cannot hold the
/// connection and its buffers forever.
async fn write_pdus(
    wr: &mut OwnedWriteHalf,
    pdus: impl IntoIterator<Item = Pdu>,
    digests: (Digest, Digest),
    stall: Duration,
) -> std::io::Result<()> {
    let mut q: VecDeque<Bytes> = VecDeque::new();
    for p in pdus {
        let enc = Framer::encode(&p, digests.0, digests.1);
        q.push_back(enc.head.clone());
        if !enc.data.is_empty() {
            q.push_back(enc.data.clone());
        }
        if !enc.tail().is_empty() {
            q.push_back(Bytes::copy_from_slice(enc.tail()));
        }
    }
    while !q.is_empty() {
        let slices: Vec<IoSlice<'_>> = q.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
        let mut n = tokio::time::timeout(stall, wr.write_vectored(&slices))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the initiator read nothing for {stall:?}"),
                )
            })??;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(front) = q.front_mut() else { break };
            if front.len() <= n {
                n -= front.len();
                q.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

async fn serve(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    tag: u16,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let (mut rd, mut wr) = sock.into_split();
    // Small until the peer proves it speaks iSCSI: idle and half-open sockets cost little.
    let mut buf = BytesMut::with_capacity(512);
    let login_framer = Framer::default();
    let deadline = tokio::time::Instant::now() + shared.cfg.login_timeout;
    let none = (Digest::None, Digest::None);
    // The first PDU must arrive within the login timeout; only then does the connection
    // count against the bound of logins in progress, so sockets that sit idle or send half
    // a header cannot starve real logins (they are closed at the deadline).
    let first = match read_pdu(&mut rd, &mut buf, &login_framer, deadline).await {
        Ok(p) => p,
        Err(e) => return Err(refuse_malformed(&mut wr, e).await),
    };
    let Ok(permit) = shared.logins.clone().try_acquire_owned() else {
        // Over the bound of logins in progress: say so instead of dropping silently.
        if let Pdu::LoginRequest(req) = first {
            let rsp = Pdu::LoginResponse(LoginResponse {
                transit: false,
                continue_: false,
                csg: req.csg,
                nsg: req.csg,
                version_max: 0,
                version_active: 0,
                isid: req.isid,
                tsih: 0,
                itt: req.itt,
                stat_sn: SerialNumber(0),
                exp_cmd_sn: req.cmd_sn,
                max_cmd_sn: req.cmd_sn,
                status: LoginStatus::SERVICE_UNAVAILABLE,
                data: Bytes::new(),
            });
            let _ = write_pdus(&mut wr, [rsp], none, Duration::from_secs(2)).await;
        }
        return Err("too many logins in progress; answered service unavailable".into());
    };
    let mut first = Some(first);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let now = Instant::now();
    let mut login = TargetLogin::new(
        TargetLoginConfig {
            operational: TargetLoginConfig::default_operational(),
            target_portal_group_tag: tag,
            timeout: shared.cfg.login_timeout,
            initial_stat_sn: SerialNumber(rng.gen()),
            queue_depth: shared.cfg.queue_depth,
        },
        now,
    );
    let outcome = loop {
        let pdu = match first.take() {
            Some(p) => p,
            None => match read_pdu(&mut rd, &mut buf, &login_framer, deadline).await {
                Ok(p) => p,
                Err(e) => return Err(refuse_malformed(&mut wr, e).await),
            },
        };
        let step = login.handle_pdu(
            pdu,
            &LoginDirectory {
                shared: &shared,
                tag,
            },
            &mut rng,
        );
        let mut reinstated = None;
        if let TargetLoginStep::Complete(o) = &step {
            reinstated = Some(o.clone());
        }
        let out: Vec<Pdu> = std::iter::from_fn(|| login.poll_transmit()).collect();
        match step {
            TargetLoginStep::Continue => {
                write_pdus(&mut wr, out, none, shared.cfg.login_timeout)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            TargetLoginStep::Failed(e) => {
                tracing::info!(%peer, reason = %e.reason, status = %e.status, "login refused");
                let _ = write_pdus(&mut wr, out, none, shared.cfg.login_timeout).await;
                return Err(e.to_string());
            }
            TargetLoginStep::Complete(o) => {
                let _ = reinstated;
                break (o, out);
            }
        }
    };
    drop(permit);
    let (o, final_rsp) = outcome;
    let target: Option<Arc<Target>> = o.target_name.as_deref().and_then(|n| shared.target(n));
    if o.session_type == SessionType::Normal && target.is_none() {
        return Err("target vanished during login".into());
    }
    // Session table; reinstatement ends the old session first (§6.3.5).
    let (stop_tx, mut stop_rx) = watch::channel(0u8);
    let (done_tx, done_rx) = watch::channel(false);
    let target_iqn = o.target_name.clone().unwrap_or_default();
    if let Some((old_stop, mut old_done)) = shared.register(
        &o.initiator_name,
        o.isid,
        o.tsih,
        &target_iqn,
        stop_tx,
        done_rx,
    ) {
        tracing::info!(initiator = %o.initiator_name, isid = %o.isid, "reinstating session: ending the old one first");
        let _ = old_stop.send(super::Stop::REINSTATED);
        let _ = tokio::time::timeout(Duration::from_secs(10), old_done.wait_for(|d| *d)).await;
    }
    let digests = (o.params.header_digest, o.params.data_digest);
    // The final Login Response still goes without digests (§6.1: digests start after it).
    write_pdus(&mut wr, final_rsp, none, shared.cfg.login_timeout)
        .await
        .map_err(|e| e.to_string())?;
    let nexus = format!("{},{}", o.initiator_name, o.isid);
    tracing::info!(
        %peer,
        initiator = %o.initiator_name,
        target = %target_iqn,
        tsih = o.tsih,
        "session logged in"
    );
    if let Some(t) = &target {
        for lu in t.luns().values() {
            lu.add_nexus(&nexus);
        }
    }
    let r = full_feature(
        &shared,
        &o,
        target.as_deref(),
        &nexus,
        &mut rd,
        &mut wr,
        buf,
        digests,
        local,
        &mut stop,
        &mut stop_rx,
    )
    .await;
    if let Some(t) = &target {
        for lu in t.luns().values() {
            lu.remove_nexus(&nexus);
        }
    }
    shared.unregister(&o.initiator_name, o.isid, o.tsih);
    let _ = done_tx.send(true);
    tracing::info!(%peer, initiator = %o.initiator_name, tsih = o.tsih, result = ?r, "session ended");
    r
}

#[allow(clippy::too_many_arguments)]
async fn full_feature(
    shared: &Shared,
    o: &oxiscsi_proto::login::target::TargetLoginOutcome,
    target: Option<&Target>,
    nexus: &str,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    mut buf: BytesMut,
    digests: (Digest, Digest),
    local: Option<SocketAddr>,
    server_stop: &mut watch::Receiver<bool>,
    session_stop: &mut watch::Receiver<u8>,
) -> Result<(), String> {
    let framer = Framer {
        header_digest: o.params.header_digest,
        data_digest: o.params.data_digest,
        max_recv_data_segment: o.params.max_recv_data_segment_length,
    };
    let mut conn = TargetConnection::new(
        o.params.clone(),
        TargetConfig {
            queue_depth: shared.cfg.queue_depth,
            max_write_len: MAX_TRANSFER_BYTES as u32,
            nop_interval: shared.cfg.nop_interval,
            nop_timeout: shared.cfg.nop_timeout,
        },
        o.exp_cmd_sn,
        o.stat_sn,
        Instant::now(),
    );
    let mut stopping = false;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(u32, ScsiOutcome)>();
    loop {
        // Everything the core produced, run to completion.
        let mut close: Option<String> = None;
        while let Some(ev) = conn.poll_event() {
            match ev {
                TargetEvent::Execute(t) => match route(target, &t) {
                    Route::Now(out) => conn.complete(t.itt, out),
                    Route::Inline(lu) => conn.complete(t.itt, lu.execute(nexus, &t)),
                    Route::Blocking(job) => {
                        // A LUN on a device: run it on the blocking pool; the outcome
                        // comes back through `done` (the core takes completions in any
                        // order), so one slow disk stalls neither this connection's
                        // other commands nor anyone else's.
                        let done = done_tx.clone();
                        let nexus = nexus.to_string();
                        tokio::task::spawn_blocking(move || {
                            let itt = t.itt;
                            let out = job(&nexus, &t);
                            let _ = done.send((itt, out));
                        });
                    }
                },
                TargetEvent::Reset { function, lun } => {
                    if let Some(t) = target {
                        match function {
                            TmfFunction::TARGET_WARM_RESET | TmfFunction::TARGET_COLD_RESET => {
                                for lu in t.luns().values() {
                                    lu.reset();
                                }
                            }
                            _ => {
                                if let Some(lu) = lun.number().and_then(|n| t.lun(n)) {
                                    lu.reset();
                                }
                            }
                        }
                    }
                }
                TargetEvent::Text { itt, pairs } => {
                    let reply = text_reply(shared, &o.initiator_name, target, &pairs, local);
                    conn.respond_text(itt, &reply);
                }
                TargetEvent::Close { reason } => close = Some(reason),
            }
        }
        let out: Vec<Pdu> = std::iter::from_fn(|| conn.poll_transmit()).collect();
        if !out.is_empty() {
            write_pdus(wr, out, digests, shared.cfg.nop_timeout)
                .await
                .map_err(|e| format!("write error: {e}"))?;
        }
        if let Some(reason) = close {
            let _ = wr.shutdown().await;
            return if reason == "initiator logged out" {
                Ok(())
            } else {
                Err(reason)
            };
        }
        // Parse what is buffered before reading more.
        match framer.decode(&mut buf) {
            Ok(Some(pdu)) => {
                conn.handle_pdu(Instant::now(), pdu);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let resynced = e.resynced;
                conn.handle_frame_error(e);
                if resynced {
                    continue;
                }
                continue;
            }
        }
        let deadline = conn.poll_timeout().map(tokio::time::Instant::from_std);
        // Grow with the traffic (BytesMut doubles); an idle session keeps a small buffer.
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(32 * 1024);
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => conn.handle_closed("initiator closed the connection"),
                Ok(_) => {}
                Err(e) => conn.handle_closed(&format!("read error: {e}")),
            },
            _ = sleep_until(deadline) => conn.handle_timeout(Instant::now()),
            Some((itt, out)) = done_rx.recv() => conn.complete(itt, out),
            _ = server_stop.changed(), if !stopping => {
                stopping = true;
                conn.request_logout(Instant::now(), LOGOUT_WITHIN);
            }
            r = session_stop.changed() => {
                let why = if r.is_err() { super::Stop::LATE } else { *session_stop.borrow() };
                match why {
                    super::Stop::ASK_LOGOUT if !stopping => {
                        stopping = true;
                        conn.request_logout(Instant::now(), LOGOUT_WITHIN);
                    }
                    super::Stop::ASK_LOGOUT => {}
                    super::Stop::REINSTATED => {
                        conn.handle_closed("session reinstated by a new login with the same ISID")
                    }
                    _ => conn.handle_closed("did not log out in time after the target asked it to"),
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A job for the blocking pool.
type Job = Box<dyn FnOnce(&str, &ScsiTask) -> ScsiOutcome + Send>;

/// Where a command runs.
enum Route {
    /// Answered without touching a backend.
    Now(ScsiOutcome),
    /// On an LU whose backend never waits (memory, tmpfs): on this task.
    Inline(Arc<crate::lu::LogicalUnit>),
    /// On the blocking pool.
    Blocking(Job),
}

/// Decide where a command runs: REPORT LUNS and errors at once, EXTENDED COPY (any size,
/// any LU of the target) and commands to LUNs on devices on the blocking pool, the rest
/// inline.
fn route(target: Option<&Target>, t: &ScsiTask) -> Route {
    let Some(target) = target else {
        // Discovery sessions have no LUNs.
        return Route::Now(ScsiError::LUN_NOT_SUPPORTED.outcome(false));
    };
    let op = t.cdb.first().copied().unwrap_or(0xff);
    if op == 0xa0 {
        return Route::Now(report_luns(target, &t.cdb));
    }
    let lu = t.lun.number().and_then(|n| target.lun(n));
    // EXTENDED COPY and RECEIVE COPY RESULTS see every LU of this target and no other.
    if op == 0x83 || op == 0x84 {
        let Some(lu) = lu else {
            return Route::Now(ScsiError::LUN_NOT_SUPPORTED.outcome(false));
        };
        let luns = target.luns();
        let copies = target.copies.clone();
        return Route::Blocking(Box::new(move |nexus, t| {
            if let Err(o) = lu.check_reservation(nexus, op, &t.cdb) {
                return o;
            }
            if op == 0x83 {
                let o = crate::xcopy::extended_copy(&luns, &copies, nexus, t);
                if o.status != oxiscsi_proto::pdu::ScsiStatus::GOOD {
                    tracing::debug!(sense = %crate::xcopy::describe(&o), "EXTENDED COPY refused");
                }
                o
            } else {
                crate::xcopy::receive_copy_results(&copies, nexus, &t.cdb)
            }
        }));
    }
    match lu {
        Some(lu) if lu.may_block() => {
            Route::Blocking(Box::new(move |nexus, t| lu.execute(nexus, t)))
        }
        Some(lu) => Route::Inline(lu),
        None if op == 0x12 && t.cdb.len() >= 5 && t.cdb[1] & 1 == 0 => {
            // SPC-4 §6.6.2: peripheral qualifier 011b, type 1Fh for a LUN that is not there.
            let alloc = usize::from(u16::from_be_bytes([t.cdb[3], t.cdb[4]]));
            let mut d = vec![0u8; 36];
            d[0] = 0x7f;
            d[2] = 0x06;
            d[3] = 0x12;
            d[4] = 31;
            d.truncate(alloc);
            Route::Now(ScsiOutcome {
                data: Bytes::from(d),
                ..Default::default()
            })
        }
        None => Route::Now(ScsiError::LUN_NOT_SUPPORTED.outcome(false)),
    }
}

/// REPORT LUNS (SPC-4 §6.33).
fn report_luns(target: &Target, cdb: &[u8]) -> ScsiOutcome {
    if cdb.len() < 12 || cdb[2] > 2 {
        return ScsiError::INVALID_FIELD_IN_CDB.outcome(false);
    }
    let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]) as usize;
    if alloc < 16 {
        return ScsiError::INVALID_FIELD_IN_CDB.outcome(false);
    }
    let luns = target.luns();
    let mut d = Vec::with_capacity(8 + 8 * luns.len());
    d.extend_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for n in luns.keys() {
        let mut e = [0u8; 8];
        if *n < 256 {
            e[1] = *n as u8;
        } else {
            e[0] = 0x40 | (n >> 8) as u8;
            e[1] = *n as u8;
        }
        d.extend_from_slice(&e);
    }
    d.truncate(alloc);
    ScsiOutcome {
        data: Bytes::from(d),
        ..Default::default()
    }
}

fn portal_string(a: SocketAddr, tag: u16) -> String {
    match a {
        SocketAddr::V4(v) => format!("{}:{},{tag}", v.ip(), v.port()),
        SocketAddr::V6(v) => format!("[{}]:{},{tag}", v.ip(), v.port()),
    }
}

/// Answer a Text Request: SendTargets (§13.3, Appendix C) showing each initiator only
/// the targets its ACLs admit; other keys NotUnderstood.
fn text_reply(
    shared: &Shared,
    initiator: &str,
    session_target: Option<&Target>,
    pairs: &[(String, String)],
    local: Option<SocketAddr>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        if k != "SendTargets" {
            out.push((k.clone(), "NotUnderstood".into()));
            continue;
        }
        let wanted: Vec<Arc<Target>> = match v.as_str() {
            "All" if session_target.is_none() => shared.targets(),
            "" | "All" => session_target
                .and_then(|t| shared.target(&t.iqn))
                .into_iter()
                .collect(),
            name => shared.target(name).into_iter().collect(),
        };
        for t in wanted {
            if t.is_removed() || !shared.allowed(&t, initiator) {
                continue;
            }
            let spec = t.spec();
            if spec.redirect.is_some() {
                // In maintenance: its portals would only redirect.
                continue;
            }
            out.push(("TargetName".into(), t.iqn.clone()));
            for (p, tag) in &shared.portals {
                if !spec.portal_groups.is_empty() && !spec.portal_groups.contains(tag) {
                    continue;
                }
                let mut a = *p;
                if a.ip().is_unspecified() {
                    if let Some(l) = local {
                        a.set_ip(l.ip());
                    }
                }
                out.push(("TargetAddress".into(), portal_string(a, *tag)));
            }
        }
    }
    out
}
