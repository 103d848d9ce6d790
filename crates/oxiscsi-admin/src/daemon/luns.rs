//! Every logged-in LUN as a block device on the host, without a kernel initiator:
//! a FUSE file (`RUNDIR/luns/sid<S>-lun<L>`, a mount of its own on a regular file)
//! whose reads, writes, fsync and punch-hole become READ, WRITE, SYNCHRONIZE CACHE and
//! UNMAP (or WRITE SAME with UNMAP where unmapped blocks might not read back as zeros),
//! then a loop device over that file and a stable link in the style of
//! /dev/disk/by-path: `RUNDIR/by-path/ip-<ip>:<port>-iscsi-<iqn>-lun-<n>` -> `/dev/loopN`.
//!
//! Each LUN file is its own FUSE connection, served by its session's
//! [`Worker`] thread beside the session's socket: a slow or failed
//! session holds up only its own files. Writes are write-through: a write is answered
//! once the target has acknowledged it, so nothing sits in this process.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use oxiscsi_initiator::ops;

use super::conf::DaemonConf;
use super::loopdev::{self, LoopDevice};
use super::node::portal_string;
use super::worker::{LunFile, Worker};
use crate::fuse::dev;
use crate::ipc::{LunView, NodeRef};

/// The FUSE filesystem name (`fuse.oxiscsi` in /proc/mounts).
const FS_NAME: &str = "oxiscsi";

/// One LUN of a session as the daemon holds it.
pub struct Lun {
    pub lun: u16,
    peripheral_type: u8,
    vendor: String,
    product: String,
    block_size: u32,
    blocks: u64,
    /// The LUN file the worker serves, and its id there.
    served: Option<(u64, Arc<LunFile>)>,
    file: Option<PathBuf>,
    device: Option<LoopDevice>,
    by_path: Option<PathBuf>,
    /// `<by_path>-partM` links to the device's partitions.
    part_links: Vec<PathBuf>,
    /// "running", or why the LUN has no device.
    state: String,
}

/// Makes each LUN a FUSE file and a loop device, and takes them down again.
pub struct Attacher {
    /// Where the LUN files are (None: LUN devices are off).
    dir: Option<PathBuf>,
    by_path: PathBuf,
    next_id: AtomicU64,
    direct_io: bool,
    /// Why LUNs get no device (attach off, or no FUSE here).
    disabled: Option<String>,
    /// Serializes creating and mounting LUN files (two logins at once never race on
    /// one path).
    mounts: Mutex<()>,
}

impl Attacher {
    /// Prepare `RUNDIR/luns` (unless LUN attachment is off in the config), taking down
    /// what a daemon that died left there. Without FUSE the daemon works on without
    /// devices, and says why in every LUN.
    pub fn new(run: &Path, conf: &DaemonConf) -> Result<Attacher, String> {
        let mut a = Attacher {
            dir: None,
            by_path: run.join("by-path"),
            next_id: AtomicU64::new(1),
            direct_io: conf.direct_io,
            disabled: None,
            mounts: Mutex::new(()),
        };
        if !conf.attach_luns {
            a.disabled = Some("LUN devices are off (oxiscsid.luns.attach = No)".into());
            return Ok(a);
        }
        let dir = conf.lun_dir.clone().unwrap_or_else(|| run.join("luns"));
        for dev in loopdev::detach_stale(&dir) {
            tracing::warn!("detached {} left by a previous daemon", dev.display());
        }
        // A mount left by a daemon that died answers ENOTCONN: take it down first (the
        // directory itself, as daemons before per-file mounts had it, or any file in it).
        if std::fs::metadata(&dir).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN)) {
            tracing::warn!("{} is a dead FUSE mount; unmounting it", dir.display());
            lazy_unmount(&dir);
        }
        for m in dev::mounts_under(&dir, FS_NAME) {
            tracing::warn!(
                "{} was left mounted by a previous daemon; unmounting it",
                m.display()
            );
            lazy_unmount(&m);
            let _ = std::fs::remove_file(&m);
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        match dev::open(true) {
            Ok(_) => a.dir = Some(dir),
            Err(why) => {
                tracing::error!("{why}; sessions will have no LUN devices");
                a.disabled = Some(why);
            }
        }
        Ok(a)
    }

    /// REPORT LUNS, then INQUIRY and READ CAPACITY of each, and a device for each disk.
    pub async fn attach_all(&self, sid: u32, node: &NodeRef, session: &Worker) -> Vec<Lun> {
        let numbers = match ops::report_luns(session).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(sid, "REPORT LUNS failed: {e}; trying LUN 0 only");
                vec![0]
            }
        };
        let mut luns = Vec::new();
        for n in numbers {
            luns.push(self.attach(sid, node, session, n).await);
        }
        luns
    }

    async fn attach(&self, sid: u32, node: &NodeRef, session: &Worker, lun: u16) -> Lun {
        let mut l = Lun {
            lun,
            peripheral_type: 0x1f,
            vendor: String::new(),
            product: String::new(),
            block_size: 0,
            blocks: 0,
            served: None,
            file: None,
            device: None,
            by_path: None,
            part_links: Vec::new(),
            state: String::new(),
        };
        match ops::inquiry(session, lun).await {
            Ok(i) => {
                l.peripheral_type = i.device_type;
                l.vendor = i.vendor;
                l.product = i.product;
                if i.peripheral_qualifier != 0 {
                    l.state = "not connected (peripheral qualifier)".into();
                    return l;
                }
            }
            Err(e) => {
                l.state = format!("INQUIRY failed: {e}");
                return l;
            }
        }
        if l.peripheral_type != 0 {
            l.state = format!("not a disk (peripheral type {:#x})", l.peripheral_type);
            return l;
        }
        let cap = match ops::read_capacity(session, lun).await {
            Ok(c) => c,
            Err(e) => {
                l.state = format!("READ CAPACITY failed: {e}");
                return l;
            }
        };
        l.block_size = cap.block_size;
        l.blocks = cap.blocks();
        if let Some(why) = &self.disabled {
            l.state = why.clone();
            return l;
        }
        let Some(dir) = &self.dir else {
            l.state = "no LUN directory".into();
            return l;
        };
        let name = format!("sid{sid}-lun{lun}");
        let path = dir.join(&name);
        let file = Arc::new(LunFile {
            name: name.clone(),
            lun,
            block_size: cap.block_size,
            blocks: AtomicU64::new(cap.blocks()),
            unmap_zeroes: cap.lbpme && cap.lbprz,
            opens: AtomicU32::new(0),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.serve(&path, id, &file, session) {
            tracing::warn!(sid, lun, "{e}");
            l.state = format!("no device: {e}");
            return l;
        }
        l.served = Some((id, file));
        l.file = Some(path.clone());
        let (bs, dio) = (cap.block_size, self.direct_io);
        let attached = tokio::task::spawn_blocking(move || loopdev::attach(&path, bs, dio)).await;
        match attached {
            Ok(Ok(dev)) => {
                let link = self.by_path.join(by_path_name(node, lun));
                let _ = std::fs::create_dir_all(&self.by_path);
                let _ = std::fs::remove_file(&link);
                if let Err(e) = std::os::unix::fs::symlink(&dev.path, &link) {
                    tracing::warn!("cannot create {}: {e}", link.display());
                } else {
                    l.by_path = Some(link);
                }
                tracing::info!(sid, lun, device = %dev.path.display(), direct_io = dev.direct_io, "LUN attached");
                l.device = Some(dev);
                l.state = "running".into();
                self.link_partitions(&mut l, node);
            }
            Ok(Err(e)) => {
                tracing::warn!(sid, lun, "{e}");
                l.state = format!("file only: {e}");
            }
            Err(e) => l.state = format!("file only: {e}"),
        }
        l
    }

    /// Mount a FUSE connection on a new empty file at `path` and hand it to the
    /// session's worker, which answers its INIT when the file is first used.
    fn serve(&self, path: &Path, id: u64, file: &Arc<LunFile>, w: &Worker) -> Result<(), String> {
        let _g = self
            .mounts
            .lock()
            .map_err(|_| "lock poisoned".to_string())?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let fd = dev::open(true)?;
        if let Err(e) = dev::mount(
            path,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            FS_NAME,
            dev::Root::File,
        ) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        if let Err(e) = w.add_lun(id, fd, file.clone()) {
            let _ = dev::unmount(path, true);
            let _ = std::fs::remove_file(path);
            return Err(format!("{}: {e}", path.display()));
        }
        Ok(())
    }

    /// Point `<by-path link>-partM` at each partition the kernel found on the device
    /// (udev's by-path names for partitions), dropping links to partitions now gone.
    fn link_partitions(&self, l: &mut Lun, node: &NodeRef) {
        for link in l.part_links.drain(..) {
            let _ = std::fs::remove_file(link);
        }
        let Some(dev) = &l.device else { return };
        let base = by_path_name(node, l.lun);
        for (n, part) in dev.partitions() {
            let link = self.by_path.join(format!("{base}-part{n}"));
            let _ = std::fs::remove_file(&link);
            match std::os::unix::fs::symlink(&part, &link) {
                Ok(()) => l.part_links.push(link),
                Err(e) => tracing::warn!("cannot create {}: {e}", link.display()),
            }
        }
    }

    /// Why the LUN's device cannot be taken away now, if it cannot.
    pub fn busy(&self, l: &Lun) -> Option<String> {
        if let Some(d) = &l.device {
            if let Some(why) = d.busy() {
                return Some(why);
            }
        }
        let opens = l
            .served
            .as_ref()
            .map(|(_, f)| f.opens.load(Ordering::Relaxed))
            .unwrap_or(0);
        let ours = u32::from(l.device.is_some());
        if opens > ours {
            return Some(format!(
                "{} is open ({} user(s) besides the loop device)",
                l.file.as_deref().unwrap_or(Path::new("?")).display(),
                opens - ours
            ));
        }
        None
    }

    /// Write back, detach the loop device, drop the link and the file, and SYNCHRONIZE
    /// CACHE. Every step runs even if one fails; the failures are returned.
    pub async fn detach(&self, mut l: Lun, session: &Worker, force: bool) -> Result<(), String> {
        let mut problems = Vec::new();
        for link in l.part_links.drain(..).chain(l.by_path.take()) {
            let _ = std::fs::remove_file(link);
        }
        if let Some(dev) = l.device.take() {
            let path = dev.path.clone();
            let r = tokio::task::spawn_blocking(move || {
                let synced = dev.sync();
                let detached = dev.detach();
                (synced, detached)
            })
            .await;
            match r {
                Ok((s, d)) => {
                    if let Err(e) = s {
                        problems.push(e);
                    }
                    if let Err(e) = d {
                        problems.push(e);
                    }
                }
                Err(e) => problems.push(format!("detach {}: {e}", path.display())),
            }
            if force {
                tracing::warn!(device = %path.display(), "forced logout: the device is detached when its last user closes it; I/O after now fails");
            }
        }
        if let Some((id, _)) = l.served.take() {
            // Unmount, lazily if a user still has the file open (only when forced: the
            // loop device is gone by now, and logout refused otherwise); then the worker
            // closes the connection, and that user's I/O fails from then on.
            if let Some(path) = l.file.take() {
                let r = tokio::task::spawn_blocking(move || {
                    let r = match dev::unmount(&path, false) {
                        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                            tracing::warn!("{} is still open; detaching it lazily", path.display());
                            dev::unmount(&path, true)
                        }
                        r => r,
                    };
                    let r = r.map_err(|e| format!("cannot unmount {}: {e}", path.display()));
                    let _ = std::fs::remove_file(&path);
                    r
                })
                .await;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => problems.push(e),
                    Err(e) => problems.push(format!("unmount: {e}")),
                }
            }
            session.remove_lun(id).await;
        }
        if l.block_size != 0 && session.closed_reason().is_none() {
            if let Err(e) = ops::flush(session, l.lun).await {
                problems.push(format!("SYNCHRONIZE CACHE of LUN {}: {e}", l.lun));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// REPORT LUNS again: new LUNs are attached, vanished ones detached, capacity
    /// changes applied to the files.
    pub async fn rescan(
        &self,
        sid: u32,
        node: &NodeRef,
        session: &Worker,
        old: Vec<Lun>,
    ) -> (Vec<Lun>, Option<String>) {
        let numbers = match ops::report_luns(session).await {
            Ok(n) => n,
            Err(e) => return (old, Some(format!("REPORT LUNS failed: {e}"))),
        };
        let mut kept = Vec::new();
        let mut err = None;
        for mut l in old {
            if numbers.contains(&l.lun) {
                if l.block_size != 0 {
                    if let Ok(c) = ops::read_capacity(session, l.lun).await {
                        if c.blocks() != l.blocks {
                            tracing::info!(
                                sid,
                                lun = l.lun,
                                old = l.blocks,
                                new = c.blocks(),
                                "capacity changed"
                            );
                            l.blocks = c.blocks();
                            if let Some((_, f)) = &l.served {
                                f.blocks.store(c.blocks(), Ordering::Relaxed);
                            }
                        }
                    }
                }
                // Pick up partition tables written since (as partprobe would; EBUSY while
                // a partition is in use leaves the kernel's view, and the links, as is).
                if let Some(dev) = l.device.as_ref().and_then(|d| d.try_clone().ok()) {
                    if let Ok(Err(e)) =
                        tokio::task::spawn_blocking(move || dev.reread_partitions()).await
                    {
                        tracing::debug!(sid, lun = l.lun, "{e}");
                    }
                }
                self.link_partitions(&mut l, node);
                kept.push(l);
            } else {
                tracing::info!(sid, lun = l.lun, "LUN is gone; detaching");
                if let Err(e) = self.detach(l, session, true).await {
                    err.get_or_insert(e);
                }
            }
        }
        for n in numbers {
            if !kept.iter().any(|l| l.lun == n) {
                kept.push(self.attach(sid, node, session, n).await);
            }
        }
        kept.sort_by_key(|l| l.lun);
        (kept, err)
    }

    pub fn view(&self, l: &Lun) -> LunView {
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        LunView {
            lun: l.lun,
            peripheral_type: l.peripheral_type,
            vendor: l.vendor.clone(),
            product: l.product.clone(),
            block_size: l.block_size,
            blocks: l.blocks,
            file: s(&l.file),
            device: l
                .device
                .as_ref()
                .map(|d| d.path.display().to_string())
                .unwrap_or_default(),
            by_path: s(&l.by_path),
            partitions: l
                .device
                .as_ref()
                .map(|d| {
                    d.partitions()
                        .into_iter()
                        .map(|(_, p)| p.display().to_string())
                        .collect()
                })
                .unwrap_or_default(),
            state: l.state.clone(),
        }
    }

    /// After every session is gone: lazily unmount any LUN file still mounted (a
    /// detach that failed half way), so no dead mount ("Transport endpoint is not
    /// connected") is left behind.
    pub fn shutdown(&self) {
        let Some(dir) = &self.dir else { return };
        for m in dev::mounts_under(dir, FS_NAME) {
            tracing::warn!(
                "{} is still mounted at shutdown; detaching it lazily",
                m.display()
            );
            lazy_unmount(&m);
            let _ = std::fs::remove_file(&m);
        }
    }
}

/// `umount -l`: detach the mount now, tear it down when its last user is gone.
fn lazy_unmount(mount: &Path) {
    if let Err(e) = dev::unmount(mount, true) {
        tracing::warn!("umount -l {} failed: {e}", mount.display());
    }
}

/// `ip-<ip>:<port>-iscsi-<iqn>-lun-<n>`, as udev names /dev/disk/by-path links.
pub fn by_path_name(node: &NodeRef, lun: u16) -> String {
    format!(
        "ip-{}-iscsi-{}-lun-{lun}",
        portal_string(&node.address, node.port),
        node.target
    )
}
