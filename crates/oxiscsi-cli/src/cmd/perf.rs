//! `oxiscsi perf URL [-b BLOCKS] [-m QD] [-t SECONDS] [-r] [--write] [--json]`: the flags
//! and meaning of libiscsi's iscsi-perf (blocks of the LUN's block size, READ(16)/
//! WRITE(16), sequential wrapping at the end or random), plus writes, latency percentiles
//! and client CPU. Like iscsi-perf (which reads every I/O into one shared iovec), read
//! data is checked and dropped; `--own-buffers` keeps it, in a buffer per I/O slot.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use oxiscsi_initiator::{ops, Completion, Poller, Queue, Rejected, Session, SessionConfig};
use oxiscsi_proto::pdu::{Lun, ScsiStatus};
use oxiscsi_proto::session::{Command, ScsiResult};
use oxiscsi_scsi::cdb::Cdb;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::common::{cpu_times, open_poller, open_with, CliError, CliResult, CommonOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Blocks per I/O (in the LUN's block size), as iscsi-perf -b.
    #[arg(short = 'b', long = "blocks", default_value_t = 8)]
    pub blocks: u32,
    /// I/Os in flight, as iscsi-perf -m.
    #[arg(short = 'm', long = "max", default_value_t = 32)]
    pub max_in_flight: usize,
    /// Run time in seconds; 0 runs until Ctrl-C, as iscsi-perf -t.
    #[arg(short = 't', long = "runtime", default_value_t = 0)]
    pub runtime: u64,
    /// Random offsets instead of sequential.
    #[arg(short = 'r', long = "random")]
    pub random: bool,
    /// Write instead of read (destroys the LUN's contents).
    #[arg(long)]
    pub write: bool,
    /// Read into one buffer per I/O slot and keep the data, instead of dropping it after
    /// its checks (iscsi-perf reads every I/O into one shared buffer; this measures what
    /// an application that keeps its data pays on top).
    #[arg(long)]
    pub own_buffers: bool,
    /// How the I/Os are issued: `poller`, one thread driving its own session
    /// (Poller::service, libiscsi's event-loop shape, as iscsi-perf runs); `queue`, one
    /// task keeping them in flight through a completion queue (Session::queue) beside
    /// the session's driver task; `tasks`, one task per I/O slot awaiting
    /// Session::execute, the way most library callers use a session.
    #[arg(long, value_enum, default_value_t = Api::Poller)]
    pub api: Api,
    /// iscsi://[user[%password]@]host[:port]/target-iqn/lun
    pub url: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Poller,
    Queue,
    Tasks,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Poller => "poller",
            Api::Queue => "queue",
            Api::Tasks => "tasks",
        }
    }
}

#[derive(Serialize)]
struct Report {
    iops: f64,
    mib_per_s: f64,
    lat_p50_us: f64,
    lat_p99_us: f64,
    lat_p999_us: f64,
    lat_mean_us: f64,
    lat_max_us: f64,
    ios: u64,
    bytes: u64,
    seconds: f64,
    errors: u64,
    cpu_cores: f64,
    cpu_us_per_io: f64,
    block_size: u32,
    blocks_per_io: u32,
    queue_depth: usize,
    random: bool,
    write: bool,
    /// Reads kept in a buffer per I/O slot (`--own-buffers`) rather than dropped.
    own_buffers: bool,
    /// How the I/Os were issued (`--api`): "poller", "queue" or "tasks".
    api: &'static str,
}

struct Worker {
    hist: Histogram<u64>,
    ios: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(opts: &CommonOpts, args: Args) -> CliResult {
    if args.blocks == 0 || args.max_in_flight == 0 {
        return Err(CliError::Usage("-b and -m must be at least 1".into()));
    }
    // Room for every slot: the completion queue refuses a command when the session's
    // queue depth (default 128) is used up, where iscsi-perf -m has no such cap.
    let qd = args.max_in_flight;
    let deepen =
        |cfg: &mut SessionConfig| cfg.connection.queue_depth = cfg.connection.queue_depth.max(qd);
    // One login: the poller's session for `--api poller`, else a `Session`.
    let (conn, lun, url) = if args.api == Api::Poller {
        let (p, lun, url) = open_poller(&args.url, opts, deepen).await?;
        (
            Conn::Poller(Box::new(OnThisThread(Mutex::new(p)))),
            lun,
            url,
        )
    } else {
        let (s, lun, url) = open_with(&args.url, opts, deepen).await?;
        (Conn::Session(s), lun, url)
    };
    let cap = match &conn {
        Conn::Session(s) => s.read_capacity(lun).await?,
        Conn::Poller(p) => ops::read_capacity(&**p, lun).await?,
    };
    let num_blocks = cap.blocks();
    let bs = cap.block_size;
    if num_blocks < u64::from(args.blocks) {
        return Err(CliError::Usage(format!(
            "the LUN has {num_blocks} blocks, fewer than -b {}",
            args.blocks
        )));
    }
    let io_bytes = u64::from(args.blocks) * u64::from(bs);
    if !opts.json {
        println!("connected to {}", url.redacted());
        println!(
            "capacity is {num_blocks} blocks or {} byte ({} MB)",
            cap.bytes(),
            cap.bytes() >> 20
        );
        println!(
            "performing {} {} with {} parallel requests",
            if args.random { "RANDOM" } else { "SEQUENTIAL" },
            if args.write { "WRITE" } else { "READ" },
            args.max_in_flight
        );
        println!(
            "FIXED transfer size of {} blocks ({io_bytes} byte)",
            args.blocks
        );
        if args.runtime > 0 {
            println!("will run for {} seconds.", args.runtime);
        } else {
            println!("infinite runtime - press CTRL-C to abort.");
        }
    }
    // Writes send one seeded buffer over and over; reads need none.
    let payload = if args.write {
        let mut v = vec![0u8; io_bytes as usize];
        rand::rngs::StdRng::seed_from_u64(0x0c5c_5151).fill_bytes(&mut v);
        Bytes::from(v)
    } else {
        Bytes::new()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done_ios = Arc::new(AtomicU64::new(0));
    // The live line on a terminal needs a shared count; without it each worker only
    // counts its own (an atomic add per I/O showed up in profiles).
    let show = !opts.json && std::io::stdout().is_terminal();
    let load = Load {
        lun,
        bs,
        blocks: args.blocks,
        num_blocks,
        random: args.random,
        write: args.write,
        own: args.own_buffers,
        payload,
    };
    let (session, poller) = match conn {
        Conn::Session(s) => (Some(s), None),
        Conn::Poller(p) => (
            None,
            Some(p.0.into_inner().unwrap_or_else(|e| e.into_inner())),
        ),
    };
    let start = Instant::now();
    let cpu0 = cpu_times();
    let mut handles = Vec::new();
    if let (Api::Tasks, Some(session)) = (args.api, &session) {
        let pos = Arc::new(AtomicU64::new(0));
        for w in 0..args.max_in_flight {
            let (s, stop, pos, done_ios, load) = (
                session.clone(),
                stop.clone(),
                pos.clone(),
                done_ios.clone(),
                load.clone(),
            );
            handles.push(tokio::spawn(async move {
                task_worker(s, load, w as u64, pos, stop, show.then_some(done_ios)).await
            }));
        }
    } else if let Some(p) = poller {
        let (stop, done_ios) = (stop.clone(), done_ios.clone());
        let qd = args.max_in_flight;
        handles.push(tokio::task::spawn_blocking(move || {
            poller_worker(p, load, qd, stop, show.then_some(done_ios))
        }));
    } else if let Some(session) = &session {
        let (s, stop, done_ios) = (session.clone(), stop.clone(), done_ios.clone());
        let qd = args.max_in_flight;
        handles.push(tokio::spawn(async move {
            queue_worker(s, load, qd, stop, show.then_some(done_ios)).await
        }));
    }
    // Run until the time is up, Ctrl-C, or a worker stops on an error.
    let deadline = (args.runtime > 0).then(|| start + Duration::from_secs(args.runtime));
    let mut last = (Instant::now(), 0u64);
    loop {
        // The initiator's own timer: this runtime has no tokio timer (see main.rs).
        let tick = oxiscsi_initiator::time::sleep(Duration::from_millis(200));
        tokio::select! {
            r = tick => r.map_err(|e| CliError::Io(e.to_string()))?,
            _ = tokio::signal::ctrl_c() => break,
        }
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if show && last.0.elapsed() >= Duration::from_secs(1) {
            let n = done_ios.load(Ordering::Relaxed);
            let dt = last.0.elapsed().as_secs_f64();
            let iops = (n - last.1) as f64 / dt;
            print!(
                "\riops current {:.0} ({:.1} MiB/s)        ",
                iops,
                iops * io_bytes as f64 / 1048576.0
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
            last = (Instant::now(), n);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Worker::new();
    for h in handles {
        let w = h
            .await
            .map_err(|e| CliError::Io(format!("worker failed: {e}")))?;
        let _ = total.hist.add(&w.hist);
        total.ios += w.ios;
        total.bytes += w.bytes;
        total.errors += w.errors;
        if total.first_error.is_none() {
            total.first_error = w.first_error;
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-6);
    let cpu1 = cpu_times();
    let cpu = (cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1);
    if let Some(session) = session {
        let _ = session.logout().await;
    }
    let us = |q: f64| total.hist.value_at_quantile(q) as f64 / 1000.0;
    let report = Report {
        iops: total.ios as f64 / secs,
        mib_per_s: total.bytes as f64 / secs / 1048576.0,
        lat_p50_us: us(0.5),
        lat_p99_us: us(0.99),
        lat_p999_us: us(0.999),
        lat_mean_us: total.hist.mean() / 1000.0,
        lat_max_us: total.hist.max() as f64 / 1000.0,
        ios: total.ios,
        bytes: total.bytes,
        seconds: secs,
        errors: total.errors,
        cpu_cores: cpu / secs,
        cpu_us_per_io: if total.ios > 0 {
            cpu * 1e6 / total.ios as f64
        } else {
            0.0
        },
        block_size: bs,
        blocks_per_io: args.blocks,
        queue_depth: args.max_in_flight,
        random: args.random,
        write: args.write,
        own_buffers: args.own_buffers,
        api: args.api.name(),
    };
    if opts.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| CliError::Io(e.to_string()))?
        );
    } else {
        if show {
            println!();
        }
        println!(
            "iops average {:.0} ({:.1} MiB/s), latency p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, \
             client CPU {:.2} cores ({:.1} us per I/O)",
            report.iops, report.mib_per_s, report.lat_p50_us, report.lat_p99_us, report.lat_p999_us,
            report.cpu_cores, report.cpu_us_per_io
        );
    }
    if let Some(e) = total.first_error {
        return Err(CliError::Io(format!(
            "I/O failed after {} good I/Os: {e}",
            total.ios
        )));
    }
    Ok(())
}

/// What every I/O of the run does.
#[derive(Clone)]
struct Load {
    lun: u16,
    bs: u32,
    blocks: u32,
    num_blocks: u64,
    random: bool,
    write: bool,
    own: bool,
    /// Writes send one seeded buffer over and over.
    payload: Bytes,
}

impl Load {
    /// The next I/O's first block: random, or sequential from `*pos` (iscsi-perf's order),
    /// wrapping so that the I/O ends inside the LUN.
    fn lba(&self, rng: &mut SmallRng, pos: &mut u64) -> u64 {
        let span = self.num_blocks - u64::from(self.blocks) + 1;
        if self.random {
            rng.gen_range(0..span)
        } else {
            let p = *pos % self.num_blocks;
            *pos = pos.wrapping_add(u64::from(self.blocks));
            p.min(span - 1)
        }
    }

    fn cdb(&self, lba: u64) -> oxiscsi_proto::pdu::CdbBuf {
        let (blocks, fua, dpo) = (self.blocks, false, false);
        cdb_buf(if self.write {
            Cdb::Write16 {
                lba,
                blocks,
                fua,
                dpo,
            }
        } else {
            Cdb::Read16 {
                lba,
                blocks,
                fua,
                dpo,
            }
        })
    }

    fn io_bytes(&self) -> u32 {
        self.blocks * self.bs
    }

    /// The I/O as a command for a [`Queue`]: reads land in `buf` with --own-buffers and
    /// are checked and dropped otherwise.
    fn command(&self, lba: u64, buf: Option<BytesMut>) -> Command {
        let cmd = Command::new(Lun::from_number(self.lun), self.cdb(lba));
        if self.write {
            cmd.with_data_out(self.payload.clone())
        } else if let Some(b) = buf {
            cmd.with_read_into(self.io_bytes(), b)
        } else {
            cmd.with_read_discarded(self.io_bytes())
        }
    }
}

fn seeded_rng(worker: u64) -> SmallRng {
    // Xoshiro, not ChaCha: LBAs need no cryptographic quality, and ChaCha's block refills
    // showed in the per-I/O profile.
    SmallRng::seed_from_u64(worker ^ 0x9e37_79b9_7f4a_7c15)
}

impl Worker {
    fn new() -> Worker {
        Worker {
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("static histogram bounds are valid"),
            ios: 0,
            bytes: 0,
            errors: 0,
            first_error: None,
        }
    }

    /// Count one finished I/O; an error or a status other than GOOD stops the run. The
    /// read buffer comes back for reuse with --own-buffers.
    fn finished(
        &mut self,
        load: &Load,
        r: Result<ScsiResult, oxiscsi_initiator::Error>,
        ns: u64,
        stop: &AtomicBool,
    ) -> Option<BytesMut> {
        match r {
            Ok(mut res) if res.status == ScsiStatus::GOOD => {
                let _ = self.hist.record(ns.max(1));
                self.ios += 1;
                self.bytes += u64::from(load.io_bytes());
                (load.own && !load.write)
                    .then(|| std::mem::take(&mut res.data).try_into_mut().ok())
                    .flatten()
            }
            Ok(res) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| {
                    let sense = oxiscsi_scsi::Sense::parse(&res.sense)
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    format!("{} {sense}", res.status)
                });
                stop.store(true, Ordering::Relaxed);
                None
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
                stop.store(true, Ordering::Relaxed);
                None
            }
        }
    }
}

/// `--api queue`: one task keeps `qd` commands in flight through a completion [`Queue`],
/// as iscsi-perf does through libiscsi's callbacks. Each batch of completions costs one
/// wake-up and one clock read; each I/O's latency runs from its submission to the
/// collection of the batch it finished in.
async fn queue_worker(
    s: Session,
    load: Load,
    qd: usize,
    stop: Arc<AtomicBool>,
    live: Option<Arc<AtomicU64>>,
) -> Worker {
    let mut st = Slots::new(s.queue(), &load, qd);
    let mut wk = Worker::new();
    st.fill(&load, qd, &mut wk, &stop);
    let mut done = Vec::with_capacity(qd);
    loop {
        let n = st.q.next(&mut done).await;
        if n == 0 {
            break;
        }
        st.refill(&load, &mut done, &mut wk, &stop, live.as_deref());
    }
    wk
}

/// The default (`--api poller`): as [`queue_worker`], on a thread of its own that
/// drives its session itself ([`Poller::service`]), with no task, lock or wake-up
/// between the socket and this loop. The run's setup (capacity, checks) happened on a
/// `Session` beforehand, logged out before this one starts.
fn poller_worker(
    p: Poller,
    load: Load,
    qd: usize,
    stop: Arc<AtomicBool>,
    live: Option<Arc<AtomicU64>>,
) -> Worker {
    let mut st = Slots::new(p, &load, qd);
    let mut wk = Worker::new();
    st.fill(&load, qd, &mut wk, &stop);
    let mut done = Vec::with_capacity(qd);
    loop {
        match st.q.service(&mut done, None) {
            Ok(0) => break,
            Ok(_) => st.refill(&load, &mut done, &mut wk, &stop, live.as_deref()),
            Err(e) => {
                wk.errors += 1;
                wk.first_error.get_or_insert_with(|| e.to_string());
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    if let Err(e) = st.q.logout() {
        tracing::warn!(error = %e, "logout after the run failed");
    }
    wk
}

/// The run's one session, before the I/O starts.
enum Conn {
    Session(Session),
    Poller(Box<OnThisThread>),
}

/// A poller used as an [`ops::Execute`] for the commands before the run (READ CAPACITY):
/// each command runs to its end on the calling thread, blocking it, which at start-up
/// nothing else is waiting for.
struct OnThisThread(Mutex<Poller>);

impl ops::Execute for OnThisThread {
    fn execute_command(
        &self,
        cmd: Command,
    ) -> impl std::future::Future<Output = Result<ScsiResult, oxiscsi_initiator::Error>> + Send
    {
        let r = match self.0.lock() {
            Ok(mut p) => p.execute(cmd),
            Err(_) => Err(oxiscsi_initiator::Error::Closed(
                "the poller was poisoned".into(),
            )),
        };
        std::future::ready(r)
    }
}

/// Where [`Slots`] submits: a completion queue or a poller.
trait Submitter {
    #[allow(clippy::result_large_err)]
    fn submit(&mut self, token: u64, cmd: Command) -> Result<(), Rejected>;
}

impl Submitter for Queue {
    fn submit(&mut self, token: u64, cmd: Command) -> Result<(), Rejected> {
        Queue::submit(self, token, cmd)
    }
}

impl Submitter for Poller {
    fn submit(&mut self, token: u64, cmd: Command) -> Result<(), Rejected> {
        Poller::submit(self, token, cmd)
    }
}

/// One worker's I/O slots, submitted through `q`.
struct Slots<Q> {
    q: Q,
    rng: SmallRng,
    pos: u64,
    sent_at: Vec<u64>,
    bufs: Vec<Option<BytesMut>>,
}

impl<Q: Submitter> Slots<Q> {
    fn new(q: Q, load: &Load, qd: usize) -> Slots<Q> {
        Slots {
            q,
            rng: seeded_rng(0),
            pos: 0,
            sent_at: vec![0; qd],
            // With --own-buffers: one read buffer per slot, reused.
            bufs: (0..qd)
                .map(|_| {
                    (load.own && !load.write)
                        .then(|| BytesMut::with_capacity(load.io_bytes() as usize))
                })
                .collect(),
        }
    }

    /// Put every slot in flight.
    fn fill(&mut self, load: &Load, qd: usize, wk: &mut Worker, stop: &AtomicBool) {
        let now = mono_ns();
        for slot in 0..qd {
            self.submit(load, slot, now, wk, stop);
        }
    }

    /// Count a batch of completions and submit the next I/O in each freed slot. One clock
    /// read per batch: each I/O's latency runs from its submission to the collection of
    /// the batch it finished in.
    fn refill(
        &mut self,
        load: &Load,
        done: &mut Vec<Completion>,
        wk: &mut Worker,
        stop: &AtomicBool,
        live: Option<&AtomicU64>,
    ) {
        let now = mono_ns();
        let n = done.len();
        for c in done.drain(..) {
            let slot = c.token as usize;
            let ns = now.saturating_sub(self.sent_at[slot]);
            if let Some(b) = wk.finished(load, c.result, ns, stop) {
                self.bufs[slot] = Some(b);
            }
            if !stop.load(Ordering::Relaxed) {
                self.submit(load, slot, now, wk, stop);
            }
        }
        if let Some(live) = live {
            live.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn submit(&mut self, load: &Load, slot: usize, now: u64, wk: &mut Worker, stop: &AtomicBool) {
        let lba = load.lba(&mut self.rng, &mut self.pos);
        let cmd = load.command(lba, self.bufs[slot].take());
        match self.q.submit(slot as u64, cmd) {
            Ok(()) => self.sent_at[slot] = now,
            Err(e) => {
                wk.errors += 1;
                wk.first_error.get_or_insert_with(|| e.to_string());
                stop.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// `--api tasks`: one task per I/O slot, each awaiting [`Session::execute`] in turn, the way
/// most library callers use the session.
async fn task_worker(
    s: Session,
    load: Load,
    w: u64,
    pos: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    live: Option<Arc<AtomicU64>>,
) -> Worker {
    let mut rng = seeded_rng(w);
    let mut wk = Worker::new();
    // With --own-buffers: one read buffer per worker, reused.
    let mut buf =
        (load.own && !load.write).then(|| BytesMut::with_capacity(load.io_bytes() as usize));
    // One clock read per I/O: each command's latency runs from the previous one's
    // completion in this worker (which is when this one is built and sent) to its own,
    // so it includes the worker's own few instructions between the two.
    let mut t0 = mono_ns();
    while !stop.load(Ordering::Relaxed) {
        // A load and a store, not fetch_add: the workers share one thread (current-thread
        // runtime). Were they ever on several, a race would repeat or skip an LBA, no
        // worse.
        let mut p = pos.load(Ordering::Relaxed);
        let lba = load.lba(&mut rng, &mut p);
        pos.store(p, Ordering::Relaxed);
        let cdb = load.cdb(lba);
        let r = if load.write {
            s.execute(load.lun, cdb, load.payload.clone(), 0).await
        } else if let Some(b) = buf.take() {
            s.execute_into(load.lun, cdb, load.io_bytes(), b).await
        } else {
            s.execute_discard(load.lun, cdb, load.io_bytes()).await
        };
        let t1 = mono_ns();
        let ns = t1.saturating_sub(t0);
        t0 = t1;
        buf = wk.finished(&load, r, ns, &stop).or(buf);
        if let Some(live) = &live {
            live.fetch_add(1, Ordering::Relaxed);
        }
    }
    wk
}

/// CLOCK_MONOTONIC in nanoseconds, for the per-I/O latency. `Instant::now` plus
/// `duration_since` cost ~100 more instructions per I/O (their checked timespec
/// arithmetic; callgrind), a few percent of the whole I/O at 4K QD1.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid, owned struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// A CDB built without allocating (see [`Cdb::to_array`]).
fn cdb_buf(cdb: Cdb) -> oxiscsi_proto::pdu::CdbBuf {
    let (bytes, len) = cdb.to_array();
    oxiscsi_proto::pdu::CdbBuf::from_array(bytes, len)
}
