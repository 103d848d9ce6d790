//! The TOML configuration file (`oxiscsi target --config FILE`; example:
//! `examples/target.toml`). Errors name the file and line. Secrets can live in the file,
//! in another file (`secret_file`), or in an environment variable (`secret_env`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oxiscsi_proto::login::ChapCredentials;
use serde::Deserialize;
use toml::Spanned;

use super::{parse_size, Backing, LunSpec, PortalGroup, Redirect, TargetConfig, TargetSpec};

/// A configuration file that cannot be used, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    server: Server,
    #[serde(default)]
    portal_group: Vec<Group>,
    discovery: Option<Discovery>,
    #[serde(default)]
    target: Vec<Target>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Server {
    listen: Option<Vec<Spanned<String>>>,
    max_logins_in_progress: Option<usize>,
    login_timeout_secs: Option<u64>,
    queue_depth: Option<u32>,
    nop_interval_secs: Option<u64>,
    nop_timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    tag: Spanned<u16>,
    listen: Vec<Spanned<String>>,
    redirect: Option<RedirectCfg>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Discovery {
    chap: Option<Spanned<Chap>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Chap {
    user: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    iqn: Spanned<String>,
    alias: Option<String>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    chap: Option<Spanned<Chap>>,
    mutual_chap: Option<Spanned<Chap>>,
    #[serde(default)]
    portal_groups: Vec<u16>,
    redirect: Option<RedirectCfg>,
    #[serde(default)]
    lun: Vec<Spanned<Lun>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedirectCfg {
    address: String,
    #[serde(default)]
    permanent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lun {
    lun: u16,
    path: Option<PathBuf>,
    size: Option<String>,
    mem: Option<String>,
    #[serde(default)]
    read_only: bool,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Read and check a configuration file.
pub fn load(path: &Path) -> Result<TargetConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: None,
        message: format!("cannot read it: {e}"),
    })?;
    parse(path, &text)
}

/// Parse configuration text (`path` is for messages and relative secret files).
pub fn parse(path: &Path, text: &str) -> Result<TargetConfig, ConfigError> {
    let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
        path: path.to_path_buf(),
        line: span.map(|s| line_of(text, s.start)),
        message,
    };
    let f: File = toml::from_str(text).map_err(|e| err(e.span(), e.message().to_string()))?;
    let addr = |s: &Spanned<String>| -> Result<SocketAddr, ConfigError> {
        s.get_ref().parse().map_err(|_| {
            err(
                Some(s.span()),
                format!(
                    "listen address {:?}: expected ADDR:PORT, e.g. 0.0.0.0:3260 or [::]:3260",
                    s.get_ref()
                ),
            )
        })
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let chap = |c: &Spanned<Chap>| -> Result<ChapCredentials, ConfigError> {
        let span = Some(c.span());
        let c = c.get_ref();
        let secret = match (&c.secret, &c.secret_file, &c.secret_env) {
            (Some(s), None, None) => s.clone(),
            (None, Some(f), None) => {
                let p = if f.is_absolute() {
                    f.clone()
                } else {
                    base.join(f)
                };
                std::fs::read_to_string(&p)
                    .map_err(|e| {
                        err(
                            span.clone(),
                            format!("CHAP secret_file {}: {e}", p.display()),
                        )
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string()
            }
            (None, None, Some(v)) => std::env::var(v).map_err(|_| {
                err(
                    span.clone(),
                    format!("CHAP secret_env {v} is not set in the environment"),
                )
            })?,
            _ => {
                return Err(err(
                    span,
                    "a CHAP account needs exactly one of secret, secret_file, secret_env".into(),
                ))
            }
        };
        if c.user.is_empty() || secret.is_empty() {
            return Err(err(span, "CHAP user and secret must not be empty".into()));
        }
        Ok(ChapCredentials {
            user: c.user.clone(),
            secret: secret.into_bytes(),
        })
    };
    let d = TargetConfig::default();
    let s = &f.server;
    let mut cfg = TargetConfig {
        listen: match &s.listen {
            Some(v) => v.iter().map(addr).collect::<Result<_, _>>()?,
            None => d.listen.clone(),
        },
        portal_groups: Vec::new(),
        targets: Vec::new(),
        discovery_chap: match f.discovery.as_ref().and_then(|x| x.chap.as_ref()) {
            Some(c) => Some(chap(c)?),
            None => None,
        },
        max_logins_in_progress: s.max_logins_in_progress.unwrap_or(d.max_logins_in_progress),
        login_timeout: s
            .login_timeout_secs
            .map_or(d.login_timeout, Duration::from_secs),
        queue_depth: s.queue_depth.unwrap_or(d.queue_depth),
        // Pings are how a dead initiator is found (every read needs a deadline): they
        // can be slowed, not switched off.
        nop_interval: match s.nop_interval_secs {
            Some(0) => {
                let span = text.find("nop_interval_secs").map(|at| at..at + 1);
                return Err(err(
                    span,
                    "nop_interval_secs = 0 would leave dead connections open forever; use 1 or more seconds".into(),
                ));
            }
            Some(n) => Some(Duration::from_secs(n)),
            None => d.nop_interval,
        },
        nop_timeout: s
            .nop_timeout_secs
            .map_or(d.nop_timeout, Duration::from_secs),
    };
    for g in &f.portal_group {
        cfg.portal_groups.push(PortalGroup {
            tag: *g.tag.get_ref(),
            listen: g.listen.iter().map(addr).collect::<Result<_, _>>()?,
            redirect: g.redirect.as_ref().map(|r| Redirect {
                address: r.address.clone(),
                permanent: r.permanent,
            }),
        });
    }
    for t in &f.target {
        let mut luns = Vec::new();
        for l in &t.lun {
            let span = Some(l.span());
            let l = l.get_ref();
            let backing = match (&l.path, &l.mem) {
                (Some(p), None) => Backing::File {
                    path: p.clone(),
                    size: l
                        .size
                        .as_deref()
                        .map(parse_size)
                        .transpose()
                        .map_err(|e| err(span.clone(), format!("LUN {}: {e}", l.lun)))?,
                },
                (None, Some(m)) => Backing::Mem {
                    size: parse_size(m)
                        .map_err(|e| err(span.clone(), format!("LUN {}: {e}", l.lun)))?,
                },
                _ => {
                    return Err(err(
                        span,
                        format!(
                            "LUN {}: give either path (a file or block device) or mem (a size)",
                            l.lun
                        ),
                    ))
                }
            };
            luns.push(LunSpec {
                lun: l.lun,
                backing,
                read_only: l.read_only,
            });
        }
        let spec = TargetSpec {
            iqn: t.iqn.get_ref().clone(),
            alias: t.alias.clone(),
            luns,
            chap: t.chap.as_ref().map(chap).transpose()?,
            mutual_chap: t.mutual_chap.as_ref().map(chap).transpose()?,
            allow: t.allow.iter().map(|a| a.get_ref().clone()).collect(),
            portal_groups: t.portal_groups.clone(),
            redirect: t.redirect.as_ref().map(|r| Redirect {
                address: r.address.clone(),
                permanent: r.permanent,
            }),
        };
        // Check this target alone, so the error points at its lines.
        let one = TargetConfig {
            targets: vec![spec.clone()],
            ..cfg.clone()
        };
        one.validate().map_err(|e| err(Some(t.iqn.span()), e))?;
        cfg.targets.push(spec);
    }
    cfg.validate().map_err(|e| {
        // Point at the first target whose name the message mentions, if any.
        let span = f
            .target
            .iter()
            .find(|t| e.contains(t.iqn.get_ref().as_str()))
            .map(|t| t.iqn.span());
        err(span, e)
    })?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:3260"]
queue_depth = 64

[[portal_group]]
tag = 2
listen = ["127.0.0.1:3261"]

[discovery]
chap = { user = "disc", secret = "discoverysecret" }

[[target]]
iqn = "iqn.2026-11.test:a"
allow = ["iqn.2026-11.test:host1"]
chap = { user = "alice", secret_env = "OXISCSI_TEST_SECRET_A" }
portal_groups = [2]

  [[target.lun]]
  lun = 1
  mem = "64M"

[[target]]
iqn = "iqn.2026-11.test:b"
redirect = { address = "10.0.0.9:3260" }

  [[target.lun]]
  lun = 0
  path = "/tmp/b.img"
  size = "1G"
  read_only = true
"#;

    #[test]
    fn parses_the_full_shape() {
        std::env::set_var("OXISCSI_TEST_SECRET_A", "alicesecret12");
        let c = parse(Path::new("t.toml"), GOOD).unwrap();
        assert_eq!(c.queue_depth, 64);
        assert_eq!(c.portal_groups[0].tag, 2);
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[0].chap.as_ref().unwrap().secret, b"alicesecret12");
        assert_eq!(c.targets[0].portal_groups, vec![2]);
        assert!(c.targets[1].luns[0].read_only);
        assert_eq!(
            c.targets[1].redirect.as_ref().unwrap().address,
            "10.0.0.9:3260"
        );
        assert_eq!(c.discovery_chap.as_ref().unwrap().user, "disc");
    }

    #[test]
    fn errors_name_file_and_line() {
        let bad = "[server]\nlisten = [\"nope\"]\n";
        let e = parse(Path::new("x.toml"), bad).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().starts_with("x.toml:2: listen address"), "{e}");
        // Syntax error.
        let e = parse(Path::new("x.toml"), "[[target]\niqn = 1\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        // Unknown key.
        let e = parse(
            Path::new("x.toml"),
            "[server]\nlisten = []\nqueue_dept = 3\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        // A semantic error points at its target.
        let dup = "[[target]]\niqn = \"iqn.2026-11.t:a\"\n[[target.lun]]\nlun = 1\nmem = \"1M\"\n[[target.lun]]\nlun = 1\nmem = \"1M\"\n";
        let e = parse(Path::new("x.toml"), dup).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("LUN 1 defined twice"), "{e}");
        // Pings cannot be switched off.
        let e = parse(Path::new("x.toml"), "[server]\nnop_interval_secs = 0\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        // Missing secret env.
        let e = parse(
            Path::new("x.toml"),
            "[[target]]\niqn = \"iqn.2026-11.t:a\"\nchap = { user = \"u\", secret_env = \"OXISCSI_NOPE_NOT_SET\" }\n[[target.lun]]\nlun = 1\nmem = \"1M\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("OXISCSI_NOPE_NOT_SET"), "{e}");
    }

    #[test]
    fn the_example_file_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/target.toml");
        std::env::set_var("OXISCSI_EXAMPLE_CHAP_SECRET", "examplesecret12");
        let c = load(&p).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.targets.is_empty());
    }
}
