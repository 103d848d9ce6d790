//! A real tgtd per test: its own portal port, control port and temp files, killed by
//! pid when the guard drops (also when the test panics).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxiscsi_initiator::SessionConfig;

pub const IQN: &str = "iqn.2026-11.test:tgt1";

pub struct Tgtd {
    child: Child,
    pub host: String,
    pub port: u16,
    pub ctl: u16,
    pub dir: tempfile::TempDir,
}

fn free_port(host: &str) -> u16 {
    let l = TcpListener::bind((host, 0)).expect("bind a free port on loopback");
    l.local_addr().expect("local addr").port()
}

impl Tgtd {
    /// Start tgtd on 127.0.0.1.
    pub fn start() -> Tgtd {
        Self::start_on("127.0.0.1")
    }

    /// Start tgtd on `host` (an IPv4 or IPv6 loopback address, without brackets).
    /// Retries with other ports when a port or control port is taken by a parallel test.
    pub fn start_on(host: &str) -> Tgtd {
        let mut last = String::new();
        for _ in 0..8 {
            match Self::try_start(host) {
                Ok(t) => return t,
                Err(e) => last = e,
            }
        }
        panic!("tgtd did not come up: {last}");
    }

    fn try_start(host: &str) -> Result<Tgtd, String> {
        let port = free_port(host);
        // The control port (a C short in tgtd) names its IPC socket; derive it from the
        // unique portal port.
        let ctl = 1000 + port % 30000;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let portal = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let log = std::fs::File::create(dir.path().join("tgtd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("tgtd")
            .args([
                "-f",
                "--iscsi",
                &format!("portal={portal}"),
                "-C",
                &ctl.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tgtd must be installed (apt-get install tgt; .ci/run does this)");
        let mut t = Tgtd {
            child,
            host: host.to_string(),
            port,
            ctl,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = t.child.try_wait() {
                return Err(format!("tgtd exited ({status}): {}", t.log()));
            }
            let ok = Command::new("tgtadm")
                .args([
                    "-C",
                    &ctl.to_string(),
                    "--lld",
                    "iscsi",
                    "--op",
                    "show",
                    "--mode",
                    "target",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok && std::net::TcpStream::connect(t.portal()).is_ok() {
                return Ok(t);
            }
            if Instant::now() > deadline {
                return Err(format!("tgtd not ready after 10 s: {}", t.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tgtd.log")).unwrap_or_default()
    }

    pub fn portal(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Run tgtadm against this instance; panics with its output on failure.
    pub fn adm(&self, args: &[&str]) {
        let out = Command::new("tgtadm")
            .args(["-C", &self.ctl.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()
            .expect("run tgtadm");
        assert!(
            out.status.success(),
            "tgtadm {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A target with LUNs 1.. of the given sizes (sparse files), open to all initiators.
    pub fn target(&self, tid: u32, iqn: &str, lun_sizes: &[u64]) -> Vec<PathBuf> {
        let tid_s = tid.to_string();
        self.adm(&[
            "--op", "new", "--mode", "target", "--tid", &tid_s, "-T", iqn,
        ]);
        let mut paths = Vec::new();
        for (i, size) in lun_sizes.iter().enumerate() {
            let p = self.dir.path().join(format!("t{tid}-lun{}.img", i + 1));
            let f = std::fs::File::create(&p).expect("create backing file");
            f.set_len(*size).expect("size backing file");
            let lun = (i + 1).to_string();
            self.adm(&[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                &tid_s,
                "--lun",
                &lun,
                "-b",
                p.to_str().expect("utf-8 temp path"),
            ]);
            paths.push(p);
        }
        self.adm(&[
            "--op", "bind", "--mode", "target", "--tid", &tid_s, "-I", "ALL",
        ]);
        paths
    }

    /// One-way CHAP account bound to `tid`.
    pub fn chap(&self, tid: u32, user: &str, secret: &str) {
        self.account(tid, user, secret, false);
    }

    /// The target's own (mutual, outgoing) CHAP account.
    pub fn mutual_chap(&self, tid: u32, user: &str, secret: &str) {
        self.account(tid, user, secret, true);
    }

    fn account(&self, tid: u32, user: &str, secret: &str, outgoing: bool) {
        // tgtadm creates outgoing accounts like any other and marks them at bind time.
        self.adm(&[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            user,
            "--password",
            secret,
        ]);
        let tid = tid.to_string();
        let mut bind = vec![
            "--op", "bind", "--mode", "account", "--tid", &tid, "--user", user,
        ];
        if outgoing {
            bind.push("--outgoing");
        }
        self.adm(&bind);
    }

    pub fn set(&self, tid: u32, key: &str, value: &str) {
        self.adm(&[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            &tid.to_string(),
            "-n",
            key,
            "-v",
            value,
        ]);
    }

    pub fn url(&self, iqn: &str, lun: u16) -> String {
        format!("iscsi://{}/{iqn}/{lun}", self.portal())
    }

    pub fn config(&self, iqn: &str) -> SessionConfig {
        let mut c = SessionConfig::new(self.portal(), iqn);
        c.initiator_name = "iqn.2026-11.test:oxiscsi-tests".into();
        c
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM (PEERS.md): SIGKILL by pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn seeded(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
