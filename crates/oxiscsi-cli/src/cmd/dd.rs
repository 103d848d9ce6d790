//! `oxiscsi dd --if SRC --of DST [--bs SIZE] [--count N] [--skip N] [--seek N]`: copy
//! between files, `-` (stdin/stdout) and LUNs given as `iscsi://` URLs. Several LUN reads
//! and writes are kept in flight; a short or failed transfer exits non-zero.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::Instant;

use bytes::Bytes;
use oxiscsi_initiator::Session;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::common::{human_size, open, parse_size, CliError, CliResult, CommonOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source: a file, - for stdin, or an iscsi:// URL.
    #[arg(long = "if", value_name = "SRC")]
    pub input: String,
    /// Destination: a file, - for stdout, or an iscsi:// URL.
    #[arg(long = "of", value_name = "DST")]
    pub output: String,
    /// Block size of the copy (K, M, G suffixes); a multiple of the LUN block size.
    #[arg(long, default_value = "1M", value_name = "SIZE")]
    pub bs: String,
    /// Copy only this many blocks of --bs.
    #[arg(long)]
    pub count: Option<u64>,
    /// Skip this many --bs blocks at the start of the source.
    #[arg(long, default_value_t = 0)]
    pub skip: u64,
    /// Skip this many --bs blocks at the start of the destination.
    #[arg(long, default_value_t = 0)]
    pub seek: u64,
    /// Commands in flight to a LUN.
    #[arg(long, default_value_t = 8)]
    pub depth: usize,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

enum Src {
    Lun {
        s: Session,
        lun: u16,
        bs: u32,
        size: u64,
    },
    File {
        f: tokio::fs::File,
        size: Option<u64>,
    },
    Stdin(tokio::io::Stdin),
}

enum Dst {
    Lun {
        s: Session,
        lun: u16,
        bs: u32,
        size: u64,
    },
    File(tokio::fs::File),
    Stdout(tokio::io::Stdout),
}

fn is_url(s: &str) -> bool {
    s.starts_with("iscsi://")
}

fn io_err(what: &str, e: std::io::Error) -> CliError {
    CliError::Io(format!("{what}: {e}"))
}

pub async fn run(opts: &CommonOpts, args: Args) -> CliResult {
    let bs = parse_size(&args.bs).map_err(CliError::Usage)?;
    if bs == 0 || bs > (64 << 20) {
        return Err(CliError::Usage(format!(
            "--bs {bs}: must be from 1 byte to 64M"
        )));
    }
    let depth = args.depth.clamp(1, 128);
    let mut src = if is_url(&args.input) {
        let (s, lun, _) = open(&args.input, opts).await?;
        let cap = s.read_capacity(lun).await?;
        Src::Lun {
            s,
            lun,
            bs: cap.block_size,
            size: cap.bytes(),
        }
    } else if args.input == "-" {
        Src::Stdin(tokio::io::stdin())
    } else {
        let f = tokio::fs::File::open(&args.input)
            .await
            .map_err(|e| io_err(&format!("cannot open {}", args.input), e))?;
        let md = f.metadata().await.map_err(|e| io_err(&args.input, e))?;
        Src::File {
            f,
            size: md.is_file().then_some(md.len()),
        }
    };
    let mut dst = if is_url(&args.output) {
        let (s, lun, _) = open(&args.output, opts).await?;
        let cap = s.read_capacity(lun).await?;
        Dst::Lun {
            s,
            lun,
            bs: cap.block_size,
            size: cap.bytes(),
        }
    } else if args.output == "-" {
        Dst::Stdout(tokio::io::stdout())
    } else {
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(args.seek == 0 && args.count.is_none())
            .open(&args.output)
            .await
            .map_err(|e| io_err(&format!("cannot open {}", args.output), e))?;
        Dst::File(f)
    };
    for lun_bs in [src_bs(&src), dst_bs(&dst)].into_iter().flatten() {
        if bs % u64::from(lun_bs) != 0 {
            return Err(CliError::Usage(format!(
                "--bs {bs} is not a multiple of the LUN block size {lun_bs}"
            )));
        }
    }
    let src_off = args
        .skip
        .checked_mul(bs)
        .ok_or_else(|| CliError::Usage("--skip too large".into()))?;
    let dst_off = args
        .seek
        .checked_mul(bs)
        .ok_or_else(|| CliError::Usage("--seek too large".into()))?;
    // How much to copy.
    let src_avail = match &src {
        Src::Lun { size, .. } => Some(size.saturating_sub(src_off)),
        Src::File { size, .. } => size.map(|s| s.saturating_sub(src_off)),
        Src::Stdin(_) => None,
    };
    let wanted = args.count.map(|c| c.saturating_mul(bs));
    let total = match (wanted, src_avail) {
        (Some(w), Some(a)) => Some(w.min(a)),
        (Some(w), None) => Some(w),
        (None, a) => a,
    };
    if let (Dst::Lun { size, .. }, Some(t)) = (&dst, total) {
        if dst_off + t > *size {
            return Err(CliError::Usage(format!(
                "copy of {t} bytes at offset {dst_off} does not fit the {size}-byte destination LUN"
            )));
        }
    }
    match &mut src {
        Src::File { f, .. } if src_off > 0 => {
            f.seek(std::io::SeekFrom::Start(src_off))
                .await
                .map_err(|e| io_err("seek in source", e))?;
        }
        Src::Stdin(s) if src_off > 0 => {
            let mut left = src_off;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let n = s
                    .read(&mut buf[..left.min(65536) as usize])
                    .await
                    .map_err(|e| io_err("stdin", e))?;
                if n == 0 {
                    break;
                }
                left -= n as u64;
            }
        }
        _ => {}
    }
    if let Dst::File(f) = &mut dst {
        if dst_off > 0 {
            f.seek(std::io::SeekFrom::Start(dst_off))
                .await
                .map_err(|e| io_err("seek in destination", e))?;
        }
    }
    let bar = (!args.no_progress && std::io::stderr().is_terminal()).then(|| {
        let b = match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new_spinner(),
        };
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let start = Instant::now();
    let copied = copy(
        &mut src,
        &mut dst,
        bs,
        src_off,
        dst_off,
        total,
        depth,
        bar.as_ref(),
    )
    .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    // Make the data durable on a LUN destination, then log out both sessions.
    let flushed = match &dst {
        Dst::Lun { s, lun, .. } if copied.is_ok() => s.flush(*lun).await.map_err(CliError::from),
        Dst::File(f) if copied.is_ok() => f
            .sync_all()
            .await
            .map_err(|e| io_err("fsync destination", e)),
        _ => Ok(()),
    };
    if let Dst::Stdout(o) = &mut dst {
        let _ = o.flush().await;
    }
    if let Src::Lun { s, .. } = &src {
        let _ = s.logout().await;
    }
    if let Dst::Lun { s, .. } = &dst {
        let _ = s.logout().await;
    }
    let copied = copied?;
    flushed?;
    let secs = start.elapsed().as_secs_f64().max(1e-6);
    eprintln!(
        "{copied} bytes ({}) copied, {secs:.3} s, {:.1} MiB/s",
        human_size(copied),
        copied as f64 / secs / 1048576.0
    );
    if let Some(w) = wanted {
        if copied < w {
            return Err(CliError::Io(format!(
                "short transfer: copied {copied} of {w} bytes requested"
            )));
        }
    }
    Ok(())
}

fn src_bs(s: &Src) -> Option<u32> {
    match s {
        Src::Lun { bs, .. } => Some(*bs),
        _ => None,
    }
}

fn dst_bs(d: &Dst) -> Option<u32> {
    match d {
        Dst::Lun { bs, .. } => Some(*bs),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn copy(
    src: &mut Src,
    dst: &mut Dst,
    bs: u64,
    src_off: u64,
    dst_off: u64,
    total: Option<u64>,
    depth: usize,
    bar: Option<&indicatif::ProgressBar>,
) -> CliResult<u64> {
    let mut reads: VecDeque<JoinHandle<Result<Bytes, oxiscsi_initiator::Error>>> = VecDeque::new();
    let mut writes: VecDeque<JoinHandle<Result<(), oxiscsi_initiator::Error>>> = VecDeque::new();
    let mut issued: u64 = 0; // bytes asked of the source
    let mut done: u64 = 0; // bytes handed to the destination
    let mut eof = false;
    loop {
        // Keep up to `depth` LUN reads in flight.
        if let Src::Lun {
            s, lun, bs: lbs, ..
        } = src
        {
            while reads.len() < depth && total.is_none_or(|t| issued < t) {
                let n = total.map_or(bs, |t| (t - issued).min(bs));
                let lba = (src_off + issued) / u64::from(*lbs);
                let blocks = n.div_ceil(u64::from(*lbs)) as u32;
                let (s, lun) = (s.clone(), *lun);
                reads.push_back(tokio::spawn(async move { s.read(lun, lba, blocks).await }));
                issued += n;
            }
        }
        let chunk: Bytes = match src {
            Src::Lun { .. } => match reads.pop_front() {
                Some(h) => h
                    .await
                    .map_err(|e| CliError::Io(format!("read task failed: {e}")))??,
                None => break,
            },
            Src::File { f, .. } => {
                let n = total.map_or(bs, |t| (t - done).min(bs));
                if n == 0 || eof {
                    break;
                }
                let buf = read_full(f, n as usize)
                    .await
                    .map_err(|e| io_err("read source", e))?;
                if (buf.len() as u64) < n {
                    eof = true;
                }
                Bytes::from(buf)
            }
            Src::Stdin(f) => {
                let n = total.map_or(bs, |t| (t - done).min(bs));
                if n == 0 || eof {
                    break;
                }
                let buf = read_full(f, n as usize)
                    .await
                    .map_err(|e| io_err("read stdin", e))?;
                if (buf.len() as u64) < n {
                    eof = true;
                }
                Bytes::from(buf)
            }
        };
        if chunk.is_empty() {
            break;
        }
        let len = chunk.len() as u64;
        match dst {
            Dst::Lun {
                s, lun, bs: lbs, ..
            } => {
                if !len.is_multiple_of(u64::from(*lbs)) {
                    return Err(CliError::Io(format!(
                        "short transfer: the last {len} bytes are not a whole number of {lbs}-byte blocks; \
                         nothing of them was written"
                    )));
                }
                let lba = (dst_off + done) / u64::from(*lbs);
                let (s, lun) = (s.clone(), *lun);
                if writes.len() >= depth {
                    if let Some(h) = writes.pop_front() {
                        h.await
                            .map_err(|e| CliError::Io(format!("write task failed: {e}")))??;
                    }
                }
                writes.push_back(tokio::spawn(async move { s.write(lun, lba, chunk).await }));
            }
            Dst::File(f) => f
                .write_all(&chunk)
                .await
                .map_err(|e| io_err("write destination", e))?,
            Dst::Stdout(o) => o
                .write_all(&chunk)
                .await
                .map_err(|e| io_err("write stdout", e))?,
        }
        done += len;
        if let Some(b) = bar {
            b.set_position(done);
        }
    }
    for h in writes {
        h.await
            .map_err(|e| CliError::Io(format!("write task failed: {e}")))??;
    }
    Ok(done)
}

async fn read_full<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    n: usize,
) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = r.read(&mut buf[got..]).await?;
        if k == 0 {
            break;
        }
        got += k;
    }
    buf.truncate(got);
    Ok(buf)
}
