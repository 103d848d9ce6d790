//! The `oxiscsi target` binary against real peers: libiscsi's tools and its compliance
//! suite, our own tools, and kill -9 / restart / SIGTERM. `oxiscsi demo` end to end.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-11.rs.oxiscsi:cu";

fn ox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oxiscsi"))
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `oxiscsi target` as a child process, killed (SIGKILL) on drop.
struct Target {
    child: Child,
    port: u16,
}

impl Target {
    fn start(port: u16, extra: &[&str]) -> Target {
        let mut c = ox();
        c.args([
            "target",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--iqn",
            IQN,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut child = c.spawn().expect("start oxiscsi target");
        // It prints "listening on ..." once the portal is bound.
        let out = child.stdout.take().unwrap();
        let mut r = BufReader::new(out);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("listening on"),
            "unexpected first line: {line:?}"
        );
        // Keep draining its stdout so it never writes into a closed pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Target { child, port }
    }

    fn url(&self, lun: u16) -> String {
        format!("iscsi://127.0.0.1:{}/{IQN}/{lun}", self.port)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit up to `d`; the exit status if it ended.
    fn wait_for(&mut self, d: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[test]
fn demo_runs_on_the_embedded_default() {
    let (ok, out) = run(ox().args(["demo", "--mib", "8"]));
    assert!(ok, "{out}");
    assert!(out.contains("verified 8 MiB"), "{out}");
    assert!(out.contains("logout   ok"), "{out}");
    assert!(out.contains("MaxRecvDataSegmentLength="), "{out}");
}

#[test]
fn libiscsi_tools_and_ours_work_against_our_target() {
    let t = Target::start(free_port(), &["--lun", "1:mem:64M", "--lun", "2:mem:16M"]);
    let (ok, out) =
        run(Command::new("iscsi-ls").args(["-s", &format!("iscsi://127.0.0.1:{}", t.port)]));
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("Target:{IQN} Portal:127.0.0.1:{},1", t.port)),
        "{out}"
    );
    assert!(out.contains("Lun:1") && out.contains("Lun:2"), "{out}");
    let (ok, out) = run(Command::new("iscsi-inq").arg(t.url(1)));
    assert!(ok, "{out}");
    assert!(out.contains("Vendor:OXISCSI"), "{out}");
    let (ok, out) =
        run(Command::new("iscsi-perf").args(["-t", "1", "-m", "8", "-b", "8", "-r", &t.url(1)]));
    assert!(ok, "{out}");
    assert!(out.contains("iops average"), "{out}");
    // Our tools, with digests.
    let (ok, out) = run(ox().args([
        "--header-digest",
        "crc32c",
        "--data-digest",
        "crc32c",
        "readcap",
        &t.url(2),
    ]));
    assert!(ok, "{out}");
    assert!(out.contains("32768"), "{out}");
    let (ok, out) = run(ox().args(["perf", "-t", "1", "-m", "32", "--write", &t.url(1)]));
    assert!(ok, "{out}");
}

/// Known failures of libiscsi's compliance suite against our target, by suite.test.
/// Every other test must pass; this list only shrinks (issue 3 wants it empty, and it
/// is). Tests the suite skips because a command is not implemented are counted and
/// printed, not failed here: they are the remaining work of issue 3.
const KNOWN_FAILURES: &[&str] = &[];

#[test]
fn iscsi_test_cu_compliance_suite() {
    // A file LUN: exercises punch-hole, SEEK_DATA/SEEK_HOLE and APTPL persistence.
    let dir = std::env::temp_dir().join(format!("oxiscsi-cu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lun = format!("1:{},size=256M", dir.join("lun1.img").display());
    let t = Target::start(free_port(), &["--lun", &lun]);
    let o = Command::new("iscsi-test-cu")
        // The same LUN again as the "multipath" URL: the MultipathIO tests then run
        // over two sessions to one LU.
        .args(["-d", "-n", &t.url(1), &t.url(1)])
        .output()
        .expect("run iscsi-test-cu");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let summary: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("tests "))
        .collect();
    let skipped = out.lines().filter(|l| l.contains("[SKIPPED]")).count();
    println!(
        "iscsi-test-cu: {} | {skipped} skip messages",
        summary.join(" | ")
    );
    let mut failed: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("Suite ")?;
            let (suite, rest) = l.split_once(", Test ")?;
            let test = rest.strip_suffix(" had failures:")?;
            Some(format!("{suite}.{test}"))
        })
        .collect();
    failed.sort();
    failed.dedup();
    let unexpected: Vec<&String> = failed
        .iter()
        .filter(|f| !KNOWN_FAILURES.contains(&f.as_str()))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!summary.is_empty(), "no summary from iscsi-test-cu:\n{out}");
    assert!(
        unexpected.is_empty(),
        "new compliance failures: {unexpected:?}\n{}",
        out.lines()
            .filter(|l| l.contains("FAILED")
                || l.contains("had failures")
                || l.contains("CU_ASSERT"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn kill_9_then_restart_and_sigterm_stop() {
    let port = free_port();
    let mut t = Target::start(port, &["--lun", "1:mem:16M"]);
    let (ok, out) = run(Command::new("iscsi-inq").arg(t.url(1)));
    assert!(ok, "{out}");
    t.signal(libc::SIGKILL);
    assert!(t.wait_for(Duration::from_secs(5)).is_some());
    drop(t);
    // Same portal again: libiscsi and our tools get back in.
    let mut t = Target::start(port, &["--lun", "1:mem:16M"]);
    // And a libiscsi session that was running when the target died reconnects on its
    // own and carries on: iscsi-perf -l prints a line a second; after the kill -9 and
    // the restart there must be lines with I/O flowing again. (Whether iscsi-perf then
    // exits on its own depends on its NOP timer; we stop it ourselves.)
    let mut perf = Command::new("iscsi-perf")
        .args(["-l", "-t", "30", "-m", "8", "-b", "8", &t.url(1)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let out = perf.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    t.signal(libc::SIGKILL);
    assert!(t.wait_for(Duration::from_secs(5)).is_some());
    drop(t);
    std::thread::sleep(Duration::from_millis(300));
    let mut t = Target::start(port, &["--lun", "1:mem:16M"]);
    let restarted = lines.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(4500));
    let _ = perf.kill();
    let _ = perf.wait();
    let after: Vec<String> = lines.lock().unwrap()[restarted..].to_vec();
    let flowing = after
        .iter()
        .filter_map(|l| {
            let (_, rest) = l.split_once("iops current ")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .filter(|&iops| iops > 1000)
        .count();
    assert!(
        flowing >= 2,
        "libiscsi did not resume I/O after the restart: {after:?}"
    );
    let (ok, out) = run(Command::new("iscsi-inq").arg(t.url(1)));
    assert!(ok, "{out}");
    let (ok, out) = run(ox().args(["inq", &t.url(1)]));
    assert!(ok, "{out}");
    // SIGTERM with a session doing I/O: the target asks it to log out and exits in time.
    let mut perf = ox()
        .args(["perf", "-t", "30", "-m", "32", "--write", &t.url(1)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    t.signal(libc::SIGTERM);
    let status = t.wait_for(Duration::from_secs(15));
    assert!(
        status.is_some(),
        "target did not exit within 15 s of SIGTERM"
    );
    assert!(t0.elapsed() < Duration::from_secs(15));
    let p = perf.wait_timeout_or_kill(Duration::from_secs(20));
    assert!(p, "the initiator did not end after the target stopped");
}

trait WaitTimeout {
    fn wait_timeout_or_kill(&mut self, d: Duration) -> bool;
}

impl WaitTimeout for Child {
    fn wait_timeout_or_kill(&mut self, d: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            if self.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.kill();
        let _ = self.wait();
        false
    }
}

#[test]
fn config_file_and_sighup_reload() {
    let dir = std::env::temp_dir().join(format!("oxiscsi-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let file = dir.join("target.toml");
    let one = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\n\n[[target]]\niqn = \"{IQN}\"\n  [[target.lun]]\n  lun = 1\n  mem = \"16M\"\n"
    );
    std::fs::write(&file, &one).unwrap();
    let mut child = ox()
        .args(["target", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    std::thread::spawn(move || {
        while out
            .read_line(&mut String::new())
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    });
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let ls = || run(Command::new("iscsi-ls").arg(format!("iscsi://127.0.0.1:{port}"))).1;
    assert!(ls().contains(IQN));
    let hup = |c: &Child| {
        // SAFETY: kill(2) on our child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGHUP);
        }
    };
    let wait_for = |what: &str| -> String {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                if l.contains(what) {
                    return l;
                }
            }
        }
        panic!("no log line containing {what:?}");
    };
    // Add a second target, reload.
    let two = format!(
        "{one}\n[[target]]\niqn = \"{IQN}-two\"\n  [[target.lun]]\n  lun = 1\n  mem = \"4M\"\n"
    );
    std::fs::write(&file, &two).unwrap();
    hup(&child);
    wait_for("reloaded");
    let l = ls();
    assert!(l.contains(&format!("{IQN}-two")), "{l}");
    // A broken file is refused with file:line and the running configuration stays.
    std::fs::write(&file, format!("{two}\n[[target]]\niqn = 42\n")).unwrap();
    hup(&child);
    let msg = wait_for("reload refused");
    assert!(msg.contains("target.toml:"), "{msg}");
    let l = ls();
    assert!(l.contains(&format!("{IQN}-two")), "{l}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ipv6_and_chap_with_our_tools_and_libiscsi() {
    let port = {
        let l = TcpListener::bind("[::1]:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = ox();
    c.args([
        "target",
        "--listen",
        &format!("[::1]:{port}"),
        "--iqn",
        IQN,
        "--lun",
        "1:mem:16M",
    ])
    .args(["--chap", "alice:alicesecret12"])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains(&format!("[::1]:{port}")), "{line}");
    std::thread::spawn(move || {
        while out
            .read_line(&mut String::new())
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    });
    let url = |user: &str| format!("iscsi://{user}[::1]:{port}/{IQN}/1");
    // Secret in the URL, and from the environment with digests on.
    let (ok, o) = run(ox().args(["inq", &url("alice%alicesecret12@")]));
    assert!(ok, "{o}");
    assert!(o.contains("OXISCSI"), "{o}");
    let (ok, o) = run(ox().env("OXISCSI_CHAP_PASSWORD", "alicesecret12").args([
        "--header-digest",
        "crc32c",
        "--data-digest",
        "crc32c",
        "readcap",
        &url("alice@"),
    ]));
    assert!(ok, "{o}");
    // A wrong secret: exit code 4 and the words.
    let o = ox()
        .args(["inq", &url("alice%wrongsecret12@")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&o.stderr).contains("authentication failure (0x0201)"));
    // libiscsi over IPv6 with CHAP.
    let (ok, o) = run(Command::new("iscsi-inq").arg(url("alice%alicesecret12@")));
    assert!(ok, "{o}");
    let _ = child.kill();
    let _ = child.wait();
}
