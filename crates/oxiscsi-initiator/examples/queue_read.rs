//! Read the start of a LUN through a completion queue: 16 commands of 128 KiB kept in
//! flight from one task, without a future per command.
//!
//!     cargo run --release -p oxiscsi-initiator --example queue_read -- \
//!         iscsi://127.0.0.1:3260/iqn.2026-11.test:tgt1/1 [MIB]
//!
//! Prints the throughput and a checksum of what was read (compare two reads of the same
//! data, or a read after a write).

use std::time::Instant;

use oxiscsi_initiator::proto::pdu::{CdbBuf, Lun, ScsiStatus};
use oxiscsi_initiator::proto::session::Command;
use oxiscsi_initiator::scsi::cdb::Cdb;
use oxiscsi_initiator::{IscsiUrl, Session, SessionConfig};

const DEPTH: u64 = 16;
const IO_BYTES: u64 = 128 * 1024;

fn read16(lun: u16, lba: u64, blocks: u32) -> Command {
    let (cdb, len) = Cdb::Read16 {
        lba,
        blocks,
        fua: false,
        dpo: false,
    }
    .to_array();
    Command::new(Lun::from_number(lun), CdbBuf::from_array(cdb, len)).with_read(blocks * 512)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = IscsiUrl::parse(&args.next().ok_or("usage: queue_read URL [MIB]")?)?;
    let mib: u64 = args.next().map(|m| m.parse()).transpose()?.unwrap_or(64);
    let (Some(target), Some(lun)) = (url.target.clone(), url.lun) else {
        return Err("the URL needs a target and a LUN: iscsi://host/iqn/lun".into());
    };
    let session = Session::connect(SessionConfig::new(url.portal(), target)).await?;
    let cap = session.read_capacity(lun).await?;
    let bs = u64::from(cap.block_size);
    let total = (mib << 20).min(cap.bytes()) / IO_BYTES * IO_BYTES;
    let blocks = (IO_BYTES / bs) as u32;

    let t0 = Instant::now();
    let mut q = session.queue();
    let (mut next, mut read, mut sum) = (0u64, 0u64, 0u64);
    let mut done = Vec::new();
    while read < total {
        // Keep the queue full; each command's token is its offset.
        while next < total && q.in_flight() < DEPTH as usize {
            q.submit(next, read16(lun, next / bs, blocks))?;
            next += IO_BYTES;
        }
        q.next(&mut done).await;
        for c in done.drain(..) {
            let r = c.result?;
            if r.status != ScsiStatus::GOOD {
                return Err(format!("read at byte {}: {}", c.token, r.status).into());
            }
            // An order-independent checksum: completions come in any order.
            for (i, w) in r.data.chunks_exact(8).enumerate() {
                let word = u64::from_le_bytes(w.try_into()?);
                sum = sum.wrapping_add(word.rotate_left(((c.token / 8 + i as u64) % 64) as u32));
            }
            read += r.data.len() as u64;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "read {} MiB in {secs:.2} s ({:.0} MiB/s), checksum {sum:016x}",
        total >> 20,
        (total >> 20) as f64 / secs
    );
    session.logout().await?;
    Ok(())
}
