//! `oxiscsi target`: serve one target from quick flags, in the foreground.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args as ClapArgs;
use oxiscsi_target::config::{parse_chap, LunSpec, TargetSpec};
use oxiscsi_target::{Server, TargetConfig};

use crate::common::{CliError, CliResult, CommonOpts};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Serve what a TOML file describes (many targets, portal groups, ACLs, CHAP, LUNs,
    /// limits; see examples/target.toml) instead of the quick flags. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["luns", "chap", "mutual_chap", "discovery_chap", "allow"])]
    pub config: Option<std::path::PathBuf>,
    /// Portal to listen on, ADDR:PORT (repeatable; IPv6 as [::1]:3260).
    #[arg(
        long = "listen",
        value_name = "ADDR:PORT",
        default_value = "0.0.0.0:3260"
    )]
    pub listen: Vec<String>,
    /// Target name.
    #[arg(
        long,
        value_name = "IQN",
        default_value = "iqn.2026-11.rs.oxiscsi:target"
    )]
    pub iqn: String,
    /// A LUN: N:PATH[,size=SIZE][,ro] (file or block device; a missing file is created
    /// sparse at SIZE) or N:mem:SIZE (repeatable).
    #[arg(long = "lun", value_name = "SPEC", required = true)]
    pub luns: Vec<String>,
    /// Require one-way CHAP with this account, USER:SECRET.
    #[arg(long, value_name = "USER:SECRET", env = "OXISCSI_TARGET_CHAP")]
    pub chap: Option<String>,
    /// Our account for mutual CHAP, USER:SECRET (needs --chap).
    #[arg(long, value_name = "USER:SECRET", env = "OXISCSI_TARGET_MUTUAL_CHAP")]
    pub mutual_chap: Option<String>,
    /// Require CHAP for discovery sessions, USER:SECRET.
    #[arg(
        long,
        value_name = "USER:SECRET",
        env = "OXISCSI_TARGET_DISCOVERY_CHAP"
    )]
    pub discovery_chap: Option<String>,
    /// Admit only this initiator name (repeatable; default: all).
    #[arg(long = "allow", value_name = "IQN")]
    pub allow: Vec<String>,
    /// Commands each session may have outstanding.
    #[arg(long, default_value_t = 128)]
    pub queue_depth: u32,
    /// Logins in progress at once; more are answered "service unavailable" (0x0301).
    #[arg(long, default_value_t = 1024)]
    pub max_logins: usize,
}

/// Turn the flags into a server configuration.
pub fn config(a: &Args, opts: &CommonOpts) -> CliResult<TargetConfig> {
    let usage = |e: String| CliError::Usage(e);
    let mut listen = Vec::new();
    for l in &a.listen {
        let addr: SocketAddr = l.parse().map_err(|_| {
            usage(format!(
                "--listen {l:?}: expected ADDR:PORT, e.g. 0.0.0.0:3260 or [::1]:3260"
            ))
        })?;
        listen.push(addr);
    }
    let luns = a
        .luns
        .iter()
        .map(|s| LunSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    let chap = |s: &Option<String>, flag: &str| -> CliResult<_> {
        s.as_deref()
            .map(|v| parse_chap(v).map_err(|e| usage(format!("{flag}: {e}"))))
            .transpose()
    };
    let cfg = TargetConfig {
        listen,
        targets: vec![TargetSpec {
            iqn: a.iqn.clone(),
            alias: None,
            luns,
            chap: chap(&a.chap, "--chap")?,
            mutual_chap: chap(&a.mutual_chap, "--mutual-chap")?,
            allow: a.allow.clone(),
            portal_groups: Vec::new(),
            redirect: None,
        }],
        discovery_chap: chap(&a.discovery_chap, "--discovery-chap")?,
        max_logins_in_progress: a.max_logins,
        login_timeout: Duration::from_secs(opts.login_timeout),
        queue_depth: a.queue_depth,
        ..TargetConfig::default()
    };
    cfg.validate().map_err(usage)?;
    Ok(cfg)
}

pub async fn run(opts: &CommonOpts, a: Args) -> CliResult {
    // A socket per session and per login in progress.
    oxiscsi_initiator::raise_fd_limit();
    let cfg = match &a.config {
        Some(path) => {
            oxiscsi_target::config::file::load(path).map_err(|e| CliError::Usage(e.to_string()))?
        }
        None => config(&a, opts)?,
    };
    let server = Server::bind(cfg.clone())
        .await
        .map_err(|e| CliError::Io(format!("cannot start the target: {e}")))?;
    // Startup lines for people and scripts; a closed stdout must not stop the target.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for addr in server.local_addrs() {
        let _ = writeln!(out, "listening on {addr}");
    }
    for t in &cfg.targets {
        for l in &t.luns {
            let ro = if l.read_only { " (read-only)" } else { "" };
            let _ = writeln!(out, "target {} lun {} {:?}{ro}", t.iqn, l.lun, l.backing);
        }
    }
    let _ = out.flush();
    drop(out);
    let handle = server.spawn();
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::Io(format!("cannot watch SIGTERM: {e}")))?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| CliError::Io(format!("cannot watch SIGHUP: {e}")))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                let Some(path) = &a.config else {
                    tracing::warn!("SIGHUP: nothing to reload (started without --config)");
                    continue;
                };
                // A bad file is refused with file:line; the running configuration stays.
                match oxiscsi_target::config::file::load(path) {
                    Err(e) => tracing::error!("reload refused, keeping the running configuration: {e}"),
                    Ok(new) => match handle.reload(new) {
                        Ok(r) => tracing::warn!("reloaded {}: {r}", path.display()),
                        Err(e) => tracing::error!("reload refused, keeping the running configuration: {}: {e}", path.display()),
                    },
                }
            }
        }
    }
    tracing::warn!(
        sessions = handle.sessions(),
        "stopping: asking every session to log out"
    );
    // Sessions get LOGOUT_WITHIN seconds to log out; then the connections close.
    let _ = tokio::time::timeout(Duration::from_secs(10), handle.shutdown()).await;
    Ok(())
}
