//! A login storm: 1,000 initiators log in at once while 1,000 more sockets sit idle or
//! send half a BHS. Every real login must succeed and run a command; the idle sockets
//! are closed at the login deadline; memory stays bounded (RSS per session reported).

use std::time::{Duration, Instant};

use oxiscsi_initiator::{Session, SessionConfig};
use oxiscsi_target::config::{Backing, LunSpec, TargetSpec};
use oxiscsi_target::{Server, TargetConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IQN: &str = "iqn.2026-11.rs.oxiscsi:storm";
const LOGINS: usize = 1000;
const IDLE: usize = 1000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            // Root may raise the hard limit too; 4,000+ sockets live in this process.
            r.rlim_cur = r.rlim_cur.max(16384);
            r.rlim_max = r.rlim_max.max(16384);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_logins_with_thousand_idle_sockets() {
    raise_fd_limit();
    let cfg = TargetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        targets: vec![TargetSpec {
            iqn: IQN.into(),
            alias: None,
            luns: vec![LunSpec {
                lun: 1,
                backing: Backing::Mem { size: 1 << 20 },
                read_only: false,
            }],
            chap: None,
            mutual_chap: None,
            allow: Vec::new(),
            portal_groups: Vec::new(),
            redirect: None,
        }],
        login_timeout: Duration::from_secs(4),
        ..TargetConfig::default()
    };
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addrs()[0];
    let h = server.spawn();
    let rss0 = rss_kib();

    // The idle crowd: half send nothing, half send 20 bytes of a 48-byte header.
    let mut idle = Vec::new();
    for i in 0..IDLE {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(&[0x43u8; 20]).await.unwrap();
        }
        idle.push(s);
    }

    // The storm.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..LOGINS {
        let portal = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = SessionConfig::new(portal, IQN);
            c.initiator_name = format!("iqn.2026-11.rs.oxiscsi:host{i:04}");
            c.connection.nop_interval = None;
            let s = Session::connect(c).await?;
            s.test_unit_ready(1).await?;
            Ok::<Session, oxiscsi_initiator::Error>(s)
        }));
    }
    let mut sessions = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(s) => sessions.push(s),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let storm = t0.elapsed();
    assert!(
        failures.is_empty(),
        "{} of {LOGINS} logins failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(h.sessions(), LOGINS);
    let rss1 = rss_kib();
    let per_session = (rss1.saturating_sub(rss0)) as f64 / LOGINS as f64;
    println!(
        "storm: {LOGINS} logins + TEST UNIT READY in {storm:?} with {IDLE} idle sockets; \
         RSS {rss0} KiB -> {rss1} KiB ({per_session:.1} KiB per session, initiator side included)"
    );
    // Both ends live in this process: bound what a session may cost on both together.
    assert!(per_session < 512.0, "{per_session:.1} KiB per session");

    // The idle sockets are closed by the target at the login deadline.
    let t1 = Instant::now();
    let mut closed = 0;
    for mut s in idle {
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(n)) => panic!("an idle socket got {n} bytes"),
            Err(_) => {}
        }
    }
    assert_eq!(
        closed,
        IDLE,
        "idle sockets left open after {:?}",
        t1.elapsed()
    );

    for s in sessions {
        let _ = s.logout().await;
    }
    h.shutdown().await;
}
