//! Options every tool shares, URL → session configuration, exit codes.

use std::time::Duration;

use clap::Args;
use oxiscsi_initiator::proto::login::{ChapAlgorithm, ChapConfig, ChapCredentials};
use oxiscsi_initiator::{DigestChoice, Error, IscsiUrl, Poller, Session, SessionConfig};

pub const EXIT_IO: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONNECT: u8 = 3;
pub const EXIT_LOGIN: u8 = 4;
pub const EXIT_SCSI: u8 = 5;

/// A tool failure: the library error, or a usage or local I/O problem.
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Io(String),
    Iscsi(Box<Error>),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(s) | CliError::Io(s) => f.write_str(s),
            CliError::Iscsi(e) => write!(f, "{e}"),
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Iscsi(Box::new(e))
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

pub fn exit_code(e: &CliError) -> u8 {
    match e {
        CliError::Usage(_) => EXIT_USAGE,
        CliError::Io(_) => EXIT_IO,
        CliError::Iscsi(e) => match e.as_ref() {
            Error::Config(_) => EXIT_USAGE,
            e if e.is_login() => EXIT_LOGIN,
            e if e.is_connection() => EXIT_CONNECT,
            Error::Scsi { .. } => EXIT_SCSI,
            Error::Task(_) => EXIT_CONNECT,
            _ => EXIT_IO,
        },
    }
}

#[derive(Args, Debug, Clone)]
pub struct CommonOpts {
    /// Initiator IQN (default: /etc/iscsi/initiatorname.iscsi, else iqn.2026-11.rs.oxiscsi:<host>).
    #[arg(long, global = true, value_name = "IQN")]
    pub initiator_name: Option<String>,
    /// Header digest offer: none, crc32c, "crc32c,none" or "none,crc32c".
    #[arg(long, global = true, default_value = "none", value_name = "LIST")]
    pub header_digest: String,
    /// Data digest offer: none, crc32c, "crc32c,none" or "none,crc32c".
    #[arg(long, global = true, default_value = "none", value_name = "LIST")]
    pub data_digest: String,
    /// CHAP algorithms to offer, in order (md5, sha1, sha256, sha3-256).
    #[arg(
        long,
        global = true,
        default_value = "md5,sha1,sha256,sha3-256",
        value_name = "LIST"
    )]
    pub chap_algorithms: String,
    /// Login timeout in seconds (TCP connect included).
    #[arg(long, global = true, default_value_t = 15, value_name = "SECONDS")]
    pub login_timeout: u64,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn parse_url(s: &str) -> CliResult<IscsiUrl> {
    IscsiUrl::parse(s).map_err(|e| CliError::Usage(e.to_string()))
}

/// Build a session configuration from a URL and the common options. Secrets: the URL's
/// password, else `OXISCSI_CHAP_PASSWORD`; mutual CHAP from `OXISCSI_TARGET_CHAP_USER` /
/// `OXISCSI_TARGET_CHAP_PASSWORD`.
pub fn session_config(
    url: &IscsiUrl,
    opts: &CommonOpts,
    target: Option<&str>,
) -> CliResult<SessionConfig> {
    let target = target.or(url.target.as_deref()).unwrap_or("");
    let mut cfg = SessionConfig::new(url.portal(), target);
    if let Some(n) = &opts.initiator_name {
        cfg.initiator_name = n.clone();
    }
    cfg.header_digest = DigestChoice::parse(&opts.header_digest).ok_or_else(|| {
        CliError::Usage(format!(
            "--header-digest {:?}: use none, crc32c, \"crc32c,none\" or \"none,crc32c\"",
            opts.header_digest
        ))
    })?;
    cfg.data_digest = DigestChoice::parse(&opts.data_digest).ok_or_else(|| {
        CliError::Usage(format!(
            "--data-digest {:?}: use none, crc32c, \"crc32c,none\" or \"none,crc32c\"",
            opts.data_digest
        ))
    })?;
    cfg.login_timeout = Duration::from_secs(opts.login_timeout.max(1));
    let algorithms = opts
        .chap_algorithms
        .split(',')
        .map(|a| {
            ChapAlgorithm::parse(a.trim()).ok_or_else(|| {
                CliError::Usage(format!(
                    "--chap-algorithms: unknown algorithm {a:?} (md5, sha1, sha256, sha3-256)"
                ))
            })
        })
        .collect::<CliResult<Vec<_>>>()?;
    if let Some(user) = &url.user {
        let secret = match &url.password {
            Some(p) => p.clone(),
            None => std::env::var("OXISCSI_CHAP_PASSWORD").map_err(|_| {
                CliError::Usage(format!(
                    "CHAP user {user:?} given without a secret: put it in the URL (user%secret@) or in OXISCSI_CHAP_PASSWORD"
                ))
            })?,
        };
        let target_cred = match (
            std::env::var("OXISCSI_TARGET_CHAP_USER"),
            std::env::var("OXISCSI_TARGET_CHAP_PASSWORD"),
        ) {
            (Ok(u), Ok(p)) => Some(ChapCredentials {
                user: u,
                secret: p.into_bytes(),
            }),
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => return Err(CliError::Usage(
                "mutual CHAP needs both OXISCSI_TARGET_CHAP_USER and OXISCSI_TARGET_CHAP_PASSWORD"
                    .into(),
            )),
            _ => None,
        };
        cfg.chap = Some(ChapConfig {
            initiator: ChapCredentials {
                user: user.clone(),
                secret: secret.into_bytes(),
            },
            target: target_cred,
            algorithms,
        });
    }
    Ok(cfg)
}

/// Connect to the URL's target and return the session and LUN.
pub async fn open(url_s: &str, opts: &CommonOpts) -> CliResult<(Session, u16, IscsiUrl)> {
    open_with(url_s, opts, |_| {}).await
}

/// As [`open`], with the session's configuration adjusted by `tweak` before login.
pub async fn open_with(
    url_s: &str,
    opts: &CommonOpts,
    tweak: impl FnOnce(&mut SessionConfig),
) -> CliResult<(Session, u16, IscsiUrl)> {
    let (cfg, lun, url) = lun_config(url_s, opts, tweak)?;
    let session = Session::connect(cfg).await?;
    Ok((session, lun, url))
}

/// As [`open_with`], a session driven by its caller's thread.
pub async fn open_poller(
    url_s: &str,
    opts: &CommonOpts,
    tweak: impl FnOnce(&mut SessionConfig),
) -> CliResult<(Poller, u16, IscsiUrl)> {
    let (cfg, lun, url) = lun_config(url_s, opts, tweak)?;
    Ok((Poller::connect(cfg).await?, lun, url))
}

/// The session configuration for a URL that must name a target and a LUN.
fn lun_config(
    url_s: &str,
    opts: &CommonOpts,
    tweak: impl FnOnce(&mut SessionConfig),
) -> CliResult<(SessionConfig, u16, IscsiUrl)> {
    let url = parse_url(url_s)?;
    if url.target.is_none() {
        return Err(CliError::Usage(format!(
            "{}: the URL needs a target IQN and a LUN",
            url.redacted()
        )));
    }
    let lun = url.lun.ok_or_else(|| {
        CliError::Usage(format!(
            "{}: the URL needs a LUN number at the end",
            url.redacted()
        ))
    })?;
    let mut cfg = session_config(&url, opts, None)?;
    tweak(&mut cfg);
    Ok((cfg, lun, url))
}

/// Human size: 256M, 1.5G, as iscsi-ls prints it.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if (v - v.round()).abs() < 0.05 {
        format!("{}{}", v.round() as u64, UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// Parse sizes like 4096, 512K, 1M, 1G, 4k.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => {
            let unit = &s[i..];
            let m: u64 = match unit.to_ascii_lowercase().as_str() {
                "b" | "c" => 1,
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                _ => {
                    return Err(format!(
                        "unknown size unit {unit:?} in {s:?} (use K, M or G)"
                    ))
                }
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Process CPU time (user, system) in seconds.
pub fn cpu_times() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the pointer is to a live, properly aligned rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return (0.0, 0.0);
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(human_size(256 << 20), "256M");
        assert_eq!(human_size(1536 << 20), "1.5G");
        assert_eq!(human_size(0), "0");
    }
}
