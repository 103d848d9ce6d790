//! One open-iscsi record file (iscsiadm 2.1.8's format): a header line, `key = value`
//! lines in a fixed order, a footer. Keys with empty values are left out, as iscsiadm
//! does. Unknown keys are kept (a newer open-iscsi may write them).

use std::fmt;

/// The record format version written in the header.
pub const RECORD_VERSION: &str = "2.1.8";

/// Why a record file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct RecordError {
    pub line: usize,
    pub what: String,
}

/// An ordered set of `key = value` pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pairs: Vec<(String, String)>,
}

impl Record {
    pub fn new() -> Record {
        Record::default()
    }

    /// Parse a record file. Blank lines and `#` comments are skipped (the header and
    /// footer are comments); a line that is not `key = value` is an error naming it.
    pub fn parse(text: &str) -> Result<Record, RecordError> {
        let mut r = Record::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(RecordError {
                    line: i + 1,
                    what: format!("expected 'key = value', found {:?}", truncate(line)),
                });
            };
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_graphic()) {
                return Err(RecordError {
                    line: i + 1,
                    what: format!("bad key {:?}", truncate(k)),
                });
            }
            r.set(k, v);
        }
        Ok(r)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Set a key; a new key goes at the end (open-iscsi's order is kept for known keys
    /// because records start from the full default list).
    pub fn set(&mut self, key: &str, value: &str) {
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some(p) => p.1 = value.to_string(),
            None => self.pairs.push((key.to_string(), value.to_string())),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for Record {
    /// The file as iscsiadm writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# BEGIN RECORD {RECORD_VERSION}")?;
        for (k, v) in &self.pairs {
            if !v.is_empty() {
                writeln!(f, "{k} = {v}")?;
            }
        }
        writeln!(f, "# END RECORD")
    }
}

/// open-iscsi 2.1.8's iface keys with their defaults, in its order.
const IFACE_KEYS: &[(&str, &str)] = &[
    ("iface.iscsi_ifacename", ""),
    ("iface.prefix_len", "0"),
    ("iface.transport_name", "tcp"),
    ("iface.vlan_id", "0"),
    ("iface.vlan_priority", "0"),
    ("iface.iface_num", "0"),
    ("iface.mtu", "0"),
    ("iface.port", "0"),
    ("iface.tos", "0"),
    ("iface.ttl", "0"),
    ("iface.tcp_wsf", "0"),
    ("iface.tcp_timer_scale", "0"),
    ("iface.def_task_mgmt_timeout", "0"),
    ("iface.erl", "0"),
    ("iface.max_receive_data_len", "0"),
    ("iface.first_burst_len", "0"),
    ("iface.max_outstanding_r2t", "0"),
    ("iface.max_burst_len", "0"),
];

/// A new iface record as `iscsiadm -m iface -I NAME -o new` writes it.
pub fn iface_record(name: &str) -> Record {
    let mut r = Record::new();
    for (k, v) in IFACE_KEYS {
        r.set(k, v);
    }
    r.set("iface.iscsi_ifacename", name);
    r
}

/// A new node record as `iscsiadm -m node -o new -T IQN -p IP:PORT[,TPGT]` writes it
/// (iface `default`, iscsid.conf defaults).
pub fn node_record(iqn: &str, address: &str, port: u16, tpgt: i32) -> Record {
    let mut r = Record::new();
    r.set("node.name", iqn);
    r.set("node.tpgt", &tpgt.to_string());
    r.set("node.startup", "manual");
    r.set("node.leading_login", "No");
    for (k, v) in IFACE_KEYS {
        r.set(k, v);
    }
    r.set("iface.iscsi_ifacename", "default");
    let rest: &[(&str, &str)] = &[
        ("node.discovery_port", "0"),
        ("node.discovery_type", "static"),
        ("node.session.initial_cmdsn", "0"),
        ("node.session.initial_login_retry_max", "4"),
        ("node.session.xmit_thread_priority", "-20"),
        ("node.session.cmds_max", "128"),
        ("node.session.queue_depth", "32"),
        ("node.session.nr_sessions", "1"),
        ("node.session.auth.authmethod", "None"),
        ("node.session.auth.chap_algs", "MD5"),
        ("node.session.timeo.replacement_timeout", "120"),
        ("node.session.err_timeo.abort_timeout", "15"),
        ("node.session.err_timeo.lu_reset_timeout", "30"),
        ("node.session.err_timeo.tgt_reset_timeout", "30"),
        ("node.session.err_timeo.host_reset_timeout", "60"),
        ("node.session.iscsi.FastAbort", "Yes"),
        ("node.session.iscsi.InitialR2T", "No"),
        ("node.session.iscsi.ImmediateData", "Yes"),
        ("node.session.iscsi.FirstBurstLength", "262144"),
        ("node.session.iscsi.MaxBurstLength", "16776192"),
        ("node.session.iscsi.DefaultTime2Retain", "0"),
        ("node.session.iscsi.DefaultTime2Wait", "2"),
        ("node.session.iscsi.MaxConnections", "1"),
        ("node.session.iscsi.MaxOutstandingR2T", "1"),
        ("node.session.iscsi.ERL", "0"),
        ("node.session.scan", "auto"),
        ("node.session.reopen_max", "0"),
        ("node.conn[0].address", address),
        ("node.conn[0].port", ""),
        ("node.conn[0].startup", "manual"),
        ("node.conn[0].tcp.window_size", "524288"),
        ("node.conn[0].tcp.type_of_service", "0"),
        ("node.conn[0].timeo.logout_timeout", "15"),
        ("node.conn[0].timeo.login_timeout", "30"),
        ("node.conn[0].timeo.auth_timeout", "45"),
        ("node.conn[0].timeo.noop_out_interval", "5"),
        ("node.conn[0].timeo.noop_out_timeout", "5"),
        ("node.conn[0].iscsi.MaxXmitDataSegmentLength", "0"),
        ("node.conn[0].iscsi.MaxRecvDataSegmentLength", "262144"),
        ("node.conn[0].iscsi.HeaderDigest", "None"),
        ("node.conn[0].iscsi.DataDigest", "None"),
        ("node.conn[0].iscsi.IFMarker", "No"),
        ("node.conn[0].iscsi.OFMarker", "No"),
    ];
    for (k, v) in rest {
        r.set(k, v);
    }
    r.set("node.conn[0].port", &port.to_string());
    r
}

/// A new SendTargets discovery record as `iscsiadm -m discoverydb -t st -p IP:PORT -o
/// new` writes it.
pub fn sendtargets_record(address: &str, port: u16) -> Record {
    let mut r = Record::new();
    let port = port.to_string();
    let pairs: &[(&str, &str)] = &[
        ("discovery.startup", "manual"),
        ("discovery.type", "sendtargets"),
        ("discovery.sendtargets.address", address),
        ("discovery.sendtargets.port", &port),
        ("discovery.sendtargets.auth.authmethod", "None"),
        ("node.session.auth.chap_algs", "MD5"),
        ("discovery.sendtargets.timeo.login_timeout", "15"),
        ("discovery.sendtargets.use_discoveryd", "No"),
        ("discovery.sendtargets.discoveryd_poll_inval", "30"),
        ("discovery.sendtargets.reopen_max", "5"),
        ("discovery.sendtargets.timeo.auth_timeout", "45"),
        ("discovery.sendtargets.timeo.active_timeout", "30"),
        (
            "discovery.sendtargets.iscsi.MaxRecvDataSegmentLength",
            "32768",
        ),
    ];
    for (k, v) in pairs {
        r.set(k, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_line() {
        let e = Record::parse("# BEGIN RECORD 2.1.8\nnode.name = x\nbroken line\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().contains("line 3"));
        let e = Record::parse("a b = c\n").unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn empty_values_are_left_out_and_set_keeps_order() {
        let mut r = Record::new();
        r.set("a", "1");
        r.set("b", "");
        r.set("c", "3");
        r.set("a", "9");
        assert_eq!(
            r.to_string(),
            "# BEGIN RECORD 2.1.8\na = 9\nc = 3\n# END RECORD\n"
        );
        assert_eq!(r.remove("c").as_deref(), Some("3"));
    }
}
