//! `oxiscsi demo`: the main job on an embedded default. Starts a target in this process
//! on 127.0.0.1 (a free port) with a RAM LUN, discovers it, logs in with the initiator,
//! writes, reads back and verifies data, prints the session and the throughput, logs
//! out.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args as ClapArgs;
use oxiscsi_initiator::{discover, Session, SessionConfig};
use oxiscsi_target::config::{Backing, LunSpec, TargetSpec};
use oxiscsi_target::{Server, TargetConfig};
use rand::{RngCore, SeedableRng};

use crate::common::{CliError, CliResult, CommonOpts};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Size of the RAM LUN, MiB.
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Data to write and verify, MiB.
    #[arg(long, default_value_t = 32)]
    pub mib: u64,
}

const IQN: &str = "iqn.2026-11.rs.oxiscsi:demo";

pub async fn run(opts: &CommonOpts, a: Args) -> CliResult {
    if a.mib == 0 || a.mib > a.size_mib {
        return Err(CliError::Usage(format!(
            "--mib {} must be 1..={} (the LUN size)",
            a.mib, a.size_mib
        )));
    }
    let cfg = TargetConfig {
        listen: vec!["127.0.0.1:0"
            .parse()
            .map_err(|_| CliError::Io("address".into()))?],
        targets: vec![TargetSpec {
            iqn: IQN.into(),
            alias: Some("oxiscsi demo".into()),
            luns: vec![LunSpec {
                lun: 1,
                backing: Backing::Mem {
                    size: a.size_mib << 20,
                },
                read_only: false,
            }],
            chap: None,
            mutual_chap: None,
            allow: Vec::new(),
            portal_groups: Vec::new(),
            redirect: None,
        }],
        ..TargetConfig::default()
    };
    let server = Server::bind(cfg)
        .await
        .map_err(|e| CliError::Io(format!("cannot start the embedded target: {e}")))?;
    let addr = server.local_addrs()[0];
    let handle = server.spawn();
    println!("target   {IQN} on {addr} (RAM LUN 1, {} MiB)", a.size_mib);

    let portal = addr.to_string();
    let found = discover(&portal).await?;
    for t in &found {
        let p: Vec<String> = t.portals.iter().map(|p| p.socket_addr_string()).collect();
        println!("discover {} at {}", t.name, p.join(", "));
    }
    let mut scfg = SessionConfig::new(portal.clone(), IQN);
    if let Some(n) = &opts.initiator_name {
        scfg.initiator_name = n.clone();
    }
    let s = Session::connect(scfg).await?;
    let info = s.info();
    println!(
        "session  initiator {} isid {} tsih {} portal {}",
        info.initiator_name, info.isid, info.tsih, info.portal
    );
    for (k, v) in info.params.describe() {
        println!("         {k}={v}");
    }
    let cap = s.read_capacity(1).await?;
    println!(
        "lun 1    {} blocks of {} bytes",
        cap.blocks(),
        cap.block_size
    );

    // Write seeded random data in 1 MiB commands, 8 in flight; read back; compare.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0c5c_5100);
    let mut data = vec![0u8; (a.mib << 20) as usize];
    rng.fill_bytes(&mut data);
    let data = Bytes::from(data);
    let chunk = 1usize << 20;
    let blocks_per = (chunk as u64 / u64::from(cap.block_size)) as u32;
    let t0 = Instant::now();
    let mut writes = Vec::new();
    for (i, c) in data.chunks(chunk).enumerate() {
        let s = s.clone();
        let part = data.slice_ref(c);
        writes.push(tokio::spawn(async move {
            s.write(1, i as u64 * u64::from(blocks_per), part).await
        }));
        if writes.len() >= 8 {
            join_first(&mut writes).await?;
        }
    }
    while !writes.is_empty() {
        join_first(&mut writes).await?;
    }
    s.flush(1).await?;
    let wdt = t0.elapsed();
    let t1 = Instant::now();
    let mut read_back = Vec::with_capacity(data.len());
    for i in 0..data.len() / chunk {
        let got = s
            .read(1, i as u64 * u64::from(blocks_per), blocks_per)
            .await?;
        read_back.extend_from_slice(&got);
    }
    let rdt = t1.elapsed();
    if read_back != data {
        let at = read_back.iter().zip(data.iter()).position(|(x, y)| x != y);
        return Err(CliError::Io(format!(
            "verify FAILED: data read back differs at byte {at:?}"
        )));
    }
    let mibs = |d: Duration| a.mib as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "verified {} MiB: write {:.0} MiB/s (QD8, 1 MiB), read {:.0} MiB/s (QD1, 1 MiB)",
        a.mib,
        mibs(wdt),
        mibs(rdt)
    );
    s.logout().await?;
    println!("logout   ok");
    handle.shutdown().await;
    Ok(())
}

async fn join_first(
    v: &mut Vec<tokio::task::JoinHandle<Result<(), oxiscsi_initiator::Error>>>,
) -> CliResult {
    let h = v.remove(0);
    h.await
        .map_err(|e| CliError::Io(format!("write task failed: {e}")))??;
    Ok(())
}
