//! The ceiling of a FUSE block-device path on this kernel, and a one-thread iSCSI
//! design under it. A FUSE server with one file, on /dev/fuse directly (libc, no fuser,
//! no runtime, one thread). `bench/fuse_ceiling.py` puts a loop device over its file and
//! runs fio's 1M sequential writes through it, beside oxiscsid and `oxiscsi perf` on the
//! same target, same run.
//!
//! ```text
//! fuse_ceiling sink ADDR                  read and drop whatever is sent to ADDR
//! fuse_ceiling serve MNT ADDR MODE [MIB]  one file MNT/lun of MIB MiB (default 1024)
//! fuse_ceiling serve MNT URL iscsi        one file MNT/lun: the LUN of iscsi://URL
//! ```
//!
//! MODE is how a WRITE's payload reaches a TCP sink (no iSCSI; each WRITE is answered
//! as soon as it is sent):
//! - `read`: read(2) from /dev/fuse into one buffer, send from it (no copy of ours);
//! - `copy`: as `read`, then copied into a second buffer and sent from that (what
//!   oxiscsid does: fuser lends the payload, the session needs it owned);
//! - `pool`: read into 16 buffers in turn, send from it;
//! - `splice`: splice(2) /dev/fuse -> pipe -> socket (the kernel copies the payload
//!   into pipe pages; the socket takes those pages without a copy).
//!
//! `iscsi` is the real thing on one thread: READ and WRITE go to the target through a
//! [`Poller`](oxiscsi_initiator::Poller) serviced by the same poll(2) loop as /dev/fuse;
//! a WRITE is answered when the target answers it. See [`linux::serve_iscsi`].
//!
//! Linux only; run as root (mount(2)). In the sink modes reads return zeros. The mount
//! goes away when the server is killed or `umount MNT` runs.

#[cfg(target_os = "linux")]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("sink") if args.len() == 2 => linux::sink(&args[1]),
        Some("serve") if args.len() == 4 && args[3] == "iscsi" => {
            linux::serve_iscsi(&args[1], &args[2])
        }
        Some("serve") if (4..=5).contains(&args.len()) => {
            let mib = args.get(4).map_or(Ok(1024), |v| v.parse::<u64>());
            match (linux::Mode::parse(&args[3]), mib) {
                (Some(mode), Ok(mib)) => linux::serve(&args[1], &args[2], mode, mib << 20),
                _ => Err(format!("bad MODE {:?} or MIB {:?}", args[3], args.get(4))),
            }
        }
        _ => {
            Err("usage: fuse_ceiling sink ADDR | serve MNT ADDR read|copy|pool|splice [MIB]".into())
        }
    };
    if let Err(e) = r {
        eprintln!("fuse_ceiling: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("fuse_ceiling: Linux only");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use oxiscsi_admin::fuse::abi::{self, op, u32_at, u64_at, IN_HEADER, WRITE_IN};
    use oxiscsi_admin::fuse::dev;

    /// Largest WRITE we take: 512 KiB, so that a whole request fits a pipe of 1 MiB
    /// (the default pipe-max-size; the kernel refuses a splice that does not fit).
    const MAX_WRITE: usize = 512 << 10;
    const BUF: usize = MAX_WRITE + 4096;
    const POOL: usize = 16;
    /// How long the sink waits for a server that sends nothing.
    const SINK_IDLE: std::time::Duration = std::time::Duration::from_secs(600);
    /// How long a server waits for the sink to take a payload.
    const SEND_STALL: std::time::Duration = std::time::Duration::from_secs(30);
    const LUN_INO: u64 = 2;
    const FILE: u32 = 0o100600;
    const DIR: u32 = 0o040755;

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum Mode {
        Read,
        Copy,
        Pool,
        Splice,
    }

    impl Mode {
        pub fn parse(s: &str) -> Option<Mode> {
            Some(match s {
                "read" => Mode::Read,
                "copy" => Mode::Copy,
                "pool" => Mode::Pool,
                "splice" => Mode::Splice,
                _ => return None,
            })
        }
    }

    fn os_err(what: &str) -> String {
        format!("{what}: {}", std::io::Error::last_os_error())
    }

    pub fn sink(addr: &str) -> Result<(), String> {
        let l = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        for s in l.incoming() {
            let mut s = s.map_err(|e| format!("accept: {e}"))?;
            // A server idles while the bench runs the other paths (a round is well under
            // a minute); one silent for longer is gone.
            s.set_read_timeout(Some(SINK_IDLE))
                .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
        Ok(())
    }

    fn reply(dev: RawFd, unique: u64, error: i32, body: &[u8]) -> Result<(), String> {
        dev::reply(dev, unique, error, &[body])
    }

    fn read_exact_fd(fd: RawFd, buf: &mut [u8]) -> Result<(), String> {
        let mut got = 0;
        while got < buf.len() {
            // SAFETY: reads into the unfilled tail of a live buffer.
            let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
            if n <= 0 {
                return Err(os_err("read from the pipe"));
            }
            got += n as usize;
        }
        Ok(())
    }

    fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> isize {
        // SAFETY: splice(2) between two open descriptors; no memory is passed.
        unsafe {
            let null = std::ptr::null_mut();
            libc::splice(from, null, to, null, len, flags)
        }
    }

    /// What [`answer_other`] did.
    #[derive(PartialEq, Eq)]
    enum Other {
        Done,
        /// INIT answered: max_write is set from now on.
        Init,
        /// DESTROY answered: the mount is going away.
        Destroy,
    }

    /// Answer every request but READ and WRITE: the one-file filesystem's metadata.
    fn answer_other(
        dev: RawFd,
        opcode: u32,
        unique: u64,
        nodeid: u64,
        args: &[u8],
        size: u64,
        max_write: usize,
    ) -> Result<Other, String> {
        match opcode {
            op::INIT => {
                let max_readahead = u32_at(args, 8)?;
                let out = abi::init_out(max_readahead, max_write as u32, max_write as u32, 256);
                reply(dev, unique, 0, &out)?;
                return Ok(Other::Init);
            }
            op::LOOKUP => {
                let name = args.split(|&c| c == 0).next().unwrap_or_default();
                if nodeid != 1 || name != b"lun" {
                    reply(dev, unique, -libc::ENOENT, &[])?;
                    return Ok(Other::Done);
                }
                reply(dev, unique, 0, &abi::entry_out(LUN_INO, size, FILE, 1))?;
            }
            op::GETATTR => {
                let (size, mode) = if nodeid == 1 { (0, DIR) } else { (size, FILE) };
                reply(dev, unique, 0, &abi::attr_out(nodeid, size, mode, 1))?;
            }
            op::OPEN => reply(dev, unique, 0, &abi::open_out(abi::FOPEN_DIRECT_IO))?,
            op::OPENDIR => reply(dev, unique, 0, &abi::open_out(0))?,
            op::RELEASE | op::FSYNC | op::FLUSH | op::RELEASEDIR => reply(dev, unique, 0, &[])?,
            op::DESTROY => {
                reply(dev, unique, 0, &[])?;
                return Ok(Other::Destroy);
            }
            op::FORGET | op::BATCH_FORGET | op::INTERRUPT => {}
            _ => reply(dev, unique, -libc::ENOSYS, &[])?,
        }
        Ok(Other::Done)
    }

    pub fn serve(mnt: &str, addr: &str, mode: Mode, size: u64) -> Result<(), String> {
        let devf = dev::open(false)?;
        let dev = devf.as_raw_fd();
        let mut sock =
            TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        sock.set_nodelay(true)
            .and_then(|()| sock.set_write_timeout(Some(SEND_STALL)))
            .map_err(|e| format!("cannot set up the socket to {addr}: {e}"))?;
        dev::mount(mnt.as_ref(), dev, "fuse_ceiling", dev::Root::Dir)?;
        let mut pipe = [0 as RawFd; 2];
        // SAFETY: pipe2 fills the two-element array.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(os_err("pipe2"));
        }
        // SAFETY: both descriptors were just created and are owned here alone.
        let (pr, pw) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        if mode == Mode::Splice
            // SAFETY: F_SETPIPE_SZ on an open pipe.
            && unsafe { libc::fcntl(pr.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) } < 0
        {
            return Err(os_err("cannot make the pipe 1 MiB"));
        }
        let mut pool: Vec<Vec<u8>> = (0..POOL).map(|_| vec![0u8; BUF]).collect();
        let mut turn = 0;
        let mut second = vec![0u8; MAX_WRITE];
        let zeros = vec![0u8; MAX_WRITE];
        let (mut writes, mut bytes, mut inited) = (0u64, 0u64, false);
        let t0 = std::time::Instant::now();
        loop {
            if mode == Mode::Pool {
                turn = (turn + 1) % POOL;
            }
            let buf = &mut pool[if mode == Mode::Pool { turn } else { 0 }];
            // The kernel takes splice reads only once INIT has set max_write.
            let split = mode == Mode::Splice && inited;
            let n = if split {
                splice(dev, pw.as_raw_fd(), BUF, 0)
            } else {
                // SAFETY: reads into a live buffer of BUF bytes.
                unsafe { libc::read(dev, buf.as_mut_ptr().cast(), BUF) }
            };
            if n <= 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) | Some(libc::ENOENT) if n < 0 => continue,
                    Some(libc::ENODEV) => break, // unmounted
                    _ if n == 0 => break,
                    _ => return Err(os_err("read from /dev/fuse")),
                }
            }
            let n = n as usize;
            if n < IN_HEADER {
                return Err(format!("request of {n} bytes is shorter than its header"));
            }
            if split {
                read_exact_fd(pr.as_raw_fd(), &mut buf[..IN_HEADER])?;
            }
            let opcode = u32_at(buf, 4)?;
            let unique = u64_at(buf, 8)?;
            let nodeid = u64_at(buf, 16)?;
            if split {
                // The arguments into the buffer; a WRITE's payload stays in the pipe.
                let args = if opcode == op::WRITE {
                    WRITE_IN
                } else {
                    n - IN_HEADER
                };
                let end = IN_HEADER + args;
                if end > buf.len() {
                    return Err(format!("request of {n} bytes does not fit"));
                }
                read_exact_fd(pr.as_raw_fd(), &mut buf[IN_HEADER..end])?;
            }
            let args = &buf[IN_HEADER..n.min(buf.len())];
            match opcode {
                op::READ => {
                    let len = (u32_at(args, 16)? as usize).min(zeros.len());
                    reply(dev, unique, 0, &zeros[..len])?;
                }
                op::WRITE => {
                    let len = u32_at(args, 16)? as usize;
                    if len > MAX_WRITE {
                        return Err(format!("WRITE of {len} bytes above max_write"));
                    }
                    // What an iSCSI command header would take on the wire.
                    let mut hdr = [0u8; 48];
                    hdr[0] = 1;
                    hdr[4..8].copy_from_slice(&(len as u32).to_be_bytes());
                    if split {
                        let more = libc::MSG_MORE;
                        // SAFETY: sends 48 bytes from a live array on an open socket.
                        let r =
                            unsafe { libc::send(sock.as_raw_fd(), hdr.as_ptr().cast(), 48, more) };
                        if r != 48 {
                            return Err(os_err("send"));
                        }
                        let mut left = len;
                        while left > 0 {
                            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE;
                            let k = splice(pr.as_raw_fd(), sock.as_raw_fd(), left, flags);
                            if k <= 0 {
                                return Err(os_err("splice to the socket"));
                            }
                            left -= k as usize;
                        }
                    } else {
                        let from = IN_HEADER + WRITE_IN;
                        let payload = buf
                            .get(from..from + len)
                            .ok_or_else(|| format!("WRITE of {len} bytes in a {n}-byte request"))?;
                        let payload = if mode == Mode::Copy {
                            second[..len].copy_from_slice(payload);
                            &second[..len]
                        } else {
                            payload
                        };
                        sock.write_all(&hdr)
                            .and_then(|()| sock.write_all(payload))
                            .map_err(|e| format!("send: {e}"))?;
                    }
                    writes += 1;
                    bytes += len as u64;
                    let mut out = (len as u32).to_le_bytes().to_vec();
                    out.extend([0u8; 4]);
                    reply(dev, unique, 0, &out)?;
                }
                _ => match answer_other(dev, opcode, unique, nodeid, args, size, MAX_WRITE)? {
                    Other::Init => inited = true,
                    Other::Destroy => break,
                    Other::Done => {}
                },
            }
        }
        eprintln!(
            "fuse_ceiling {mode:?}: {writes} writes, {} MiB in {:.1} s",
            bytes >> 20,
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// A request waiting for the target's answer.
    struct Waiting {
        unique: u64,
        write_len: Option<usize>,
    }

    /// WRITE and READ through an iSCSI session to the LUN of `url`: a `Poller` driven by
    /// this thread's own poll(2) loop beside /dev/fuse. Each WRITE goes out whole as
    /// immediate data (max_write 256 KiB, our target's FirstBurstLength and
    /// MaxRecvDataSegmentLength) straight from the buffer /dev/fuse was read into, which
    /// the command keeps until the target answers (so it could be sent again); the next
    /// request is read only once the socket has taken the last.
    pub fn serve_iscsi(mnt: &str, url: &str) -> Result<(), String> {
        use bytes::BytesMut;
        use oxiscsi_initiator::proto::pdu::{Lun, ScsiStatus};
        use oxiscsi_initiator::proto::session::Command;
        use oxiscsi_initiator::scsi::cdb::Cdb;
        use oxiscsi_initiator::scsi::data::Capacity;
        use oxiscsi_initiator::{Completion, IscsiUrl, Poller, SessionConfig};
        const ISCSI_MAX_WRITE: usize = 256 << 10;
        const DEPTH: usize = 64;

        let u = IscsiUrl::parse(url).map_err(|e| e.to_string())?;
        let target = u.target.clone().ok_or("the URL names no target")?;
        let lun = Lun::from_number(u.lun.unwrap_or(0));
        let mut p = Poller::connect_blocking(SessionConfig::new(u.portal(), target))
            .map_err(|e| e.to_string())?;
        for _ in 0..5 {
            let r = p
                .execute(Command::new(lun, Cdb::TestUnitReady.to_bytes()))
                .map_err(|e| e.to_string())?;
            if r.status == ScsiStatus::GOOD {
                break;
            }
        }
        let r = p
            .execute(Command::new(lun, Cdb::ReadCapacity10.to_bytes()).with_read(8))
            .map_err(|e| e.to_string())?;
        if r.status != ScsiStatus::GOOD {
            return Err(format!(
                "READ CAPACITY(10) answered with status {:?}",
                r.status
            ));
        }
        let cap = Capacity::parse10(&r.data).map_err(|e| format!("READ CAPACITY(10): {e}"))?;
        let (bs, size) = (u64::from(cap.block_size), cap.bytes());
        if bs == 0 {
            return Err("the target reports a block size of 0".into());
        }

        let devf = dev::open(false)?;
        let dev = devf.as_raw_fd();
        dev::mount(mnt.as_ref(), dev, "fuse_ceiling", dev::Root::Dir)?;
        let mut rbuf = BytesMut::with_capacity(BUF);
        let mut waiting: std::collections::HashMap<u64, Waiting> = Default::default();
        let mut done: Vec<Completion> = Vec::new();
        let (mut next_token, mut writes) = (0u64, 0u64);
        loop {
            let take_fuse = !p.wants_write() && p.in_flight() < DEPTH;
            let mut fds = [
                libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLIN | if p.wants_write() { libc::POLLOUT } else { 0 },
                    revents: 0,
                },
                libc::pollfd {
                    fd: dev,
                    events: if take_fuse { libc::POLLIN } else { 0 },
                    revents: 0,
                },
            ];
            let timeout = p.deadline().map_or(-1, |d| {
                let left = d.saturating_duration_since(std::time::Instant::now());
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            });
            // SAFETY: polls two pollfd structs in a live array.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) } < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(os_err("poll"));
            }
            let readable = fds[0].revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
            p.service_ready(readable, &mut done)
                .map_err(|e| e.to_string())?;
            for c in done.drain(..) {
                let Some(w) = waiting.remove(&c.token) else {
                    continue;
                };
                match (c.result, w.write_len) {
                    (Ok(r), Some(len)) if r.status == ScsiStatus::GOOD => {
                        let mut out = (len as u32).to_le_bytes().to_vec();
                        out.extend([0u8; 4]);
                        reply(dev, w.unique, 0, &out)?;
                    }
                    (Ok(r), None) if r.status == ScsiStatus::GOOD => {
                        reply(dev, w.unique, 0, &r.data)?
                    }
                    _ => reply(dev, w.unique, -libc::EIO, &[])?,
                }
            }
            if fds[1].revents & libc::POLLIN == 0 {
                if fds[1].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                    break;
                }
                continue;
            }
            rbuf.clear();
            let spare = rbuf.spare_capacity_mut();
            // SAFETY: reads at most `spare.len()` bytes into the buffer's spare room.
            let n = unsafe { libc::read(dev, spare.as_mut_ptr().cast(), spare.len()) };
            if n <= 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) | Some(libc::ENOENT) | Some(libc::EAGAIN) if n < 0 => {
                        continue
                    }
                    Some(libc::ENODEV) => break,
                    _ if n == 0 => break,
                    _ => return Err(os_err("read from /dev/fuse")),
                }
            }
            let n = n as usize;
            // SAFETY: the kernel wrote `n` bytes into the spare room.
            unsafe { rbuf.set_len(n) };
            if n < IN_HEADER {
                return Err(format!("request of {n} bytes is shorter than its header"));
            }
            let opcode = u32_at(&rbuf, 4)?;
            let unique = u64_at(&rbuf, 8)?;
            let nodeid = u64_at(&rbuf, 16)?;
            let args = &rbuf[IN_HEADER..];
            match opcode {
                op::READ | op::WRITE => {
                    let offset = u64_at(args, 8)?;
                    let len = u32_at(args, 16)? as usize;
                    let blocks = u32::try_from(len as u64 / bs).unwrap_or(0);
                    if !offset.is_multiple_of(bs) || !(len as u64).is_multiple_of(bs) || blocks == 0
                    {
                        reply(dev, unique, -libc::EIO, &[])?;
                        continue;
                    }
                    let token = next_token;
                    next_token += 1;
                    let (cmd, write_len) = if opcode == op::READ {
                        let c = Command::new(lun, Cdb::read(offset / bs, blocks).to_bytes())
                            .with_read(len as u32);
                        (c, None)
                    } else {
                        let from = IN_HEADER + WRITE_IN;
                        if n < from + len {
                            return Err(format!("WRITE of {len} bytes in a {n}-byte request"));
                        }
                        let whole = std::mem::take(&mut rbuf).freeze();
                        let c =
                            Command::new(lun, Cdb::write(offset / bs, blocks, false).to_bytes())
                                .with_data_out(whole.slice(from..from + len));
                        (c, Some(len))
                    };
                    p.submit(token, cmd).map_err(|r| r.error.to_string())?;
                    p.flush().map_err(|e| e.to_string())?;
                    if rbuf.capacity() < BUF {
                        rbuf = BytesMut::with_capacity(BUF);
                    }
                    if write_len.is_some() {
                        writes += 1;
                    }
                    waiting.insert(token, Waiting { unique, write_len });
                }
                _ => {
                    match answer_other(dev, opcode, unique, nodeid, args, size, ISCSI_MAX_WRITE)? {
                        Other::Destroy => break,
                        Other::Init | Other::Done => {}
                    }
                }
            }
        }
        eprintln!("fuse_ceiling iscsi: {writes} writes");
        let _ = p.logout();
        Ok(())
    }
}
