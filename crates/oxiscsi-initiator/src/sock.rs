//! The session's TCP socket after login, registered with the reactor twice: once for
//! reading and once (a duplicate descriptor of the same socket) for writing.
//!
//! tokio's `TcpStream` registers one descriptor for both, edge-triggered. Its write
//! interest made the socket report itself to every `epoll_wait` that found it on the
//! ready list: a wake-up queued while the driver was already reading the bytes that
//! raised it came back as an event with only EPOLLOUT set (the socket is writable nearly
//! always), and tokio went round its scheduler and parked again for nothing. That was
//! ~0.3 extra `epoll_wait` per I/O at 128 KiB reads and 2-3 at 1 MiB reads. With read
//! interest alone such a stale wake-up carries no event, so `epoll_wait` keeps waiting;
//! the write registration asks only for EPOLLOUT, which arriving data does not raise.

use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::task::{Context, Poll};

use bytes::BufMut;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::limits::fd_error;

/// A payload with at least this much still to come is waited for whole (`SO_RCVLOWAT`).
const LOWAT_FROM: usize = 64 * 1024;

pub(crate) struct Socket {
    rd: AsyncFd<TcpStream>,
    wr: AsyncFd<TcpStream>,
}

impl Socket {
    /// Take over a connected tokio stream (it is non-blocking already). Must run on a
    /// runtime with I/O enabled.
    pub(crate) fn new(stream: tokio::net::TcpStream) -> io::Result<Socket> {
        let reg =
            |e: io::Error| fd_error("cannot register the session's socket with the reactor", e);
        let rd = stream
            .into_std()
            .map_err(|e| fd_error("cannot take the session's socket over from tokio", e))?;
        let wr = rd
            .try_clone()
            .map_err(|e| fd_error("cannot duplicate the session's socket", e))?;
        // SAFETY: each descriptor is owned by the TcpStream moved into its AsyncFd, stays
        // open and names the same socket for the AsyncFd's whole life.
        let rd = unsafe { AsyncFd::register_with_interest(rd, Interest::READABLE) }
            .map_err(|e| reg(e.into()))?;
        // SAFETY: as above, for the duplicate descriptor.
        let wr = unsafe { AsyncFd::register_with_interest(wr, Interest::WRITABLE) }
            .map_err(|e| reg(e.into()))?;
        Ok(Socket { rd, wr })
    }

    /// One `recv` into `buf`'s spare room (as `TcpStream::try_read_buf`): `WouldBlock`
    /// without a system call while the socket is known not to be readable.
    pub(crate) fn try_read_buf<B: BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        self.rd
            .try_io(Interest::READABLE, |s| recv_into(s.as_raw_fd(), buf))
    }

    /// Mark the socket not readable until the next edge, without a system call (the
    /// caller knows a short read took all that was queued).
    pub(crate) fn clear_read_ready(&self) {
        let _ = self.rd.try_io(Interest::READABLE, |_| {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }

    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.rd.poll_read_ready(cx).map_ok(drop)
    }

    /// One `writev`, `WouldBlock` while the socket is known to be full.
    pub(crate) fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.wr.try_io(Interest::WRITABLE, |s| loop {
            match (&*s).write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        })
    }

    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.wr.poll_write_ready(cx).map_ok(drop)
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.rd.as_raw_fd()
    }
}

/// Before waiting for the socket: when a large payload is half read, ask the kernel to
/// wake us once the rest of it is there (`SO_RCVLOWAT`; the kernel caps it at half of
/// tcp_rmem's maximum and grows the receive buffer to fit) instead of at every segment
/// that arrives. A 1 MiB Data-In otherwise cost ~12 wake-ups (epoll_wait, a context
/// switch and a read each; libiscsi pays the same), with it ~5. The mark never exceeds
/// what the current frame still owes, and goes back to 1 byte below [`LOWAT_FROM`] and
/// between frames, so nothing that must arrive is waited past (a closed connection wakes
/// the reader whatever the mark). Setting it also wakes us at once if the bytes are
/// already queued (tcp_set_rcvlowat), so no edge is lost. `current` tracks the kernel's
/// value: a refused call leaves both unchanged.
pub(crate) fn set_lowat(fd: RawFd, current: &mut usize, remaining: usize) {
    let want = if remaining >= LOWAT_FROM {
        remaining.min(i32::MAX as usize)
    } else {
        1
    };
    if want == *current {
        return;
    }
    let val = want as libc::c_int;
    // SAFETY: setsockopt on the caller's open socket descriptor with a pointer to a c_int
    // that outlives the call and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        *current = want;
    }
}

/// One non-blocking `recv` on `fd` into `buf`'s spare room (retried on EINTR).
pub(crate) fn recv_into<B: BufMut>(fd: RawFd, buf: &mut B) -> io::Result<usize> {
    let dst = buf.chunk_mut();
    loop {
        // SAFETY: recv writes at most `dst.len()` bytes into the spare room, which stays
        // borrowed (and allocated) for the call.
        let n = unsafe { libc::recv(fd, dst.as_mut_ptr().cast(), dst.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => {
                // SAFETY: the kernel initialised the first `n` bytes.
                unsafe { buf.advance_mut(n) };
                return Ok(n);
            }
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}
