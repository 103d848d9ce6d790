//! Login load generator for the target benchmark (bench/target_vs_tgtd.py):
//! `login_storm PORTAL IQN COUNT [TARGET-PID]` logs COUNT sessions in at once, prints
//! one JSON line with how long until all were in, how many failed, and (given the
//! target's pid) the target's CPU seconds during the storm; then logs them out.

use std::time::Instant;

use oxiscsi_initiator::{Session, SessionConfig};

fn cpu_secs(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the ")" that ends the command name: utime and stime are the 12th and 13th.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: login_storm PORTAL IQN COUNT [TARGET-PID]");
        std::process::exit(2);
    }
    let (portal, iqn) = (args[1].clone(), args[2].clone());
    let count: usize = args[3].parse().expect("COUNT is a number");
    let pid: Option<u32> = args.get(4).and_then(|p| p.parse().ok());
    oxiscsi_initiator::raise_fd_limit();
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        let (portal, iqn) = (portal.clone(), iqn.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = SessionConfig::new(portal, iqn);
            c.initiator_name = format!("iqn.2026-11.rs.oxiscsi:storm{i:05}");
            c.connection.nop_interval = None;
            Session::connect(c).await
        }));
    }
    let mut ok = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => ok.push(s),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu0;
    println!(
        "{{\"count\": {count}, \"ok\": {}, \"failed\": {failed}, \"seconds\": {secs:.3}, \"target_cpu_seconds\": {cpu:.3}, \"first_error\": {:?}}}",
        ok.len(),
        first_error.unwrap_or_default()
    );
    let mut outs = Vec::new();
    for s in ok {
        outs.push(tokio::spawn(async move { s.logout().await }));
    }
    for o in outs {
        let _ = o.await;
    }
}
