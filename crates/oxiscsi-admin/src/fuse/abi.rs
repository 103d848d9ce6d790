//! The FUSE kernel protocol (include/uapi/linux/fuse.h, protocol 7.31): requests as
//! read from /dev/fuse decoded into [`Request`], and the answers a one-file filesystem
//! gives encoded. Little-endian, fixed layouts; every field is bounds-checked, so a
//! short or odd request is an error, not a panic.

use std::ops::Range;

/// `struct fuse_in_header`.
pub const IN_HEADER: usize = 40;
/// `struct fuse_out_header`.
pub const OUT_HEADER: usize = 16;
/// `struct fuse_write_in`: a WRITE's payload starts this far after the header.
pub const WRITE_IN: usize = 40;
/// The kernel needs every read buffer to hold this much besides max_write.
pub const MIN_READ_EXTRA: usize = 4096;
/// The root inode: here, the mounted file itself.
pub const ROOT: u64 = 1;

/// Protocol version we answer INIT with.
const MAJOR: u32 = 7;
const MINOR: u32 = 31;

// INIT flags (fuse.h).
const ASYNC_READ: u32 = 1 << 0;
const BIG_WRITES: u32 = 1 << 5;
const ASYNC_DIO: u32 = 1 << 15;
const MAX_PAGES: u32 = 1 << 22;
/// `FOPEN_DIRECT_IO`: no page cache for the file.
pub const FOPEN_DIRECT_IO: u32 = 1;

/// fallocate(2) modes.
pub const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
pub const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;

/// Opcodes (`enum fuse_opcode`) this server knows by name.
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const RELEASEDIR: u32 = 29;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
}

/// A request's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub opcode: u32,
    /// Names the request in its answer.
    pub unique: u64,
    pub nodeid: u64,
}

/// A decoded request. Payload positions are ranges into the buffer it was read into, so
/// a WRITE's data can be sliced out of that buffer without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Init {
        max_readahead: u32,
    },
    Lookup {
        name: Vec<u8>,
    },
    Getattr,
    Open,
    Opendir,
    Read {
        offset: u64,
        size: u32,
    },
    Write {
        offset: u64,
        data: Range<usize>,
    },
    Statfs,
    Release,
    Releasedir,
    Flush,
    Fsync,
    Fallocate {
        offset: u64,
        length: u64,
        mode: u32,
    },
    Destroy,
    /// FORGET, BATCH_FORGET, INTERRUPT: no answer is sent.
    NoReply,
    /// Anything else: answered ENOSYS, which the kernel remembers for most opcodes.
    Other(u32),
}

/// The little-endian u32 at byte `at`, or an error naming the spot.
pub fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| format!("FUSE request too short for a field at byte {at}"))
}

/// The little-endian u64 at byte `at`, or an error naming the spot.
pub fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| format!("FUSE request too short for a field at byte {at}"))
}

/// Decode one request (`buf` is exactly what one read of /dev/fuse returned).
pub fn parse(buf: &[u8]) -> Result<(Header, Request), String> {
    if buf.len() < IN_HEADER {
        return Err(format!(
            "FUSE request of {} bytes is shorter than its header",
            buf.len()
        ));
    }
    let len = u32_at(buf, 0)? as usize;
    if len != buf.len() {
        return Err(format!(
            "FUSE request says {len} bytes but {} were read",
            buf.len()
        ));
    }
    let h = Header {
        opcode: u32_at(buf, 4)?,
        unique: u64_at(buf, 8)?,
        nodeid: u64_at(buf, 16)?,
    };
    let a = IN_HEADER;
    let r = match h.opcode {
        op::INIT => Request::Init {
            max_readahead: u32_at(buf, a + 8)?,
        },
        op::LOOKUP => Request::Lookup {
            name: buf[a..]
                .split(|&c| c == 0)
                .next()
                .unwrap_or_default()
                .to_vec(),
        },
        op::GETATTR => Request::Getattr,
        op::OPEN => Request::Open,
        op::OPENDIR => Request::Opendir,
        op::READ => Request::Read {
            offset: u64_at(buf, a + 8)?,
            size: u32_at(buf, a + 16)?,
        },
        op::WRITE => {
            let size = u32_at(buf, a + 16)? as usize;
            let from = a + WRITE_IN;
            if buf.len() != from + size {
                return Err(format!(
                    "FUSE WRITE of {size} bytes in a request of {} bytes",
                    buf.len()
                ));
            }
            Request::Write {
                offset: u64_at(buf, a + 8)?,
                data: from..from + size,
            }
        }
        op::STATFS => Request::Statfs,
        op::RELEASE => Request::Release,
        op::RELEASEDIR => Request::Releasedir,
        op::FLUSH => Request::Flush,
        op::FSYNC => Request::Fsync,
        op::FALLOCATE => Request::Fallocate {
            offset: u64_at(buf, a + 8)?,
            length: u64_at(buf, a + 16)?,
            mode: u32_at(buf, a + 24)?,
        },
        op::DESTROY => Request::Destroy,
        op::FORGET | op::BATCH_FORGET | op::INTERRUPT => Request::NoReply,
        other => Request::Other(other),
    };
    Ok((h, r))
}

/// `struct fuse_out_header` for an answer of `body_len` bytes (`error` 0 or -errno).
pub fn out_header(unique: u64, error: i32, body_len: usize) -> [u8; OUT_HEADER] {
    let mut h = [0u8; OUT_HEADER];
    h[0..4].copy_from_slice(&((OUT_HEADER + body_len) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&error.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h
}

/// `struct fuse_init_out`: asynchronous reads and direct I/O (the loop driver keeps many
/// requests in flight), writes up to `max_write`, reads up to `max_read` (the kernel caps
/// both by max_pages, set from the larger), `max_background` requests queued.
pub fn init_out(max_readahead: u32, max_write: u32, max_read: u32, max_background: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend(MAJOR.to_le_bytes());
    out.extend(MINOR.to_le_bytes());
    out.extend(max_readahead.to_le_bytes());
    out.extend((ASYNC_READ | BIG_WRITES | ASYNC_DIO | MAX_PAGES).to_le_bytes());
    out.extend(max_background.to_le_bytes());
    out.extend((max_background / 4 * 3).to_le_bytes()); // congestion_threshold
    out.extend(max_write.to_le_bytes());
    out.extend(1u32.to_le_bytes()); // time_gran
    let max_pages = max_write
        .max(max_read)
        .div_ceil(4096)
        .min(u32::from(u16::MAX)) as u16;
    out.extend(max_pages.to_le_bytes());
    out.resize(64, 0);
    out
}

/// `struct fuse_attr` of a regular file (`mode` 0o100600) or directory (0o040755).
pub fn attr(out: &mut Vec<u8>, ino: u64, size: u64, mode: u32) {
    let dir = mode & 0o170000 == 0o040000;
    out.extend(ino.to_le_bytes());
    out.extend(size.to_le_bytes());
    out.extend(size.div_ceil(512).to_le_bytes());
    out.extend([0u8; 3 * 8 + 3 * 4]); // a/m/ctime and their nanoseconds
    for v in [mode, if dir { 2 } else { 1 }, 0, 0, 0, 4096, 0] {
        out.extend(v.to_le_bytes()); // mode nlink uid gid rdev blksize flags
    }
}

/// `struct fuse_attr_out`, valid for `valid_secs`.
pub fn attr_out(ino: u64, size: u64, mode: u32, valid_secs: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(104);
    out.extend(valid_secs.to_le_bytes());
    out.extend([0u8; 8]); // attr_valid_nsec, dummy
    attr(&mut out, ino, size, mode);
    out
}

/// `struct fuse_entry_out`, entry and attributes valid for `valid_secs`.
pub fn entry_out(ino: u64, size: u64, mode: u32, valid_secs: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend(ino.to_le_bytes());
    out.extend([0u8; 8]); // generation
    out.extend(valid_secs.to_le_bytes()); // entry_valid
    out.extend(valid_secs.to_le_bytes()); // attr_valid
    out.extend([0u8; 8]); // their nanoseconds
    attr(&mut out, ino, size, mode);
    out
}

/// `struct fuse_statfs_out` of a filesystem of `blocks` blocks of `bsize` bytes, all in
/// use. The loop driver offers discard over a file only when statfs answers, with
/// `bsize` as the discard granularity.
pub fn statfs_out(blocks: u64, bsize: u32) -> [u8; 80] {
    let mut out = [0u8; 80];
    out[0..8].copy_from_slice(&blocks.to_le_bytes());
    out[24..32].copy_from_slice(&1u64.to_le_bytes()); // files
    out[40..44].copy_from_slice(&bsize.to_le_bytes());
    out[44..48].copy_from_slice(&255u32.to_le_bytes()); // namelen
    out[48..52].copy_from_slice(&bsize.to_le_bytes()); // frsize
    out
}

/// `struct fuse_open_out` with `open_flags`.
pub fn open_out(open_flags: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[8..12].copy_from_slice(&open_flags.to_le_bytes());
    out
}

/// `struct fuse_write_out`.
pub fn write_out(size: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[0..4].copy_from_slice(&size.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(opcode: u32, unique: u64, args: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(((IN_HEADER + args.len()) as u32).to_le_bytes());
        b.extend(opcode.to_le_bytes());
        b.extend(unique.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend([0u8; 16]); // uid gid pid total_extlen padding
        b.extend(args);
        b
    }

    #[test]
    fn a_write_is_decoded_with_its_payload_in_place() {
        let mut args = Vec::new();
        args.extend(0u64.to_le_bytes()); // fh
        args.extend(4096u64.to_le_bytes()); // offset
        args.extend(3u32.to_le_bytes()); // size
        args.extend([0u8; 20]);
        args.extend(b"abc");
        let b = request(op::WRITE, 9, &args);
        let (h, r) = parse(&b).unwrap();
        assert_eq!(h.unique, 9);
        assert_eq!(h.nodeid, ROOT);
        let Request::Write { offset, data } = r else {
            panic!("{r:?}")
        };
        assert_eq!(offset, 4096);
        assert_eq!(&b[data], b"abc");
    }

    #[test]
    fn short_and_inconsistent_requests_are_errors() {
        assert!(parse(&[0u8; 10])
            .unwrap_err()
            .contains("shorter than its header"));
        let mut b = request(op::READ, 1, &[0u8; 40]);
        b.truncate(60);
        assert!(parse(&b).unwrap_err().contains("says 80 bytes"));
        let b = request(op::READ, 1, &[0u8; 8]);
        assert!(parse(&b).unwrap_err().contains("too short"));
        // A WRITE whose size field disagrees with what came.
        let mut args = vec![0u8; 40];
        args[16..20].copy_from_slice(&100u32.to_le_bytes());
        args.extend([1u8; 10]);
        let b = request(op::WRITE, 1, &args);
        assert!(parse(&b).unwrap_err().contains("WRITE of 100 bytes"));
    }

    #[test]
    fn fallocate_and_unknown_opcodes() {
        let mut args = Vec::new();
        args.extend(0u64.to_le_bytes());
        args.extend(512u64.to_le_bytes());
        args.extend(1024u64.to_le_bytes());
        args.extend(3u32.to_le_bytes());
        args.extend([0u8; 4]);
        let (_, r) = parse(&request(op::FALLOCATE, 2, &args)).unwrap();
        assert_eq!(
            r,
            Request::Fallocate {
                offset: 512,
                length: 1024,
                mode: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            }
        );
        assert_eq!(parse(&request(99, 3, &[])).unwrap().1, Request::Other(99));
        assert_eq!(
            parse(&request(op::FORGET, 3, &[0; 8])).unwrap().1,
            Request::NoReply
        );
    }

    #[test]
    fn answers_have_the_kernel_layouts() {
        assert_eq!(init_out(131072, 262144, 1 << 20, 256).len(), 64);
        assert_eq!(attr_out(1, 4096, 0o100600, 1).len(), 16 + 88);
        assert_eq!(entry_out(2, 4096, 0o100600, 1).len(), 40 + 88);
        let h = out_header(7, -5, 8);
        assert_eq!(u32::from_le_bytes(h[0..4].try_into().unwrap()), 24);
        assert_eq!(i32::from_le_bytes(h[4..8].try_into().unwrap()), -5);
        assert_eq!(u64::from_le_bytes(h[8..16].try_into().unwrap()), 7);
        let i = init_out(0, 262144, 1 << 20, 256);
        assert_eq!(u32::from_le_bytes(i[20..24].try_into().unwrap()), 262144); // max_write
        assert_eq!(u16::from_le_bytes(i[28..30].try_into().unwrap()), 256); // max_pages
    }
}
