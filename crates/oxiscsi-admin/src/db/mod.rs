//! The record tree in open-iscsi's layout (iscsiadm 2.1.8):
//!
//! ```text
//! ROOT/nodes/<iqn>/<ip>,<port>,<tpgt>/<iface>   node records (tree form)
//! ROOT/nodes/<iqn>/<ip>,<port>                  node record (flat legacy form, also read)
//! ROOT/send_targets/<ip>,<port>/st_config       SendTargets discovery records
//! ROOT/ifaces/<name>                            iface records
//! ```
//!
//! Writes are atomic (temp file + fsync + rename + fsync of the directory), and every
//! read-modify-write holds an exclusive flock on `ROOT/.oxiscsi.lock`, so concurrent
//! `oxiscsiadm` processes never lose each other's updates (open-iscsi #135, #302).

pub mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use record::{Kind, Record, RecordError};

/// A DB operation that failed, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}:{}", path.display(), source)]
    Record { path: PathBuf, source: RecordError },
    /// iscsid.conf does not parse; the text names the file and line.
    #[error("{why}")]
    Conf { why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DbError + '_ {
    move |source| DbError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One node record's place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKey {
    pub iqn: String,
    pub address: String,
    pub port: u16,
    /// -1 when unknown (what iscsiadm writes for `-p IP:PORT` without a tag).
    pub tpgt: i32,
    pub iface: String,
}

/// The DB under one root (`/etc/iscsi`, or a test's temp dir).
#[derive(Debug, Clone)]
pub struct Db {
    root: PathBuf,
}

impl Db {
    pub fn new(root: impl Into<PathBuf>) -> Db {
        Db { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a node record lives (tree form; the flat form when tpgt is -1, as
    /// iscsiadm does without a tag).
    pub fn node_path(&self, k: &NodeKey) -> PathBuf {
        let dir = self.root.join("nodes").join(&k.iqn);
        if k.tpgt < 0 {
            dir.join(format!("{},{}", k.address, k.port))
        } else {
            dir.join(format!("{},{},{}", k.address, k.port, k.tpgt))
                .join(&k.iface)
        }
    }

    pub fn sendtargets_path(&self, address: &str, port: u16) -> PathBuf {
        self.root
            .join("send_targets")
            .join(format!("{address},{port}"))
            .join("st_config")
    }

    pub fn iface_path(&self, name: &str) -> PathBuf {
        self.root.join("ifaces").join(name)
    }

    pub fn read(&self, path: &Path) -> Result<Record, DbError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        Record::parse(&text).map_err(|source| DbError::Record {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Write a record atomically: a reader sees the old file or the new one, never a
    /// mix, also across a crash.
    pub fn write(&self, path: &Path, r: &Record) -> Result<(), DbError> {
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(r.to_string().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err(path))
    }

    /// Read, change and write a record of `kind` while holding the DB lock; keys set
    /// land where open-iscsi puts them. A missing record starts from `new`.
    pub fn update<F>(
        &self,
        path: &Path,
        kind: Kind,
        new: impl FnOnce() -> Record,
        change: F,
    ) -> Result<Record, DbError>
    where
        F: FnOnce(&mut Record),
    {
        let _lock = self.lock()?;
        let mut r = if path.exists() {
            kind.complete(&self.read(path)?)
        } else {
            new()
        };
        change(&mut r);
        self.write(path, &r)?;
        Ok(r)
    }

    /// The exclusive DB lock (released when dropped).
    pub fn lock(&self) -> Result<DbLock, DbError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let path = self.root.join(".oxiscsi.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(&path)(e.into()))?;
        Ok(DbLock { _file: f })
    }

    /// Every node record, in either form.
    pub fn nodes(&self) -> Result<Vec<(NodeKey, PathBuf)>, DbError> {
        let mut out = Vec::new();
        let nodes = self.root.join("nodes");
        let Ok(iqns) = fs::read_dir(&nodes) else {
            return Ok(out);
        };
        for iqn in iqns.flatten() {
            let iqn_name = iqn.file_name().to_string_lossy().into_owned();
            let Ok(portals) = fs::read_dir(iqn.path()) else {
                continue;
            };
            for p in portals.flatten() {
                let pname = p.file_name().to_string_lossy().into_owned();
                if pname.starts_with('.') {
                    continue;
                }
                let parts: Vec<&str> = pname.rsplitn(3, ',').collect();
                let path = p.path();
                if path.is_dir() {
                    // <ip>,<port>,<tpgt>/<iface>
                    let (Some(tpgt), Some(port), Some(addr)) = (
                        parts.first().and_then(|t| t.parse().ok()),
                        parts.get(1).and_then(|t| t.parse().ok()),
                        parts.get(2),
                    ) else {
                        continue;
                    };
                    let Ok(ifaces) = fs::read_dir(&path) else {
                        continue;
                    };
                    for f in ifaces.flatten() {
                        let iface = f.file_name().to_string_lossy().into_owned();
                        if iface.starts_with('.') {
                            continue;
                        }
                        out.push((
                            NodeKey {
                                iqn: iqn_name.clone(),
                                address: addr.to_string(),
                                port,
                                tpgt,
                                iface,
                            },
                            f.path(),
                        ));
                    }
                } else {
                    // Flat legacy form <ip>,<port>: the record says the rest.
                    let Some((addr, port)) = pname.rsplit_once(',') else {
                        continue;
                    };
                    let Ok(port) = port.parse() else { continue };
                    let rec = self.read(&path)?;
                    out.push((
                        NodeKey {
                            iqn: iqn_name.clone(),
                            address: addr.to_string(),
                            port,
                            tpgt: rec
                                .get("node.tpgt")
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(-1),
                            iface: rec
                                .get("iface.iscsi_ifacename")
                                .unwrap_or("default")
                                .to_string(),
                        },
                        path,
                    ));
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.0.iqn, &a.0.address, a.0.port).cmp(&(&b.0.iqn, &b.0.address, b.0.port))
        });
        Ok(out)
    }
}

impl Db {
    /// An iface record with every key (`None` if there is no such iface); `default`
    /// exists without a file, as in open-iscsi.
    pub fn iface(&self, name: &str) -> Result<Option<Record>, DbError> {
        let p = self.iface_path(name);
        if !p.exists() {
            return Ok((name == "default").then(|| record::iface_record("default")));
        }
        Ok(Some(Kind::Iface.complete(&self.read(&p)?)))
    }

    /// `ROOT/iscsid.conf`'s `key = value` pairs in order (none when the file is
    /// missing): the defaults for new node and discovery records.
    pub fn conf_defaults(&self) -> Result<Vec<(String, String)>, DbError> {
        let path = self.root.join("iscsid.conf");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        crate::daemon::conf::DaemonConf::parse(&text, &path)
            .map(|c| c.pairs)
            .map_err(|why| DbError::Conf { why })
    }

    /// The initiator name from `ROOT/initiatorname.iscsi`, generated once if missing
    /// (as open-iscsi's packaging does): `iqn.2026-11.rs.oxiscsi:<host>-<12 hex>`,
    /// written atomically under the DB lock so concurrent first runs agree on one name.
    pub fn initiator_name(&self) -> Result<String, DbError> {
        let path = self.root.join("initiatorname.iscsi");
        let read = |p: &Path| -> Option<String> {
            fs::read_to_string(p).ok()?.lines().find_map(|l| {
                let l = l.trim();
                (!l.starts_with('#'))
                    .then(|| l.strip_prefix("InitiatorName="))
                    .flatten()
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
            })
        };
        if let Some(n) = read(&path) {
            return Ok(n);
        }
        let _lock = self.lock()?;
        if let Some(n) = read(&path) {
            return Ok(n);
        }
        let host: String = fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let mut rnd = [0u8; 6];
        let _ = File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut rnd));
        let hex: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let name = if host.is_empty() {
            format!("iqn.2026-11.rs.oxiscsi:{hex}")
        } else {
            format!("iqn.2026-11.rs.oxiscsi:{host}-{hex}")
        };
        let text = format!("## Generated by oxiscsi once; the name this host logs in with.\nInitiatorName={name}\n");
        let tmp = self.root.join(".initiatorname.iscsi.tmp");
        (|| -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })()
        .map_err(io_err(&path))?;
        Ok(name)
    }
}

/// Holds the DB lock.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
}
