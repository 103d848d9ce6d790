//! The target server: listeners on each portal, login admission with a bound on logins
//! in progress, the session table (TSIH, reinstatement) and one task per connection.

mod conn;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use oxiscsi_proto::login::target::{Admission, Directory, TargetChap};
use oxiscsi_proto::login::{ChapConfig, SessionType};
use oxiscsi_proto::pdu::{Isid, LoginStatus};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::backend::{Backend, FileBackend, MemBackend};
use crate::config::{Backing, TargetConfig, TargetSpec};
use crate::lu::{LogicalUnit, LuConfig};

/// A target with its opened LUNs.
#[derive(Debug)]
pub(crate) struct Target {
    pub spec: TargetSpec,
    pub luns: BTreeMap<u16, Arc<LogicalUnit>>,
    pub copies: crate::xcopy::CopyResults,
}

/// A live session, for reinstatement (§6.3.5) and the session count.
#[derive(Debug)]
struct SessionEntry {
    tsih: u16,
    target: String,
    /// Tell the session to end.
    stop: watch::Sender<bool>,
    /// Becomes true once its connection has finished (its tasks have ended).
    done: watch::Receiver<bool>,
}

/// Shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: TargetConfig,
    pub targets: Vec<Arc<Target>>,
    pub logins: Arc<Semaphore>,
    /// The bound portal addresses (port 0 resolved), for SendTargets.
    pub portals: Vec<SocketAddr>,
    next_tsih: AtomicU16,
    sessions: Mutex<HashMap<(String, Isid), SessionEntry>>,
}

impl Shared {
    pub(crate) fn target(&self, iqn: &str) -> Option<&Arc<Target>> {
        self.targets
            .iter()
            .find(|t| t.spec.iqn.eq_ignore_ascii_case(iqn))
    }

    /// May `initiator` see and log in to `t`?
    pub(crate) fn allowed(&self, t: &Target, initiator: &str) -> bool {
        t.spec.allow.is_empty()
            || t.spec
                .allow
                .iter()
                .any(|a| a.eq_ignore_ascii_case(initiator))
    }

    fn new_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    /// Record a new session; returns the old one with the same initiator and ISID (to be
    /// reinstated: ended before the new one starts, §6.3.5).
    pub(crate) fn register(
        &self,
        initiator: &str,
        isid: Isid,
        tsih: u16,
        target: &str,
        stop: watch::Sender<bool>,
        done: watch::Receiver<bool>,
    ) -> Option<(watch::Sender<bool>, watch::Receiver<bool>)> {
        let mut s = self.sessions.lock().ok()?;
        let old = s.insert(
            (initiator.to_string(), isid),
            SessionEntry {
                tsih,
                target: target.to_string(),
                stop,
                done,
            },
        );
        old.map(|o| (o.stop, o.done))
    }

    pub(crate) fn unregister(&self, initiator: &str, isid: Isid, tsih: u16) {
        if let Ok(mut s) = self.sessions.lock() {
            let key = (initiator.to_string(), isid);
            if s.get(&key).is_some_and(|e| e.tsih == tsih) {
                s.remove(&key);
            }
        }
    }

    /// Sessions logged in now, per target IQN.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().map_or(0, |s| s.len())
    }

    fn stop_all(&self) {
        if let Ok(s) = self.sessions.lock() {
            for e in s.values() {
                let _ = e.stop.send(true);
            }
        }
    }

    fn sessions_of(&self, target: &str) -> usize {
        self.sessions
            .lock()
            .map_or(0, |s| s.values().filter(|e| e.target == target).count())
    }
}

/// Login decisions for one connection.
pub(crate) struct LoginDirectory<'a> {
    pub shared: &'a Shared,
}

impl Directory for LoginDirectory<'_> {
    fn admit(&self, initiator: &str, st: SessionType, target: Option<&str>) -> Admission {
        let algorithms = ChapConfig::DEFAULT_ALGORITHMS.to_vec();
        match st {
            SessionType::Discovery => Admission::Accept {
                chap: self.shared.cfg.discovery_chap.clone().map(|c| TargetChap {
                    initiator: c,
                    mutual: None,
                    algorithms,
                }),
                target_alias: None,
            },
            SessionType::Normal => {
                let Some(t) = target.and_then(|n| self.shared.target(n)) else {
                    return Admission::Refuse(LoginStatus::NOT_FOUND);
                };
                if !self.shared.allowed(t, initiator) {
                    return Admission::Refuse(LoginStatus::AUTHORIZATION_FAILURE);
                }
                Admission::Accept {
                    chap: t.spec.chap.clone().map(|c| TargetChap {
                        initiator: c,
                        mutual: t.spec.mutual_chap.clone(),
                        algorithms,
                    }),
                    target_alias: t.spec.alias.clone(),
                }
            }
        }
    }

    fn tsih(&self, _initiator: &str, _isid: Isid, requested: u16) -> Result<u16, LoginStatus> {
        if requested != 0 {
            // MaxConnections=1 and ERL 0: no connection joins an existing session.
            return Err(LoginStatus::SESSION_DOES_NOT_EXIST);
        }
        Ok(self.shared.new_tsih())
    }
}

/// A bound, not yet running target server.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
}

/// A running server.
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn open_lun(spec: &TargetSpec, l: &crate::config::LunSpec) -> io::Result<LogicalUnit> {
    let backend: Arc<dyn Backend> = match &l.backing {
        Backing::File { path, size } => Arc::new(FileBackend::open(path, *size, l.read_only)?),
        Backing::Mem { size } => {
            Arc::new(MemBackend::new(*size, &format!("{}/{}", spec.iqn, l.lun))?)
        }
    };
    if backend.len() < 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is smaller than 4096 bytes", backend.describe()),
        ));
    }
    Ok(LogicalUnit::new(
        backend,
        LuConfig {
            block_size: 512,
            read_only: l.read_only,
            id_seed: format!("{}/{}", spec.iqn, l.lun),
            product: "VIRTUAL-DISK".into(),
            pr_state: match &l.backing {
                Backing::File { path, .. } => {
                    let mut p = path.clone().into_os_string();
                    p.push(".pr");
                    Some(p.into())
                }
                Backing::Mem { .. } => None,
            },
        },
    ))
}

impl Server {
    /// Open every LUN and bind every portal; errors say which.
    pub async fn bind(cfg: TargetConfig) -> io::Result<Server> {
        cfg.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut targets = Vec::new();
        for spec in &cfg.targets {
            let mut luns = BTreeMap::new();
            for l in &spec.luns {
                let lu = open_lun(spec, l).map_err(|e| {
                    io::Error::new(e.kind(), format!("target {} LUN {}: {e}", spec.iqn, l.lun))
                })?;
                luns.insert(l.lun, Arc::new(lu));
            }
            targets.push(Arc::new(Target {
                spec: spec.clone(),
                luns,
                copies: Default::default(),
            }));
        }
        let mut listeners = Vec::new();
        for a in &cfg.listen {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
            listeners.push(l);
        }
        let portals = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        Ok(Server {
            shared: Arc::new(Shared {
                portals,
                logins: Arc::new(Semaphore::new(cfg.max_logins_in_progress)),
                cfg,
                targets,
                next_tsih: AtomicU16::new(1),
                sessions: Mutex::new(HashMap::new()),
            }),
            listeners,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Start accepting on every portal.
    pub fn spawn(self) -> ServerHandle {
        let addrs = self.local_addrs();
        let (tx, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for l in self.listeners {
            let shared = self.shared.clone();
            let mut rx = rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = l.accept() => match r {
                            Ok((sock, peer)) => {
                                let _ = sock.set_nodelay(true);
                                let shared = shared.clone();
                                let stop = rx.clone();
                                tokio::spawn(conn::run(shared, sock, peer, stop));
                            }
                            Err(e) => {
                                // EMFILE and friends: back off instead of spinning.
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                        },
                        _ = rx.changed() => break,
                    }
                }
            }));
        }
        ServerHandle {
            addrs,
            shared: self.shared,
            shutdown: tx,
            tasks,
        }
    }
}

impl ServerHandle {
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Sessions logged in now.
    pub fn sessions(&self) -> usize {
        self.shared.session_count()
    }

    /// Sessions logged in to one target.
    pub fn sessions_of(&self, iqn: &str) -> usize {
        self.shared.sessions_of(iqn)
    }

    /// Stop accepting, ask every session to log out (Async event 1, within 2 s) and wait
    /// for them to end; sessions still there after `grace` are closed.
    pub async fn shutdown(self) {
        self.shutdown_within(std::time::Duration::from_secs(5))
            .await
    }

    pub async fn shutdown_within(self, grace: std::time::Duration) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let t0 = tokio::time::Instant::now();
        while self.shared.session_count() > 0 && t0.elapsed() < grace {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if self.shared.session_count() > 0 {
            tracing::warn!(
                sessions = self.shared.session_count(),
                "sessions did not log out in time; closing them"
            );
            self.shared.stop_all();
            let t1 = tokio::time::Instant::now();
            while self.shared.session_count() > 0
                && t1.elapsed() < std::time::Duration::from_secs(2)
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}
