//! Loop devices over the LUN files (linux/loop.h ioctls): attach with a block size,
//! partition scanning (a partitioned LUN shows `loopNp1`.. as a disk shows `sdb1`..)
//! and, where the kernel allows it, direct I/O; detach; find who holds one.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_DIRECT_IO: libc::c_ulong = 0x4C08;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// `LO_FLAGS_PARTSCAN`: the kernel reads the partition table (loopNpM devices).
const LO_FLAGS_PARTSCAN: u32 = 8;
/// `BLKRRPART` (linux/fs.h): re-read the partition table.
const BLKRRPART: libc::c_ulong = 0x125F;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h, Linux 5.8+).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    /// Kept open so the device stays configured while we hold it.
    dev: File,
    pub direct_io: bool,
}

fn last_os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// An ioctl that takes no argument (LOOP_CLR_FD, BLKRRPART) on an open device.
fn ioctl_no_arg(dev: &File, request: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: `request` is one that takes no argument (the third is ignored and no
    // memory is passed); the fd is open for the duration of the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), request, 0 as libc::c_ulong) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Attach `file` to a free loop device with `block_size`-byte sectors; ask for direct
/// I/O when `direct_io` (kept only if the kernel accepts it for this file).
pub fn attach(file: &Path, block_size: u32, direct_io: bool) -> Result<LoopDevice, String> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| format!("cannot open /dev/loop-control: {e} (is the loop module loaded?)"))?;
    // Another process may take the device between GET_FREE and CONFIGURE (EBUSY): retry.
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1;
        // the fd is a valid open /dev/loop-control for the duration of the call.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(last_os_error("no free loop device (LOOP_CTL_GET_FREE)"));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if direct_io {
            opts.custom_flags(libc::O_DIRECT);
        }
        let backing = match opts.open(file) {
            Ok(f) => f,
            Err(_) if direct_io => OpenOptions::new()
                .read(true)
                .write(true)
                .open(file)
                .map_err(|e| format!("cannot open {}: {e}", file.display()))?,
            Err(e) => return Err(format!("cannot open {}: {e}", file.display())),
        };
        let mut name = [0u8; LO_NAME_SIZE];
        let fname = file.as_os_str().as_encoded_bytes();
        let n_copy = fname.len().min(LO_NAME_SIZE - 1);
        name[..n_copy].copy_from_slice(&fname[..n_copy]);
        let cfg = LoopConfig {
            fd: u32::try_from(backing.as_raw_fd())
                .map_err(|_| "bad file descriptor".to_string())?,
            block_size,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_PARTSCAN,
                lo_file_name: name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` lays out
        // exactly (repr(C), linux/loop.h); the pointer is valid for the call and the
        // kernel does not keep it.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(format!(
                "cannot attach {} to {}: {e} (LOOP_CONFIGURE needs Linux 5.8+)",
                file.display(),
                path.display()
            ));
        }
        let mut dio = false;
        if direct_io {
            // SAFETY: LOOP_SET_DIRECT_IO takes an integer argument (1 = on); the fd is
            // the loop device we just configured.
            let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_DIRECT_IO, 1 as libc::c_ulong) };
            dio = r == 0;
            if !dio {
                tracing::info!(
                    device = %path.display(),
                    "direct I/O refused by the kernel for this file ({}); using buffered I/O",
                    std::io::Error::last_os_error()
                );
            }
        }
        return Ok(LoopDevice {
            path,
            dev,
            direct_io: dio,
        });
    }
    Err("no free loop device after 8 attempts (others are taking them)".into())
}

impl LoopDevice {
    /// Write back what the kernel holds for the device (its page cache).
    pub fn sync(&self) -> Result<(), String> {
        self.dev
            .sync_all()
            .map_err(|e| format!("fsync {}: {e}", self.path.display()))
    }

    /// Detach. With the device still open elsewhere the kernel detaches it when the
    /// last user closes it (autoclear).
    pub fn detach(self) -> Result<(), String> {
        ioctl_no_arg(&self.dev, LOOP_CLR_FD)
            .map_err(|e| format!("cannot detach {}: {e}", self.path.display()))
    }

    /// Another handle on the same attached device, for a blocking call off the runtime.
    pub fn try_clone(&self) -> Result<LoopDevice, String> {
        Ok(LoopDevice {
            path: self.path.clone(),
            dev: self
                .dev
                .try_clone()
                .map_err(|e| format!("{}: {e}", self.path.display()))?,
            direct_io: self.direct_io,
        })
    }

    /// Ask the kernel to read the partition table again (after it was changed by a
    /// tool that did not, or on a rescan). Fails with EBUSY while a partition is in use.
    pub fn reread_partitions(&self) -> Result<(), String> {
        ioctl_no_arg(&self.dev, BLKRRPART).map_err(|e| {
            format!(
                "cannot re-read the partition table of {}: {e}",
                self.path.display()
            )
        })
    }

    /// The device's partitions as the kernel knows them: (number, `/dev/loopNpM`),
    /// in order.
    pub fn partitions(&self) -> Vec<(u32, PathBuf)> {
        match self.path.file_name() {
            Some(n) => partitions_in(Path::new("/sys/block"), &n.to_string_lossy()),
            None => Vec::new(),
        }
    }

    /// Who uses the device or one of its partitions besides us: a mount, a holder (dm,
    /// md) or a process that has it open. `None` when it is free.
    pub fn busy(&self) -> Option<String> {
        let name = self.path.file_name()?.to_string_lossy().into_owned();
        // The whole device and each partition, with its sysfs directory.
        let mut devs = vec![(
            self.path.clone(),
            PathBuf::from(format!("/sys/block/{name}")),
        )];
        for (_, p) in self.partitions() {
            // Every partition path names a node (`/dev/loopNpM`). Should one not, skip
            // it: returning early here would report the whole device free.
            let Some(pname) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            devs.push((p, PathBuf::from(format!("/sys/block/{name}/{pname}"))));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for (path, sys) in &devs {
            if let Some((maj, min)) = dev_id(path) {
                let id = format!("{maj}:{min}");
                for line in mountinfo.lines() {
                    let f: Vec<&str> = line.split(' ').collect();
                    if f.get(2) == Some(&id.as_str()) {
                        return Some(format!(
                            "{} is mounted on {}",
                            path.display(),
                            f.get(4).unwrap_or(&"?")
                        ));
                    }
                }
            }
            if let Ok(h) = std::fs::read_dir(sys.join("holders")) {
                if let Some(e) = h.flatten().next() {
                    return Some(format!(
                        "{} is held by {}",
                        path.display(),
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
        let me = std::process::id().to_string();
        for p in std::fs::read_dir("/proc").ok()?.flatten() {
            let pid = p.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(t) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                if let Some((path, _)) = devs.iter().find(|(d, _)| *d == t) {
                    let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                    return Some(format!(
                        "{} is open by process {pid} ({})",
                        path.display(),
                        comm.trim()
                    ));
                }
            }
        }
        None
    }
}

/// Partitions of block device `name` as listed under `sys_block` (/sys/block):
/// subdirectories named after the device with a `partition` number file.
fn partitions_in(sys_block: &Path, name: &str) -> Vec<(u32, PathBuf)> {
    let mut parts = Vec::new();
    let Ok(rd) = std::fs::read_dir(sys_block.join(name)) else {
        return parts;
    };
    for e in rd.flatten() {
        let part = e.file_name().to_string_lossy().into_owned();
        if !part.starts_with(name) {
            continue;
        }
        let Ok(n) = std::fs::read_to_string(e.path().join("partition")) else {
            continue;
        };
        if let Ok(n) = n.trim().parse::<u32>() {
            parts.push((n, PathBuf::from(format!("/dev/{part}"))));
        }
    }
    parts.sort();
    parts
}

/// `major:minor` of a device node.
fn dev_id(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(path).ok()?.rdev();
    Some((libc::major(rdev), libc::minor(rdev)))
}

/// Detach loop devices whose backing file lies under `dir` (left by a daemon that
/// was killed); returns the devices detached.
pub fn detach_stale(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return done;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        // The kernel may append " (deleted)".
        let backing = backing.trim().trim_end_matches(" (deleted)");
        if !Path::new(backing).starts_with(dir) {
            continue;
        }
        let path = PathBuf::from(format!("/dev/{name}"));
        let Ok(dev) = OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        if ioctl_no_arg(&dev, LOOP_CLR_FD).is_ok() {
            done.push(path);
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("loop3");
        for (d, n) in [("loop3p2", "2"), ("loop3p1", "1"), ("loop3p10", "10")] {
            std::fs::create_dir_all(dev.join(d)).unwrap();
            std::fs::write(dev.join(d).join("partition"), format!("{n}\n")).unwrap();
        }
        // Not partitions: attributes, queue/, holders/, a directory without a number.
        std::fs::create_dir_all(dev.join("queue")).unwrap();
        std::fs::create_dir_all(dev.join("loop3p9")).unwrap();
        std::fs::write(dev.join("size"), "16384\n").unwrap();
        assert_eq!(
            partitions_in(dir.path(), "loop3"),
            vec![
                (1, PathBuf::from("/dev/loop3p1")),
                (2, PathBuf::from("/dev/loop3p2")),
                (10, PathBuf::from("/dev/loop3p10")),
            ]
        );
        assert!(partitions_in(dir.path(), "loop4").is_empty());
    }
}
