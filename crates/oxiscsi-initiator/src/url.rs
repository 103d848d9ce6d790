//! libiscsi's URL form: `iscsi://[user[%password]@]host[:port][/target-iqn[/lun]]`.

use std::fmt;

/// A parsed `iscsi://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct IscsiUrl {
    pub user: Option<String>,
    pub password: Option<String>,
    /// Host without brackets (IPv6 literal or name).
    pub host: String,
    pub port: u16,
    pub target: Option<String>,
    pub lun: Option<u16>,
}

impl fmt::Debug for IscsiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IscsiUrl")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("target", &self.target)
            .field("lun", &self.lun)
            .finish()
    }
}

/// A URL that is not of the form above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad iSCSI URL {url:?}: {why}; expected iscsi://[user[%password]@]host[:port]/target-iqn/lun"
)]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

impl IscsiUrl {
    pub fn parse(s: &str) -> Result<IscsiUrl, UrlError> {
        // Never echo a password back in an error.
        let shown = match (s.find("://"), s.find('@')) {
            (Some(a), Some(b)) if b > a => format!("{}://***@{}", &s[..a], &s[b + 1..]),
            _ => s.to_string(),
        };
        let err = |why: &str| UrlError {
            url: shown.clone(),
            why: why.to_string(),
        };
        let rest = s
            .strip_prefix("iscsi://")
            .ok_or_else(|| err("it must start with iscsi://"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) if !a.contains('/') => (Some(a), r),
            _ => (None, rest),
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once('%') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(a.to_string()), None),
            },
        };
        if user.as_deref() == Some("") {
            return Err(err("empty user name before '@'"));
        }
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| err("unclosed '[' in IPv6 address"))?;
            let port = match after {
                "" => 3260,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| err("bad port after IPv6 address"))?,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .map_err(|_| err("port is not a number from 0 to 65535"))?,
                ),
                None => (hostport.to_string(), 3260),
            }
        };
        if host.is_empty() {
            return Err(err("no host"));
        }
        let path = path.trim_end_matches('/');
        let (target, lun) = if path.is_empty() {
            (None, None)
        } else {
            match path.rsplit_once('/') {
                Some((t, l)) => {
                    let lun = l
                        .parse::<u16>()
                        .map_err(|_| err("LUN is not a number from 0 to 65535"))?;
                    if lun > 16383 {
                        return Err(err(
                            "LUN above 16383 cannot be addressed with flat addressing",
                        ));
                    }
                    (Some(t.to_string()), Some(lun))
                }
                None => (Some(path.to_string()), None),
            }
        };
        if target.as_deref() == Some("") {
            return Err(err("empty target name"));
        }
        Ok(IscsiUrl {
            user,
            password,
            host,
            port,
            target,
            lun,
        })
    }

    /// `host:port` (brackets for IPv6), for connecting.
    pub fn portal(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL without credentials, for messages.
    pub fn redacted(&self) -> String {
        let mut s = format!("iscsi://{}", self.portal());
        if let Some(t) = &self.target {
            s.push('/');
            s.push_str(t);
            if let Some(l) = self.lun {
                s.push_str(&format!("/{l}"));
            }
        }
        s
    }
}

impl fmt::Display for IscsiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let u = IscsiUrl::parse("iscsi://127.0.0.1:3270/iqn.2026-11.test:tgt1/1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_deref(), u.lun),
            ("127.0.0.1", 3270, Some("iqn.2026-11.test:tgt1"), Some(1))
        );
        let u = IscsiUrl::parse("iscsi://alice%s3cret@[::1]:3261/iqn.x:y/0").unwrap();
        assert_eq!(
            (u.user.as_deref(), u.password.as_deref(), u.host.as_str()),
            (Some("alice"), Some("s3cret"), "::1")
        );
        assert_eq!(u.portal(), "[::1]:3261");
        let u = IscsiUrl::parse("iscsi://bob@host").unwrap();
        assert_eq!(
            (u.user.as_deref(), u.password, u.port, u.target),
            (Some("bob"), None, 3260, None)
        );
        let u = IscsiUrl::parse("iscsi://h/iqn.a:b").unwrap();
        assert_eq!((u.target.as_deref(), u.lun), (Some("iqn.a:b"), None));
        assert_eq!(format!("{u}"), "iscsi://h:3260/iqn.a:b");
    }

    #[test]
    fn errors_hide_password() {
        let e = IscsiUrl::parse("iscsi://u%pw@h:99999/t/1").unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        assert!(!e.to_string().contains("pw"), "{e}");
        assert!(IscsiUrl::parse("http://h").is_err());
        assert!(IscsiUrl::parse("iscsi://[::1/t/1").is_err());
        assert!(IscsiUrl::parse("iscsi://h/t/x").is_err());
        assert!(IscsiUrl::parse("iscsi:///t/1").is_err());
        assert!(IscsiUrl::parse("iscsi://h/t/20000").is_err());
    }
}
