//! SendTargets results (RFC 7143 §13.3, Appendix C): `TargetName=` followed by its
//! `TargetAddress=host:port,tpgt` lines.

/// One portal of a target: where to connect and its portal group tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Portal {
    /// Host as given (IPv6 without brackets), or a DNS name.
    pub host: String,
    pub port: u16,
    pub tpgt: u16,
}

impl Portal {
    /// Parse `host[:port][,tpgt]` where host may be `[v6]` (§13.8). Port defaults to 3260.
    pub fn parse(s: &str) -> Option<Portal> {
        let (addr, tpgt) = match s.rsplit_once(',') {
            Some((a, t)) => (a, t.parse().ok()?),
            None => (s, 1),
        };
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (h, after) = rest.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => 3260,
                None => return None,
            };
            (h.to_string(), port)
        } else {
            match addr.rsplit_once(':') {
                // A bare IPv6 address without brackets has several colons: no port.
                Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().ok()?),
                Some(_) => (addr.to_string(), 3260),
                None => (addr.to_string(), 3260),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Portal { host, port, tpgt })
    }

    /// `host:port` with brackets around IPv6 hosts, ready for a socket address.
    pub fn socket_addr_string(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.socket_addr_string(), self.tpgt)
    }
}

/// A target found by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    pub portals: Vec<Portal>,
}

/// Turn a SendTargets answer into targets. `TargetAddress` lines before any
/// `TargetName`, and addresses that do not parse, are skipped (reported in the second
/// return value).
pub fn parse_send_targets(pairs: &[(String, String)]) -> (Vec<DiscoveredTarget>, Vec<String>) {
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    let mut skipped = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "TargetName" => out.push(DiscoveredTarget {
                name: v.clone(),
                portals: Vec::new(),
            }),
            "TargetAddress" => match (out.last_mut(), Portal::parse(v)) {
                (Some(t), Some(p)) => t.portals.push(p),
                _ => skipped.push(format!("{k}={v}")),
            },
            _ => {}
        }
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portals() {
        assert_eq!(
            Portal::parse("10.0.0.1:3261,2"),
            Some(Portal {
                host: "10.0.0.1".into(),
                port: 3261,
                tpgt: 2
            })
        );
        assert_eq!(
            Portal::parse("[::1]:3270,1"),
            Some(Portal {
                host: "::1".into(),
                port: 3270,
                tpgt: 1
            })
        );
        assert_eq!(
            Portal::parse("[fe80::1],3"),
            Some(Portal {
                host: "fe80::1".into(),
                port: 3260,
                tpgt: 3
            })
        );
        assert_eq!(
            Portal::parse("host.example"),
            Some(Portal {
                host: "host.example".into(),
                port: 3260,
                tpgt: 1
            })
        );
        assert_eq!(Portal::parse("[::1]:x,1"), None);
        assert_eq!(Portal::parse(":3260,1"), None);
        assert_eq!(
            Portal::parse("[::1]:3270,1").unwrap().socket_addr_string(),
            "[::1]:3270"
        );
    }

    #[test]
    fn send_targets() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let pairs = vec![
            p("TargetAddress", "1.1.1.1:1,1"),
            p("TargetName", "iqn.a"),
            p("TargetAddress", "127.0.0.1:3260,1"),
            p("TargetAddress", "[::1]:3260,2"),
            p("TargetName", "iqn.b"),
            p("TargetAddress", "bogus:port,1"),
        ];
        let (t, skipped) = parse_send_targets(&pairs);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].portals.len(), 2);
        assert_eq!(t[0].portals[1].tpgt, 2);
        assert!(t[1].portals.is_empty());
        assert_eq!(skipped.len(), 2);
    }
}
