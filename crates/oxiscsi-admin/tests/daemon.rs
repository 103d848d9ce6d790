//! oxiscsid + oxiscsiadm end to end: each test runs its own daemon under a temp --root
//! against our target (in this process) or a real tgtd, and uses the LUNs as block
//! devices (FUSE file + loop device). Needs root, /dev/fuse and loop devices.

#[path = "../../oxiscsi-cli/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxiscsi_target::config::{Backing, LunSpec, TargetSpec};
use oxiscsi_target::{Server, ServerHandle, TargetConfig};

const IQN: &str = "iqn.2026-11.test:daemon";

/// A daemon under its own root; SIGTERM (log out, detach, unmount) on drop.
struct Daemon {
    child: Option<Child>,
    root: PathBuf,
}

impl Daemon {
    fn start(root: &Path) -> Daemon {
        std::fs::create_dir_all(root).unwrap();
        let log = std::fs::File::create(root.join("daemon.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_oxiscsid"))
            .args(["-f", "-d", "1", "--root"])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon {
            child: Some(child),
            root: root.to_path_buf(),
        };
        let sock = root.join("run/oxiscsid.sock");
        let deadline = Instant::now() + Duration::from_secs(15);
        while UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "oxiscsid did not start: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("daemon.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn adm(root: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_oxiscsiadm"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(root: &Path, args: &[&str]) -> String {
    let (code, out, err) = adm(root, args);
    assert_eq!(code, 0, "oxiscsiadm {args:?}: {out}{err}");
    out
}

/// `-m node [-T IQN] -o update -n KEY -v VALUE`.
fn set(root: &Path, iqn: Option<&str>, key: &str, value: &str) {
    let mut args = vec!["-m", "node"];
    if let Some(t) = iqn {
        args.extend(["-T", t]);
    }
    args.extend(["-o", "update", "-n", key, "-v", value]);
    ok(root, &args);
}

fn sh(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Our target on its own runtime (so the test thread may block on processes).
struct OurTarget {
    rt: tokio::runtime::Runtime,
    handle: Option<ServerHandle>,
    portal: String,
    cfg: TargetConfig,
}

impl OurTarget {
    fn start(dir: &Path) -> OurTarget {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = TargetConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            targets: vec![TargetSpec {
                iqn: IQN.into(),
                alias: None,
                luns: vec![LunSpec {
                    lun: 1,
                    backing: Backing::File {
                        path: dir.join("lun1.img"),
                        size: Some(64 << 20),
                    },
                    read_only: false,
                }],
                chap: None,
                mutual_chap: None,
                allow: Vec::new(),
                portal_groups: Vec::new(),
                redirect: None,
            }],
            ..TargetConfig::default()
        };
        let s = rt.block_on(Server::bind(cfg.clone())).unwrap();
        let portal = s.local_addrs()[0].to_string();
        let handle = rt.block_on(async { s.spawn() });
        OurTarget {
            rt,
            handle: Some(handle),
            portal,
            cfg,
        }
    }

    fn add_lun(&mut self, lun: u16) {
        let mut c = self.cfg.clone();
        c.targets[0].luns.push(LunSpec {
            lun,
            backing: Backing::Mem { size: 8 << 20 },
            read_only: false,
        });
        self.handle.as_ref().unwrap().reload(c.clone()).unwrap();
        self.cfg = c;
    }
}

impl Drop for OurTarget {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown_within(Duration::from_secs(2)));
        }
    }
}

fn device_of(root: &Path, portal: &str, iqn: &str, lun: u16) -> PathBuf {
    let link = root
        .join("run/by-path")
        .join(format!("ip-{portal}-iscsi-{iqn}-lun-{lun}"));
    std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()))
}

/// An MBR partition table with Linux partitions of (first sector, sectors).
fn write_mbr(dev: &Path, parts: &[(u32, u32)]) {
    let mut mbr = [0u8; 512];
    for (i, (first, sectors)) in parts.iter().enumerate() {
        let e = &mut mbr[446 + 16 * i..446 + 16 * (i + 1)];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&first.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let mut f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all(&mbr).unwrap();
    f.sync_all().unwrap();
}

fn checksum(data: &[u8]) -> u64 {
    // FNV-1a: enough to tell files apart.
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// 100 files of seeded data; returns (name, checksum).
fn write_files(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..100 {
        let len = 1000 + (i * 3571) % 60_000;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let name = format!("f{i:03}");
        let mut f = std::fs::File::create(dir.join(&name)).unwrap();
        f.write_all(&data).unwrap();
        out.push((name, checksum(&data)));
    }
    out
}

fn check_files(dir: &Path, sums: &[(String, u64)]) {
    for (name, sum) in sums {
        let data = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(checksum(&data), *sum, "{name} changed");
    }
}

struct Mount(PathBuf);

impl Mount {
    fn new(dev: &Path, at: &Path) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        sh("mount", &[dev.to_str().unwrap(), at.to_str().unwrap()]);
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `len` bytes at `offset` of a block device, read with O_DIRECT (past any cache).
fn read_direct(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    // O_DIRECT wants an aligned buffer: read into an aligned region of a larger one.
    let mut big = vec![0u8; len + 4096];
    let off = big.as_ptr().align_offset(4096);
    f.read_exact(&mut big[off..off + len]).unwrap();
    big[off..off + len].to_vec()
}

#[test]
fn our_target_discovery_login_filesystem_rescan_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut target = OurTarget::start(dir.path());
    let portal = target.portal.clone();
    let mut daemon = Daemon::start(&root);

    // Discovery writes the node record; login brings the LUN up as a loop device.
    let out = ok(&root, &["-m", "discovery", "-t", "st", "-p", &portal]);
    assert_eq!(out, format!("{portal},1 {IQN}\n"));
    let out = ok(&root, &["-m", "node", "-T", IQN, "-l"]);
    assert!(
        out.contains(&format!(
            "Login to [iface: default, target: {IQN}, portal: {}] successful.",
            portal.replace(':', ",")
        )),
        "{out}"
    );
    // A second -l: the session exists (15).
    let (code, _, err) = adm(&root, &["-m", "node", "-T", IQN, "-l"]);
    assert_eq!(code, 15, "{err}");
    let p0 = ok(&root, &["-m", "session"]);
    assert_eq!(p0, format!("tcp: [1] {portal},1 {IQN} (non-flash)\n"));
    let dev = device_of(&root, &portal, IQN, 1);
    let p3 = ok(&root, &["-m", "session", "-P", "3"]);
    let name = dev.file_name().unwrap().to_str().unwrap();
    assert!(
        p3.contains(&format!("Attached scsi disk {name}\t\tState: running")),
        "{p3}"
    );
    assert!(p3.contains("iSCSI Connection State: LOGGED IN"), "{p3}");
    assert!(p3.contains("MaxRecvDataSegmentLength: 262144"), "{p3}");
    assert!(p3.contains("Recovery Timeout: 120"), "{p3}");
    // The JSON view has the same facts.
    let js: serde_json::Value =
        serde_json::from_str(&ok(&root, &["-m", "session", "--json"])).unwrap();
    assert_eq!(js[0]["luns"][0]["device"], dev.to_str().unwrap());
    assert_eq!(js[0]["luns"][0]["blocks"], (64u64 << 20) / 512);

    // A file system on the loop device, 100 files, then logout refused while mounted.
    sh("mkfs.ext4", &["-q", "-F", dev.to_str().unwrap()]);
    let mnt = dir.path().join("mnt");
    let sums = {
        let m = Mount::new(&dev, &mnt);
        let sums = write_files(&m.0);
        sh("sync", &[]);
        let (code, _, err) = adm(&root, &["-m", "node", "-T", IQN, "-u"]);
        assert_eq!(code, 28, "{err}");
        assert!(err.contains("is mounted on"), "{err}");
        sums
    };
    ok(&root, &["-m", "node", "-T", IQN, "-u"]);
    assert!(!root.join("run/by-path").read_dir().unwrap().any(|_| true));
    let (code, _, err) = adm(&root, &["-m", "session"]);
    assert_eq!(code, 21, "{err}");

    // Log in again: the files are there, bit for bit.
    ok(&root, &["-m", "node", "-T", IQN, "-l"]);
    let dev = device_of(&root, &portal, IQN, 1);
    {
        let m = Mount::new(&dev, &mnt);
        check_files(&m.0, &sums);
    }

    // O_DIRECT through the loop device equals the LUN read by our initiator.
    let direct = read_direct(&dev, 0, 4 << 20);
    let via_initiator = target.rt.block_on(async {
        let s = oxiscsi_initiator::Session::connect(oxiscsi_initiator::SessionConfig::new(
            portal.clone(),
            IQN,
        ))
        .await
        .unwrap();
        let d = s.read(1, 0, (4 << 20) / 512).await.unwrap();
        s.logout().await.unwrap();
        d
    });
    assert!(
        direct == via_initiator[..],
        "O_DIRECT read differs from the LUN"
    );
    assert!(
        direct.iter().any(|b| *b != 0),
        "the file system should be there"
    );

    // Many writes in flight at once (the kernel's asynchronous direct I/O through
    // loop and FUSE), sizes 512 B to 1 MiB, each block checked afterwards by fio. The
    // file system is done with: this overwrites its second half.
    sh(
        "fio",
        &[
            "--name=verify",
            &format!("--filename={}", dev.display()),
            "--direct=1",
            "--ioengine=io_uring",
            "--rw=randwrite",
            "--bsrange=512-1m",
            "--iodepth=32",
            "--offset=32m",
            "--size=32m",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--randseed=7",
            "--output=/dev/null",
        ],
    );
    // A discard through the loop device punches the FUSE file (UNMAP at the target):
    // the range reads back as zeros, its neighbours are untouched.
    let before = read_direct(&dev, 31 << 20, 3 << 20);
    sh(
        "blkdiscard",
        &[
            "-f",
            "-o",
            &(32u64 << 20).to_string(),
            "-l",
            "1048576",
            dev.to_str().unwrap(),
        ],
    );
    let after = read_direct(&dev, 31 << 20, 3 << 20);
    assert!(
        after[1 << 20..2 << 20].iter().all(|b| *b == 0),
        "discarded range not zero"
    );
    assert_eq!(before[..1 << 20], after[..1 << 20]);
    assert_eq!(before[2 << 20..], after[2 << 20..]);

    // Statistics count what happened.
    let st = ok(&root, &["-m", "session", "-s"]);
    assert!(st.contains("iSCSI SNMP:"), "{st}");
    let pdus = |k: &str| -> u64 {
        st.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{k}: "))
                    .map(|v| v.parse().unwrap())
            })
            .unwrap()
    };
    assert!(
        pdus("scsicmd_pdus") > 10 && pdus("rxdata_octets") >= 4 << 20,
        "{st}"
    );

    // Rescan after the target gains a LUN: a second device appears.
    target.add_lun(2);
    let out = ok(&root, &["-m", "session", "-R"]);
    assert!(out.starts_with("Rescanning session [sid: 2,"), "{out}");
    let dev2 = device_of(&root, &portal, IQN, 2);
    assert!(dev2.exists());

    // A partition table written on the new LUN: a rescan re-reads it (as partprobe
    // would), each partition gets a by-path link named as udev names them (-partN), and
    // a partition in use keeps the session from logging out.
    write_mbr(&dev2, &[(2048, 8192), (10240, 4096)]);
    ok(&root, &["-m", "session", "-R"]);
    let dname = dev2.file_name().unwrap().to_str().unwrap().to_string();
    let part_link = |n: u32| {
        root.join("run/by-path")
            .join(format!("ip-{portal}-iscsi-{IQN}-lun-2-part{n}"))
    };
    let js: serde_json::Value =
        serde_json::from_str(&ok(&root, &["-m", "session", "--json"])).unwrap();
    if Path::new(&format!("/sys/block/{dname}/{dname}p1")).exists() {
        for (n, sectors) in [(1, 8192u64), (2, 4096)] {
            let link = part_link(n);
            let part =
                std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
            assert_eq!(part, PathBuf::from(format!("/dev/{dname}p{n}")));
            let size =
                std::fs::read_to_string(format!("/sys/block/{dname}/{dname}p{n}/size")).unwrap();
            assert_eq!(size.trim().parse::<u64>().unwrap(), sectors);
        }
        assert_eq!(
            js[0]["luns"][1]["partitions"],
            serde_json::json!([format!("/dev/{dname}p1"), format!("/dev/{dname}p2")])
        );
        let _held = std::fs::File::open(format!("/dev/{dname}p1")).unwrap();
        let (code, _, err) = adm(&root, &["-m", "node", "-T", IQN, "-u"]);
        assert_eq!(code, 28, "{err}");
        assert!(
            err.contains(&format!("{dname}p1 is open by process")),
            "{err}"
        );
    } else {
        // Some kernels parse no partition tables at all (this project's CI VM: no
        // CONFIG_MSDOS_PARTITION / CONFIG_EFI_PARTITION): then there is nothing to link.
        eprintln!("the kernel found no partitions on {dname}: partition links not checked");
        assert!(!part_link(1).exists());
        assert_eq!(js[0]["luns"][1]["partitions"], serde_json::json!([]));
    }

    // startup=automatic: the session comes back when the daemon restarts.
    set(&root, Some(IQN), "node.startup", "automatic");
    daemon.stop();
    assert!(
        !root.join("run/by-path").read_dir().unwrap().any(|_| true),
        "stop must detach"
    );
    let _daemon = Daemon::start(&root);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, _) = adm(&root, &["-m", "session"]);
        if code == 0 {
            assert!(out.contains(IQN));
            break;
        }
        assert!(Instant::now() < deadline, "automatic node did not log in");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&root, &["-m", "node", "-T", IQN, "-u"]);
    ok(&root, &["-m", "node", "-T", IQN, "-o", "delete"]);
    let (code, _, _) = adm(&root, &["-m", "node"]);
    assert_eq!(code, 21);
}

/// The LUN file itself, as any program may use it besides the loop device: writes of
/// partial blocks in flight at once into the same blocks (each a read-modify-write that
/// must not undo the other's), partial and whole-block writes from threads, punch-hole
/// of a range that starts and ends inside blocks, fsync, and the end of the LUN.
#[test]
fn lun_file_partial_writes_punch_fsync_and_end() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let target = OurTarget::start(dir.path());
    let root = dir.path().join("root");
    let _daemon = Daemon::start(&root);
    ok(
        &root,
        &["-m", "discovery", "-t", "st", "-p", &target.portal],
    );
    ok(&root, &["-m", "node", "-T", IQN, "-l"]);
    let js: serde_json::Value =
        serde_json::from_str(&ok(&root, &["-m", "session", "--json"])).unwrap();
    let path = PathBuf::from(js[0]["luns"][0]["file"].as_str().unwrap());
    let size = 64u64 << 20;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    let f = std::sync::Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap(),
    );

    // Many writes of 1000 bytes in flight at once (asynchronous direct I/O, as the loop
    // driver sends), so that neighbours share blocks: each block written by two at
    // once, each verified by fio afterwards.
    let file_arg = format!("--filename={}", path.display());
    sh(
        "fio",
        &[
            "--name=partial",
            &file_arg,
            "--direct=1",
            "--ioengine=io_uring",
            "--rw=randwrite",
            "--bs=1000",
            "--iodepth=32",
            "--offset=8m",
            "--size=2000000",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--randseed=11",
            "--output=/dev/null",
        ],
    );

    // Synchronous writes from threads (the kernel runs one at a time per file).
    const BLOCKS: u64 = 200;
    let partial = |at: u64, byte: u8| {
        let f = f.clone();
        std::thread::spawn(move || {
            for b in 0..BLOCKS {
                f.write_all_at(&[byte; 10], b * 512 + at).unwrap();
            }
        })
    };
    let whole = {
        let f = f.clone();
        std::thread::spawn(move || {
            for i in 0..BLOCKS {
                f.write_all_at(&[i as u8; 4096], (1 << 20) + i * 4096)
                    .unwrap();
            }
        })
    };
    for t in [partial(7, b'A'), partial(300, b'B'), whole] {
        t.join().unwrap();
    }
    let mut got = vec![0u8; (BLOCKS * 512) as usize];
    f.read_exact_at(&mut got, 0).unwrap();
    for b in 0..BLOCKS as usize {
        let blk = &got[b * 512..(b + 1) * 512];
        assert_eq!(
            &blk[7..17],
            &[b'A'; 10],
            "block {b}: a partial write was lost"
        );
        assert_eq!(
            &blk[300..310],
            &[b'B'; 10],
            "block {b}: a partial write was lost"
        );
    }
    let mut got = vec![0u8; (BLOCKS * 4096) as usize];
    f.read_exact_at(&mut got, 1 << 20).unwrap();
    for i in 0..BLOCKS as usize {
        assert!(got[i * 4096..(i + 1) * 4096].iter().all(|b| *b == i as u8));
    }

    // Punch a hole from inside one block to inside another.
    let base = 2u64 << 20;
    f.write_all_at(&[0xee; 8192], base).unwrap();
    rustix::fs::fallocate(
        &*f,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        base + 100,
        5000,
    )
    .unwrap();
    let mut got = vec![0u8; 8192];
    f.read_exact_at(&mut got, base).unwrap();
    assert!(got[..100].iter().all(|b| *b == 0xee));
    assert!(
        got[100..5100].iter().all(|b| *b == 0),
        "punched range not zero"
    );
    assert!(got[5100..].iter().all(|b| *b == 0xee));
    f.sync_all().unwrap();

    // The LUN does not grow: a write across its end is refused whole, a read there is
    // short.
    let e = f.write_at(&[1u8; 20], size - 10).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    let mut tail = [0u8; 20];
    assert_eq!(f.read_at(&mut tail, size - 10).unwrap(), 10);
    assert_eq!(f.read_at(&mut tail, size).unwrap(), 0);

    // Open by us: logout is refused until it is closed.
    let (code, _, err) = adm(&root, &["-m", "node", "-T", IQN, "-u"]);
    assert_eq!(code, 28, "{err}");
    drop(f);
    ok(&root, &["-m", "node", "-T", IQN, "-u"]);
    assert!(!path.exists(), "{} left behind", path.display());
}

/// SIGTERM while a process still holds a LUN's loop device open: the daemon logs out,
/// and the busy LUN filesystem is detached lazily instead of being left behind as a dead
/// mount ("Transport endpoint is not connected") that nothing can remove.
#[test]
fn sigterm_with_a_device_held_open_leaves_no_dead_mount() {
    let dir = tempfile::tempdir().unwrap();
    let target = OurTarget::start(dir.path());
    let root = dir.path().join("root");
    let mut daemon = Daemon::start(&root);
    ok(
        &root,
        &["-m", "discovery", "-t", "st", "-p", &target.portal],
    );
    ok(&root, &["-m", "node", "-T", IQN, "-l"]);
    let dev = device_of(&root, &target.portal, IQN, 1);
    let held = std::fs::File::open(&dev).unwrap();
    daemon.stop();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let luns = root.join("run/luns");
    assert!(
        !mounts.contains(luns.to_str().unwrap()),
        "{} is still mounted after the daemon stopped:\n{}",
        luns.display(),
        daemon.log()
    );
    assert!(daemon.log().contains("logged out"), "{}", daemon.log());
    drop(held);
}

#[test]
fn tgtd_login_devices_nr_sessions_and_logout() {
    let tgt = common::Tgtd::start();
    let files = tgt.target(1, common::IQN, &[32 << 20, 16 << 20]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let _daemon = Daemon::start(&root);
    let portal = tgt.portal();
    ok(
        &root,
        &["-m", "discovery", "-t", "sendtargets", "-p", &portal],
    );
    // Two sessions with distinct ISIDs (node.session.nr_sessions).
    set(&root, None, "node.session.nr_sessions", "2");
    ok(&root, &["-m", "node", "-l"]);
    let js: serde_json::Value =
        serde_json::from_str(&ok(&root, &["-m", "session", "--json"])).unwrap();
    let sessions = js.as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_ne!(sessions[0]["isid"], sessions[1]["isid"]);
    // tgtd's LUN 0 is a controller (no device); LUNs 1 and 2 are disks.
    for s in sessions {
        let luns = s["luns"].as_array().unwrap();
        assert_eq!(luns.len(), 3, "{s}");
        assert_eq!(luns[0]["device"], "");
        assert!(luns[1]["device"].as_str().unwrap().starts_with("/dev/loop"));
        assert_eq!(luns[2]["blocks"], (16u64 << 20) / 512);
    }
    // Write through the first session's LUN 1 device, read the backing file.
    let dev = PathBuf::from(sessions[0]["luns"][1]["device"].as_str().unwrap());
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let back = std::fs::read(&files[0]).unwrap();
    assert!(
        back[..1 << 20] == data[..],
        "tgtd's file must hold what the device got"
    );
    let p3 = ok(&root, &["-m", "session", "-P", "3"]);
    assert_eq!(p3.matches("Attached scsi disk loop").count(), 4, "{p3}");
    let out = ok(&root, &["-m", "node", "-u"]);
    assert_eq!(out.matches("successful.").count(), 2, "{out}");
}

#[test]
fn bad_input_daemon_down_bad_record_blackhole_and_raw_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // Daemon down: exit 20 with words.
    ok(
        &root,
        &["-m", "node", "-o", "new", "-T", IQN, "-p", "127.0.0.1:9"],
    );
    let (code, _, err) = adm(&root, &["-m", "session"]);
    assert_eq!(code, 20, "{err}");
    assert!(err.contains("can not connect to oxiscsid"), "{err}");
    let (code, _, err) = adm(&root, &["-m", "node", "-l"]);
    assert_eq!(code, 20, "{err}");
    // Unknown mode/flag: usage error 7.
    assert_eq!(adm(&root, &["-m", "bogus"]).0, 7);
    assert_eq!(adm(&root, &["-m", "session", "--frobnicate"]).0, 7);

    let _daemon = Daemon::start(&root);
    // A malformed record: the error names file and line; the daemon keeps running.
    let bad_iqn = "iqn.2026-11.test:broken";
    ok(
        &root,
        &[
            "-m",
            "node",
            "-o",
            "new",
            "-T",
            bad_iqn,
            "-p",
            "127.0.0.1:9,1",
        ],
    );
    let rec = root.join(format!("nodes/{bad_iqn}/127.0.0.1,9,1/default"));
    let text = std::fs::read_to_string(&rec).unwrap();
    std::fs::write(
        &rec,
        text.replace("node.startup = manual", "this is not a record line"),
    )
    .unwrap();
    let (code, _, err) = adm(&root, &["-m", "node", "-T", bad_iqn, "-l"]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("{}:", rec.display())), "{err}");
    // A bad value names the key.
    set(
        &root,
        Some(IQN),
        "node.session.iscsi.ImmediateData",
        "perhaps",
    );
    let (code, _, err) = adm(&root, &["-m", "node", "-T", IQN, "-l"]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("node.session.iscsi.ImmediateData"), "{err}");
    set(&root, Some(IQN), "node.session.iscsi.ImmediateData", "Yes");

    // A portal that accepts TCP but never answers the login: fails after the login
    // timeout (2 s here), the CLI returns with a clear message.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hp = hole.local_addr().unwrap().port().to_string();
    ok(
        &root,
        &[
            "-m",
            "node",
            "-o",
            "new",
            "-T",
            "iqn.2026-11.test:hole",
            "-p",
            &format!("127.0.0.1:{hp},1"),
        ],
    );
    set(
        &root,
        Some("iqn.2026-11.test:hole"),
        "node.conn[0].timeo.login_timeout",
        "2",
    );
    let t0 = Instant::now();
    let (code, _, err) = adm(&root, &["-m", "node", "-T", "iqn.2026-11.test:hole", "-l"]);
    let took = t0.elapsed();
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("no login response within"), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}"
    );
    drop(hole);

    // The raw protocol: one JSON object per line, versioned, errors carry codes.
    let mut s = UnixStream::connect(root.join("run/oxiscsid.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ask = |line: &str| -> serde_json::Value {
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        let mut a = String::new();
        r.read_line(&mut a).unwrap();
        serde_json::from_str(&a).unwrap()
    };
    let hello = ask(r#"{"version":1,"op":"hello"}"#);
    assert_eq!(hello["ok"], true);
    assert_eq!(hello["result"]["protocol"], 1);
    let newer = ask(r#"{"version":9,"op":"hello"}"#);
    assert_eq!(
        (newer["ok"].clone(), newer["code"].clone()),
        (false.into(), 7.into())
    );
    let junk = ask("not json");
    assert_eq!(junk["code"], 7);
    let none = ask(r#"{"version":1,"op":"logout","sid":99}"#);
    assert_eq!(none["code"], 2);
    let sessions = ask(r#"{"version":1,"op":"sessions"}"#);
    assert_eq!(sessions["result"], serde_json::json!([]));
}

#[test]
fn a_tree_written_by_open_iscsi_imports_and_logs_in_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let target = OurTarget::start(dir.path());
    let (host, port) = target.portal.rsplit_once(':').unwrap();
    // open-iscsi's own iscsiadm writes the records (no daemon needed for -o new/update),
    // into a private tmpfs over /etc/iscsi so the host's tree is untouched.
    let tree = dir.path().join("etc-iscsi");
    std::fs::create_dir_all(&tree).unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /etc/iscsi && \
         iscsiadm -m node -o new -T {IQN} -p {host}:{port},1 >/dev/null && \
         iscsiadm -m node -T {IQN} -o update -n node.startup -v automatic 2>/dev/null; \
         cp -a /etc/iscsi/. {}",
        tree.display()
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    assert!(
        o.status.success(),
        "iscsiadm (open-iscsi, installed by scripts/deps) must write the tree: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rec = tree.join(format!("nodes/{IQN}/{host},{port},1/default"));
    let text = std::fs::read_to_string(&rec).unwrap();
    assert!(text.contains("node.startup = automatic"), "{text}");

    let root = dir.path().join("root");
    let out = ok(&root, &["--import", tree.to_str().unwrap()]);
    assert!(out.starts_with("imported 1 record(s)"), "{out}");
    // The daemon logs the automatic node in by itself.
    let _daemon = Daemon::start(&root);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, _) = adm(&root, &["-m", "session"]);
        if code == 0 {
            assert_eq!(out, format!("tcp: [1] {host}:{port},1 {IQN} (non-flash)\n"));
            break;
        }
        assert!(Instant::now() < deadline, "imported node did not log in");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(device_of(&root, &target.portal, IQN, 1).exists());
    ok(&root, &["-m", "session", "-u"]);
}
