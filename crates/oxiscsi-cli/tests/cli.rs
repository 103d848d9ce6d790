//! The `oxiscsi` binary against a real tgtd: output, JSON and exit codes.

mod common;

use std::process::Command;

use common::{seeded, Tgtd, IQN};

fn oxiscsi(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oxiscsi"))
        .args(["--initiator-name", "iqn.2026-11.test:oxiscsi-cli"])
        .args(args)
        .env_remove("OXISCSI_CHAP_PASSWORD")
        .env_remove("OXISCSI_TARGET_CHAP_USER")
        .env_remove("OXISCSI_TARGET_CHAP_PASSWORD")
        .output()
        .expect("run oxiscsi")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn dd_file_to_lun_to_file_cmp() {
    let t = Tgtd::start();
    t.target(1, IQN, &[32 << 20]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let back = dir.path().join("back.bin");
    std::fs::write(&src, seeded(42, 24 << 20)).unwrap();
    let url = t.url(IQN, 1);
    let o = oxiscsi(&[
        "dd",
        "--if",
        src.to_str().unwrap(),
        "--of",
        &url,
        "--bs",
        "1M",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = oxiscsi(&[
        "dd",
        "--if",
        &url,
        "--of",
        back.to_str().unwrap(),
        "--bs",
        "256K",
        "--count",
        "96",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let cmp = Command::new("cmp").arg(&src).arg(&back).status().unwrap();
    assert!(cmp.success(), "cmp reports a difference");
    // skip/seek: copy 1 MiB from offset 2 MiB of the file to offset 4 MiB of the LUN.
    let o = oxiscsi(&[
        "dd",
        "--if",
        src.to_str().unwrap(),
        "--of",
        &url,
        "--bs",
        "1M",
        "--skip",
        "2",
        "--seek",
        "4",
        "--count",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let one = dir.path().join("one.bin");
    let o = oxiscsi(&[
        "dd",
        "--if",
        &url,
        "--of",
        one.to_str().unwrap(),
        "--bs",
        "1M",
        "--skip",
        "4",
        "--count",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(&one).unwrap(),
        seeded(42, 24 << 20)[2 << 20..3 << 20].to_vec()
    );
}

#[test]
fn dd_short_transfers_fail() {
    let t = Tgtd::start();
    t.target(1, IQN, &[4 << 20]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("odd.bin");
    std::fs::write(&src, seeded(1, 1000)).unwrap();
    let url = t.url(IQN, 1);
    // 1000 bytes is not a whole number of 512-byte blocks.
    let o = oxiscsi(&[
        "dd",
        "--if",
        src.to_str().unwrap(),
        "--of",
        &url,
        "--bs",
        "4K",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("short transfer"), "{}", text(&o));
    // Asking for more than the source has.
    let out = dir.path().join("out.bin");
    let o = oxiscsi(&[
        "dd",
        "--if",
        src.to_str().unwrap(),
        "--of",
        out.to_str().unwrap(),
        "--bs",
        "1K",
        "--count",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Past the end of the LUN.
    let o = oxiscsi(&[
        "dd",
        "--if",
        &url,
        "--of",
        out.to_str().unwrap(),
        "--bs",
        "1M",
        "--skip",
        "4",
        "--count",
        "1",
    ]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    // --bs not a multiple of the block size.
    let o = oxiscsi(&[
        "dd",
        "--if",
        &url,
        "--of",
        out.to_str().unwrap(),
        "--bs",
        "1000",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn ls_inq_readcap_json_and_text() {
    let t = Tgtd::start();
    t.target(1, IQN, &[8 << 20, 16 << 20]);
    let o = oxiscsi(&["ls", "-s", &format!("iscsi://{}", t.portal())]);
    assert!(o.status.success(), "{}", text(&o));
    let s = text(&o);
    assert!(s.contains(&format!("Target:{IQN} Portal:")), "{s}");
    assert!(
        s.contains("Lun:1    Type:disk (Size:8M)") && s.contains("Lun:2    Type:disk (Size:16M)"),
        "{s}"
    );
    let o = oxiscsi(&["ls", "-s", "--json", &format!("iscsi://{}", t.portal())]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("ls --json is JSON");
    assert_eq!(v[0]["luns"][2]["size_bytes"], 16 << 20);

    let o = oxiscsi(&["readcap", "--json", &t.url(IQN, 2)]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("readcap --json");
    assert_eq!(v["size_bytes"], 16 << 20);
    assert_eq!(v["block_size"], 512);

    let o = oxiscsi(&["inq", &t.url(IQN, 1)]);
    assert!(
        text(&o).contains("Vendor Identification: IET"),
        "{}",
        text(&o)
    );
    let o = oxiscsi(&["inq", "--page", "0x80", "--json", &t.url(IQN, 1)]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inq --json");
    assert!(
        v["unit_serial_number"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    let o = oxiscsi(&["inq", "--page", "0x83", &t.url(IQN, 1)]);
    assert!(
        o.status.success() && text(&o).contains("Device Identification"),
        "{}",
        text(&o)
    );
}

#[test]
fn perf_json_fields() {
    let t = Tgtd::start();
    t.target(1, IQN, &[16 << 20]);
    // Each way of issuing (a poller thread, the default; a completion queue from one
    // task; a task per slot), with reads dropped and kept, and writes.
    for extra in [
        &["-r"][..],
        &["--write"][..],
        &["--own-buffers"][..],
        &["-r", "--api", "queue"][..],
        &["--write", "--api", "queue"][..],
        &["--own-buffers", "--api", "queue"][..],
        &["-r", "--api", "tasks"][..],
        &["--write", "--api", "tasks"][..],
        &["--own-buffers", "--api", "tasks"][..],
    ] {
        let mut args = vec!["perf", "--json", "-t", "1", "-m", "4", "-b", "8"];
        args.extend_from_slice(extra);
        let url = t.url(IQN, 1);
        args.push(&url);
        let o = oxiscsi(&args);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("perf --json");
        for k in [
            "iops",
            "mib_per_s",
            "lat_p50_us",
            "lat_p99_us",
            "lat_p999_us",
        ] {
            assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} in {v}");
        }
        let api = match extra.iter().position(|a| *a == "--api") {
            Some(i) => extra[i + 1],
            None => "poller",
        };
        assert_eq!(v["api"], api, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
    }
}

#[test]
fn exit_codes() {
    let t = Tgtd::start();
    t.target(1, IQN, &[4 << 20]);
    t.chap(1, "alice", "alice-secret-123");
    // Usage.
    let o = oxiscsi(&["readcap", "http://nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = oxiscsi(&["bogus-subcommand"]);
    assert_eq!(o.status.code(), Some(2));
    // Login/auth: wrong secret in the URL.
    let url = format!("iscsi://alice%wrong-secret-1@{}/{IQN}/1", t.portal());
    let o = oxiscsi(&["readcap", &url]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        text(&o).contains("authentication failure (0x0201): check the CHAP user and secret"),
        "{}",
        text(&o)
    );
    assert!(
        !text(&o).contains("wrong-secret-1"),
        "secrets never printed: {}",
        text(&o)
    );
    // Secret from the environment.
    let url = format!("iscsi://alice@{}/{IQN}/1", t.portal());
    let o = Command::new(env!("CARGO_BIN_EXE_oxiscsi"))
        .args([
            "--initiator-name",
            "iqn.2026-11.test:oxiscsi-cli",
            "readcap",
            &url,
        ])
        .env("OXISCSI_CHAP_PASSWORD", "alice-secret-123")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // SCSI error: read past the end.
    let url = format!("iscsi://alice%alice-secret-123@{}/{IQN}/1", t.portal());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let o = oxiscsi(&[
        "dd",
        "--if",
        &url,
        "--of",
        out.to_str().unwrap(),
        "--bs",
        "512",
        "--skip",
        "8192",
        "--count",
        "1",
    ]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    // Connection: nothing listening.
    let o = oxiscsi(&["readcap", "iscsi://127.0.0.1:1/iqn.x:y/1"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // SCSI error with its words: LUN 9 does not exist.
    let url = format!("iscsi://alice%alice-secret-123@{}/{IQN}/9", t.portal());
    let o = oxiscsi(&["readcap", &url]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(text(&o).contains("ILLEGAL REQUEST"), "{}", text(&o));
}

#[test]
fn a_login_that_never_answers_ends_at_the_login_timeout() {
    // The tools run without tokio's timer (their deadlines are timerfds): a target that
    // accepts the connection and then says nothing must still end the login on time.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let hold = std::thread::spawn(move || {
        let (s, _) = silent.accept().unwrap();
        let _ = wait.recv();
        drop(s);
    });
    let t0 = std::time::Instant::now();
    let url = format!("iscsi://127.0.0.1:{port}/iqn.2026-11.test:silent/1");
    let o = oxiscsi(&["--login-timeout", "1", "readcap", &url]);
    let took = t0.elapsed();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert!(
        text(&o).contains("timed out") || text(&o).contains("timeout"),
        "{}",
        text(&o)
    );
    assert!(
        took >= std::time::Duration::from_secs(1) && took < std::time::Duration::from_secs(3),
        "took {took:?}"
    );
    drop(done);
    hold.join().unwrap();
}
