//! A node record (and its iface record) turned into a session configuration: every
//! `node.*` key open-iscsi's iscsid reads at login, with the same meaning.

use std::net::IpAddr;
use std::time::Duration;

use oxiscsi_initiator::proto::login::{ChapAlgorithm, ChapConfig, ChapCredentials};
use oxiscsi_initiator::{DigestChoice, SessionConfig, SourceBind};

use crate::db::record::Record;

/// A value in a record that cannot be used, with the key and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value:?}: {why}")]
pub struct BadValue {
    pub key: String,
    pub value: String,
    pub why: String,
}

fn bad(key: &str, value: &str, why: impl Into<String>) -> BadValue {
    BadValue {
        key: key.into(),
        value: value.into(),
        why: why.into(),
    }
}

fn get<'a>(r: &'a Record, key: &str) -> &'a str {
    r.get(key).unwrap_or("")
}

fn num<T: std::str::FromStr>(r: &Record, key: &str, default: T) -> Result<T, BadValue> {
    match get(r, key) {
        "" => Ok(default),
        v => v
            .trim()
            .parse()
            .map_err(|_| bad(key, v, "not a number in range")),
    }
}

fn yes_no(r: &Record, key: &str, default: bool) -> Result<bool, BadValue> {
    match get(r, key) {
        "" => Ok(default),
        v if v.eq_ignore_ascii_case("yes") => Ok(true),
        v if v.eq_ignore_ascii_case("no") => Ok(false),
        v => Err(bad(key, v, "use Yes or No")),
    }
}

fn secs(r: &Record, key: &str, default: u64) -> Result<Duration, BadValue> {
    num(r, key, default).map(Duration::from_secs)
}

/// `host:port` with brackets for IPv6.
pub fn portal_string(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// How many sessions `-l` opens for the node (`node.session.nr_sessions`, 1 to 64).
pub fn nr_sessions(node: &Record) -> Result<usize, BadValue> {
    let n: usize = num(node, "node.session.nr_sessions", 1)?;
    if !(1..=64).contains(&n) {
        return Err(bad(
            "node.session.nr_sessions",
            &n.to_string(),
            "use 1 to 64",
        ));
    }
    Ok(n)
}

/// Resolve `iface.hwaddress` to the interface that has it.
pub fn netdev_by_hwaddress(hw: &str) -> Option<String> {
    let want = hw.trim().to_ascii_lowercase();
    for e in std::fs::read_dir("/sys/class/net").ok()?.flatten() {
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(&want) {
            return Some(e.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

/// The source binding an iface record asks for.
pub fn source_bind(iface: &Record) -> Result<SourceBind, BadValue> {
    let mut b = SourceBind::default();
    let ip = get(iface, "iface.ipaddress");
    if !ip.is_empty() && ip != "0.0.0.0" && ip != "default" {
        b.address = Some(
            ip.parse::<IpAddr>()
                .map_err(|_| bad("iface.ipaddress", ip, "not an IP address"))?,
        );
    }
    let dev = get(iface, "iface.net_ifacename");
    if !dev.is_empty() && dev != "default" {
        b.device = Some(dev.to_string());
    }
    let hw = get(iface, "iface.hwaddress");
    if !hw.is_empty() && hw != "default" {
        let dev = netdev_by_hwaddress(hw).ok_or_else(|| {
            bad(
                "iface.hwaddress",
                hw,
                "no network interface of this host has that address (see `ip link`)",
            )
        })?;
        if b.device.as_deref().is_some_and(|d| d != dev) {
            return Err(bad(
                "iface.hwaddress",
                hw,
                format!("belongs to {dev}, but iface.net_ifacename names another interface"),
            ));
        }
        b.device = Some(dev);
    }
    Ok(b)
}

fn digest(r: &Record, key: &str) -> Result<DigestChoice, BadValue> {
    match get(r, key) {
        "" => Ok(DigestChoice::None),
        v => DigestChoice::parse(v)
            .ok_or_else(|| bad(key, v, "use None, CRC32C, CRC32C,None or None,CRC32C")),
    }
}

fn chap_algorithms(r: &Record) -> Result<Vec<ChapAlgorithm>, BadValue> {
    let key = "node.session.auth.chap_algs";
    let v = get(r, key);
    if v.is_empty() {
        return Ok(ChapConfig::DEFAULT_ALGORITHMS.to_vec());
    }
    v.split(',')
        .map(|a| match a.trim().to_ascii_uppercase().as_str() {
            "MD5" => Ok(ChapAlgorithm::MD5),
            "SHA1" => Ok(ChapAlgorithm::SHA1),
            "SHA256" => Ok(ChapAlgorithm::SHA256),
            "SHA3-256" => Ok(ChapAlgorithm::SHA3_256),
            _ => Err(bad(key, v, "use a list of MD5, SHA1, SHA256, SHA3-256")),
        })
        .collect()
}

/// The session configuration for a node record, its iface record and the host's
/// initiator name (`iface.initiatorname` wins when set).
pub fn session_config(
    node: &Record,
    iface: &Record,
    initiator_name: &str,
) -> Result<SessionConfig, BadValue> {
    let target = get(node, "node.name");
    if target.is_empty() {
        return Err(bad("node.name", "", "the record names no target"));
    }
    let address = get(node, "node.conn[0].address");
    if address.is_empty() {
        return Err(bad(
            "node.conn[0].address",
            "",
            "the record has no portal address",
        ));
    }
    let port: u16 = num(node, "node.conn[0].port", 3260)?;
    let mut cfg = SessionConfig::new(portal_string(address, port), target);
    cfg.initiator_name = match get(iface, "iface.initiatorname") {
        "" => initiator_name.to_string(),
        n => n.to_string(),
    };
    cfg.bind = source_bind(iface)?;
    cfg.header_digest = digest(node, "node.conn[0].iscsi.HeaderDigest")?;
    cfg.data_digest = digest(node, "node.conn[0].iscsi.DataDigest")?;
    cfg.max_recv_data_segment_length =
        num(node, "node.conn[0].iscsi.MaxRecvDataSegmentLength", 262_144)?;
    cfg.first_burst_length = num(node, "node.session.iscsi.FirstBurstLength", 262_144)?;
    cfg.max_burst_length = num(node, "node.session.iscsi.MaxBurstLength", 16_776_192)?;
    cfg.immediate_data = yes_no(node, "node.session.iscsi.ImmediateData", true)?;
    cfg.initial_r2t = yes_no(node, "node.session.iscsi.InitialR2T", false)?;
    cfg.max_outstanding_r2t = num(node, "node.session.iscsi.MaxOutstandingR2T", 1)?;
    let erl: u8 = num(node, "node.session.iscsi.ERL", 0)?;
    if erl != 0 {
        return Err(bad(
            "node.session.iscsi.ERL",
            &erl.to_string(),
            "only ErrorRecoveryLevel 0 is supported so far",
        ));
    }
    let login = secs(node, "node.conn[0].timeo.login_timeout", 30)?;
    if login.is_zero() {
        return Err(bad(
            "node.conn[0].timeo.login_timeout",
            "0",
            "must be at least 1",
        ));
    }
    cfg.login_timeout = login;
    cfg.connection.logout_timeout = secs(node, "node.conn[0].timeo.logout_timeout", 15)?;
    let nop_interval = secs(node, "node.conn[0].timeo.noop_out_interval", 5)?;
    cfg.connection.nop_interval = (!nop_interval.is_zero()).then_some(nop_interval);
    let nop_timeout = secs(node, "node.conn[0].timeo.noop_out_timeout", 5)?;
    cfg.connection.nop_timeout = if nop_timeout.is_zero() {
        Duration::from_secs(5)
    } else {
        nop_timeout
    };
    cfg.connection.abort_timeout = secs(node, "node.session.err_timeo.abort_timeout", 15)?;
    let cmds_max: usize = num(node, "node.session.cmds_max", 128)?;
    if !(1..=2048).contains(&cmds_max) {
        return Err(bad(
            "node.session.cmds_max",
            &cmds_max.to_string(),
            "use 1 to 2048",
        ));
    }
    cfg.connection.queue_depth = cmds_max;
    match get(node, "node.session.auth.authmethod") {
        "" | "None" => {}
        "CHAP" => {
            let user = get(node, "node.session.auth.username");
            let pass = get(node, "node.session.auth.password");
            if user.is_empty() || pass.is_empty() {
                return Err(bad(
                    "node.session.auth.authmethod",
                    "CHAP",
                    "set node.session.auth.username and node.session.auth.password too",
                ));
            }
            let user_in = get(node, "node.session.auth.username_in");
            let pass_in = get(node, "node.session.auth.password_in");
            cfg.chap = Some(ChapConfig {
                initiator: ChapCredentials {
                    user: user.into(),
                    secret: pass.as_bytes().to_vec(),
                },
                target: (!user_in.is_empty() && !pass_in.is_empty()).then(|| ChapCredentials {
                    user: user_in.into(),
                    secret: pass_in.as_bytes().to_vec(),
                }),
                algorithms: chap_algorithms(node)?,
            });
        }
        v => return Err(bad("node.session.auth.authmethod", v, "use None or CHAP")),
    }
    cfg.validate().map_err(|e| bad("node record", target, e))?;
    Ok(cfg)
}

/// The node's timeout keys as `-P 2` shows them (name, value), defaults filled in.
pub fn timeouts(node: &Record) -> Vec<(String, String)> {
    node.iter()
        .filter(|(k, _)| {
            k.starts_with("node.session.timeo.")
                || k.starts_with("node.session.err_timeo.")
                || k.starts_with("node.conn[0].timeo.")
        })
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::record::{iface_record, node_record, Kind};

    #[test]
    fn node_keys_map_onto_the_session() {
        let mut n = node_record(&[], "iqn.2026-11.test:t", "::1", 3261, 1);
        n.set("node.conn[0].iscsi.HeaderDigest", "CRC32C,None");
        n.set("node.session.cmds_max", "64");
        n.set("node.conn[0].timeo.login_timeout", "7");
        n.set("node.conn[0].timeo.noop_out_interval", "0");
        n.set("node.session.auth.authmethod", "CHAP");
        n.set("node.session.auth.username", "u");
        n.set("node.session.auth.password", "secretsecret1");
        n.set("node.session.auth.chap_algs", "SHA256,MD5");
        let mut i = iface_record("eth-x");
        i.set("iface.ipaddress", "127.0.0.1");
        let c = session_config(&n, &i, "iqn.2026-11.test:host").unwrap();
        assert_eq!(c.portal, "[::1]:3261");
        assert_eq!(c.header_digest, DigestChoice::Crc32cOrNone);
        assert_eq!(c.connection.queue_depth, 64);
        assert_eq!(c.login_timeout, Duration::from_secs(7));
        assert_eq!(c.connection.nop_interval, None);
        assert_eq!(c.initiator_name, "iqn.2026-11.test:host");
        assert_eq!(c.bind.address, Some("127.0.0.1".parse().unwrap()));
        let chap = c.chap.unwrap();
        assert_eq!(
            chap.algorithms,
            vec![ChapAlgorithm::SHA256, ChapAlgorithm::MD5]
        );
        assert!(chap.target.is_none());
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut n =
            Kind::Node.complete(&node_record(&[], "iqn.2026-11.test:t", "10.0.0.1", 3260, 1));
        n.set("node.session.iscsi.ImmediateData", "maybe");
        let e = session_config(&n, &iface_record("default"), "iqn.2026-11.test:h").unwrap_err();
        assert_eq!(e.key, "node.session.iscsi.ImmediateData");
        let mut n = node_record(&[], "iqn.2026-11.test:t", "10.0.0.1", 3260, 1);
        n.set("node.session.auth.authmethod", "CHAP");
        let e = session_config(&n, &iface_record("default"), "iqn.2026-11.test:h").unwrap_err();
        assert!(e.why.contains("username"), "{e}");
        let mut i = iface_record("x");
        i.set("iface.hwaddress", "02:00:de:ad:be:ef");
        let e = source_bind(&i).unwrap_err();
        assert_eq!(e.key, "iface.hwaddress");
    }

    #[test]
    fn loopback_hwaddress_resolves_to_lo() {
        // lo's address is all zeros on Linux (other devices may share it).
        let mut i = iface_record("x");
        i.set("iface.hwaddress", "00:00:00:00:00:00");
        let dev = source_bind(&i).unwrap().device.unwrap();
        let addr = std::fs::read_to_string(format!("/sys/class/net/{dev}/address")).unwrap();
        assert_eq!(addr.trim(), "00:00:00:00:00:00");
    }
}
