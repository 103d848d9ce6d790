//! What the target serves: portals and portal groups, targets, LUNs, ACLs, CHAP accounts
//! and limits, built from the quick flags of `oxiscsi target` or read from a TOML file
//! ([`file`](mod@file)).

pub mod file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use oxiscsi_proto::login::ChapCredentials;

/// Where a LUN's blocks come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A regular file or block device; a missing file is created sparse at `size`.
    File { path: PathBuf, size: Option<u64> },
    /// RAM, gone at exit.
    Mem { size: u64 },
}

/// One LUN of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    pub lun: u16,
    pub backing: Backing,
    pub read_only: bool,
}

/// Parse a size: bytes, or with K/M/G/T (powers of 1024), e.g. `64M`, `1G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_lowercase();
            let m: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => {
                    return Err(format!(
                        "size {s:?}: unknown unit {unit:?} (use K, M, G or T)"
                    ))
                }
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with an optional K/M/G/T unit"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

impl LunSpec {
    /// `N:PATH[,size=SIZE][,ro]` or `N:mem:SIZE`.
    pub fn parse(s: &str) -> Result<LunSpec, String> {
        let usage =
            "expected N:PATH[,size=SIZE][,ro] or N:mem:SIZE, e.g. 1:/var/lib/lun1.img,size=10G";
        let (n, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("--lun {s:?}: {usage}"))?;
        let lun: u16 = n
            .parse()
            .ok()
            .filter(|n| *n < 16384)
            .ok_or_else(|| format!("--lun {s:?}: LUN {n:?} must be a number 0..16383"))?;
        if let Some(size) = rest.strip_prefix("mem:") {
            let size = parse_size(size).map_err(|e| format!("--lun {s:?}: {e}"))?;
            if size < 4096 {
                return Err(format!("--lun {s:?}: a LUN needs at least 4096 bytes"));
            }
            return Ok(LunSpec {
                lun,
                backing: Backing::Mem { size },
                read_only: false,
            });
        }
        let mut parts = rest.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("--lun {s:?}: {usage}"))?;
        let mut size = None;
        let mut read_only = false;
        for opt in parts {
            if let Some(v) = opt.strip_prefix("size=") {
                size = Some(parse_size(v).map_err(|e| format!("--lun {s:?}: {e}"))?);
            } else if opt == "ro" {
                read_only = true;
            } else {
                return Err(format!(
                    "--lun {s:?}: unknown option {opt:?} (size=SIZE or ro)"
                ));
            }
        }
        Ok(LunSpec {
            lun,
            backing: Backing::File {
                path: PathBuf::from(path),
                size,
            },
            read_only,
        })
    }
}

/// `USER:SECRET` for --chap and friends.
pub fn parse_chap(s: &str) -> Result<ChapCredentials, String> {
    let (u, p) = s
        .split_once(':')
        .filter(|(u, p)| !u.is_empty() && !p.is_empty())
        .ok_or_else(|| "CHAP account must be USER:SECRET, both non-empty".to_string())?;
    Ok(ChapCredentials {
        user: u.to_string(),
        secret: p.as_bytes().to_vec(),
    })
}

/// Send initiators elsewhere while a target is in maintenance (RFC 7143 §11.13.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `host:port` or `[v6]:port`, optionally `,tpgt`.
    pub address: String,
    pub permanent: bool,
}

/// A portal group beyond the default one (tag 1, the `listen` addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalGroup {
    pub tag: u16,
    pub listen: Vec<SocketAddr>,
    /// Maintenance: every login arriving at this group is sent there.
    pub redirect: Option<Redirect>,
}

/// One target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub iqn: String,
    pub alias: Option<String>,
    pub luns: Vec<LunSpec>,
    /// Required of initiators (one-way CHAP).
    pub chap: Option<ChapCredentials>,
    /// Our answer when the initiator asks for mutual CHAP.
    pub mutual_chap: Option<ChapCredentials>,
    /// Initiator names admitted; empty admits all.
    pub allow: Vec<String>,
    /// Portal group tags the target is reachable through; empty means all.
    pub portal_groups: Vec<u16>,
    /// Logins are redirected (maintenance).
    pub redirect: Option<Redirect>,
}

/// The whole target server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// Portal group 1.
    pub listen: Vec<SocketAddr>,
    /// More portal groups (tags other than 1).
    pub portal_groups: Vec<PortalGroup>,
    pub targets: Vec<TargetSpec>,
    pub discovery_chap: Option<ChapCredentials>,
    /// Logins in progress at once; more are answered 0x0301 (service unavailable).
    pub max_logins_in_progress: usize,
    /// Each connection must finish its login within this.
    pub login_timeout: Duration,
    /// Commands per session (the CmdSN window).
    pub queue_depth: u32,
    pub nop_interval: Option<Duration>,
    pub nop_timeout: Duration,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 3260))],
            portal_groups: Vec::new(),
            targets: Vec::new(),
            discovery_chap: None,
            max_logins_in_progress: 1024,
            login_timeout: Duration::from_secs(15),
            queue_depth: 128,
            nop_interval: Some(Duration::from_secs(10)),
            nop_timeout: Duration::from_secs(15),
        }
    }
}

impl TargetConfig {
    /// Check what a person could have got wrong, with advice.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() {
            return Err("no --listen address".into());
        }
        if self.targets.is_empty() {
            return Err("no target: give --iqn and at least one --lun".into());
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.targets {
            oxiscsi_proto::login::target::check_iscsi_name(&t.iqn)
                .map_err(|e| format!("target {}: {e}", t.iqn))?;
            if !seen.insert(t.iqn.to_ascii_lowercase()) {
                return Err(format!("target {} defined twice", t.iqn));
            }
            if t.luns.is_empty() {
                return Err(format!(
                    "target {} has no LUN: add --lun 1:mem:64M or a file",
                    t.iqn
                ));
            }
            let mut luns = std::collections::HashSet::new();
            for l in &t.luns {
                if !luns.insert(l.lun) {
                    return Err(format!("target {}: LUN {} defined twice", t.iqn, l.lun));
                }
            }
            if t.mutual_chap.is_some() && t.chap.is_none() {
                return Err(format!(
                    "target {}: --mutual-chap needs --chap (the initiator must authenticate first)",
                    t.iqn
                ));
            }
            if let (Some(a), Some(b)) = (&t.chap, &t.mutual_chap) {
                if a.secret == b.secret {
                    return Err(format!(
                        "target {}: the CHAP and mutual CHAP secrets are the same; RFC 7143 §9.2.1 forbids one secret in both directions",
                        t.iqn
                    ));
                }
            }
            for a in &t.allow {
                oxiscsi_proto::login::target::check_iscsi_name(a)
                    .map_err(|e| format!("--allow {a}: {e}"))?;
            }
        }
        let mut tags = vec![1u16];
        for g in &self.portal_groups {
            if g.tag == 0 || tags.contains(&g.tag) {
                return Err(format!(
                    "portal group tag {} is 0 or used twice (tag 1 is the main --listen group)",
                    g.tag
                ));
            }
            tags.push(g.tag);
        }
        for t in &self.targets {
            if let Some(bad) = t.portal_groups.iter().find(|g| !tags.contains(g)) {
                return Err(format!(
                    "target {} names portal group {bad}, which is not defined",
                    t.iqn
                ));
            }
        }
        if self.nop_interval.is_none() {
            return Err(
                "NOP-In pings cannot be disabled: they are how a dead initiator is found".into(),
            );
        }
        if self.max_logins_in_progress == 0 || self.queue_depth == 0 {
            return Err("max logins in progress and queue depth must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_specs() {
        assert_eq!(
            LunSpec::parse("1:mem:64M").unwrap().backing,
            Backing::Mem { size: 64 << 20 }
        );
        let l = LunSpec::parse("2:/tmp/x.img,size=1G,ro").unwrap();
        assert_eq!(l.lun, 2);
        assert!(l.read_only);
        assert_eq!(
            l.backing,
            Backing::File {
                path: "/tmp/x.img".into(),
                size: Some(1 << 30)
            }
        );
        for bad in [
            "x:mem:1M",
            "1",
            "1:mem:abc",
            "1:/x,size=1Q",
            "1:/x,rw",
            "99999:mem:1M",
            "1:mem:1",
        ] {
            let e = LunSpec::parse(bad).unwrap_err();
            assert!(e.contains("--lun"), "{bad}: {e}");
        }
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("2KiB").unwrap(), 2048);
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn chap_accounts() {
        assert_eq!(parse_chap("u:s3cret").unwrap().user, "u");
        assert!(parse_chap("nosecret").is_err());
        assert!(parse_chap(":x").is_err());
    }
}
