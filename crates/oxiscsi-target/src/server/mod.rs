//! The target server: listeners on each portal, login admission with a bound on logins
//! in progress, the session table (TSIH, reinstatement) and one task per connection.

mod conn;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use oxiscsi_proto::login::target::{Admission, Directory, TargetChap};
use oxiscsi_proto::login::{ChapConfig, SessionType};
use oxiscsi_proto::pdu::{Isid, LoginStatus};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::backend::{Backend, FileBackend, MemBackend};
use crate::config::{Backing, LunSpec, TargetConfig, TargetSpec};
use crate::lu::{LogicalUnit, LuConfig};

/// A target's LUNs: what each was configured as, and the open LU.
type LunMap = BTreeMap<u16, (LunSpec, Arc<LogicalUnit>)>;

/// A target with its opened LUNs. Spec and LUN map change on reload (SIGHUP) while
/// sessions run; connections read them per command.
#[derive(Debug)]
pub(crate) struct Target {
    pub iqn: String,
    spec: RwLock<TargetSpec>,
    luns: RwLock<LunMap>,
    pub copies: Arc<crate::xcopy::CopyResults>,
    removed: AtomicBool,
}

impl Target {
    pub(crate) fn spec(&self) -> TargetSpec {
        self.spec
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub(crate) fn lun(&self, n: u16) -> Option<Arc<LogicalUnit>> {
        self.luns.read().ok()?.get(&n).map(|(_, lu)| lu.clone())
    }

    /// The LUN map now.
    pub(crate) fn luns(&self) -> BTreeMap<u16, Arc<LogicalUnit>> {
        self.luns
            .read()
            .map(|m| m.iter().map(|(n, (_, lu))| (*n, lu.clone())).collect())
            .unwrap_or_default()
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
}

/// Why a session is told to end, sent on its stop channel.
pub(crate) struct Stop;

impl Stop {
    /// Ask the initiator to log out (Async event 1), close if it does not in time:
    /// its target was removed or its ACL no longer admits it.
    pub const ASK_LOGOUT: u8 = 1;
    /// Close now: a new login reinstated the session (§6.3.5).
    pub const REINSTATED: u8 = 2;
    /// Close now: it was asked to log out at shutdown and did not.
    pub const LATE: u8 = 3;
}

/// A live session, for reinstatement (§6.3.5) and the session count.
#[derive(Debug)]
struct SessionEntry {
    tsih: u16,
    target: String,
    /// Tell the session to end (a [`Stop`] code).
    stop: watch::Sender<u8>,
    /// Becomes true once its connection has finished (its tasks have ended).
    done: watch::Receiver<bool>,
}

/// Shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Server-wide settings as started (limits, timeouts); targets and discovery CHAP
    /// are below, as reloaded.
    pub cfg: TargetConfig,
    targets: RwLock<Vec<Arc<Target>>>,
    discovery_chap: RwLock<Option<oxiscsi_proto::login::ChapCredentials>>,
    pub logins: Arc<Semaphore>,
    /// The bound portal addresses (port 0 resolved) and their portal group tags.
    pub portals: Vec<(SocketAddr, u16)>,
    next_tsih: AtomicU16,
    sessions: Mutex<HashMap<(String, Isid), SessionEntry>>,
}

impl Shared {
    pub(crate) fn target(&self, iqn: &str) -> Option<Arc<Target>> {
        self.targets
            .read()
            .ok()?
            .iter()
            .find(|t| t.iqn.eq_ignore_ascii_case(iqn))
            .cloned()
    }

    pub(crate) fn targets(&self) -> Vec<Arc<Target>> {
        self.targets.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// May `initiator` see and log in to `t`?
    pub(crate) fn allowed(&self, t: &Target, initiator: &str) -> bool {
        allowed(&t.spec(), initiator)
    }

    /// Is `t` reachable through portal group `tag`?
    pub(crate) fn reachable(&self, t: &Target, tag: u16) -> bool {
        let s = t.spec();
        s.portal_groups.is_empty() || s.portal_groups.contains(&tag)
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
        stop: watch::Sender<u8>,
        done: watch::Receiver<bool>,
    ) -> Option<(watch::Sender<u8>, watch::Receiver<bool>)> {
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
                let _ = e.stop.send(Stop::LATE);
            }
        }
    }

    /// End the sessions of `target` (of one initiator if given).
    fn stop_sessions(&self, target: &str, initiator: Option<&str>) -> usize {
        let Ok(s) = self.sessions.lock() else {
            return 0;
        };
        let mut n = 0;
        for ((ini, _), e) in s.iter() {
            if e.target.eq_ignore_ascii_case(target) && initiator.is_none_or(|i| i == ini) {
                let _ = e.stop.send(Stop::ASK_LOGOUT);
                n += 1;
            }
        }
        n
    }

    /// Initiators with sessions on `target`.
    fn initiators_of(&self, target: &str) -> Vec<String> {
        self.sessions.lock().map_or(Vec::new(), |s| {
            s.iter()
                .filter(|(_, e)| e.target.eq_ignore_ascii_case(target))
                .map(|((i, _), _)| i.clone())
                .collect()
        })
    }

    fn sessions_of(&self, target: &str) -> usize {
        self.sessions
            .lock()
            .map_or(0, |s| s.values().filter(|e| e.target == target).count())
    }
}

fn allowed(s: &TargetSpec, initiator: &str) -> bool {
    s.allow.is_empty() || s.allow.iter().any(|a| a.eq_ignore_ascii_case(initiator))
}

/// Login decisions for one connection.
pub(crate) struct LoginDirectory<'a> {
    pub shared: &'a Shared,
    /// Portal group the connection came in through.
    pub tag: u16,
}

impl Directory for LoginDirectory<'_> {
    fn admit(&self, initiator: &str, st: SessionType, target: Option<&str>) -> Admission {
        let algorithms = ChapConfig::DEFAULT_ALGORITHMS.to_vec();
        match st {
            SessionType::Discovery => Admission::Accept {
                chap: self
                    .shared
                    .discovery_chap
                    .read()
                    .ok()
                    .and_then(|c| c.clone())
                    .map(|c| TargetChap {
                        initiator: c,
                        mutual: None,
                        algorithms,
                    }),
                target_alias: None,
            },
            SessionType::Normal => {
                // A portal group in maintenance sends every login elsewhere.
                if let Some(r) = self
                    .shared
                    .cfg
                    .portal_groups
                    .iter()
                    .find(|g| g.tag == self.tag)
                    .and_then(|g| g.redirect.as_ref())
                {
                    return Admission::Redirect {
                        address: r.address.clone(),
                        permanent: r.permanent,
                    };
                }
                let Some(t) = target.and_then(|n| self.shared.target(n)) else {
                    return Admission::Refuse(LoginStatus::NOT_FOUND);
                };
                if t.is_removed() || !self.shared.reachable(&t, self.tag) {
                    return Admission::Refuse(LoginStatus::NOT_FOUND);
                }
                let spec = t.spec();
                if let Some(r) = &spec.redirect {
                    return Admission::Redirect {
                        address: r.address.clone(),
                        permanent: r.permanent,
                    };
                }
                if !allowed(&spec, initiator) {
                    return Admission::Refuse(LoginStatus::AUTHORIZATION_FAILURE);
                }
                Admission::Accept {
                    chap: spec.chap.clone().map(|c| TargetChap {
                        initiator: c,
                        mutual: spec.mutual_chap.clone(),
                        algorithms,
                    }),
                    target_alias: spec.alias.clone(),
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
    listeners: Vec<(TcpListener, u16)>,
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub sessions_ended: usize,
    pub notes: Vec<String>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "added {:?}, removed {:?}, changed {:?}, {} session(s) ended",
            self.added, self.removed, self.changed, self.sessions_ended
        )?;
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

/// A running server.
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn open_target(spec: &TargetSpec) -> io::Result<Target> {
    let mut luns = BTreeMap::new();
    for l in &spec.luns {
        let lu = open_lun(spec, l).map_err(|e| {
            io::Error::new(e.kind(), format!("target {} LUN {}: {e}", spec.iqn, l.lun))
        })?;
        luns.insert(l.lun, (l.clone(), Arc::new(lu)));
    }
    Ok(Target {
        iqn: spec.iqn.clone(),
        spec: RwLock::new(spec.clone()),
        luns: RwLock::new(luns),
        copies: Default::default(),
        removed: AtomicBool::new(false),
    })
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
            targets.push(Arc::new(open_target(spec)?));
        }
        let mut listeners = Vec::new();
        let groups = std::iter::once((1u16, cfg.listen.clone()))
            .chain(cfg.portal_groups.iter().map(|g| (g.tag, g.listen.clone())));
        for (tag, addrs) in groups {
            for a in addrs {
                let l = TcpListener::bind(a)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
                listeners.push((l, tag));
            }
        }
        let portals = listeners
            .iter()
            .filter_map(|(l, tag)| Some((l.local_addr().ok()?, *tag)))
            .collect();
        Ok(Server {
            shared: Arc::new(Shared {
                portals,
                logins: Arc::new(Semaphore::new(cfg.max_logins_in_progress)),
                discovery_chap: RwLock::new(cfg.discovery_chap.clone()),
                cfg,
                targets: RwLock::new(targets),
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
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Start accepting on every portal.
    pub fn spawn(self) -> ServerHandle {
        let addrs = self.local_addrs();
        let (tx, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for (l, tag) in self.listeners {
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
                                tokio::spawn(conn::run(shared, sock, peer, tag, stop));
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

    /// Apply a new configuration (SIGHUP): targets, LUNs, ACLs and CHAP accounts are
    /// added, changed or removed; sessions of targets that did not change keep running,
    /// and so do sessions whose initiator is still admitted. Every new LUN is opened
    /// before anything changes, so a failure leaves the running configuration as it
    /// was. Listen addresses and server limits need a restart (reported, not applied).
    pub fn reload(&self, new: TargetConfig) -> Result<ReloadReport, String> {
        new.validate()?;
        let sh = &self.shared;
        let mut report = ReloadReport::default();
        if new.listen != sh.cfg.listen || new.portal_groups != sh.cfg.portal_groups {
            report
                .notes
                .push("listen addresses and portal groups change only on restart".into());
        }
        // Phase 1: open everything new, change nothing.
        let current = sh.targets();
        let mut fresh: Vec<Arc<Target>> = Vec::new();
        let mut lun_updates: Vec<(Arc<Target>, LunMap)> = Vec::new();
        for spec in &new.targets {
            match current
                .iter()
                .find(|t| t.iqn.eq_ignore_ascii_case(&spec.iqn))
            {
                None => fresh.push(Arc::new(open_target(spec).map_err(|e| e.to_string())?)),
                Some(t) => {
                    let old = t.luns.read().map(|m| m.clone()).unwrap_or_default();
                    let mut map = BTreeMap::new();
                    for l in &spec.luns {
                        match old.get(&l.lun) {
                            Some((s, lu)) if s == l => {
                                map.insert(l.lun, (s.clone(), lu.clone()));
                            }
                            _ => {
                                let lu = open_lun(spec, l).map_err(|e| {
                                    format!("target {} LUN {}: {e}", spec.iqn, l.lun)
                                })?;
                                map.insert(l.lun, (l.clone(), Arc::new(lu)));
                            }
                        }
                    }
                    lun_updates.push((t.clone(), map));
                }
            }
        }
        // Phase 2: apply.
        for (t, map) in lun_updates {
            let spec = new
                .targets
                .iter()
                .find(|s| s.iqn.eq_ignore_ascii_case(&t.iqn))
                .cloned()
                .unwrap_or_else(|| t.spec());
            let old_spec = t.spec();
            let luns_changed = {
                let old = t
                    .luns
                    .read()
                    .map(|m| m.keys().copied().collect::<Vec<_>>())
                    .unwrap_or_default();
                let now: Vec<u16> = map.keys().copied().collect();
                old != now || spec.luns != old_spec.luns
            };
            // Sessions of this target carry over to replaced and new LUNs.
            let nexuses: Vec<String> = {
                let mut v: Vec<String> = t.luns().values().flat_map(|lu| lu.nexuses()).collect();
                v.sort();
                v.dedup();
                v
            };
            let old_map = t.luns();
            for (n, (_, lu)) in &map {
                match old_map.get(n) {
                    Some(o) if Arc::ptr_eq(o, lu) => {}
                    Some(o) => lu.adopt(Some(o), &o.nexuses()),
                    None => lu.adopt(None, &nexuses),
                }
            }
            if let Ok(mut l) = t.luns.write() {
                *l = map;
            }
            if luns_changed {
                // SPC-4: REPORTED LUNS DATA HAS CHANGED for everyone on this target.
                for lu in t.luns().values() {
                    lu.luns_changed();
                }
                report.changed.push(t.iqn.clone());
            }
            if spec != old_spec {
                if !luns_changed {
                    report.changed.push(t.iqn.clone());
                }
                // Sessions of initiators the new ACL no longer admits end now.
                for ini in sh.initiators_of(&t.iqn) {
                    if !allowed(&spec, &ini) {
                        report.sessions_ended += sh.stop_sessions(&t.iqn, Some(&ini));
                    }
                }
            }
            if let Ok(mut s) = t.spec.write() {
                *s = spec;
            }
        }
        let mut all = Vec::new();
        for t in current {
            if new
                .targets
                .iter()
                .any(|s| s.iqn.eq_ignore_ascii_case(&t.iqn))
            {
                all.push(t);
            } else {
                t.removed.store(true, Ordering::Relaxed);
                report.sessions_ended += sh.stop_sessions(&t.iqn, None);
                report.removed.push(t.iqn.clone());
            }
        }
        for t in fresh {
            report.added.push(t.iqn.clone());
            all.push(t);
        }
        if let Ok(mut ts) = sh.targets.write() {
            *ts = all;
        }
        if let Ok(mut d) = sh.discovery_chap.write() {
            *d = new.discovery_chap.clone();
        }
        Ok(report)
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
