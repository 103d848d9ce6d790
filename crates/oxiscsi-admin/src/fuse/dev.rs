//! /dev/fuse itself: open a connection, mount it (on a directory, or on a regular file
//! so that the mount point *is* the served file), read requests, write answers, unmount.
//! Linux only; mounting needs root (CAP_SYS_ADMIN).

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use bytes::BytesMut;

use super::abi;

/// Open a new FUSE connection; a `nonblocking` one is waited on with poll(2).
pub fn open(nonblocking: bool) -> Result<OwnedFd, String> {
    let path = c"/dev/fuse";
    let flags = libc::O_RDWR | libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 };
    // SAFETY: opens a NUL-terminated path; the descriptor is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return Err(format!(
            "cannot open /dev/fuse: {} (is the fuse module loaded? are we root?)",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: a descriptor just returned by open(2), owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("NUL byte in {s:?}"))
}

/// What the mount's root is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// A directory (the mount point is a directory).
    Dir,
    /// A regular file (the mount point is a regular file): one file per connection.
    File,
}

/// Mount connection `dev` on `at` as filesystem type `fuse.<name>` (source `name`),
/// nosuid, nodev, noexec, other users allowed (the loop driver opens it as root anyway).
pub fn mount(at: &Path, dev: RawFd, name: &str, root: Root) -> Result<(), String> {
    let rootmode = match root {
        Root::Dir => "40000",
        Root::File => "100000",
    };
    let opts = cstr(&format!(
        "fd={dev},rootmode={rootmode},user_id=0,group_id=0,allow_other"
    ))?;
    let target = cstr(&at.to_string_lossy())?;
    let (src, fstype) = (cstr(name)?, cstr(&format!("fuse.{name}"))?);
    // SAFETY: all pointers are NUL-terminated strings alive for the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            opts.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(format!(
            "cannot mount FUSE on {}: {} (needs root and /dev/fuse)",
            at.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Unmount `at`; `lazy` detaches it now and lets the kernel take it down when its last
/// user is gone (MNT_DETACH). Err carries errno's words (EBUSY: still in use).
pub fn unmount(at: &Path, lazy: bool) -> Result<(), io::Error> {
    let target = CString::new(at.to_string_lossy().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a path"))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: a NUL-terminated path alive for the call.
    if unsafe { libc::umount2(target.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What one read of /dev/fuse gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// A request of this many bytes is at the start of the buffer.
    Request(usize),
    /// Nothing now (EAGAIN), or a request that went away before it was read (ENOENT,
    /// interrupted): poll again.
    Nothing,
    /// The connection is gone (unmounted or aborted).
    Gone,
}

/// Read one request into `buf` (cleared first; room for `capacity` bytes made).
pub fn read(dev: RawFd, buf: &mut BytesMut, capacity: usize) -> Result<Got, String> {
    buf.clear();
    buf.reserve(capacity);
    let spare = buf.spare_capacity_mut();
    // SAFETY: reads at most `spare.len()` bytes into the buffer's spare room.
    let n = unsafe { libc::read(dev, spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => Ok(Got::Nothing),
            Some(libc::ENODEV) => Ok(Got::Gone),
            _ => Err(format!("read from /dev/fuse: {e}")),
        };
    }
    if n == 0 {
        return Ok(Got::Gone);
    }
    // SAFETY: the kernel wrote `n` bytes into the spare room.
    unsafe { buf.set_len(n as usize) };
    Ok(Got::Request(n as usize))
}

/// Answer request `unique`: `error` 0 with the body's parts, or -errno with none. An
/// answer to a request that was interrupted meanwhile (ENOENT) is dropped quietly.
pub fn reply(dev: RawFd, unique: u64, error: i32, body: &[&[u8]]) -> Result<(), String> {
    let len: usize = body.iter().map(|b| b.len()).sum();
    let h = abi::out_header(unique, error, len);
    let mut iov = Vec::with_capacity(1 + body.len());
    iov.push(libc::iovec {
        iov_base: h.as_ptr() as *mut _,
        iov_len: h.len(),
    });
    for b in body.iter().filter(|b| !b.is_empty()) {
        iov.push(libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        });
    }
    loop {
        // SAFETY: every iovec points into a live buffer for the call; the kernel only
        // reads them.
        let r = unsafe { libc::writev(dev, iov.as_ptr(), iov.len() as libc::c_int) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Interrupted and forgotten, or the connection is gone: nobody waits.
            Some(libc::ENOENT | libc::ENODEV) => return Ok(()),
            _ => return Err(format!("answer to /dev/fuse: {e}")),
        }
    }
}

/// Answer with an error (`errno` positive, as libc names it).
pub fn reply_err(dev: RawFd, unique: u64, errno: i32) -> Result<(), String> {
    reply(dev, unique, -errno, &[])
}

/// Mount points under `dir` of FUSE filesystems named `name` (from
/// /proc/self/mountinfo), deepest first: what a daemon that died left behind.
pub fn mounts_under(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let fstype = format!("fuse.{name}");
    let mut found: Vec<std::path::PathBuf> = info
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let point = f.nth(4)?;
            let rest = l.split(" - ").nth(1)?;
            (rest.split(' ').next()? == fstype).then(|| unescape(point))
        })
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> std::path::PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(out).into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            super::unescape(r"/run/a\040b\134c"),
            std::path::PathBuf::from("/run/a b\\c")
        );
        assert_eq!(
            super::unescape(r"/x\04"),
            std::path::PathBuf::from(r"/x\04")
        );
    }
}
