//! Session configuration with open-iscsi's defaults.

use std::time::Duration;

use oxiscsi_proto::login::{ChapConfig, LoginConfig};
use oxiscsi_proto::session::ConnectionConfig;

/// Which digests to offer, in order of preference (§13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestChoice {
    /// `None` only (open-iscsi's default).
    #[default]
    None,
    /// `CRC32C` only: login fails if the target refuses.
    Crc32c,
    /// `CRC32C,None`: prefer digests.
    Crc32cOrNone,
    /// `None,CRC32C`: accept digests if the target insists.
    NoneOrCrc32c,
}

impl DigestChoice {
    pub fn key_value(self) -> &'static str {
        match self {
            DigestChoice::None => "None",
            DigestChoice::Crc32c => "CRC32C",
            DigestChoice::Crc32cOrNone => "CRC32C,None",
            DigestChoice::NoneOrCrc32c => "None,CRC32C",
        }
    }

    /// Parse `none`, `crc32c`, `crc32c,none`, `none,crc32c` (any case).
    pub fn parse(s: &str) -> Option<DigestChoice> {
        match s.to_ascii_lowercase().replace(' ', "").as_str() {
            "none" => Some(DigestChoice::None),
            "crc32c" => Some(DigestChoice::Crc32c),
            "crc32c,none" => Some(DigestChoice::Crc32cOrNone),
            "none,crc32c" => Some(DigestChoice::NoneOrCrc32c),
            _ => None,
        }
    }
}

/// Where a session's TCP connection starts from: open-iscsi's iface binding
/// (`iface.ipaddress`, `iface.net_ifacename`; a `hwaddress` is resolved to its
/// interface by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceBind {
    /// Source address (port chosen by the kernel).
    pub address: Option<std::net::IpAddr>,
    /// Network interface (SO_BINDTODEVICE; needs CAP_NET_RAW).
    pub device: Option<String>,
}

impl SourceBind {
    pub fn is_unbound(&self) -> bool {
        self.address.is_none() && self.device.is_none()
    }
}

/// Everything needed to open a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `host:port` or `[v6]:port` of the portal.
    pub portal: String,
    pub target: String,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub chap: Option<ChapConfig>,
    pub header_digest: DigestChoice,
    pub data_digest: DigestChoice,
    pub max_recv_data_segment_length: u32,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u16,
    /// TCP connect plus login, as open-iscsi's `node.conn[0].timeo.login_timeout`.
    pub login_timeout: Duration,
    pub max_redirects: u32,
    /// Source address / interface of the connection.
    pub bind: SourceBind,
    /// NOP interval/timeout, task timeout, queue depth.
    pub connection: ConnectionConfig,
}

impl SessionConfig {
    /// A configuration with open-iscsi's iscsid.conf defaults.
    pub fn new(portal: impl Into<String>, target: impl Into<String>) -> SessionConfig {
        SessionConfig {
            portal: portal.into(),
            target: target.into(),
            initiator_name: default_initiator_name(),
            initiator_alias: None,
            chap: None,
            header_digest: DigestChoice::None,
            data_digest: DigestChoice::None,
            max_recv_data_segment_length: 262_144,
            first_burst_length: 262_144,
            max_burst_length: 16_776_192,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 1,
            login_timeout: Duration::from_secs(15),
            max_redirects: 4,
            bind: SourceBind::default(),
            connection: ConnectionConfig::default(),
        }
    }

    /// The operational keys we offer.
    pub fn operational(&self) -> Vec<(&'static str, String)> {
        let yn = |b: bool| if b { "Yes" } else { "No" }.to_string();
        let mut v = LoginConfig::default_operational();
        for (k, val) in v.iter_mut() {
            *val = match *k {
                "HeaderDigest" => self.header_digest.key_value().into(),
                "DataDigest" => self.data_digest.key_value().into(),
                "MaxRecvDataSegmentLength" => self.max_recv_data_segment_length.to_string(),
                "FirstBurstLength" => self.first_burst_length.to_string(),
                "MaxBurstLength" => self.max_burst_length.to_string(),
                "ImmediateData" => yn(self.immediate_data),
                "InitialR2T" => yn(self.initial_r2t),
                "MaxOutstandingR2T" => self.max_outstanding_r2t.to_string(),
                _ => continue,
            };
        }
        v
    }

    /// Check values a person set; the error says which and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let in_range = |name: &str, v: u32| -> Result<(), String> {
            if (512..=16_777_215).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "{name} {v} is out of range: 512 to 16777215 (RFC 7143 §13)"
                ))
            }
        };
        in_range(
            "MaxRecvDataSegmentLength",
            self.max_recv_data_segment_length,
        )?;
        in_range("FirstBurstLength", self.first_burst_length)?;
        in_range("MaxBurstLength", self.max_burst_length)?;
        if self.first_burst_length > self.max_burst_length {
            return Err("FirstBurstLength must not exceed MaxBurstLength (RFC 7143 §13.14)".into());
        }
        if self.max_outstanding_r2t == 0 {
            return Err("MaxOutstandingR2T must be at least 1 (RFC 7143 §13.17)".into());
        }
        if self.connection.queue_depth == 0 {
            return Err("queue depth must be at least 1".into());
        }
        if self.target.is_empty() {
            return Err("no target name given".into());
        }
        validate_name(&self.initiator_name)
            .map_err(|e| format!("initiator name {:?}: {e}", self.initiator_name))?;
        if let Some(c) = &self.chap {
            c.validate().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// iSCSI names (RFC 7143 §4.2.7 / RFC 3722): `iqn.`, `eui.` or `naa.`, at most 223
/// bytes, no control characters or spaces.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.len() > 223 {
        return Err("longer than 223 bytes (RFC 7143 §4.2.7)".into());
    }
    if !(name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa.")) {
        return Err("must start with iqn., eui. or naa. (RFC 7143 §4.2.7.1)".into());
    }
    if name
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == ',' || c == '/')
    {
        return Err("contains spaces, control characters, ',' or '/' (RFC 3722)".into());
    }
    Ok(())
}

/// `iqn.2026-11.rs.oxiscsi:<hostname>`, or the name in `/etc/iscsi/initiatorname.iscsi`
/// when that file exists, as open-iscsi users expect.
pub fn default_initiator_name() -> String {
    if let Ok(text) = std::fs::read_to_string("/etc/iscsi/initiatorname.iscsi") {
        for line in text.lines() {
            if let Some(n) = line.trim().strip_prefix("InitiatorName=") {
                if validate_name(n.trim()).is_ok() {
                    return n.trim().to_string();
                }
            }
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    if host.is_empty() {
        "iqn.2026-11.rs.oxiscsi:initiator".into()
    } else {
        format!("iqn.2026-11.rs.oxiscsi:{host}")
    }
}
