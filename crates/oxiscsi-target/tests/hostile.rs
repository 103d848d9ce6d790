//! A hostile initiator, over raw sockets, against the real target server. Each case must
//! get the answer the RFC names (Reject, a login status, silence, or a closed
//! connection), write nothing it should not, and leave the process alive, other sessions
//! untouched and memory bounded.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use oxiscsi_initiator::proto::digest::Digest;
use oxiscsi_initiator::proto::login::chap::encode_binary;
use oxiscsi_initiator::proto::login::{
    ChapAlgorithm, InitiatorLogin, LoginConfig, LoginStep, SessionType,
};
use oxiscsi_initiator::proto::pdu::*;
use oxiscsi_initiator::proto::text::{encode_pairs, parse_pairs};
use oxiscsi_initiator::proto::SerialNumber;
use oxiscsi_initiator::{Session, SessionConfig};
use oxiscsi_target::config::{Backing, LunSpec, TargetSpec};
use oxiscsi_target::{Server, ServerHandle, TargetConfig};
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IQN: &str = "iqn.2026-11.rs.oxiscsi:hostile";
const INI: &str = "iqn.2026-11.rs.oxiscsi:attacker";

async fn start(chap: bool, max_logins: usize) -> (ServerHandle, String) {
    let cfg = TargetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        targets: vec![TargetSpec {
            iqn: IQN.into(),
            alias: None,
            luns: vec![LunSpec {
                lun: 1,
                backing: Backing::Mem { size: 4 << 20 },
                read_only: false,
            }],
            chap: chap.then(|| oxiscsi_initiator::proto::login::ChapCredentials {
                user: "alice".into(),
                secret: b"alicesecret12".to_vec(),
            }),
            mutual_chap: None,
            allow: Vec::new(),
            portal_groups: Vec::new(),
            redirect: None,
        }],
        max_logins_in_progress: max_logins,
        login_timeout: Duration::from_secs(3),
        ..TargetConfig::default()
    };
    let s = Server::bind(cfg).await.unwrap();
    let a = s.local_addrs()[0].to_string();
    (s.spawn(), a)
}

/// A raw connection speaking PDUs.
struct Raw {
    sock: TcpStream,
    buf: BytesMut,
    rx: Framer,
    tx: (Digest, Digest),
    cmd_sn: SerialNumber,
    exp_stat_sn: SerialNumber,
}

impl Raw {
    async fn connect(portal: &str) -> Raw {
        Raw {
            sock: TcpStream::connect(portal).await.unwrap(),
            buf: BytesMut::new(),
            rx: Framer::default(),
            tx: (Digest::None, Digest::None),
            cmd_sn: SerialNumber(1),
            exp_stat_sn: SerialNumber(0),
        }
    }

    async fn send(&mut self, p: &Pdu) {
        let b = Framer::encode(p, self.tx.0, self.tx.1).to_vec();
        self.sock.write_all(&b).await.unwrap();
    }

    async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.sock.write_all(b).await;
    }

    /// The next PDU, or None when the target closed or stayed silent for `wait`.
    async fn recv(&mut self, wait: Duration) -> Option<Pdu> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(Some(p)) = self.rx.decode(&mut self.buf) {
                return Some(p);
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.sock.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// True when the target closed the connection within `wait`.
    async fn closed(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut b = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.sock.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Log in properly with our operational keys.
    async fn login(portal: &str, ops: &[(&'static str, &str)]) -> Raw {
        Raw::login_with(portal, ops, Isid([0x80, 9, 9, 9, 9, rand::random()])).await
    }

    /// Log in properly with our operational keys and this ISID.
    async fn login_with(portal: &str, ops: &[(&'static str, &str)], isid: Isid) -> Raw {
        let mut r = Raw::connect(portal).await;
        let mut operational = LoginConfig::default_operational();
        for (k, v) in ops {
            operational.retain(|(n, _)| n != k);
            operational.push((k, v.to_string()));
        }
        let mut l = InitiatorLogin::new(
            LoginConfig {
                initiator_name: INI.into(),
                initiator_alias: None,
                target_name: Some(IQN.into()),
                session_type: SessionType::Normal,
                isid,
                tsih: 0,
                cid: 0,
                itt: 1,
                cmd_sn: SerialNumber(1),
                exp_stat_sn: SerialNumber(0),
                chap: None,
                operational,
                timeout: Duration::from_secs(5),
            },
            std::time::Instant::now(),
            Box::new(rand::rngs::StdRng::seed_from_u64(1)),
        )
        .unwrap();
        loop {
            while let Some(p) = l.poll_transmit() {
                r.send(&p).await;
            }
            let rsp = r
                .recv(Duration::from_secs(5))
                .await
                .expect("login response");
            match l.handle_pdu(rsp).unwrap() {
                LoginStep::Continue => {}
                LoginStep::Complete(o) => {
                    r.rx = Framer {
                        header_digest: o.params.header_digest,
                        data_digest: o.params.data_digest,
                        max_recv_data_segment: o.params.max_recv_data_segment_length,
                    };
                    r.tx = (o.params.header_digest, o.params.data_digest);
                    r.cmd_sn = o.cmd_sn;
                    r.exp_stat_sn = o.exp_stat_sn;
                    return r;
                }
                LoginStep::Redirect { .. } => panic!("redirect"),
            }
        }
    }

    fn cmd(
        &mut self,
        itt: u32,
        write: bool,
        lba: u32,
        blocks: u16,
        imm: Bytes,
        final_: bool,
    ) -> Pdu {
        let mut cdb = vec![0u8; 10];
        cdb[0] = if write { 0x2a } else { 0x28 };
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.next();
        Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_,
            read: !write,
            write,
            attr: TaskAttr::Simple,
            lun: Lun::from_number(1),
            itt,
            expected_data_transfer_length: u32::from(blocks) * 512,
            cmd_sn: sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: cdb.into(),
            bidi_read_length: None,
            data: imm,
        })
    }
}

/// The server still serves a fresh, well-behaved session: write, read back.
async fn alive(portal: &str) {
    let s = Session::connect(SessionConfig::new(portal, IQN))
        .await
        .expect("a good login still works");
    s.write(1, 4000, Bytes::from(vec![0x3cu8; 1024]))
        .await
        .unwrap();
    assert!(s.read(1, 4000, 2).await.unwrap().iter().all(|&b| b == 0x3c));
    s.logout().await.unwrap();
}

fn login_req(csg: Stage, nsg: Stage, transit: bool, data: Vec<u8>) -> Pdu {
    Pdu::LoginRequest(LoginRequest {
        transit,
        continue_: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: Isid([0x80, 1, 1, 1, 1, 1]),
        tsih: 0,
        itt: 7,
        cid: 0,
        cmd_sn: SerialNumber(1),
        exp_stat_sn: SerialNumber(0),
        data: Bytes::from(data),
    })
}

fn first_keys(target: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut k = vec![
        ("InitiatorName", INI),
        ("SessionType", "Normal"),
        ("TargetName", target),
    ];
    k.extend_from_slice(extra);
    encode_pairs(&k)
}

async fn login_status(portal: &str, pdus: Vec<Pdu>) -> Option<LoginStatus> {
    let mut r = Raw::connect(portal).await;
    let mut last = None;
    for p in pdus {
        r.send(&p).await;
        match r.recv(Duration::from_secs(3)).await {
            Some(Pdu::LoginResponse(rsp)) => {
                let st = rsp.status;
                last = Some(st);
                if !st.is_success() {
                    break;
                }
            }
            _ => return None,
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_logins_get_login_statuses() {
    let (h, portal) = start(false, 1024).await;
    let ie = LoginStatus::INITIATOR_ERROR;
    // Login text without a NUL at the end.
    let mut t = first_keys(IQN, &[("AuthMethod", "None")]);
    t.pop();
    assert_eq!(
        login_status(
            &portal,
            vec![login_req(Stage::Security, Stage::Operational, true, t)]
        )
        .await,
        Some(ie)
    );
    // A key over 63 bytes.
    let long = "X".repeat(64);
    let t = first_keys(IQN, &[("AuthMethod", "None"), (long.as_str(), "1")]);
    assert_eq!(
        login_status(
            &portal,
            vec![login_req(Stage::Security, Stage::Operational, true, t)]
        )
        .await,
        Some(ie)
    );
    // A key twice.
    let t = first_keys(
        IQN,
        &[
            ("AuthMethod", "None"),
            ("HeaderDigest", "None"),
            ("HeaderDigest", "None"),
        ],
    );
    assert_eq!(
        login_status(
            &portal,
            vec![login_req(Stage::Security, Stage::Operational, true, t)]
        )
        .await,
        Some(ie)
    );
    // 4,096 unknown keys, sent in C-bit pieces of 8 KiB.
    let mut all = first_keys(IQN, &[("AuthMethod", "None")]);
    for i in 0..4096 {
        all.extend_from_slice(format!("X-unknown-{i}=v\0").as_bytes());
    }
    let chunks: Vec<&[u8]> = all.chunks(8192).collect();
    let n = chunks.len();
    let pdus: Vec<Pdu> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let last = i + 1 == n;
            let mut p = login_req(Stage::Security, Stage::Operational, last, c.to_vec());
            if let Pdu::LoginRequest(r) = &mut p {
                r.continue_ = !last;
                if !last {
                    r.nsg = Stage::Security;
                }
            }
            p
        })
        .collect();
    assert_eq!(login_status(&portal, pdus).await, Some(ie));
    // C and T both set.
    let mut p = login_req(
        Stage::Security,
        Stage::Operational,
        true,
        first_keys(IQN, &[("AuthMethod", "None")]),
    );
    if let Pdu::LoginRequest(r) = &mut p {
        r.continue_ = true;
    }
    assert_eq!(login_status(&portal, vec![p]).await, Some(ie));
    // Version out of range.
    let mut p = login_req(
        Stage::Security,
        Stage::Operational,
        true,
        first_keys(IQN, &[("AuthMethod", "None")]),
    );
    if let Pdu::LoginRequest(r) = &mut p {
        r.version_min = 3;
        r.version_max = 3;
    }
    assert_eq!(
        login_status(&portal, vec![p]).await,
        Some(LoginStatus::UNSUPPORTED_VERSION)
    );
    // Path-like and control-character target names.
    for bad in [
        "iqn.2026-11.x:../../etc/passwd",
        "iqn.2026-11.x:a\u{7}b",
        "/etc/shadow",
    ] {
        let p = login_req(
            Stage::Security,
            Stage::Operational,
            true,
            first_keys(bad, &[("AuthMethod", "None")]),
        );
        assert_eq!(
            login_status(&portal, vec![p]).await,
            Some(LoginStatus::NOT_FOUND),
            "{bad:?}"
        );
    }
    // A non-login PDU first: the connection just closes.
    let mut r = Raw::connect(&portal).await;
    let mut p = r.cmd(5, false, 0, 1, Bytes::new(), true);
    if let Pdu::ScsiCommand(c) = &mut p {
        c.immediate = true;
    }
    r.send(&p).await;
    assert!(r.closed(Duration::from_secs(3)).await);
    // A data segment over the login limit (8 KiB), and the maximum 0xFFFFFF: closed
    // without reading it (nothing allocated for it).
    for dsl in [9000u32, 0xff_ffff] {
        let mut r = Raw::connect(&portal).await;
        let mut bhs = [0u8; 48];
        bhs[0] = 0x43;
        bhs[1] = 0x81;
        bhs[5..8].copy_from_slice(&dsl.to_be_bytes()[1..]);
        r.send_bytes(&bhs).await;
        assert!(r.closed(Duration::from_secs(3)).await, "DSL {dsl:#x}");
    }
    alive(&portal).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chap() {
    let (h, portal) = start(true, 1024).await;
    // Up to the target's challenge.
    async fn until_challenge(portal: &str) -> (Raw, u8, Vec<u8>) {
        let mut r = Raw::connect(portal).await;
        r.send(&login_req(
            Stage::Security,
            Stage::Security,
            false,
            first_keys(IQN, &[("AuthMethod", "CHAP")]),
        ))
        .await;
        let _ = r.recv(Duration::from_secs(3)).await.unwrap();
        r.send(&login_req(
            Stage::Security,
            Stage::Security,
            false,
            encode_pairs(&[("CHAP_A", "5")]),
        ))
        .await;
        let Some(Pdu::LoginResponse(rsp)) = r.recv(Duration::from_secs(3)).await else {
            panic!()
        };
        let k = parse_pairs(&rsp.data).unwrap();
        let get = |n: &str| k.iter().find(|(a, _)| a == n).unwrap().1.clone();
        let id: u8 = get("CHAP_I").parse().unwrap();
        let ch = oxiscsi_initiator::proto::login::chap::decode_binary(&get("CHAP_C")).unwrap();
        (r, id, ch)
    }
    async fn answer(mut r: Raw, keys: &[(&str, &str)]) -> LoginStatus {
        r.send(&login_req(
            Stage::Security,
            Stage::Operational,
            true,
            encode_pairs(keys),
        ))
        .await;
        match r.recv(Duration::from_secs(3)).await {
            Some(Pdu::LoginResponse(rsp)) => rsp.status,
            other => panic!("{other:?}"),
        }
    }
    let af = LoginStatus::AUTHENTICATION_FAILURE;
    // Reflected challenge.
    let (r, id, ch) = until_challenge(&portal).await;
    let resp = encode_binary(&ChapAlgorithm::MD5.response(id, b"alicesecret12", &ch));
    let c = encode_binary(&ch);
    assert_eq!(
        answer(
            r,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &resp),
                ("CHAP_I", "1"),
                ("CHAP_C", &c)
            ]
        )
        .await,
        af
    );
    // CHAP_I over 255.
    let (r, id, ch) = until_challenge(&portal).await;
    let resp = encode_binary(&ChapAlgorithm::MD5.response(id, b"alicesecret12", &ch));
    assert_eq!(
        answer(
            r,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &resp),
                ("CHAP_I", "300"),
                ("CHAP_C", "0x0102")
            ]
        )
        .await,
        af
    );
    // CHAP_R of the wrong length; bad hex; bad base64.
    for bad in ["0x00112233", "0xnothex", "0bAAA!"] {
        let (r, _, _) = until_challenge(&portal).await;
        assert_eq!(
            answer(r, &[("CHAP_N", "alice"), ("CHAP_R", bad)]).await,
            af,
            "{bad}"
        );
    }
    // Skipping the response by jumping to the operational stage.
    let (mut r, _, _) = until_challenge(&portal).await;
    r.send(&login_req(
        Stage::Operational,
        Stage::FullFeature,
        true,
        encode_pairs(&[("HeaderDigest", "None")]),
    ))
    .await;
    match r.recv(Duration::from_secs(3)).await {
        Some(Pdu::LoginResponse(rsp)) => assert_eq!(rsp.status, af),
        other => panic!("{other:?}"),
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_full_feature_pdus() {
    let (h, portal) = start(false, 1024).await;
    // Another session that must not notice anything.
    let bystander = Session::connect(SessionConfig::new(portal.clone(), IQN))
        .await
        .unwrap();
    bystander
        .write(1, 100, Bytes::from(vec![0x11u8; 512]))
        .await
        .unwrap();

    // Unknown opcode -> Reject (command not supported), session goes on.
    let mut r = Raw::login(&portal, &[]).await;
    let mut bhs = [0u8; 48];
    bhs[0] = 0x1d;
    bhs[16..20].copy_from_slice(&77u32.to_be_bytes());
    r.send_bytes(&bhs).await;
    match r.recv(Duration::from_secs(3)).await {
        Some(Pdu::Reject(j)) => assert_eq!(j.reason, RejectReason::COMMAND_NOT_SUPPORTED),
        other => panic!("{other:?}"),
    }
    // ... and serves a read afterwards.
    let p = r.cmd(0x20, false, 0, 1, Bytes::new(), true);
    r.send(&p).await;
    let mut got_status = false;
    while let Some(p) = r.recv(Duration::from_secs(3)).await {
        match p {
            Pdu::DataIn(d) if d.status_present => {
                got_status = true;
                break;
            }
            Pdu::ScsiResponse(_) => {
                got_status = true;
                break;
            }
            _ => {}
        }
    }
    assert!(got_status);

    // Duplicate ITT while the first runs: Reject. (Send both back to back.)
    let mut r = Raw::login(&portal, &[("ImmediateData", "No"), ("InitialR2T", "Yes")]).await;
    let a = r.cmd(0x30, true, 10, 8, Bytes::new(), true);
    let b = r.cmd(0x30, true, 20, 8, Bytes::new(), true);
    r.send(&a).await;
    r.send(&b).await;
    let mut saw_reject = false;
    for _ in 0..3 {
        if let Some(Pdu::Reject(j)) = r.recv(Duration::from_secs(2)).await {
            assert_eq!(j.reason, RejectReason::INVALID_PDU_FIELD);
            saw_reject = true;
            break;
        }
    }
    assert!(saw_reject, "duplicate ITT not rejected");

    // CmdSN beyond MaxCmdSN or behind ExpCmdSN: silently dropped, no answer.
    let mut r = Raw::login(&portal, &[]).await;
    let mut p = r.cmd(0x40, false, 0, 1, Bytes::new(), true);
    if let Pdu::ScsiCommand(c) = &mut p {
        c.cmd_sn = c.cmd_sn.plus(100_000);
    }
    r.send(&p).await;
    let mut p = r.cmd(0x41, false, 0, 1, Bytes::new(), true);
    if let Pdu::ScsiCommand(c) = &mut p {
        c.cmd_sn = c.cmd_sn.plus(u32::MAX - 5);
    }
    r.send(&p).await;
    assert!(
        r.recv(Duration::from_millis(500)).await.is_none(),
        "out-of-window command answered"
    );

    // Immediate data while ImmediateData=No: Reject, nothing written.
    let mut r = Raw::login(&portal, &[("ImmediateData", "No")]).await;
    let p = r.cmd(0x50, true, 100, 1, Bytes::from(vec![0xeeu8; 512]), true);
    r.send(&p).await;
    match r.recv(Duration::from_secs(3)).await {
        Some(Pdu::Reject(j)) => assert_eq!(j.reason, RejectReason::PROTOCOL_ERROR),
        other => panic!("{other:?}"),
    }

    // Data-Out with an unknown TTT, a DataSN gap, an offset past the burst, a burst
    // over MaxBurstLength: the write fails, nothing is written.
    for case in 0..4 {
        let mut r = Raw::login(
            &portal,
            &[
                ("ImmediateData", "No"),
                ("InitialR2T", "Yes"),
                ("MaxBurstLength", "4096"),
            ],
        )
        .await;
        let p = r.cmd(0x60, true, 100, 16, Bytes::new(), true);
        r.send(&p).await;
        let Some(Pdu::R2t(r2t)) = r.recv(Duration::from_secs(3)).await else {
            panic!("no R2T")
        };
        let (ttt, sn, off, len) = match case {
            0 => (0x0bad_0bad, 0, 0, 512),
            1 => (r2t.ttt, 3, 0, 512),
            2 => (r2t.ttt, 0, 8192 * 4, 512),
            _ => (r2t.ttt, 0, 0, 8192),
        };
        r.send(&Pdu::DataOut(DataOut {
            final_: true,
            lun: Lun::from_number(1),
            itt: 0x60,
            ttt,
            exp_stat_sn: r.exp_stat_sn,
            data_sn: sn,
            buffer_offset: off,
            data: Bytes::from(vec![0xeeu8; len]),
        }))
        .await;
        match r.recv(Duration::from_secs(3)).await {
            Some(Pdu::ScsiResponse(rsp)) => {
                assert_eq!(rsp.status, ScsiStatus::CHECK_CONDITION, "case {case}")
            }
            Some(Pdu::Reject(_)) | None => {}
            other => panic!("case {case}: {other:?}"),
        }
    }
    // LBA 100 still holds the bystander's 0x11, never 0xee.
    let d = bystander.read(1, 100, 1).await.unwrap();
    assert!(
        d.iter().all(|&b| b == 0x11),
        "a rejected write reached the medium"
    );

    // Header digest error with HeaderDigest=CRC32C: the connection is closed.
    let mut r = Raw::login(&portal, &[("HeaderDigest", "CRC32C")]).await;
    let p = r.cmd(0x70, false, 0, 1, Bytes::new(), true);
    let mut b = Framer::encode(&p, Digest::Crc32c, Digest::None).to_vec();
    b[49] ^= 0xff;
    r.send_bytes(&b).await;
    assert!(
        r.closed(Duration::from_secs(3)).await,
        "bad header digest not fatal"
    );

    // Bad TotalAHSLength (an AHS that overruns): Reject or close, never a crash.
    let mut r = Raw::login(&portal, &[]).await;
    let p = r.cmd(0x71, false, 0, 1, Bytes::new(), true);
    let mut b = Framer::encode(&p, Digest::None, Digest::None).to_vec();
    b[4] = 1; // 4 bytes of AHS announced, none well-formed
    b.extend_from_slice(&[0, 9, 1, 0]);
    r.send_bytes(&b).await;
    let _ = r.recv(Duration::from_millis(500)).await;

    // DataSegmentLength 0xFFFFFF in full feature phase: closed, nothing allocated.
    let mut r = Raw::login(&portal, &[]).await;
    let mut bhs = [0u8; 48];
    bhs[0] = 0x05;
    bhs[1] = 0x80;
    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    r.send_bytes(&bhs).await;
    assert!(r.closed(Duration::from_secs(3)).await);

    // Junk right after the final login PDU.
    let mut r = Raw::login(&portal, &[]).await;
    r.send_bytes(&[0xa5u8; 300]).await;
    let _ = r.recv(Duration::from_millis(500)).await;

    // The bystander never noticed.
    assert!(bystander
        .read(1, 100, 1)
        .await
        .unwrap()
        .iter()
        .all(|&b| b == 0x11));
    bystander.logout().await.unwrap();
    alive(&portal).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_past_the_bound_get_service_unavailable() {
    let (h, portal) = start(false, 2).await;
    // Two logins in progress (first request sent, never finished).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut r = Raw::connect(&portal).await;
        r.send(&login_req(
            Stage::Security,
            Stage::Security,
            false,
            first_keys(IQN, &[("AuthMethod", "None")]),
        ))
        .await;
        let _ = r.recv(Duration::from_secs(3)).await.unwrap();
        held.push(r);
    }
    let p = login_req(
        Stage::Security,
        Stage::Operational,
        true,
        first_keys(IQN, &[("AuthMethod", "None")]),
    );
    assert_eq!(
        login_status(&portal, vec![p]).await,
        Some(LoginStatus::SERVICE_UNAVAILABLE)
    );
    // Once they time out (3 s here), logins work again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    alive(&portal).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_sessions_per_initiator_and_reinstatement() {
    let (h, portal) = start(false, 1024).await;
    let isid_a = Isid([0x80, 1, 2, 3, 4, 5]);
    let isid_b = Isid([0x80, 1, 2, 3, 4, 6]);
    // Two sessions of one initiator, distinct ISIDs: both live.
    let mut a = Raw::login_with(&portal, &[], isid_a).await;
    let mut b = Raw::login_with(&portal, &[], isid_b).await;
    assert_eq!(h.sessions(), 2);
    for r in [&mut a, &mut b] {
        let p = r.cmd(0x10, false, 0, 1, Bytes::new(), true);
        r.send(&p).await;
        assert!(matches!(
            r.recv(Duration::from_secs(3)).await,
            Some(Pdu::DataIn(_)) | Some(Pdu::ScsiResponse(_))
        ));
    }
    // A new login with A's ISID and TSIH 0: session reinstatement (§6.3.5) ends A
    // before the new one is admitted.
    let mut a2 = Raw::login_with(&portal, &[], isid_a).await;
    assert!(
        a.closed(Duration::from_secs(3)).await,
        "old session still open after reinstatement"
    );
    let p = a2.cmd(0x11, false, 0, 1, Bytes::new(), true);
    a2.send(&p).await;
    assert!(a2.recv(Duration::from_secs(3)).await.is_some());
    // B was not touched.
    let p = b.cmd(0x12, false, 0, 1, Bytes::new(), true);
    b.send(&p).await;
    assert!(b.recv(Duration::from_secs(3)).await.is_some());
    assert_eq!(h.sessions(), 2);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_ignores_pings_is_closed() {
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
        nop_interval: Some(Duration::from_millis(500)),
        nop_timeout: Duration::from_millis(500),
        ..TargetConfig::default()
    };
    let s = Server::bind(cfg).await.unwrap();
    let portal = s.local_addrs()[0].to_string();
    let h = s.spawn();
    let mut r = Raw::login(&portal, &[]).await;
    // The target pings (NOP-In, ITT 0xffffffff); we never answer.
    match r.recv(Duration::from_secs(2)).await {
        Some(Pdu::NopIn(n)) => assert_eq!(n.itt, 0xffff_ffff),
        other => panic!("expected a NOP-In ping, got {other:?}"),
    }
    let t0 = std::time::Instant::now();
    assert!(
        r.closed(Duration::from_secs(3)).await,
        "dead connection not closed"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    // A well-behaved session (our initiator answers pings) stays.
    let good = Session::connect(SessionConfig::new(portal.clone(), IQN))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    good.read(1, 0, 1).await.unwrap();
    good.logout().await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initiator_that_stops_reading_is_closed_and_frees_its_buffers() {
    let cfg = TargetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        targets: vec![TargetSpec {
            iqn: IQN.into(),
            alias: None,
            luns: vec![LunSpec {
                lun: 1,
                backing: Backing::Mem { size: 16 << 20 },
                read_only: false,
            }],
            chap: None,
            mutual_chap: None,
            allow: Vec::new(),
            portal_groups: Vec::new(),
            redirect: None,
        }],
        nop_timeout: Duration::from_millis(800),
        ..TargetConfig::default()
    };
    let s = Server::bind(cfg).await.unwrap();
    let portal = s.local_addrs()[0].to_string();
    let h = s.spawn();
    let mut r = Raw::login(&portal, &[]).await;
    // 64 reads of 256 KiB (16 MiB) that we never read back: the socket buffers fill.
    for i in 0..64u32 {
        let p = r.cmd(0x100 + i, false, i * 512, 512, Bytes::new(), true);
        r.send(&p).await;
    }
    let t0 = std::time::Instant::now();
    while h.sessions() > 0 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.sessions(), 0, "a session that reads nothing was kept");
    // Others are still served.
    alive(&portal).await;
    drop(r);
    h.shutdown().await;
}
