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

/// How open-iscsi shows an empty value.
pub const EMPTY: &str = "<empty>";

/// The full key lists with defaults, in open-iscsi 2.1.8's order: what `iscsiadm ... -o
/// show` prints for a fresh record (captured from Debian's iscsiadm; see
/// tests/fixtures). Files hold only the non-empty values, in the same order.
const NODE_SCHEMA: &str = include_str!("schema/node.txt");
const SENDTARGETS_SCHEMA: &str = include_str!("schema/sendtargets.txt");
const IFACE_SCHEMA: &str = include_str!("schema/iface.txt");

/// Which kind of record (for its key order and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    SendTargets,
    Iface,
}

impl Kind {
    fn schema(self) -> &'static str {
        match self {
            Kind::Node => NODE_SCHEMA,
            Kind::SendTargets => SENDTARGETS_SCHEMA,
            Kind::Iface => IFACE_SCHEMA,
        }
    }

    /// A fresh record: every key with its default (empty ones as "").
    pub fn defaults(self) -> Record {
        let mut r = Record::new();
        for line in self.schema().lines() {
            if let Some((k, v)) = line.split_once(" = ") {
                r.set(k.trim(), if v.trim() == EMPTY { "" } else { v.trim() });
            }
        }
        r
    }

    /// Is this a key of this kind of record?
    pub fn knows(self, key: &str) -> bool {
        self.schema()
            .lines()
            .any(|l| l.split_once(" = ").is_some_and(|(k, _)| k == key))
    }

    /// A record read from a file, completed with the defaults of the keys the file
    /// leaves out (open-iscsi omits empty ones), in open-iscsi's order; keys unknown to
    /// 2.1.8 are kept at the end.
    pub fn complete(self, file: &Record) -> Record {
        let mut r = self.defaults();
        for (k, v) in file.iter() {
            r.set(k, v);
        }
        // Keys the file does not have are empty unless the schema says otherwise: a
        // file is the truth for what it holds, so only missing keys keep defaults.
        r
    }
}

impl Record {
    /// `iscsiadm -o show`: every key, `<empty>` for empty values, secrets masked
    /// unless `show_secrets` (`-S`).
    pub fn show(&self, show_secrets: bool) -> String {
        let mut out = format!("# BEGIN RECORD {RECORD_VERSION}\n");
        for (k, v) in self.iter() {
            let v = if v.is_empty() {
                EMPTY
            } else if !show_secrets && is_secret(k) {
                "********"
            } else {
                v
            };
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push_str("# END RECORD\n");
        out
    }
}

/// CHAP secrets, masked in `show` output unless asked.
pub fn is_secret(key: &str) -> bool {
    key.ends_with(".password") || key.ends_with(".password_in")
}

/// A new iface record as `iscsiadm -m iface -I NAME -o new` writes it.
pub fn iface_record(name: &str) -> Record {
    let mut r = Kind::Iface.defaults();
    r.set("iface.iscsi_ifacename", name);
    r
}

/// `iscsid.conf` settings that are defaults for new records of `kind` (as open-iscsi's
/// idbm_node_setup_from_conf applies them): `node.*` keys for node records,
/// `discovery.sendtargets.*` for SendTargets records; keys the record does not know
/// are left out.
fn apply_conf(r: &mut Record, kind: Kind, conf: &[(String, String)]) {
    let prefix = match kind {
        Kind::Node => "node.",
        Kind::SendTargets => "discovery.sendtargets.",
        Kind::Iface => return,
    };
    for (k, v) in conf {
        if k.starts_with(prefix) && kind.knows(k) {
            r.set(k, v);
        }
    }
}

/// A new node record as `iscsiadm -m node -o new -T IQN -p IP:PORT[,TPGT]` writes it
/// (iface `default`; `conf` is iscsid.conf's `key = value` pairs, whose `node.*` keys
/// override the built-in defaults).
pub fn node_record(
    conf: &[(String, String)],
    iqn: &str,
    address: &str,
    port: u16,
    tpgt: i32,
) -> Record {
    let mut r = Kind::Node.defaults();
    apply_conf(&mut r, Kind::Node, conf);
    r.set("node.name", iqn);
    r.set("node.tpgt", &tpgt.to_string());
    r.set("node.conn[0].address", address);
    r.set("node.conn[0].port", &port.to_string());
    r
}

/// A new SendTargets discovery record as `iscsiadm -m discoverydb -t st -p IP:PORT -o
/// new` writes it, with iscsid.conf's `discovery.sendtargets.*` defaults.
pub fn sendtargets_record(conf: &[(String, String)], address: &str, port: u16) -> Record {
    let mut r = Kind::SendTargets.defaults();
    apply_conf(&mut r, Kind::SendTargets, conf);
    r.set("discovery.sendtargets.address", address);
    r.set("discovery.sendtargets.port", &port.to_string());
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
