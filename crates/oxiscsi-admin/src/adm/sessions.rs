//! The parts of `oxiscsiadm` that go through oxiscsid: `-l`/`-u`/`-L`/`-U`, `-m session`
//! (`-P 0..3`, `-u`, `-R`, `-s`), node rescans and statistics. Output as iscsiadm
//! 2.1.8 prints it where scripts parse it; `--json` prints the daemon's JSON.

use std::path::Path;
use std::time::Duration;

use super::{exit, fail, matching_nodes, Args, Failure};
use crate::db::{Db, NodeKey};
use crate::ipc::{self, CallError, NodeRef, Request, SessionView, Stats};

const LOGIN_DEADLINE: Duration = Duration::from_secs(300);
const LOGOUT_DEADLINE: Duration = Duration::from_secs(120);
const QUERY_DEADLINE: Duration = Duration::from_secs(30);

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(exit::ERR, format!("cannot start the runtime: {e}")))
}

fn from_call(e: CallError) -> Failure {
    fail(e.code, e.message)
}

async fn call(
    socket: &Path,
    req: Request,
    deadline: Duration,
) -> Result<serde_json::Value, CallError> {
    let mut c = ipc::Client::connect(socket).await?;
    c.call(req, deadline).await
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, Failure> {
    serde_json::from_value(v)
        .map_err(|e| fail(exit::ERR, format!("unexpected answer from oxiscsid: {e}")))
}

async fn list(socket: &Path) -> Result<Vec<SessionView>, Failure> {
    decode(
        call(socket, Request::Sessions, QUERY_DEADLINE)
            .await
            .map_err(from_call)?,
    )
}

fn node_ref(k: &NodeKey) -> NodeRef {
    NodeRef {
        target: k.iqn.clone(),
        address: k.address.clone(),
        port: k.port,
        tpgt: k.tpgt,
        iface: k.iface.clone(),
    }
}

fn node_label(n: &NodeRef) -> String {
    format!(
        "[iface: {}, target: {}, portal: {},{}]",
        n.iface, n.target, n.address, n.port
    )
}

fn session_label(s: &SessionView) -> String {
    let (addr, port) = persistent(s);
    format!(
        "[sid: {}, target: {}, portal: {addr},{port}]",
        s.sid, s.target
    )
}

fn persistent(s: &SessionView) -> (String, u16) {
    match &s.node {
        Some(n) => (n.address.clone(), n.port),
        None => (s.current_portal.clone(), 0),
    }
}

/// iscsiadm's three lines for a failed login or logout ("Could not login to ...",
/// "initiator reported error (N - TEXT)", then the reason).
fn report_failure(what: &str, e: &CallError) {
    eprintln!("oxiscsiadm: Could not {what}.");
    eprintln!(
        "oxiscsiadm: initiator reported error ({} - {})",
        e.code,
        code_text(e.code)
    );
    eprintln!("oxiscsiadm: {}", e.message);
}

/// iscsiadm's wording for its error codes (open-iscsi `iscsi_err.c`).
fn code_text(code: i32) -> &'static str {
    match code {
        2 => "session not found",
        4 => "encountered connection failure",
        5 => "encountered iSCSI login failure",
        7 => "invalid parameter",
        8 => "connection timed out",
        10 => "encountered iSCSI logout failure",
        15 => "session exists",
        19 => "iSCSI login failed due to target error",
        20 => "could not connect to iscsid",
        21 => "no objects found",
        24 => "iSCSI login failed due to authorization failure",
        28 => "device or resource in use",
        _ => "unknown error",
    }
}

/// Log in to each node, all at once; print as iscsiadm does.
pub(crate) fn login_nodes(keys: &[NodeKey], socket: &Path) -> Result<String, Failure> {
    if keys.is_empty() {
        return Err(fail(exit::NO_OBJS, "No records found"));
    }
    let rt = runtime()?;
    let nodes: Vec<NodeRef> = keys.iter().map(node_ref).collect();
    for n in &nodes {
        println!("Logging in to {}", node_label(n));
    }
    let results = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in nodes.iter().enumerate() {
            let (n, socket) = (n.clone(), socket.to_path_buf());
            set.spawn(async move { (i, call(&socket, Request::Login(n), LOGIN_DEADLINE).await) });
        }
        let mut out: Vec<Option<Result<serde_json::Value, CallError>>> =
            (0..nodes.len()).map(|_| None).collect();
        while let Some(r) = set.join_next().await {
            if let Ok((i, r)) = r {
                out[i] = Some(r);
            }
        }
        out
    });
    let mut last_err = None;
    let mut failed = 0;
    for (n, r) in nodes.iter().zip(results) {
        match r {
            Some(Ok(_)) => println!("Login to {} successful.", node_label(n)),
            Some(Err(e)) if e.code == exit::DAEMON => return Err(from_call(e)),
            Some(Err(e)) => {
                failed += 1;
                if e.code == 15 {
                    eprintln!("oxiscsiadm: {}", e.message);
                } else {
                    report_failure(&format!("login to {}", node_label(n)), &e);
                }
                last_err = Some(e.code);
            }
            None => {
                failed += 1;
                last_err = Some(exit::ERR);
            }
        }
    }
    match last_err {
        None => Ok(String::new()),
        Some(code) if failed > 1 || nodes.len() > 1 => {
            Err(fail(code, "Could not log into all portals"))
        }
        Some(code) => Err(Failure {
            code,
            message: format!("login failed ({})", code_text(code)),
        }),
    }
}

/// Log out of each session; print as iscsiadm does.
fn logout_sessions(
    sessions: &[SessionView],
    socket: &Path,
    force: bool,
) -> Result<String, Failure> {
    if sessions.is_empty() {
        return Err(fail(exit::NO_OBJS, "No matching sessions found"));
    }
    let rt = runtime()?;
    for s in sessions {
        println!("Logging out of session {}", session_label(s));
    }
    let mut last_err = None;
    for s in sessions {
        let r = rt.block_on(call(
            socket,
            Request::Logout { sid: s.sid, force },
            LOGOUT_DEADLINE,
        ));
        match r {
            Ok(_) => println!("Logout of {} successful.", session_label(s)),
            Err(e) => {
                report_failure(&format!("logout of {}", session_label(s)), &e);
                last_err = Some(e.code);
            }
        }
    }
    match last_err {
        None => Ok(String::new()),
        Some(code) => Err(fail(code, "Could not logout of all requested sessions")),
    }
}

fn rescan_sessions(sessions: &[SessionView], socket: &Path, json: bool) -> Result<String, Failure> {
    if sessions.is_empty() {
        return Err(fail(exit::NO_OBJS, "No session found."));
    }
    let rt = runtime()?;
    let mut out = String::new();
    let mut views = Vec::new();
    for s in sessions {
        if !json {
            out.push_str(&format!("Rescanning session {}\n", session_label(s)));
        }
        let v = rt
            .block_on(call(socket, Request::Rescan { sid: s.sid }, LOGIN_DEADLINE))
            .map_err(from_call)?;
        views.push(v);
    }
    if json {
        return Ok(format!("{}\n", serde_json::Value::Array(views)));
    }
    Ok(out)
}

fn stats_sessions(sessions: &[SessionView], socket: &Path, json: bool) -> Result<String, Failure> {
    if sessions.is_empty() {
        return Err(fail(exit::NO_OBJS, "No session found."));
    }
    let rt = runtime()?;
    let mut out = String::new();
    let mut all = Vec::new();
    for s in sessions {
        let st: Stats = decode(
            rt.block_on(call(socket, Request::Stats { sid: s.sid }, QUERY_DEADLINE))
                .map_err(from_call)?,
        )?;
        if json {
            all.push(serde_json::json!({"sid": s.sid, "stats": st}));
            continue;
        }
        out.push_str(&format!("Stats for session {}\n", session_label(s)));
        out.push_str("iSCSI SNMP:\n");
        let rows: [(&str, u64); 21] = [
            ("txdata_octets", st.txdata_octets),
            ("rxdata_octets", st.rxdata_octets),
            ("noptx_pdus", st.noptx_pdus),
            ("scsicmd_pdus", st.scsicmd_pdus),
            ("tmfcmd_pdus", st.tmfcmd_pdus),
            ("login_pdus", st.login_pdus),
            ("text_pdus", st.text_pdus),
            ("dataout_pdus", st.dataout_pdus),
            ("logout_pdus", st.logout_pdus),
            ("snack_pdus", st.snack_pdus),
            ("noprx_pdus", st.noprx_pdus),
            ("scsirsp_pdus", st.scsirsp_pdus),
            ("tmfrsp_pdus", st.tmfrsp_pdus),
            ("textrsp_pdus", st.textrsp_pdus),
            ("datain_pdus", st.datain_pdus),
            ("logoutrsp_pdus", st.logoutrsp_pdus),
            ("r2t_pdus", st.r2t_pdus),
            ("async_pdus", st.async_pdus),
            ("rjt_pdus", st.rjt_pdus),
            ("digest_err", st.digest_err),
            ("timeout_err", st.timeout_err),
        ];
        for (k, v) in rows {
            out.push_str(&format!("\t{k}: {v}\n"));
        }
    }
    if json {
        return Ok(format!("{}\n", serde_json::Value::Array(all)));
    }
    Ok(out)
}

fn sessions_of_nodes(all: Vec<SessionView>, keys: &[NodeKey]) -> Vec<SessionView> {
    let refs: Vec<NodeRef> = keys.iter().map(node_ref).collect();
    all.into_iter()
        .filter(|s| s.node.as_ref().is_some_and(|n| refs.contains(n)))
        .collect()
}

/// `-m node [filters] -l|-u|-R|-s`.
pub(crate) fn node_action(a: &Args, db: &Db, socket: &Path) -> Result<String, Failure> {
    let keys: Vec<NodeKey> = matching_nodes(a, db)?.into_iter().map(|(k, _)| k).collect();
    if keys.is_empty() {
        return Err(fail(exit::NO_OBJS, "No records found"));
    }
    if a.login {
        return login_nodes(&keys, socket);
    }
    let all = runtime()?.block_on(list(socket))?;
    let mine = sessions_of_nodes(all, &keys);
    if a.logout {
        logout_sessions(&mine, socket, a.force)
    } else if a.rescan {
        rescan_sessions(&mine, socket, a.json)
    } else {
        stats_sessions(&mine, socket, a.json)
    }
}

fn startup_matches(which: &str, startup: &str) -> Result<bool, Failure> {
    match which {
        "all" => Ok(true),
        "manual" | "automatic" | "onboot" => Ok(startup == which),
        other => Err(fail(
            exit::INVAL,
            format!("-L/-U {other:?}: use all, manual, automatic or onboot"),
        )),
    }
}

/// `-m node -L|-U all|manual|automatic|onboot`.
pub(crate) fn node_all(a: &Args, db: &Db, socket: &Path) -> Result<String, Failure> {
    let which = a
        .login_all
        .as_deref()
        .or(a.logout_all.as_deref())
        .unwrap_or("all");
    let mut keys = Vec::new();
    for (k, path) in db.nodes()? {
        let r = db.read(&path)?;
        if startup_matches(which, r.get("node.startup").unwrap_or("manual"))? {
            keys.push(k);
        }
    }
    if a.login_all.is_some() {
        if keys.is_empty() {
            return Err(fail(exit::NO_OBJS, "No records found"));
        }
        return login_nodes(&keys, socket);
    }
    let all = runtime()?.block_on(list(socket))?;
    let mine = if which == "all" {
        all
    } else {
        sessions_of_nodes(all, &keys)
    };
    logout_sessions(&mine, socket, a.force)
}

/// `-m session [-r SID] [-P N] [-u] [-R] [-s] [--json]`.
pub(crate) fn session_mode(a: &Args, socket: &Path) -> Result<String, Failure> {
    let rt = runtime()?;
    let sessions: Vec<SessionView> = match a.sid {
        Some(sid) => vec![decode(
            rt.block_on(call(socket, Request::Session { sid }, QUERY_DEADLINE))
                .map_err(from_call)?,
        )?],
        None => rt.block_on(list(socket))?,
    };
    drop(rt);
    if a.logout {
        return logout_sessions(&sessions, socket, a.force);
    }
    if a.rescan {
        return rescan_sessions(&sessions, socket, a.json);
    }
    if a.stats {
        return stats_sessions(&sessions, socket, a.json);
    }
    if a.op.as_deref().is_some_and(|o| o != "show") {
        return Err(fail(
            exit::INVAL,
            "-m session takes -o show only (use -u, -R, -s for actions)",
        ));
    }
    if a.json {
        return serde_json::to_string(&sessions)
            .map(|s| format!("{s}\n"))
            .map_err(|e| fail(exit::ERR, e.to_string()));
    }
    if sessions.is_empty() {
        return Err(fail(exit::NO_OBJS, "No active sessions."));
    }
    let level = a.print.unwrap_or(0);
    if level > 3 {
        return Err(fail(
            exit::INVAL,
            format!("Invalid info level {level}. Try 0 - 3."),
        ));
    }
    Ok(print_sessions(&sessions, level, a.show_secrets))
}

fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

fn or_default(v: &str) -> &str {
    if v.is_empty() {
        "default"
    } else {
        v
    }
}

/// `iscsiadm -m session -P level` output.
pub fn print_sessions(sessions: &[SessionView], level: u8, _show_secrets: bool) -> String {
    let mut out = String::new();
    if level == 0 {
        for s in sessions {
            let (addr, port) = persistent(s);
            let tpgt = s.node.as_ref().map(|n| n.tpgt).unwrap_or(-1);
            out.push_str(&format!(
                "tcp: [{}] {}:{port},{tpgt} {} (non-flash)\n",
                s.sid,
                bracket(&addr),
                s.target
            ));
        }
        return out;
    }
    if level == 3 {
        out.push_str("iSCSI Transport Class version user-space (oxiscsi)\n");
        out.push_str(&format!("version {}\n", env!("CARGO_PKG_VERSION")));
    }
    let mut prev: Option<&SessionView> = None;
    for s in sessions {
        let (addr, port) = persistent(s);
        let tpgt = s.node.as_ref().map(|n| n.tpgt).unwrap_or(-1);
        if prev.is_none_or(|p| p.target != s.target) {
            out.push_str(&format!("Target: {} (non-flash)\n", s.target));
            prev = None;
        }
        if prev.is_none_or(|p| persistent(p) != (addr.clone(), port)) {
            out.push_str(&format!("\tCurrent Portal: {},{tpgt}\n", s.current_portal));
            out.push_str(&format!(
                "\tPersistent Portal: {}:{port},{tpgt}\n",
                bracket(&addr)
            ));
        } else {
            out.push('\n');
        }
        let i = &s.iface;
        out.push_str("\t\t**********\n\t\tInterface:\n\t\t**********\n");
        out.push_str(&format!("\t\tIface Name: {}\n", i.name));
        out.push_str(&format!("\t\tIface Transport: {}\n", i.transport));
        out.push_str(&format!("\t\tIface Initiatorname: {}\n", i.initiator_name));
        out.push_str(&format!(
            "\t\tIface IPaddress: {}\n",
            if i.ipaddress.is_empty() {
                "<empty>".to_string()
            } else {
                bracket(&i.ipaddress)
            }
        ));
        out.push_str(&format!(
            "\t\tIface HWaddress: {}\n",
            or_default(&i.hwaddress)
        ));
        out.push_str(&format!("\t\tIface Netdev: {}\n", or_default(&i.netdev)));
        out.push_str(&format!("\t\tSID: {}\n", s.sid));
        out.push_str(&format!(
            "\t\tiSCSI Connection State: {}\n",
            s.connection_state
        ));
        out.push_str(&format!("\t\tiSCSI Session State: {}\n", s.session_state));
        out.push_str("\t\tInternal iscsid Session State: NO CHANGE\n");
        if let (Some(why), Some(at)) = (&s.failure, s.failed_at) {
            out.push_str(&format!(
                "\t\tLast Failure: at {at} (seconds since epoch): {why}\n"
            ));
        }
        if level >= 2 {
            let t = |k: &str| {
                s.timeouts
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| "<empty>".into())
            };
            out.push_str("\t\t*********\n\t\tTimeouts:\n\t\t*********\n");
            out.push_str(&format!(
                "\t\tRecovery Timeout: {}\n",
                t("node.session.timeo.replacement_timeout")
            ));
            out.push_str(&format!(
                "\t\tTarget Reset Timeout: {}\n",
                t("node.session.err_timeo.tgt_reset_timeout")
            ));
            out.push_str(&format!(
                "\t\tLUN Reset Timeout: {}\n",
                t("node.session.err_timeo.lu_reset_timeout")
            ));
            out.push_str(&format!(
                "\t\tAbort Timeout: {}\n",
                t("node.session.err_timeo.abort_timeout")
            ));
            let p = &s.negotiated;
            let yn = |b: bool| if b { "Yes" } else { "No" };
            out.push_str("\t\t************************\n\t\tNegotiated iSCSI params:\n\t\t************************\n");
            out.push_str(&format!("\t\tHeaderDigest: {}\n", p.header_digest));
            out.push_str(&format!("\t\tDataDigest: {}\n", p.data_digest));
            out.push_str(&format!(
                "\t\tMaxRecvDataSegmentLength: {}\n",
                p.max_recv_data_segment_length
            ));
            out.push_str(&format!(
                "\t\tMaxXmitDataSegmentLength: {}\n",
                p.max_xmit_data_segment_length
            ));
            out.push_str(&format!("\t\tFirstBurstLength: {}\n", p.first_burst_length));
            out.push_str(&format!("\t\tMaxBurstLength: {}\n", p.max_burst_length));
            out.push_str(&format!("\t\tImmediateData: {}\n", yn(p.immediate_data)));
            out.push_str(&format!("\t\tInitialR2T: {}\n", yn(p.initial_r2t)));
            out.push_str(&format!(
                "\t\tMaxOutstandingR2T: {}\n",
                p.max_outstanding_r2t
            ));
        }
        if level >= 3 {
            // No SCSI host here: the session id stands in for the host number.
            out.push_str("\t\t************************\n\t\tAttached SCSI devices:\n\t\t************************\n");
            out.push_str(&format!(
                "\t\tHost Number: {}\tState: {}\n",
                s.sid,
                if s.failure.is_some() {
                    "blocked"
                } else {
                    "running"
                }
            ));
            for l in &s.luns {
                out.push_str(&format!(
                    "\t\tscsi{} Channel 00 Id 0 Lun: {}\n",
                    s.sid, l.lun
                ));
                if !l.device.is_empty() {
                    let name = l.device.trim_start_matches("/dev/");
                    out.push_str(&format!(
                        "\t\t\tAttached scsi disk {name}\t\tState: {}\n",
                        if s.failure.is_some() {
                            "blocked"
                        } else {
                            "running"
                        }
                    ));
                }
            }
        }
        prev = Some(s);
    }
    out
}
