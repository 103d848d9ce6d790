//! `oxiscsi perf URL [-b BLOCKS] [-m QD] [-t SECONDS] [-r] [--write] [--json]`: the flags
//! and meaning of libiscsi's iscsi-perf (blocks of the LUN's block size, READ(16)/
//! WRITE(16), sequential wrapping at the end or random), plus writes, latency percentiles
//! and client CPU. Like iscsi-perf (which reads every I/O into one shared iovec), read
//! data is checked and dropped; `--own-buffers` keeps it, in a buffer per I/O slot.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use oxiscsi_proto::pdu::ScsiStatus;
use oxiscsi_scsi::cdb::Cdb;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::common::{cpu_times, open, CliError, CliResult, CommonOpts};

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
    /// iscsi://[user[%password]@]host[:port]/target-iqn/lun
    pub url: String,
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
    let (session, lun, url) = open(&args.url, opts).await?;
    let cap = session.read_capacity(lun).await?;
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
    let pos = Arc::new(AtomicU64::new(0));
    let done_ios = Arc::new(AtomicU64::new(0));
    // The live line on a terminal needs a shared count; without it each worker only
    // counts its own (an atomic add per I/O showed up in profiles).
    let show = !opts.json && std::io::stdout().is_terminal();
    let start = Instant::now();
    let cpu0 = cpu_times();
    let mut handles = Vec::new();
    for w in 0..args.max_in_flight {
        let (s, stop, pos, done_ios, payload) = (
            session.clone(),
            stop.clone(),
            pos.clone(),
            done_ios.clone(),
            payload.clone(),
        );
        let (blocks, random, write, own) = (args.blocks, args.random, args.write, args.own_buffers);
        handles.push(tokio::spawn(async move {
            // Xoshiro, not ChaCha: LBAs need no cryptographic quality, and ChaCha's block
            // refills showed in the per-I/O profile.
            let mut rng = rand::rngs::SmallRng::seed_from_u64(w as u64 ^ 0x9e37_79b9_7f4a_7c15);
            let mut wk = Worker {
                hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                    .expect("static histogram bounds are valid"),
                ios: 0,
                bytes: 0,
                errors: 0,
                first_error: None,
            };
            let span = num_blocks - u64::from(blocks) + 1;
            // With --own-buffers: one read buffer per worker, reused.
            let mut buf = own.then(|| bytes::BytesMut::with_capacity((blocks * bs) as usize));
            // One clock read per I/O: each command's latency runs from the previous one's
            // completion in this worker (which is when this one is built and sent) to its
            // own, so it includes the worker's own few instructions between the two.
            let mut t0 = mono_ns();
            while !stop.load(Ordering::Relaxed) {
                let lba = if random {
                    rng.gen_range(0..span)
                } else {
                    let p = pos.fetch_add(u64::from(blocks), Ordering::Relaxed) % num_blocks;
                    p.min(span - 1)
                };
                let r = if write {
                    let cdb = cdb_buf(Cdb::Write16 {
                        lba,
                        blocks,
                        fua: false,
                        dpo: false,
                    });
                    s.execute(lun, cdb, payload.clone(), 0).await
                } else {
                    let cdb = cdb_buf(Cdb::Read16 {
                        lba,
                        blocks,
                        fua: false,
                        dpo: false,
                    });
                    if own {
                        let b = buf.take().unwrap_or_default();
                        s.execute_into(lun, cdb, blocks * bs, b).await
                    } else {
                        s.execute_discard(lun, cdb, blocks * bs).await
                    }
                };
                let t1 = mono_ns();
                let ns = t1.saturating_sub(t0);
                t0 = t1;
                match r {
                    Ok(mut res) if res.status == ScsiStatus::GOOD => {
                        if own && !write {
                            buf = std::mem::take(&mut res.data).try_into_mut().ok();
                        }
                        let _ = wk.hist.record(ns.max(1));
                        wk.ios += 1;
                        wk.bytes += u64::from(blocks) * u64::from(bs);
                        if show {
                            done_ios.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(res) => {
                        wk.errors += 1;
                        wk.first_error.get_or_insert_with(|| {
                            let sense = oxiscsi_scsi::Sense::parse(&res.sense)
                                .map(|s| s.to_string())
                                .unwrap_or_default();
                            format!("{} {sense}", res.status)
                        });
                        stop.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        wk.errors += 1;
                        wk.first_error.get_or_insert_with(|| e.to_string());
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            wk
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
    let mut total = Worker {
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .expect("static histogram bounds are valid"),
        ios: 0,
        bytes: 0,
        errors: 0,
        first_error: None,
    };
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
    let _ = session.logout().await;
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
