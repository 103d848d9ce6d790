//! Every logged-in LUN as a block device on the host, without a kernel initiator:
//! a file on one FUSE mount (`RUNDIR/luns/sid<S>-lun<L>`) whose reads, writes, fsync
//! and punch-hole become READ, WRITE, SYNCHRONIZE CACHE and UNMAP (or WRITE SAME with
//! UNMAP where unmapped blocks might not read back as zeros), then a loop device over
//! that file and a stable link in the style of /dev/disk/by-path:
//! `RUNDIR/by-path/ip-<ip>:<port>-iscsi-<iqn>-lun-<n>` -> `/dev/loopN`.
//!
//! FUSE requests arrive on fuser's thread; each is answered from a task on the daemon's
//! runtime, so many are in flight at once (the kernel sends them asynchronously) and
//! the FUSE thread never waits for the network. Writes are write-through: a write is
//! answered once the target has acknowledged it, so nothing sits in this process.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, WriteFlags,
};
use oxiscsi_initiator::Session;

use super::conf::DaemonConf;
use super::loopdev::{self, LoopDevice};
use super::node::portal_string;
use crate::ipc::{LunView, NodeRef};

const TTL: Duration = Duration::from_secs(1);
/// Largest single FUSE read/write (and so SCSI command) the kernel sends us.
const MAX_IO: u32 = 1 << 20;
/// Asynchronous FUSE requests the kernel keeps in flight (see `init`).
const MAX_BACKGROUND: u16 = 256;
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;

/// One LUN file on the FUSE mount.
struct LunFile {
    name: String,
    session: Session,
    lun: u16,
    block_size: u32,
    blocks: AtomicU64,
    /// Unmapped blocks read back as zeros (LBPME and LBPRZ), so UNMAP can punch holes.
    unmap_zeroes: bool,
    opens: AtomicU32,
    /// Whole-block writes hold it shared, a read-modify-write of a partial block
    /// exclusively: with asynchronous direct I/O many writes are in flight, and one
    /// that lands between an RMW's read and its write-back would otherwise be undone.
    rmw: tokio::sync::RwLock<()>,
}

impl LunFile {
    fn size(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed) * u64::from(self.block_size)
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let size = self.size();
        file_attr(ino, size, FileType::RegularFile, 0o600)
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Bytes, String> {
        let bs = u64::from(self.block_size);
        let first = offset / bs;
        let last = (offset + len).div_ceil(bs);
        let blocks = u32::try_from(last - first).map_err(|_| "read too large".to_string())?;
        let data = self
            .session
            .read(self.lun, first, blocks)
            .await
            .map_err(|e| e.to_string())?;
        let start = usize::try_from(offset - first * bs).map_err(|_| "offset".to_string())?;
        let end = start + usize::try_from(len).map_err(|_| "length".to_string())?;
        if data.len() < end {
            return Err(format!("short read: {} of {end} bytes", data.len()));
        }
        Ok(data.slice(start..end))
    }

    async fn write(&self, offset: u64, data: Bytes) -> Result<(), String> {
        let bs = u64::from(self.block_size);
        let len = data.len() as u64;
        if offset.is_multiple_of(bs) && len.is_multiple_of(bs) {
            let _g = self.rmw.read().await;
            return self
                .session
                .write(self.lun, offset / bs, data)
                .await
                .map_err(|e| e.to_string());
        }
        // A partial block: read the covering blocks, patch, write back.
        let _g = self.rmw.write().await;
        let first = offset / bs;
        let last = (offset + len).div_ceil(bs);
        let blocks = u32::try_from(last - first).map_err(|_| "write too large".to_string())?;
        let old = self
            .session
            .read(self.lun, first, blocks)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = BytesMut::from(&old[..]);
        let start = usize::try_from(offset - first * bs).map_err(|_| "offset".to_string())?;
        if buf.len() < start + data.len() {
            return Err("short read during read-modify-write".into());
        }
        buf[start..start + data.len()].copy_from_slice(&data);
        self.session
            .write(self.lun, first, buf.freeze())
            .await
            .map_err(|e| e.to_string())
    }

    /// Deallocate `[offset, offset+len)` so it reads back as zeros: whole blocks by
    /// UNMAP (or WRITE SAME with UNMAP), partial blocks by writing zeros.
    async fn punch(&self, offset: u64, len: u64) -> Result<(), String> {
        let bs = u64::from(self.block_size);
        let end = (offset + len).min(self.size());
        if offset >= end {
            return Ok(());
        }
        let first_full = offset.div_ceil(bs);
        let last_full = end / bs;
        if offset < first_full * bs {
            let to = (first_full * bs).min(end);
            self.write(offset, Bytes::from(vec![0u8; (to - offset) as usize]))
                .await?;
        }
        if last_full > first_full {
            let mut lba = first_full;
            while lba < last_full {
                let n = (last_full - lba).min(1 << 22) as u32;
                let r = if self.unmap_zeroes {
                    self.session.unmap(self.lun, &[(lba, n)]).await
                } else {
                    let zero = Bytes::from(vec![0u8; self.block_size as usize]);
                    self.session.write_same(self.lun, lba, n, zero, true).await
                };
                r.map_err(|e| e.to_string())?;
                lba += u64::from(n);
            }
        }
        if last_full * bs < end && last_full >= first_full {
            let from = (last_full * bs).max(offset);
            self.write(from, Bytes::from(vec![0u8; (end - from) as usize]))
                .await?;
        }
        Ok(())
    }
}

fn file_attr(ino: u64, size: u64, kind: FileType, perm: u16) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

type Files = Arc<RwLock<BTreeMap<u64, Arc<LunFile>>>>;

/// The FUSE filesystem: a flat directory of LUN files.
struct LunFs {
    files: Files,
    rt: tokio::runtime::Handle,
}

impl LunFs {
    fn get(&self, ino: INodeNo) -> Option<Arc<LunFile>> {
        self.files.read().ok()?.get(&u64::from(ino)).cloned()
    }
}

fn eio(what: &str, f: &LunFile, e: &str) -> Errno {
    tracing::error!(file = %f.name, lun = f.lun, "{what} failed: {e}");
    Errno::EIO
}

impl Filesystem for LunFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        // The loop device submits asynchronous direct I/O, which FUSE counts as
        // background requests; fuser's default of 16 would cap a QD32 workload at 16
        // in flight. Let the kernel queue as many as a session takes (cmds_max).
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND / 4 * 3);
        // Without FUSE_ASYNC_DIO the kernel makes each asynchronous direct I/O of the
        // loop driver a synchronous FUSE request: one in flight per loop worker.
        if let Err(e) = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO) {
            tracing::warn!("kernel FUSE without async direct I/O ({e:?}): one request at a time per loop worker");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if u64::from(parent) != 1 {
            return reply.error(Errno::ENOENT);
        }
        let found = self.files.read().ok().and_then(|m| {
            m.iter()
                .find(|(_, f)| OsStr::new(&f.name) == name)
                .map(|(i, f)| f.attr(*i))
        });
        match found {
            Some(a) => reply.entry(&TTL, &a, fuser::Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if u64::from(ino) == 1 {
            return reply.attr(&TTL, &file_attr(1, 0, FileType::Directory, 0o755));
        }
        match self.get(ino) {
            Some(f) => reply.attr(&TTL, &f.attr(u64::from(ino))),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.get(ino) {
            Some(f) => {
                f.opens.fetch_add(1, Ordering::Relaxed);
                // No page cache here: the loop device (or the caller) caches, and every
                // write reaches the target before it is acknowledged.
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(f) = self.get(ino) {
            f.opens.fetch_sub(1, Ordering::Relaxed);
        }
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(f) = self.get(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let total = f.size();
        if offset >= total || size == 0 {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(total - offset);
        self.rt.spawn(async move {
            match f.read(offset, len).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(eio("read", &f, &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(f) = self.get(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let len = data.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > f.size()) {
            // A LUN does not grow.
            return reply.error(Errno::ENOSPC);
        }
        let data = Bytes::copy_from_slice(data);
        self.rt.spawn(async move {
            match f.write(offset, data).await {
                Ok(()) => reply.written(len as u32),
                Err(e) => reply.error(eio("write", &f, &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes are write-through; close has nothing to push.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(f) = self.get(ino) else {
            return reply.error(Errno::ENOENT);
        };
        self.rt.spawn(async move {
            match f.session.flush(f.lun).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(eio("SYNCHRONIZE CACHE", &f, &e.to_string())),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(f) = self.get(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if mode == 0 || mode == FALLOC_FL_KEEP_SIZE {
            // Allocation inside a fixed-size LUN: nothing to do; beyond it, no room.
            if offset.saturating_add(length) > f.size() && mode == 0 {
                return reply.error(Errno::ENOSPC);
            }
            return reply.ok();
        }
        if mode != (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        self.rt.spawn(async move {
            match f.punch(offset, length).await {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::warn!(file = %f.name, "punch hole: {e}");
                    reply.error(Errno::EOPNOTSUPP)
                }
            }
        });
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // No extended attributes (asked for security labels on every open).
        reply.error(Errno::NO_XATTR);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if u64::from(ino) != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (1, FileType::Directory, ".".into()),
            (1, FileType::Directory, "..".into()),
        ];
        if let Ok(m) = self.files.read() {
            for (i, f) in m.iter() {
                entries.push((*i, FileType::RegularFile, f.name.clone()));
            }
        }
        for (n, (i, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), (n + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}

/// One LUN of a session as the daemon holds it.
pub struct Lun {
    pub lun: u16,
    peripheral_type: u8,
    vendor: String,
    product: String,
    block_size: u32,
    blocks: u64,
    ino: Option<u64>,
    file: Option<PathBuf>,
    device: Option<LoopDevice>,
    by_path: Option<PathBuf>,
    /// `<by_path>-partM` links to the device's partitions.
    part_links: Vec<PathBuf>,
    /// "running", or why the LUN has no device.
    state: String,
}

/// Mounts the FUSE filesystem once and attaches/detaches LUNs on it.
pub struct Attacher {
    files: Files,
    mount: Option<PathBuf>,
    by_path: PathBuf,
    session: std::sync::Mutex<Option<fuser::BackgroundSession>>,
    next_ino: AtomicU64,
    direct_io: bool,
    /// Why LUNs get no device (attach off, or the FUSE mount failed).
    disabled: Option<String>,
}

impl Attacher {
    /// Mount `RUNDIR/luns` (unless LUN attachment is off in the config). A mount that
    /// fails leaves the daemon working without devices, and says why in every LUN.
    pub fn new(run: &Path, conf: &DaemonConf) -> Result<Attacher, String> {
        let files: Files = Arc::default();
        let by_path = run.join("by-path");
        let mut a = Attacher {
            files: files.clone(),
            mount: None,
            by_path,
            session: std::sync::Mutex::new(None),
            next_ino: AtomicU64::new(2),
            direct_io: conf.direct_io,
            disabled: None,
        };
        if !conf.attach_luns {
            a.disabled = Some("LUN devices are off (oxiscsid.luns.attach = No)".into());
            return Ok(a);
        }
        let mount = conf.lun_dir.clone().unwrap_or_else(|| run.join("luns"));
        for dev in loopdev::detach_stale(&mount) {
            tracing::warn!("detached {} left by a previous daemon", dev.display());
        }
        // A mount left by a daemon that died answers ENOTCONN: take it down first.
        if std::fs::metadata(&mount).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN)) {
            tracing::warn!("{} is a dead FUSE mount; unmounting it", mount.display());
            lazy_unmount(&mount);
        }
        std::fs::create_dir_all(&mount)
            .map_err(|e| format!("cannot create {}: {e}", mount.display()))?;
        let rt = tokio::runtime::Handle::current();
        let fs = LunFs { files, rt };
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName("oxiscsi".into()),
            fuser::MountOption::Subtype("oxiscsi".into()),
            fuser::MountOption::NoExec,
            fuser::MountOption::NoSuid,
            fuser::MountOption::NoDev,
        ];
        match fuser::spawn_mount(fs, &mount, &cfg) {
            Ok(s) => {
                *a.session
                    .get_mut()
                    .map_err(|_| "lock poisoned".to_string())? = Some(s);
                a.mount = Some(mount);
            }
            Err(e) => {
                let why = format!(
                    "cannot mount the LUN filesystem on {}: {e} (needs /dev/fuse and root)",
                    mount.display()
                );
                tracing::error!("{why}; sessions will have no LUN devices");
                a.disabled = Some(why);
            }
        }
        Ok(a)
    }

    /// REPORT LUNS, then INQUIRY and READ CAPACITY of each, and a device for each disk.
    pub async fn attach_all(&self, sid: u32, node: &NodeRef, session: &Session) -> Vec<Lun> {
        let numbers = match session.report_luns().await {
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

    async fn attach(&self, sid: u32, node: &NodeRef, session: &Session, lun: u16) -> Lun {
        let mut l = Lun {
            lun,
            peripheral_type: 0x1f,
            vendor: String::new(),
            product: String::new(),
            block_size: 0,
            blocks: 0,
            ino: None,
            file: None,
            device: None,
            by_path: None,
            part_links: Vec::new(),
            state: String::new(),
        };
        match session.inquiry(lun).await {
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
        let cap = match session.read_capacity(lun).await {
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
        let Some(mount) = &self.mount else {
            l.state = "no LUN filesystem".into();
            return l;
        };
        let name = format!("sid{sid}-lun{lun}");
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(LunFile {
            name: name.clone(),
            session: session.clone(),
            lun,
            block_size: cap.block_size,
            blocks: AtomicU64::new(cap.blocks()),
            unmap_zeroes: cap.lbpme && cap.lbprz,
            opens: AtomicU32::new(0),
            rmw: tokio::sync::RwLock::new(()),
        });
        if let Ok(mut m) = self.files.write() {
            m.insert(ino, file);
        }
        l.ino = Some(ino);
        let path = mount.join(&name);
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
            .ino
            .and_then(|i| self.files.read().ok()?.get(&i).cloned())
            .map(|f| f.opens.load(Ordering::Relaxed))
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
    pub async fn detach(&self, mut l: Lun, session: &Session, force: bool) -> Result<(), String> {
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
        if let Some(ino) = l.ino.take() {
            if let Ok(mut m) = self.files.write() {
                m.remove(&ino);
            }
        }
        if l.block_size != 0 && session.closed_reason().is_none() {
            if let Err(e) = session.flush(l.lun).await {
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
        session: &Session,
        old: Vec<Lun>,
    ) -> (Vec<Lun>, Option<String>) {
        let numbers = match session.report_luns().await {
            Ok(n) => n,
            Err(e) => return (old, Some(format!("REPORT LUNS failed: {e}"))),
        };
        let mut kept = Vec::new();
        let mut err = None;
        for mut l in old {
            if numbers.contains(&l.lun) {
                if l.block_size != 0 {
                    if let Ok(c) = session.read_capacity(l.lun).await {
                        if c.blocks() != l.blocks {
                            tracing::info!(
                                sid,
                                lun = l.lun,
                                old = l.blocks,
                                new = c.blocks(),
                                "capacity changed"
                            );
                            l.blocks = c.blocks();
                            if let Some(f) =
                                l.ino.and_then(|i| self.files.read().ok()?.get(&i).cloned())
                            {
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

    /// Unmount the LUN filesystem (after every session is gone). When it is still busy
    /// (a process that had a loop device open when the daemon was told to stop keeps the
    /// detached device, and so its file, open until it exits), detach it lazily: the
    /// kernel takes it down once the last user is gone, instead of the daemon leaving a
    /// dead mount ("Transport endpoint is not connected") that `rm -rf` cannot remove.
    pub fn shutdown(&self) {
        if let Ok(mut s) = self.session.lock() {
            if let Some(s) = s.take() {
                if let Err(e) = s.umount_and_join() {
                    tracing::warn!("unmounting the LUN filesystem: {e}; detaching it lazily");
                    if let Some(mount) = &self.mount {
                        lazy_unmount(mount);
                    }
                }
            }
        }
    }
}

/// `umount -l`: detach the mount now, tear it down when its last user is gone.
fn lazy_unmount(mount: &Path) {
    match std::process::Command::new("umount")
        .arg("-l")
        .arg(mount)
        .status()
    {
        Ok(st) if st.success() => {}
        Ok(st) => tracing::warn!("umount -l {} failed ({st})", mount.display()),
        Err(e) => tracing::warn!("cannot run umount -l {}: {e}", mount.display()),
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
