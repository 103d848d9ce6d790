//! The daemon's configuration file: open-iscsi's `iscsid.conf` format (`key = value`,
//! `#` comments). open-iscsi's own keys are accepted as they are (the `node.*` ones are
//! defaults for new node records); oxiscsid adds its own under `oxiscsid.`:
//!
//! ```text
//! oxiscsid.luns.attach = Yes       # serve each LUN as a FUSE file + loop device
//! oxiscsid.luns.direct_io = Yes    # loop devices with direct I/O (no double caching)
//! oxiscsid.luns.mountpoint = /run/oxiscsi/luns
//! ```

use std::path::{Path, PathBuf};

/// What oxiscsid takes from its configuration file.
#[derive(Debug, Clone)]
pub struct DaemonConf {
    pub attach_luns: bool,
    pub direct_io: bool,
    pub lun_dir: Option<PathBuf>,
    /// Every `key = value` of the file, in order (open-iscsi's keys included).
    pub pairs: Vec<(String, String)>,
}

impl Default for DaemonConf {
    fn default() -> Self {
        DaemonConf {
            attach_luns: true,
            direct_io: true,
            lun_dir: None,
            pairs: Vec::new(),
        }
    }
}

fn yes_no(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

impl DaemonConf {
    /// Parse; errors name the file and line.
    pub fn parse(text: &str, file: &Path) -> Result<DaemonConf, String> {
        let mut c = DaemonConf::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{}:{}", file.display(), i + 1);
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("{}: expected `key = value`, got {line:?}", at()));
            };
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(format!("{}: empty key", at()));
            }
            let flag = |name: &str| {
                yes_no(v).ok_or_else(|| format!("{}: {name} = {v:?}: use Yes or No", at()))
            };
            match k {
                "oxiscsid.luns.attach" => c.attach_luns = flag(k)?,
                "oxiscsid.luns.direct_io" => c.direct_io = flag(k)?,
                "oxiscsid.luns.mountpoint" => {
                    if !v.starts_with('/') {
                        return Err(format!("{}: {k} must be an absolute path", at()));
                    }
                    c.lun_dir = Some(PathBuf::from(v));
                }
                k if k.starts_with("oxiscsid.") => {
                    return Err(format!(
                        "{}: unknown key {k:?} (known: oxiscsid.luns.attach, oxiscsid.luns.direct_io, oxiscsid.luns.mountpoint)",
                        at()
                    ))
                }
                _ => {}
            }
            c.pairs.push((k.to_string(), v.to_string()));
        }
        Ok(c)
    }

    /// Read `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<DaemonConf, String> {
        match std::fs::read_to_string(path) {
            Ok(t) => DaemonConf::parse(&t, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DaemonConf::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_errors_with_line_numbers() {
        let p = Path::new("/x/iscsid.conf");
        let c = DaemonConf::parse(
            "# comment\nnode.startup = automatic\noxiscsid.luns.direct_io = No\n",
            p,
        )
        .unwrap();
        assert!(!c.direct_io && c.attach_luns);
        assert_eq!(c.pairs[0], ("node.startup".into(), "automatic".into()));
        let e = DaemonConf::parse("\n\nnonsense line\n", p).unwrap_err();
        assert!(e.starts_with("/x/iscsid.conf:3:"), "{e}");
        let e = DaemonConf::parse("oxiscsid.luns.attach = perhaps\n", p).unwrap_err();
        assert!(e.contains(":1:") && e.contains("Yes or No"), "{e}");
        let e = DaemonConf::parse("oxiscsid.typo = 1\n", p).unwrap_err();
        assert!(e.contains("unknown key"), "{e}");
    }
}
