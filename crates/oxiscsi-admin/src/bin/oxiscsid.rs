//! `oxiscsid`: the initiator daemon (options like iscsid's).
//!
//! ```text
//! oxiscsid [-f] [-d LEVEL] [-c CONFIG] [--root DIR]
//! ```
//! Without `-f` it starts itself again in the background (own session, log in
//! RUNDIR/oxiscsid.log) and exits once that copy answers on its control socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use oxiscsi_admin::daemon::{self, conf::DaemonConf, Daemon, Paths};

/// mimalloc instead of glibc malloc, as in the `oxiscsi` CLI: glibc trims freed 1 MiB
/// read buffers back to the kernel (MADV_DONTNEED) and every next read faults their
/// pages in again (do_anonymous_page was ~7% of the client CPU serving 1 MiB reads
/// through FUSE).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str =
    "usage: oxiscsid [-f|--foreground] [-d|--debug LEVEL] [-c|--config FILE] [--root DIR]
  -f          stay in the foreground, log to stderr
  -d LEVEL    log level 0-8 (0: info, 1-4: debug, 5-8: trace)
  -c FILE     configuration (default: DB/iscsid.conf)
  --root DIR  DB and config in DIR, runtime (socket, LUN files, by-path) in DIR/run;
              default /etc/oxiscsi and /run/oxiscsi (also OXISCSI_ROOT)";

struct Opts {
    foreground: bool,
    debug: u8,
    config: Option<PathBuf>,
    root: Option<PathBuf>,
}

fn parse(argv: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        foreground: false,
        debug: 0,
        config: None,
        root: std::env::var_os("OXISCSI_ROOT").map(Into::into),
    };
    let mut i = 0;
    while i < argv.len() {
        let a = argv[i].as_str();
        let mut value = |name: &str| -> Result<String, String> {
            i += 1;
            argv.get(i)
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a {
            "-f" | "--foreground" => o.foreground = true,
            "-d" | "--debug" => {
                let v = value(a)?;
                o.debug = v
                    .parse()
                    .ok()
                    .filter(|d| *d <= 8)
                    .ok_or_else(|| format!("-d {v}: use a level from 0 to 8"))?;
            }
            "-c" | "--config" => o.config = Some(value(a)?.into()),
            "--root" => o.root = Some(value(a)?.into()),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
        i += 1;
    }
    Ok(o)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse(&argv) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("oxiscsid: {e}");
            return ExitCode::from(7);
        }
    };
    let paths = Paths::new(o.root.clone());
    if !o.foreground {
        return background(&argv, &paths);
    }
    let level = match o.debug {
        0 => "info",
        1..=4 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OXISCSI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let conf_path = o
        .config
        .clone()
        .unwrap_or_else(|| paths.db.join("iscsid.conf"));
    let conf = match DaemonConf::load(&conf_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oxiscsid: {e}");
            return ExitCode::from(7);
        }
    };
    // Each session holds its socket (twice: see oxiscsi_initiator::raise_fd_limit) and a
    // timer fd, each LUN a FUSE file and a loop device.
    match oxiscsi_initiator::raise_fd_limit() {
        Some(n) => tracing::debug!(open_files = n, "open-file limit"),
        None => tracing::warn!("cannot read the open-file limit (getrlimit failed)"),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxiscsid: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(paths, conf)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oxiscsid: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(paths: Paths, conf: DaemonConf) -> Result<(), String> {
    let sock = paths.socket();
    std::fs::create_dir_all(&paths.run)
        .map_err(|e| format!("cannot create {}: {e}", paths.run.display()))?;
    let listener = daemon::bind_socket(&sock).await?;
    let d = Daemon::new(paths.clone(), conf)?;
    tracing::info!(socket = %sock.display(), db = %paths.db.display(), "oxiscsid ready");
    let _ = std::fs::write(
        paths.run.join("oxiscsid.pid"),
        format!("{}\n", std::process::id()),
    );
    {
        let d = d.clone();
        tokio::spawn(async move {
            let n = d.login_startup_nodes().await;
            if n > 0 {
                tracing::info!(sessions = n, "startup nodes logged in");
            }
        });
    }
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    daemon::serve(d.clone(), listener, stop).await;
    tracing::info!("stopping: logging out every session");
    let _ = tokio::time::timeout(Duration::from_secs(60), d.shutdown()).await;
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(paths.run.join("oxiscsid.pid"));
    Ok(())
}

/// Start again with `-f` in a new session, log to RUNDIR/oxiscsid.log, and return
/// once the copy answers on its socket (or report why it did not).
fn background(argv: &[String], paths: &Paths) -> ExitCode {
    use std::os::unix::process::CommandExt;
    if let Err(e) = std::fs::create_dir_all(&paths.run) {
        eprintln!("oxiscsid: cannot create {}: {e}", paths.run.display());
        return ExitCode::FAILURE;
    }
    let log_path = paths.run.join("oxiscsid.log");
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("oxiscsid: cannot open {}: {e}", log_path.display());
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("oxiscsid: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let err_log = match log.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("oxiscsid: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut child = match std::process::Command::new(exe)
        .arg("-f")
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oxiscsid: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sock = paths.socket();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "oxiscsid: the daemon exited at start ({status}); see {}",
                log_path.display()
            );
            return ExitCode::FAILURE;
        }
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "oxiscsid: the daemon did not open {} within 15 s; see {}",
        sock.display(),
        log_path.display()
    );
    ExitCode::FAILURE
}
