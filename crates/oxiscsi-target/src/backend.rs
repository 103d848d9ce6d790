//! Where a logical unit's blocks live: a regular file or block device, or memory.
//! Every method is synchronous and reports the OS error; the LU maps it to sense.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use rustix::fs::FallocateFlags;

/// A logical unit's storage.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Size in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make every completed write durable (fdatasync).
    fn flush(&self) -> io::Result<()>;
    /// Deallocate a range; it reads back as zeros (UNMAP, WRITE SAME with UNMAP).
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// A stable description for logs and for deriving device identifiers.
    fn describe(&self) -> String;
    /// Allocation of `[offset, offset+len)`: runs of (start, length, mapped), in order,
    /// covering the range (GET LBA STATUS).
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64, bool)>>;
    /// True when an access can wait on a device (a disk, a network file system): such
    /// LUNs run their commands on a blocking thread pool, so a slow disk never stalls
    /// other connections. Memory and tmpfs/ramfs never wait.
    fn may_block(&self) -> bool {
        true
    }
}

/// Merge a per-chunk mapped/unmapped scan into runs.
fn runs(
    offset: u64,
    len: u64,
    chunk: u64,
    mut mapped: impl FnMut(u64, u64) -> bool,
) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let end = offset + len;
    let mut off = offset;
    while off < end {
        let n = chunk.min(end - off);
        let m = mapped(off, n);
        match out.last_mut() {
            Some(last) if last.2 == m => last.1 += n,
            _ => out.push((off, n, m)),
        }
        off += n;
    }
    out
}

/// A regular file or block device, read and written with pread/pwrite.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    len: u64,
    /// On tmpfs/ramfs: accesses never wait on a device.
    in_memory: bool,
}

/// tmpfs and ramfs magic numbers (statfs(2)): files there live in memory.
const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

impl FileBackend {
    /// Open `path`; create it sparse at `size` bytes if missing. An existing file keeps
    /// its size unless `size` is given and larger (it is then extended, sparse).
    pub fn open(path: &Path, size: Option<u64>, read_only: bool) -> io::Result<FileBackend> {
        let exists = path.exists();
        if !exists && size.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} does not exist; give a size (N:{},size=1G) to create it",
                    path.display(),
                    path.display()
                ),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .create(!exists && !read_only)
            .truncate(false)
            .open(path)?;
        let meta = file.metadata()?;
        let mut len = if meta.file_type().is_file() {
            meta.len()
        } else {
            // Block devices report 0 in metadata; seek to the end instead.
            use std::io::Seek;
            let mut f = &file;
            f.seek(io::SeekFrom::End(0))?
        };
        if let Some(s) = size {
            if s > len && meta.file_type().is_file() && !read_only {
                file.set_len(s)?;
                len = s;
            }
        }
        let in_memory = rustix::fs::fstatfs(&file)
            .map(|s| matches!(s.f_type as u64, TMPFS_MAGIC | RAMFS_MAGIC))
            .unwrap_or(false);
        Ok(FileBackend {
            file,
            path: path.to_path_buf(),
            len,
            in_memory,
        })
    }
}

impl Backend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
    fn flush(&self) -> io::Result<()> {
        rustix::fs::fdatasync(&self.file).map_err(io::Error::from)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            // Block devices and some filesystems cannot punch: write zeros instead.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NODEV => {
                let zeros = vec![0u8; 1 << 20];
                let mut off = offset;
                let end = offset + len;
                while off < end {
                    let n = (end - off).min(zeros.len() as u64) as usize;
                    self.file.write_all_at(&zeros[..n], off)?;
                    off += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn may_block(&self) -> bool {
        !self.in_memory
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64, bool)>> {
        // SEEK_DATA/SEEK_HOLE: what the file system knows about holes.
        let end = offset + len;
        let mut out = Vec::new();
        let mut off = offset;
        while off < end {
            let data = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(off)) {
                Ok(d) => d.min(end),
                // ENXIO: no data after `off`.
                Err(e) if e == rustix::io::Errno::NXIO => end,
                Err(_) => return Ok(vec![(offset, len, true)]),
            };
            if data > off {
                out.push((off, data - off, false));
                off = data;
                continue;
            }
            let hole = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(off)) {
                Ok(h) => h.min(end),
                Err(_) => end,
            };
            out.push((off, hole.max(off + 1) - off, true));
            off = hole.max(off + 1);
        }
        Ok(out)
    }
}

/// Blocks in memory (`--lun N:mem:SIZE`): gone when the target stops.
#[derive(Debug)]
pub struct MemBackend {
    data: RwLock<Vec<u8>>,
    id: String,
}

impl MemBackend {
    pub fn new(size: u64, id: &str) -> io::Result<MemBackend> {
        let size = usize::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
        Ok(MemBackend {
            data: RwLock::new(vec![0; size]),
            id: id.to_string(),
        })
    }

    fn range(&self, offset: u64, len: usize, total: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        if end > total {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "access past the end of the memory LUN",
            ));
        }
        Ok(start..end)
    }
}

impl Backend for MemBackend {
    fn len(&self) -> u64 {
        self.data.read().map_or(0, |d| d.len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.data.read().map_err(|_| io::ErrorKind::Other)?;
        let r = self.range(offset, buf.len(), d.len())?;
        buf.copy_from_slice(&d[r]);
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.data.write().map_err(|_| io::ErrorKind::Other)?;
        let r = self.range(offset, data.len(), d.len())?;
        d[r].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut d = self.data.write().map_err(|_| io::ErrorKind::Other)?;
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let r = self.range(offset, len, d.len())?;
        d[r].fill(0);
        Ok(())
    }
    fn describe(&self) -> String {
        format!("mem:{}", self.id)
    }
    fn may_block(&self) -> bool {
        false
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64, bool)>> {
        // Memory has no holes; all-zero blocks count as deallocated (LBPRZ: an unmapped
        // block reads as zeros, and UNMAP zeroes them).
        let d = self.data.read().map_err(|_| io::ErrorKind::Other)?;
        let total = d.len() as u64;
        let len = len.min(total.saturating_sub(offset));
        Ok(runs(offset, len, 512, |o, n| {
            d[o as usize..(o + n) as usize].iter().any(|&b| b != 0)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_backend_creates_sparse_and_punches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lun.img");
        assert!(FileBackend::open(&p, None, false).is_err());
        let b = FileBackend::open(&p, Some(1 << 20), false).unwrap();
        assert_eq!(b.len(), 1 << 20);
        b.write_at(4096, &[7u8; 8192]).unwrap();
        b.flush().unwrap();
        let mut buf = vec![0u8; 8192];
        b.read_at(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == 7));
        b.punch_hole(4096, 4096).unwrap();
        b.read_at(4096, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&x| x == 0));
        assert!(buf[4096..].iter().all(|&x| x == 7));
        // Reopen keeps the data and size.
        drop(b);
        let b = FileBackend::open(&p, Some(4096), true).unwrap();
        assert_eq!(b.len(), 1 << 20);
    }

    #[test]
    fn mem_backend_bounds() {
        let m = MemBackend::new(8192, "t").unwrap();
        assert!(m.write_at(8000, &[1u8; 512]).is_err());
        m.write_at(0, &[1u8; 512]).unwrap();
        m.punch_hole(0, 256).unwrap();
        let mut b = [9u8; 512];
        m.read_at(0, &mut b).unwrap();
        assert_eq!(b[255], 0);
        assert_eq!(b[256], 1);
    }
}
