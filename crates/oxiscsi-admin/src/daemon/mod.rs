//! `oxiscsid`: holds every session, answers the control socket ([`crate::ipc`]), logs
//! in the `automatic`/`onboot` nodes at start and logs everything out on SIGTERM.
//!
//! - [`node`]: node and iface records turned into session configurations.
//! - [`worker`]: a thread per session that drives its connection and serves its LUN
//!   files (FUSE) in one poll(2) loop.
//! - [`luns`]: each LUN of a session as a FUSE file and a loop device.
//! - this module: the session table and the operations behind the socket.

pub mod conf;
mod loopdev;
pub mod luns;
pub mod node;
pub mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oxiscsi_initiator::{Error as InitError, Poller};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use worker::Worker;

use crate::db::record::{Kind, Record};
use crate::db::{Db, NodeKey};
use crate::ipc::{
    Answer, Envelope, Hello, IfaceView, LoginResult, LunView, Negotiated, NodeRef, Request,
    SessionView, Stats, MAX_LINE, PROTOCOL_VERSION, REQUEST_DEADLINE,
};

/// iscsiadm exit codes the daemon answers with (open-iscsi `iscsi_err.h`).
pub mod code {
    pub const ERR: i32 = 1;
    pub const SESS_NOT_FOUND: i32 = 2;
    pub const TRANS: i32 = 4;
    pub const LOGIN: i32 = 5;
    pub const INVAL: i32 = 7;
    pub const TRANS_TIMEOUT: i32 = 8;
    pub const LOGOUT: i32 = 10;
    pub const SESS_EXISTS: i32 = 15;
    pub const FATAL_LOGIN: i32 = 19;
    pub const NO_OBJS_FOUND: i32 = 21;
    pub const LOGIN_AUTH_FAILED: i32 = 24;
    pub const BUSY: i32 = 28;
}

/// Where the daemon keeps things: the DB/config root and the runtime directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Node/discovery/iface records, iscsid.conf, initiatorname.iscsi.
    pub db: PathBuf,
    /// Control socket, FUSE mount, by-path links, pid file.
    pub run: PathBuf,
}

impl Paths {
    /// `--root DIR` puts everything under DIR (runtime in DIR/run); without it the
    /// DB is /etc/oxiscsi and the runtime /run/oxiscsi.
    pub fn new(root: Option<PathBuf>) -> Paths {
        match root {
            Some(r) => Paths {
                run: r.join("run"),
                db: r,
            },
            None => Paths {
                db: "/etc/oxiscsi".into(),
                run: "/run/oxiscsi".into(),
            },
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.run.join("oxiscsid.sock")
    }
}

/// A failed operation: iscsiadm's exit code and words for the admin.
#[derive(Debug, Clone)]
pub struct OpError {
    pub code: i32,
    pub message: String,
}

fn op_err(code: i32, message: impl Into<String>) -> OpError {
    OpError {
        code,
        message: message.into(),
    }
}

struct Entry {
    sid: u32,
    node: NodeRef,
    session: Worker,
    iface: IfaceView,
    logged_in_at: SystemTime,
    failed: Arc<std::sync::Mutex<Option<(SystemTime, String)>>>,
    luns: Vec<luns::Lun>,
    timeouts: Vec<(String, String)>,
}

struct State {
    sessions: BTreeMap<u32, Entry>,
    next_sid: u32,
    /// Nodes with a login under way, so two concurrent `-l` do not both log in.
    logging_in: Vec<NodeRef>,
}

/// The daemon: its DB, configuration and session table.
pub struct Daemon {
    db: Db,
    paths: Paths,
    state: Mutex<State>,
    luns: luns::Attacher,
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Daemon {
    pub fn new(paths: Paths, conf: conf::DaemonConf) -> Result<Arc<Daemon>, String> {
        std::fs::create_dir_all(&paths.run)
            .map_err(|e| format!("cannot create {}: {e}", paths.run.display()))?;
        let luns = luns::Attacher::new(&paths.run, &conf)?;
        Ok(Arc::new(Daemon {
            db: Db::new(&paths.db),
            paths,
            state: Mutex::new(State {
                sessions: BTreeMap::new(),
                next_sid: 1,
                logging_in: Vec::new(),
            }),
            luns,
        }))
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Answer one request.
    pub async fn handle(self: &Arc<Self>, req: Request) -> Result<Value, OpError> {
        let json = |v: Result<Value, serde_json::Error>| {
            v.map_err(|e| op_err(code::ERR, format!("cannot encode the answer: {e}")))
        };
        match req {
            Request::Hello => json(serde_json::to_value(Hello {
                daemon: "oxiscsid".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: PROTOCOL_VERSION,
                pid: std::process::id(),
            })),
            Request::Login(node) => {
                let sids = self.login(&node).await?;
                json(serde_json::to_value(LoginResult { sids }))
            }
            Request::Logout { sid, force } => {
                self.logout(sid, force).await?;
                Ok(Value::Object(Default::default()))
            }
            Request::Sessions => json(serde_json::to_value(self.sessions().await)),
            Request::Session { sid } => json(serde_json::to_value(self.session(sid).await?)),
            Request::Stats { sid } => json(serde_json::to_value(self.stats(sid).await?)),
            Request::Rescan { sid } => json(serde_json::to_value(self.rescan(sid).await?)),
        }
    }

    fn read_node(&self, node: &NodeRef) -> Result<(Record, Record), OpError> {
        let key = NodeKey {
            iqn: node.target.clone(),
            address: node.address.clone(),
            port: node.port,
            tpgt: node.tpgt,
            iface: node.iface.clone(),
        };
        let path = self.db.node_path(&key);
        if !path.exists() {
            return Err(op_err(
                code::NO_OBJS_FOUND,
                format!(
                    "no node record for {} at {} (iface {}): run discovery or `-m node -o new` first",
                    node.target,
                    node::portal_string(&node.address, node.port),
                    node.iface
                ),
            ));
        }
        let rec = self
            .db
            .read(&path)
            .map_err(|e| op_err(code::ERR, format!("cannot use the node record: {e}")))?;
        let rec = Kind::Node.complete(&rec);
        let iface = self
            .db
            .iface(&node.iface)
            .map_err(|e| op_err(code::ERR, format!("cannot use the iface record: {e}")))?
            .ok_or_else(|| {
                op_err(
                    code::NO_OBJS_FOUND,
                    format!(
                        "iface {} does not exist (see `oxiscsiadm -m iface`)",
                        node.iface
                    ),
                )
            })?;
        Ok((rec, iface))
    }

    /// Log in to a node: `node.session.nr_sessions` sessions, each with its own ISID.
    pub async fn login(self: &Arc<Self>, node: &NodeRef) -> Result<Vec<u32>, OpError> {
        let (rec, iface) = self.read_node(node)?;
        let initiator = self
            .db
            .initiator_name()
            .map_err(|e| op_err(code::ERR, e.to_string()))?;
        let mut cfg = node::session_config(&rec, &iface, &initiator)
            .map_err(|e| op_err(code::INVAL, format!("node record of {}: {e}", node.target)))?;
        // A node with no TPGT in its record takes the tag login reports.
        let wanted = node::nr_sessions(&rec)
            .map_err(|e| op_err(code::INVAL, format!("node record of {}: {e}", node.target)))?;
        let have = {
            let mut st = self.state.lock().await;
            if st.logging_in.contains(node) {
                return Err(op_err(
                    code::SESS_EXISTS,
                    format!("a login to {} is already under way", node.target),
                ));
            }
            let have = st
                .sessions
                .values()
                .filter(|e| e.node == *node && e.failed.lock().map(|f| f.is_none()).unwrap_or(true))
                .count();
            if have >= wanted {
                return Err(op_err(
                    code::SESS_EXISTS,
                    format!(
                        "session exists: {} at {} already has {have} session(s) (node.session.nr_sessions = {wanted})",
                        node.target,
                        node::portal_string(&node.address, node.port)
                    ),
                ));
            }
            st.logging_in.push(node.clone());
            have
        };
        let result = self
            .login_n(node, &mut cfg, &iface, &rec, wanted - have)
            .await;
        self.state.lock().await.logging_in.retain(|n| n != node);
        result
    }

    async fn login_n(
        self: &Arc<Self>,
        node: &NodeRef,
        cfg: &mut oxiscsi_initiator::SessionConfig,
        iface: &Record,
        rec: &Record,
        n: usize,
    ) -> Result<Vec<u32>, OpError> {
        // Log in the sessions in parallel (the os-brick lesson: serial logins to many
        // paths take too long); keep the ones that worked if one fails.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let cfg = cfg.clone();
            set.spawn(async move { Poller::connect(cfg).await });
        }
        let mut sessions = Vec::new();
        let mut first_err = None;
        let rt = tokio::runtime::Handle::current();
        while let Some(r) = set.join_next().await {
            match r {
                // Each session gets a thread of its own that drives its connection and
                // serves its LUN files (see `worker`).
                Ok(Ok(p)) => match Worker::spawn(p, rt.clone()) {
                    Ok(w) => sessions.push(w),
                    Err(e) => {
                        first_err.get_or_insert(InitError::Config(e));
                    }
                },
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(InitError::Config(format!("login task failed: {e}")));
                }
            }
        }
        if let Some(e) = first_err {
            // Do not keep half of what was asked for silently: log the others out.
            for s in sessions {
                let _ = tokio::time::timeout(Duration::from_secs(5), s.logout()).await;
            }
            return Err(login_error(node, &e));
        }
        let iface_view = IfaceView {
            name: node.iface.clone(),
            transport: "tcp".into(),
            initiator_name: cfg.initiator_name.clone(),
            ipaddress: cfg.bind.address.map(|a| a.to_string()).unwrap_or_default(),
            hwaddress: iface.get("iface.hwaddress").unwrap_or("").to_string(),
            netdev: cfg.bind.device.clone().unwrap_or_default(),
        };
        let mut sids = Vec::new();
        for session in sessions {
            let sid = {
                let mut st = self.state.lock().await;
                let sid = st.next_sid;
                st.next_sid += 1;
                sid
            };
            let luns = self.luns.attach_all(sid, node, &session).await;
            let failed = Arc::new(std::sync::Mutex::new(None));
            {
                let failed = failed.clone();
                let s = session.clone();
                let label = format!(
                    "session [sid: {sid}, target: {}, portal: {}]",
                    node.target,
                    node::portal_string(&node.address, node.port)
                );
                tokio::spawn(async move {
                    let why = s.closed().await;
                    let now = SystemTime::now();
                    if let Ok(mut f) = failed.lock() {
                        if f.is_none() {
                            *f = Some((now, why.clone()));
                        }
                    }
                    tracing::warn!(at = epoch(now), reason = %why, "{label} ended");
                });
            }
            tracing::info!(
                sid,
                target = %node.target,
                portal = %session.info().portal,
                isid = %session.info().isid,
                tsih = session.info().tsih,
                "logged in"
            );
            self.state.lock().await.sessions.insert(
                sid,
                Entry {
                    sid,
                    node: node.clone(),
                    session,
                    iface: iface_view.clone(),
                    logged_in_at: SystemTime::now(),
                    failed,
                    luns,
                    timeouts: node::timeouts(rec),
                },
            );
            sids.push(sid);
        }
        Ok(sids)
    }

    /// Flush, detach the LUN devices and log out. Refused while a device is in use
    /// unless `force` (then the devices are detached lazily and the session ends).
    pub async fn logout(&self, sid: u32, force: bool) -> Result<(), OpError> {
        let mut entry = {
            let mut st = self.state.lock().await;
            let Some(e) = st.sessions.get(&sid) else {
                return Err(op_err(
                    code::SESS_NOT_FOUND,
                    format!("no session with sid {sid} (see `oxiscsiadm -m session`)"),
                ));
            };
            if !force {
                if let Some(why) = e.luns.iter().find_map(|l| self.luns.busy(l)) {
                    return Err(op_err(
                        code::BUSY,
                        format!(
                            "session {sid} is in use: {why}; unmount/close it first or use --force (data may be lost)"
                        ),
                    ));
                }
            }
            match st.sessions.remove(&sid) {
                Some(e) => e,
                None => {
                    return Err(op_err(
                        code::SESS_NOT_FOUND,
                        format!("no session with sid {sid}"),
                    ))
                }
            }
        };
        let mut problems = Vec::new();
        for lun in entry.luns.drain(..) {
            if let Err(e) = self.luns.detach(lun, &entry.session, force).await {
                problems.push(e);
            }
        }
        let alive = entry.session.closed_reason().is_none();
        if alive {
            match tokio::time::timeout(Duration::from_secs(20), entry.session.logout()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(format!("logout: {e}")),
                Err(_) => problems.push("the target did not answer the logout within 20 s".into()),
            }
        }
        tracing::info!(sid, target = %entry.node.target, "logged out");
        if problems.is_empty() {
            Ok(())
        } else {
            Err(op_err(
                code::LOGOUT,
                format!("session {sid} ended, but: {}", problems.join("; ")),
            ))
        }
    }

    fn view(&self, e: &Entry) -> SessionView {
        let info = e.session.info();
        let p = &info.params;
        let mut iface = e.iface.clone();
        if let Some(a) = info.local_address {
            iface.ipaddress = a.ip().to_string();
        }
        let failed = e.failed.lock().ok().and_then(|f| f.clone());
        let state = if failed.is_some() {
            "FAILED"
        } else {
            "LOGGED IN"
        };
        SessionView {
            sid: e.sid,
            node: Some(e.node.clone()),
            target: info.target.clone(),
            current_portal: info.portal.clone(),
            isid: info.isid.to_string(),
            tsih: info.tsih,
            iface,
            connection_state: state.into(),
            session_state: state.replace(' ', "_"),
            failure: failed.as_ref().map(|(_, w)| w.clone()),
            logged_in_at: epoch(e.logged_in_at),
            failed_at: failed.as_ref().map(|(t, _)| epoch(*t)),
            negotiated: Negotiated {
                header_digest: digest_name(p.header_digest),
                data_digest: digest_name(p.data_digest),
                max_recv_data_segment_length: p.max_recv_data_segment_length,
                max_xmit_data_segment_length: p.max_xmit_data_segment_length,
                first_burst_length: p.first_burst_length,
                max_burst_length: p.max_burst_length,
                immediate_data: p.immediate_data,
                initial_r2t: p.initial_r2t,
                max_outstanding_r2t: u32::from(p.max_outstanding_r2t),
            },
            luns: e
                .luns
                .iter()
                .map(|l| self.luns.view(l))
                .collect::<Vec<LunView>>(),
            timeouts: e.timeouts.clone(),
        }
    }

    pub async fn sessions(&self) -> Vec<SessionView> {
        let st = self.state.lock().await;
        st.sessions.values().map(|e| self.view(e)).collect()
    }

    pub async fn session(&self, sid: u32) -> Result<SessionView, OpError> {
        let st = self.state.lock().await;
        st.sessions
            .get(&sid)
            .map(|e| self.view(e))
            .ok_or_else(|| op_err(code::SESS_NOT_FOUND, format!("no session with sid {sid}")))
    }

    pub async fn stats(&self, sid: u32) -> Result<Stats, OpError> {
        let session = {
            let st = self.state.lock().await;
            st.sessions
                .get(&sid)
                .map(|e| e.session.clone())
                .ok_or_else(|| op_err(code::SESS_NOT_FOUND, format!("no session with sid {sid}")))?
        };
        let s = tokio::time::timeout(Duration::from_secs(5), session.stats())
            .await
            .map_err(|_| op_err(code::TRANS_TIMEOUT, "the session did not answer within 5 s"))?
            .map_err(|e| op_err(code::ERR, format!("session {sid}: {e}")))?;
        Ok(Stats {
            txdata_octets: s.tx_data_octets,
            rxdata_octets: s.rx_data_octets,
            noptx_pdus: s.nop_out_pdus,
            scsicmd_pdus: s.scsi_cmd_pdus,
            tmfcmd_pdus: s.tmf_cmd_pdus,
            login_pdus: s.login_pdus,
            text_pdus: s.text_pdus,
            dataout_pdus: s.data_out_pdus,
            logout_pdus: s.logout_pdus,
            snack_pdus: s.snack_pdus,
            noprx_pdus: s.nop_in_pdus,
            scsirsp_pdus: s.scsi_rsp_pdus,
            tmfrsp_pdus: s.tmf_rsp_pdus,
            textrsp_pdus: s.text_rsp_pdus,
            datain_pdus: s.data_in_pdus,
            logoutrsp_pdus: s.logout_rsp_pdus,
            r2t_pdus: s.r2t_pdus,
            async_pdus: s.async_pdus,
            rjt_pdus: s.reject_pdus,
            digest_err: s.digest_errors,
            timeout_err: s.timeout_errors,
        })
    }

    /// REPORT LUNS again: attach new LUNs, detach vanished ones, pick up size changes.
    pub async fn rescan(&self, sid: u32) -> Result<SessionView, OpError> {
        let (session, node, old) = {
            let mut st = self.state.lock().await;
            let e = st.sessions.get_mut(&sid).ok_or_else(|| {
                op_err(code::SESS_NOT_FOUND, format!("no session with sid {sid}"))
            })?;
            (
                e.session.clone(),
                e.node.clone(),
                std::mem::take(&mut e.luns),
            )
        };
        let (luns, err) = self.luns.rescan(sid, &node, &session, old).await;
        let mut st = self.state.lock().await;
        let Some(e) = st.sessions.get_mut(&sid) else {
            return Err(op_err(
                code::SESS_NOT_FOUND,
                format!("session {sid} ended during the rescan"),
            ));
        };
        e.luns = luns;
        if let Some(err) = err {
            return Err(op_err(code::ERR, format!("rescan of session {sid}: {err}")));
        }
        Ok(self.view(e))
    }

    /// Log in every node whose `node.startup` is `automatic` or `onboot`, in parallel.
    /// Failures are logged; the daemon keeps running.
    pub async fn login_startup_nodes(self: &Arc<Self>) -> usize {
        let nodes = match self.db.nodes() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("cannot list node records: {e}");
                return 0;
            }
        };
        let mut set = tokio::task::JoinSet::new();
        for (k, path) in nodes {
            let rec = match self.db.read(&path) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("skipping a node record: {e}");
                    continue;
                }
            };
            let startup = rec.get("node.startup").unwrap_or("manual");
            if startup != "automatic" && startup != "onboot" {
                continue;
            }
            let node = NodeRef {
                target: k.iqn,
                address: k.address,
                port: k.port,
                tpgt: k.tpgt,
                iface: k.iface,
            };
            let d = self.clone();
            set.spawn(async move {
                match d.login(&node).await {
                    Ok(sids) => {
                        tracing::info!(?sids, target = %node.target, "startup login done");
                        sids.len()
                    }
                    Err(e) => {
                        tracing::error!(target = %node.target, code = e.code, "startup login failed: {}", e.message);
                        0
                    }
                }
            });
        }
        let mut n = 0;
        while let Some(r) = set.join_next().await {
            n += r.unwrap_or(0);
        }
        n
    }

    /// Log out every session (SIGTERM), forcing device detach.
    pub async fn shutdown(&self) {
        let sids: Vec<u32> = self.state.lock().await.sessions.keys().copied().collect();
        for sid in sids {
            if let Err(e) = self.logout(sid, true).await {
                tracing::warn!(sid, "{}", e.message);
            }
        }
        self.luns.shutdown();
    }
}

fn digest_name(d: oxiscsi_initiator::proto::Digest) -> String {
    match d {
        oxiscsi_initiator::proto::Digest::None => "None".into(),
        _ => "CRC32C".into(),
    }
}

/// A login failure in iscsiadm's terms.
fn login_error(node: &NodeRef, e: &InitError) -> OpError {
    let text = e.to_string();
    let code = match e {
        InitError::Login { source, .. } => {
            use oxiscsi_initiator::proto::login::LoginError;
            match source {
                s if s.is_auth() => code::LOGIN_AUTH_FAILED,
                LoginError::Status { status } if status.class == 2 => code::FATAL_LOGIN,
                LoginError::Timeout(_) => code::TRANS_TIMEOUT,
                _ => code::LOGIN,
            }
        }
        InitError::ConnectTimeout { .. } => code::TRANS_TIMEOUT,
        InitError::Connect { .. } | InitError::Bind { .. } => code::TRANS,
        InitError::Config(_) => code::INVAL,
        _ => code::LOGIN,
    };
    op_err(
        code,
        format!(
            "login to [iface: {}, target: {}, portal: {}] failed: {text}",
            node.iface,
            node.target,
            node::portal_string(&node.address, node.port)
        ),
    )
}

/// Serve the control socket until `stop` resolves. The socket is created mode 0600.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let d = daemon.clone();
                    tokio::spawn(async move { client(d, stream).await });
                }
                Err(e) => {
                    tracing::warn!("accept on the control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Bind the control socket: refuse when another daemon answers on it, replace a stale
/// one, and restrict it to the daemon's user.
pub async fn bind_socket(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "another oxiscsid is already running on {} (stop it, or use another --root)",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let l = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    Ok(l)
}

async fn client(daemon: Arc<Daemon>, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(
            REQUEST_DEADLINE,
            (&mut rd).take(MAX_LINE as u64 + 1).read_line(&mut line),
        )
        .await;
        match read {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
        let answer = if line.len() > MAX_LINE {
            fail(code::INVAL, format!("request longer than {MAX_LINE} bytes"))
        } else {
            match serde_json::from_str::<Value>(&line) {
                Err(e) => fail(code::INVAL, format!("request is not JSON: {e}")),
                Ok(v) => {
                    let version = v.get("version").and_then(Value::as_u64);
                    match version {
                        None => fail(code::INVAL, "request has no \"version\""),
                        Some(n) if n > u64::from(PROTOCOL_VERSION) => fail(
                            code::INVAL,
                            format!("protocol version {n} is newer than this daemon's ({PROTOCOL_VERSION})"),
                        ),
                        Some(_) => match serde_json::from_value::<Envelope>(v) {
                            Err(e) => fail(code::INVAL, format!("bad request: {e}")),
                            Ok(env) => match daemon.handle(env.request).await {
                                Ok(result) => Answer {
                                    version: PROTOCOL_VERSION,
                                    ok: true,
                                    result: Some(result),
                                    code: None,
                                    error: None,
                                },
                                Err(e) => fail(e.code, e.message),
                            },
                        },
                    }
                }
            }
        };
        let mut out = match serde_json::to_string(&answer) {
            Ok(s) => s,
            Err(_) => return,
        };
        out.push('\n');
        if tokio::time::timeout(Duration::from_secs(10), wr.write_all(out.as_bytes()))
            .await
            .map_or(true, |r| r.is_err())
        {
            return;
        }
    }
}

fn fail(code: i32, message: impl Into<String>) -> Answer {
    Answer {
        version: PROTOCOL_VERSION,
        ok: false,
        result: None,
        code: Some(code),
        error: Some(message.into()),
    }
}
