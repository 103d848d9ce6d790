//! `oxiscsiadm`: iscsiadm's syntax, output and exit codes. This module: parsing and
//! the database modes (`-m node`, `-m discoverydb`, `-m iface` with `-o
//! new|delete|update|show`, listings, `-P 1`, discovery, `--import`); `sessions`:
//! what goes through oxiscsid (login, logout, `-m session`, rescan, stats).

mod sessions;

use std::path::PathBuf;

use crate::db::record::{iface_record, node_record, sendtargets_record, Kind, Record};
use crate::db::{Db, DbError, NodeKey};

/// iscsiadm's exit codes (open-iscsi's `iscsi_err.h`) that these modes use.
pub mod exit {
    pub const OK: i32 = 0;
    /// Generic failure (ISCSI_ERR).
    pub const ERR: i32 = 1;
    /// Invalid arguments or parameter name (ISCSI_ERR_INVAL).
    pub const INVAL: i32 = 7;
    /// Transport failure: no TCP connection (ISCSI_ERR_TRANS).
    pub const TRANS: i32 = 4;
    /// Login failed (ISCSI_ERR_LOGIN).
    pub const LOGIN: i32 = 5;
    /// Timed out (ISCSI_ERR_TRANS_TIMEOUT).
    pub const TIMEOUT: i32 = 8;
    /// Cannot reach the daemon (ISCSI_ERR_ISCSID_NOTCONN).
    pub const DAEMON: i32 = 20;
    /// CHAP failed (ISCSI_ERR_LOGIN_AUTH_FAILED).
    pub const AUTH: i32 = 24;
    /// No records found (ISCSI_ERR_NO_OBJS_FOUND).
    pub const NO_OBJS: i32 = 21;
    /// The DB or iscsid.conf cannot be read or does not parse (ISCSI_ERR_IDBM).
    pub const IDBM: i32 = 6;
    /// Permission denied (ISCSI_ERR_ACCESS).
    pub const ACCESS: i32 = 13;
}

/// A failure with iscsiadm's exit code and message.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

pub(crate) fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

impl From<DbError> for Failure {
    /// iscsiadm's codes for DB failures: 13 when permission is denied, else 6, with what
    /// to do about a file that does not parse.
    fn from(e: DbError) -> Self {
        match &e {
            DbError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                fail(
                    exit::ACCESS,
                    format!("{e} (run as root, or pass --root DIR)"),
                )
            }
            DbError::Io { .. } => fail(exit::IDBM, e.to_string()),
            DbError::Record { .. } | DbError::Conf { .. } => {
                fail(exit::IDBM, format!("{e} (fix or remove that line)"))
            }
        }
    }
}

/// Parsed command line.
#[derive(Debug, Default, Clone)]
pub struct Args {
    pub mode: Option<String>,
    pub target: Option<String>,
    pub portal: Option<String>,
    pub iface: Option<String>,
    pub op: Option<String>,
    pub name: Option<String>,
    pub value: Option<String>,
    pub print: Option<u8>,
    pub show_secrets: bool,
    pub discovery_type: Option<String>,
    pub json: bool,
    pub root: Option<PathBuf>,
    /// `--import DIR`: take an existing open-iscsi tree.
    pub import: Option<PathBuf>,
    /// `-l`: log in.
    pub login: bool,
    /// `-u`: log out.
    pub logout: bool,
    /// `-L all|manual|automatic|onboot`.
    pub login_all: Option<String>,
    /// `-U all|manual|automatic|onboot`.
    pub logout_all: Option<String>,
    /// `-R`: rescan.
    pub rescan: bool,
    /// `-s`: statistics.
    pub stats: bool,
    /// `-r SID`.
    pub sid: Option<u32>,
    /// `--force`: log out even while a LUN device is in use.
    pub force: bool,
}

pub const USAGE: &str = "usage: oxiscsiadm [--root DIR] --import /etc/iscsi
       oxiscsiadm -m discovery -t sendtargets -p IP[:PORT] [-I IFACE] [-P 0|1] [-l]
       oxiscsiadm -m node [-T IQN] [-p IP[:PORT][,TPGT]] [-I IFACE] [-o new|delete|update|show] [-n NAME -v VALUE] [-P 0|1] [-S] [--json]
       oxiscsiadm -m node [-T IQN] [-p IP[:PORT][,TPGT]] [-I IFACE] -l|-u|-R|-s [--force]
       oxiscsiadm -m node -L|-U all|manual|automatic|onboot
       oxiscsiadm -m session [-r SID] [-P 0|1|2|3] [-u [--force]] [-R] [-s] [--json]
       oxiscsiadm -m discoverydb -t sendtargets -p IP[:PORT] -o new|delete|update|show [-n NAME -v VALUE]
       oxiscsiadm -m iface [-I NAME] [-o new|delete|update|show] [-n iface.X -v VALUE]";

/// Parse iscsiadm-style arguments (short and long forms, `-oX` or `-o X`).
pub fn parse(argv: &[String]) -> Result<Args, Failure> {
    let mut a = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        let (flag, inline) = match arg.strip_prefix("--") {
            Some(long) => match long.split_once('=') {
                Some((f, v)) => (format!("--{f}"), Some(v.to_string())),
                None => (arg.clone(), None),
            },
            None if arg.starts_with('-') && arg.len() > 2 => {
                (arg[..2].to_string(), Some(arg[2..].to_string()))
            }
            None => (arg.clone(), None),
        };
        let takes = |f: &str| {
            matches!(
                f,
                "-m" | "--mode"
                    | "-T"
                    | "--targetname"
                    | "-p"
                    | "--portal"
                    | "-I"
                    | "--interface"
                    | "-o"
                    | "--op"
                    | "-n"
                    | "--name"
                    | "-v"
                    | "--value"
                    | "-P"
                    | "--print"
                    | "-t"
                    | "--type"
                    | "--root"
                    | "--import"
                    | "-L"
                    | "--loginall"
                    | "-U"
                    | "--logoutall"
                    | "-r"
                    | "--sid"
            )
        };
        let value = if takes(&flag) {
            match inline {
                Some(v) => Some(v),
                None => {
                    i += 1;
                    Some(argv.get(i).cloned().ok_or_else(|| {
                        fail(exit::INVAL, format!("option {flag} needs a value\n{USAGE}"))
                    })?)
                }
            }
        } else {
            None
        };
        match flag.as_str() {
            "-m" | "--mode" => a.mode = value,
            "-T" | "--targetname" => a.target = value,
            "-p" | "--portal" => a.portal = value,
            "-I" | "--interface" => a.iface = value,
            "-o" | "--op" => a.op = value,
            "-n" | "--name" => a.name = value,
            "-v" | "--value" => a.value = value,
            "-t" | "--type" => a.discovery_type = value,
            "--root" => a.root = value.map(PathBuf::from),
            "--import" => a.import = value.map(PathBuf::from),
            "-P" | "--print" => {
                a.print = Some(
                    value
                        .unwrap_or_default()
                        .parse()
                        .map_err(|_| fail(exit::INVAL, "-P takes a print level, 0 to 3"))?,
                )
            }
            "-S" | "--show" => a.show_secrets = true,
            "-l" | "--login" => a.login = true,
            "-u" | "--logout" => a.logout = true,
            "-R" | "--rescan" => a.rescan = true,
            "-s" | "--stats" => a.stats = true,
            "--force" => a.force = true,
            "-L" | "--loginall" => a.login_all = value,
            "-U" | "--logoutall" => a.logout_all = value,
            "-r" | "--sid" => {
                let v = value.unwrap_or_default();
                a.sid = Some(v.parse().map_err(|_| {
                    fail(
                        exit::INVAL,
                        format!("-r {v}: a session id is a number (see `oxiscsiadm -m session`)"),
                    )
                })?)
            }
            "--json" => a.json = true,
            "-h" | "--help" => return Err(fail(exit::OK, USAGE)),
            other => {
                return Err(fail(
                    exit::INVAL,
                    format!("unrecognized option {other:?}\n{USAGE}"),
                ))
            }
        }
        i += 1;
    }
    Ok(a)
}

/// `IP[:PORT][,TPGT]` with `[v6]` for IPv6.
fn parse_portal(p: &str) -> Result<(String, u16, Option<i32>), Failure> {
    let bad = || {
        fail(
            exit::INVAL,
            format!("invalid portal {p:?}: use IP[:PORT][,TPGT]"),
        )
    };
    let (hp, tpgt) = match p.rsplit_once(',') {
        Some((h, t)) => (h, Some(t.parse::<i32>().map_err(|_| bad())?)),
        None => (p, None),
    };
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(pt) => pt.parse().map_err(|_| bad())?,
            None => 3260,
        };
        (h.to_string(), port)
    } else {
        match hp.rsplit_once(':') {
            Some((h, pt)) => (h.to_string(), pt.parse().map_err(|_| bad())?),
            None => (hp.to_string(), 3260),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port, tpgt))
}

fn portal_text(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Run one command; returns what to print on stdout. `socket` is oxiscsid's control
/// socket (for logins, sessions, rescans and statistics).
pub fn run(a: &Args, db: &Db, socket: &std::path::Path) -> Result<String, Failure> {
    if let Some(src) = &a.import {
        return import(src, db);
    }
    match a.mode.as_deref() {
        Some("node") if a.login || a.logout || a.rescan || a.stats => {
            sessions::node_action(a, db, socket)
        }
        Some("node") if a.login_all.is_some() || a.logout_all.is_some() => {
            sessions::node_all(a, db, socket)
        }
        Some("node") => node(a, db),
        Some("discoverydb") => discoverydb(a, db),
        Some("iface") => iface(a, db),
        Some("discovery") => {
            let (out, found) = discovery(a, db)?;
            if a.login {
                // -l: log in to the portals just found.
                print!("{out}");
                return sessions::login_nodes(&found, socket);
            }
            Ok(out)
        }
        Some("session") => sessions::session_mode(a, socket),
        Some(m @ ("host" | "fw")) => Err(fail(
            exit::INVAL,
            format!("-m {m} is not supported: oxiscsi has no SCSI hosts or iBFT firmware records (use -m session)"),
        )),
        Some(m) => Err(fail(exit::INVAL, format!("mode {m:?} is not supported\n{USAGE}"))),
        None => Err(fail(exit::INVAL, format!("no mode given (-m)\n{USAGE}"))),
    }
}

pub(crate) fn matching_nodes(a: &Args, db: &Db) -> Result<Vec<(NodeKey, PathBuf)>, Failure> {
    let portal = a.portal.as_deref().map(parse_portal).transpose()?;
    Ok(db
        .nodes()?
        .into_iter()
        .filter(|(k, _)| a.target.as_deref().is_none_or(|t| t == k.iqn))
        .filter(|(k, _)| {
            portal.as_ref().is_none_or(|(h, p, t)| {
                *h == k.address && *p == k.port && t.is_none_or(|t| t == k.tpgt)
            })
        })
        .filter(|(k, _)| a.iface.as_deref().is_none_or(|i| i == k.iface))
        .collect())
}

fn update_value(a: &Args, kind: Kind) -> Result<(String, String), Failure> {
    let (Some(n), Some(v)) = (&a.name, &a.value) else {
        return Err(fail(exit::INVAL, "update requires name and value"));
    };
    if !kind.knows(n) {
        return Err(fail(
            exit::INVAL,
            format!("Cannot modify {n}. Invalid param name."),
        ));
    }
    Ok((n.clone(), v.clone()))
}

fn node(a: &Args, db: &Db) -> Result<String, Failure> {
    match a.op.as_deref() {
        None => {
            let nodes = matching_nodes(a, db)?;
            if nodes.is_empty() {
                return Err(fail(exit::NO_OBJS, "No records found"));
            }
            if a.json {
                let items: Vec<String> = nodes
                    .iter()
                    .map(|(k, _)| {
                        format!(
                            "{{\"target\":{:?},\"address\":{:?},\"port\":{},\"tpgt\":{},\"iface\":{:?}}}",
                            k.iqn, k.address, k.port, k.tpgt, k.iface
                        )
                    })
                    .collect();
                return Ok(format!("[{}]\n", items.join(",")));
            }
            let mut out = String::new();
            if a.print == Some(1) {
                let mut last: Option<&str> = None;
                for (k, _) in &nodes {
                    if last != Some(k.iqn.as_str()) {
                        out.push_str(&format!("Target: {}\n", k.iqn));
                        last = Some(&k.iqn);
                    }
                    out.push_str(&format!(
                        "\tPortal: {},{}\n",
                        portal_text(&k.address, k.port),
                        k.tpgt
                    ));
                    out.push_str(&format!("\t\tIface Name: {}\n", k.iface));
                }
            } else {
                for (k, _) in &nodes {
                    out.push_str(&format!(
                        "{},{} {}\n",
                        portal_text(&k.address, k.port),
                        k.tpgt,
                        k.iqn
                    ));
                }
            }
            Ok(out)
        }
        Some("new") => {
            let (Some(t), Some(p)) = (&a.target, &a.portal) else {
                return Err(fail(
                    exit::INVAL,
                    "-o new needs -T IQN and -p IP[:PORT][,TPGT]",
                ));
            };
            let (addr, port, tpgt) = parse_portal(p)?;
            let tpgt = tpgt.unwrap_or(-1);
            let iface = a.iface.clone().unwrap_or_else(|| "default".into());
            let key = NodeKey {
                iqn: t.clone(),
                address: addr.clone(),
                port,
                tpgt,
                iface: iface.clone(),
            };
            let path = db.node_path(&key);
            let conf = db.conf_defaults()?;
            db.update(
                &path,
                Kind::Node,
                || node_record(&conf, t, &addr, port, tpgt),
                |r| {
                    r.set("iface.iscsi_ifacename", &iface);
                },
            )?;
            Ok(format!(
                "New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if={iface}] {addr},{port},{tpgt} {t}] added\n"
            ))
        }
        Some("show") => {
            let nodes = matching_nodes(a, db)?;
            if nodes.is_empty() {
                return Err(fail(exit::NO_OBJS, "No records found"));
            }
            let mut out = String::new();
            for (_, path) in nodes {
                let r = Kind::Node.complete(&db.read(&path)?);
                out.push_str(&show(&r, a));
            }
            Ok(out)
        }
        Some("update") => {
            let (n, v) = update_value(a, Kind::Node)?;
            let nodes = matching_nodes(a, db)?;
            if nodes.is_empty() {
                return Err(fail(exit::NO_OBJS, "No records found"));
            }
            for (_, path) in nodes {
                db.update(&path, Kind::Node, Record::new, |r| r.set(&n, &v))?;
            }
            Ok(String::new())
        }
        Some("delete") => {
            let nodes = matching_nodes(a, db)?;
            if nodes.is_empty() {
                return Err(fail(exit::NO_OBJS, "No records found"));
            }
            let _lock = db.lock()?;
            for (_, path) in nodes {
                std::fs::remove_file(&path)
                    .map_err(|e| fail(exit::ERR, format!("{}: {e}", path.display())))?;
                // Remove directories left empty (portal, then target).
                let mut dir = path.parent().map(|p| p.to_path_buf());
                while let Some(d) = dir {
                    if d == db.root().join("nodes") || std::fs::remove_dir(&d).is_err() {
                        break;
                    }
                    dir = d.parent().map(|p| p.to_path_buf());
                }
            }
            Ok(String::new())
        }
        Some(op) => Err(fail(
            exit::INVAL,
            format!("can not recognize operation: '{op}'"),
        )),
    }
}

fn show(r: &Record, a: &Args) -> String {
    if a.json {
        let items: Vec<String> = r
            .iter()
            .map(|(k, v)| {
                let v = if !a.show_secrets && crate::db::record::is_secret(k) && !v.is_empty() {
                    "********"
                } else {
                    v
                };
                format!("{k:?}:{v:?}")
            })
            .collect();
        format!("{{{}}}\n", items.join(","))
    } else {
        r.show(a.show_secrets)
    }
}

fn discoverydb(a: &Args, db: &Db) -> Result<String, Failure> {
    if let Some(t) = &a.discovery_type {
        if t != "sendtargets" && t != "st" {
            return Err(fail(
                exit::INVAL,
                format!("discovery type {t:?}: only sendtargets (st) is supported"),
            ));
        }
    }
    let portal = a.portal.as_deref().map(parse_portal).transpose()?;
    let all = || -> Vec<PathBuf> {
        let dir = db.root().join("send_targets");
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path().join("st_config"))
                    .filter(|p| p.exists())
                    .collect()
            })
            .unwrap_or_default()
    };
    let targets: Vec<PathBuf> = match &portal {
        Some((h, p, _)) => vec![db.sendtargets_path(h, *p)]
            .into_iter()
            .filter(|p| p.exists())
            .collect(),
        None => all(),
    };
    match a.op.as_deref() {
        Some("new") => {
            let Some((h, p, _)) = portal else {
                return Err(fail(exit::INVAL, "-o new needs -p IP[:PORT]"));
            };
            let conf = db.conf_defaults()?;
            db.update(
                &db.sendtargets_path(&h, p),
                Kind::SendTargets,
                || sendtargets_record(&conf, &h, p),
                |_| {},
            )?;
            Ok(format!("New discovery record for [{h},{p}] added.\n"))
        }
        None | Some("show") => {
            if targets.is_empty() {
                return Err(fail(exit::NO_OBJS, "No records found"));
            }
            let mut out = String::new();
            for t in targets {
                let r = Kind::SendTargets.complete(&db.read(&t)?);
                if a.op.is_none() {
                    let addr = r.get("discovery.sendtargets.address").unwrap_or("");
                    let port = r.get("discovery.sendtargets.port").unwrap_or("3260");
                    out.push_str(&format!("{addr}:{port} via sendtargets\n"));
                } else {
                    out.push_str(&show(&r, a));
                }
            }
            Ok(out)
        }
        Some("update") => {
            let (n, v) = update_value(a, Kind::SendTargets)?;
            if targets.is_empty() {
                return Err(fail(exit::NO_OBJS, "No records found"));
            }
            for t in targets {
                db.update(&t, Kind::SendTargets, Record::new, |r| r.set(&n, &v))?;
            }
            Ok(String::new())
        }
        Some("delete") => {
            if targets.is_empty() {
                return Err(fail(exit::NO_OBJS, "No records found"));
            }
            let _lock = db.lock()?;
            for t in targets {
                if let Some(dir) = t.parent() {
                    std::fs::remove_dir_all(dir)
                        .map_err(|e| fail(exit::ERR, format!("{}: {e}", dir.display())))?;
                }
            }
            Ok(String::new())
        }
        Some(op) => Err(fail(
            exit::INVAL,
            format!("can not recognize operation: '{op}'"),
        )),
    }
}

/// `--import DIR`: copy an open-iscsi tree (nodes/, send_targets/, ifaces/,
/// iscsid.conf, initiatorname.iscsi) into the DB. Every record is parsed first; one
/// that does not parse stops the import before anything is written, naming file and
/// line. Records already in the DB are replaced.
fn import(src: &std::path::Path, db: &Db) -> Result<String, Failure> {
    if !src.is_dir() {
        return Err(fail(
            exit::INVAL,
            format!("--import {}: not a directory", src.display()),
        ));
    }
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(PathBuf, PathBuf)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            // Symlinks (open-iscsi's static/) are not records: skip them.
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(base, &p, out),
                Ok(t) if t.is_file() => {
                    if let Ok(rel) = p.strip_prefix(base) {
                        out.push((p.clone(), rel.to_path_buf()));
                    }
                }
                _ => {}
            }
        }
    }
    for sub in ["nodes", "send_targets", "ifaces"] {
        walk(src, &src.join(sub), &mut files);
    }
    let mut records = Vec::new();
    for (abs, rel) in &files {
        let r = db.read(abs).map_err(|e| {
            let f = Failure::from(e);
            fail(
                f.code,
                format!("import refused, nothing written: {}", f.message),
            )
        })?;
        records.push((rel.clone(), r));
    }
    let _lock = db.lock()?;
    for (rel, r) in &records {
        db.write(&db.root().join(rel), r)?;
    }
    let mut extra = 0;
    for f in ["iscsid.conf", "initiatorname.iscsi"] {
        let from = src.join(f);
        if from.is_file() {
            std::fs::create_dir_all(db.root())
                .map_err(|e| fail(exit::IDBM, format!("{}: {e}", db.root().display())))?;
            std::fs::copy(&from, db.root().join(f))
                .map_err(|e| fail(exit::IDBM, format!("{}: {e}", from.display())))?;
            extra += 1;
        }
    }
    Ok(format!(
        "imported {} record(s) and {extra} config file(s) from {}\n",
        records.len(),
        src.display()
    ))
}

/// `-m discovery -t st -p IP[:PORT]`: SendTargets with the discovery record's settings
/// (created if missing; CHAP from discovery.sendtargets.auth.*), then a node record per
/// target portal found (kept if it exists), printed as iscsiadm does.
fn discovery(a: &Args, db: &Db) -> Result<(String, Vec<NodeKey>), Failure> {
    match a.discovery_type.as_deref() {
        Some("sendtargets" | "st") => {}
        Some(t) => {
            return Err(fail(
                30,
                format!("discovery type {t:?} is not supported (use sendtargets)"),
            ))
        }
        None => return Err(fail(exit::INVAL, "discovery needs -t sendtargets")),
    }
    if a.op.is_some() || a.name.is_some() {
        return Err(fail(exit::INVAL, "use -m discoverydb for -o and -n/-v"));
    }
    let (host, port, _) = a
        .portal
        .as_deref()
        .map(parse_portal)
        .transpose()?
        .ok_or_else(|| fail(exit::INVAL, "discovery needs -p IP[:PORT]"))?;
    let st_path = db.sendtargets_path(&host, port);
    let conf = db.conf_defaults()?;
    let rec = db.update(
        &st_path,
        Kind::SendTargets,
        || sendtargets_record(&conf, &host, port),
        |_| {},
    )?;
    let portal = portal_text(&host, port);
    let mut cfg = oxiscsi_initiator::SessionConfig::new(portal.clone(), "discovery");
    // ROOT/initiatorname.iscsi, generated once if missing.
    cfg.initiator_name = db.initiator_name()?;
    // -I IFACE: the discovery session leaves from that iface's address/interface too.
    let iface = a.iface.clone().unwrap_or_else(|| "default".into());
    let iface_rec = db.iface(&iface)?.ok_or_else(|| {
        fail(
            exit::NO_OBJS,
            format!("iface {iface} does not exist (see `oxiscsiadm -m iface`)"),
        )
    })?;
    cfg.bind = crate::daemon::node::source_bind(&iface_rec)
        .map_err(|e| fail(exit::INVAL, format!("iface {iface}: {e}")))?;
    if let Some(t) = rec
        .get("discovery.sendtargets.timeo.login_timeout")
        .and_then(|v| v.parse().ok())
    {
        cfg.login_timeout = std::time::Duration::from_secs(t);
    }
    if rec.get("discovery.sendtargets.auth.authmethod") == Some("CHAP") {
        let (Some(u), Some(p)) = (
            rec.get("discovery.sendtargets.auth.username")
                .filter(|v| !v.is_empty()),
            rec.get("discovery.sendtargets.auth.password")
                .filter(|v| !v.is_empty()),
        ) else {
            return Err(fail(exit::INVAL, "discovery authmethod is CHAP but username/password are not set in the discovery record"));
        };
        use oxiscsi_initiator::proto::login::{ChapConfig, ChapCredentials};
        cfg.chap = Some(ChapConfig {
            initiator: ChapCredentials {
                user: u.to_string(),
                secret: p.as_bytes().to_vec(),
            },
            target: None,
            algorithms: ChapConfig::DEFAULT_ALGORITHMS.to_vec(),
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(exit::ERR, format!("cannot start the runtime: {e}")))?;
    let found = rt
        .block_on(oxiscsi_initiator::discover_with(cfg, None))
        .map_err(|e| {
            let code = if e.is_login() {
                if e.to_string().contains("0x0201") || e.to_string().contains("authentication") {
                    exit::AUTH
                } else {
                    exit::LOGIN
                }
            } else if e.to_string().contains("timed out") || e.to_string().contains("within") {
                exit::TIMEOUT
            } else {
                exit::TRANS
            };
            fail(code, format!("discovery at {portal} failed: {e}"))
        })?;
    let mut out = String::new();
    let mut keys = Vec::new();
    for t in &found {
        for p in &t.portals {
            let key = NodeKey {
                iqn: t.name.clone(),
                address: p.host.clone(),
                port: p.port,
                tpgt: i32::from(p.tpgt),
                iface: iface.clone(),
            };
            let path = db.node_path(&key);
            let (h, pt) = (host.clone(), port);
            db.update(
                &path,
                Kind::Node,
                || node_record(&conf, &key.iqn, &key.address, key.port, key.tpgt),
                |r| {
                    r.set("iface.iscsi_ifacename", &iface);
                    r.set("node.discovery_address", &h);
                    r.set("node.discovery_port", &pt.to_string());
                    r.set("node.discovery_type", "send_targets");
                },
            )?;
            keys.push(key.clone());
            if a.print == Some(1) {
                out.push_str(&format!(
                    "Target: {}
	Portal: {},{}
		Iface Name: {iface}
",
                    t.name,
                    portal_text(&p.host, p.port),
                    p.tpgt
                ));
            } else {
                out.push_str(&format!(
                    "{},{} {}
",
                    portal_text(&p.host, p.port),
                    p.tpgt,
                    t.name
                ));
            }
        }
    }
    if found.is_empty() {
        return Err(fail(exit::NO_OBJS, "No portals found"));
    }
    Ok((out, keys))
}

fn iface(a: &Args, db: &Db) -> Result<String, Failure> {
    let name = a.iface.clone();
    let dir = db.root().join("ifaces");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    // open-iscsi always has the built-in `default` iface.
    if !names.iter().any(|n| n == "default") {
        names.push("default".into());
    }
    names.sort();
    let get = |n: &str| -> Result<Record, Failure> {
        let p = db.iface_path(n);
        if p.exists() {
            Ok(Kind::Iface.complete(&db.read(&p)?))
        } else if n == "default" {
            Ok(iface_record("default"))
        } else {
            Err(fail(
                exit::NO_OBJS,
                format!("Could not read iface {n}. Error 21"),
            ))
        }
    };
    match a.op.as_deref() {
        None if name.is_none() => {
            let mut out = String::new();
            for n in names {
                let r = get(&n)?;
                let f = |k: &str| match r.get(k) {
                    Some(v) if !v.is_empty() => v.to_string(),
                    _ => "<empty>".into(),
                };
                out.push_str(&format!(
                    "{n} {},{},{},{},{}\n",
                    f("iface.transport_name"),
                    f("iface.hwaddress"),
                    f("iface.ipaddress"),
                    f("iface.net_ifacename"),
                    f("iface.initiatorname")
                ));
            }
            Ok(out)
        }
        None | Some("show") => {
            let n = name.ok_or_else(|| fail(exit::INVAL, "-o show needs -I NAME"))?;
            Ok(show(&get(&n)?, a))
        }
        Some("new") => {
            let n = name.ok_or_else(|| fail(exit::INVAL, "-o new needs -I NAME"))?;
            if n == "default" || db.iface_path(&n).exists() {
                return Err(fail(15, format!("iface {n} already exists")));
            }
            db.update(&db.iface_path(&n), Kind::Iface, || iface_record(&n), |_| {})?;
            Ok(format!("New interface {n} added\n"))
        }
        Some("update") => {
            let n = name.ok_or_else(|| fail(exit::INVAL, "-o update needs -I NAME"))?;
            let (k, v) = update_value(a, Kind::Iface)?;
            if !db.iface_path(&n).exists() {
                return Err(fail(
                    exit::NO_OBJS,
                    format!("Could not read iface {n}. Error 21"),
                ));
            }
            db.update(&db.iface_path(&n), Kind::Iface, Record::new, |r| {
                r.set(&k, &v)
            })?;
            Ok(format!("{n} updated.\n"))
        }
        Some("delete") => {
            let n = name.ok_or_else(|| fail(exit::INVAL, "-o delete needs -I NAME"))?;
            let p = db.iface_path(&n);
            if !p.exists() {
                return Err(fail(
                    exit::NO_OBJS,
                    format!("Could not read iface {n}. Error 21"),
                ));
            }
            let _lock = db.lock()?;
            std::fs::remove_file(&p)
                .map_err(|e| fail(exit::ERR, format!("{}: {e}", p.display())))?;
            Ok(format!("{n} unbound and deleted.\n"))
        }
        Some(op) => Err(fail(
            exit::INVAL,
            format!("can not recognize operation: '{op}'"),
        )),
    }
}
