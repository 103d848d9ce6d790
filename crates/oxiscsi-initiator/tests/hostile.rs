//! A hostile target: a small scripted fake that logs in properly and then breaks one rule.
//! Each case must give a clear error naming the PDU and the RFC rule, no panic, no hang
//! past the login timeout, and no task left waiting.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use oxiscsi_initiator::proto::pdu::*;
use oxiscsi_initiator::proto::text::{encode_pairs, parse_pairs, Negotiator, Role};
use oxiscsi_initiator::proto::{Digest, SerialNumber};
use oxiscsi_initiator::{DigestChoice, Error, Poller, Session, SessionConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake does once the first SCSI command arrives.
#[derive(Clone, Copy, Debug)]
enum Misbehave {
    /// Data-In with S set and F clear (§11.7.1).
    MalformedBhs,
    /// A BHS announcing the largest data segment the field holds (16 MiB - 1).
    OversizedSegment,
    /// Data-In whose data digest is wrong.
    BadDataDigest,
    /// SCSI Response for a task tag we never used.
    UnknownItt,
    /// SCSI Response whose StatSN skips ahead.
    StatSnJump,
    /// Half a BHS, then silence with the connection open.
    Stall,
    /// Never answers SCSI commands; answers task management with "function complete".
    Silent,
    /// A well-behaved answer sent slowly: the Data-In in 16 KiB pieces, 20 ms apart.
    Trickle,
    /// A well-behaved answer (control case).
    Nothing,
}

struct Fake {
    sock: TcpStream,
    buf: BytesMut,
    rx: Framer,
    tx: (Digest, Digest),
    stat_sn: u32,
}

impl Fake {
    /// The first connection to `l`, before login.
    async fn accept(l: &TcpListener) -> Option<Fake> {
        let (sock, _) = l.accept().await.ok()?;
        Some(Fake {
            sock,
            buf: BytesMut::new(),
            rx: Framer::default(),
            tx: (Digest::None, Digest::None),
            stat_sn: 100,
        })
    }

    async fn recv(&mut self) -> Option<Pdu> {
        loop {
            if let Ok(Some(p)) = self.rx.decode(&mut self.buf) {
                return Some(p);
            }
            if self.sock.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, p: &Pdu) {
        let _ = self
            .sock
            .write_all(&Framer::encode(p, self.tx.0, self.tx.1).to_vec())
            .await;
    }

    async fn send_raw(&mut self, b: &[u8]) {
        let _ = self.sock.write_all(b).await;
    }

    /// Answer the login with the same negotiation rules a target uses; `digests` makes
    /// the fake require CRC32C data digests.
    async fn login(&mut self, data_digest: bool) -> Option<()> {
        self.login_with(data_digest, &[]).await
    }

    /// As [`Fake::login`], with more keys of the target's own.
    async fn login_with(&mut self, data_digest: bool, extra: &[(&str, &str)]) -> Option<()> {
        let mut local = vec![
            ("MaxRecvDataSegmentLength", "8192".to_string()),
            (
                "DataDigest",
                if data_digest { "CRC32C" } else { "None" }.to_string(),
            ),
        ];
        local.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let mut neg = Negotiator::new(Role::Target, false, &local);
        loop {
            let Pdu::LoginRequest(req) = self.recv().await? else {
                return None;
            };
            let pairs = parse_pairs(&req.data).ok()?;
            let ops: Vec<(String, String)> = pairs
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "InitiatorName" | "SessionType" | "TargetName" | "AuthMethod"
                    )
                })
                .cloned()
                .collect();
            let mut reply = neg.handle(&ops).ok()?;
            if req.csg == Stage::Security {
                reply.push(("AuthMethod".into(), "None".into()));
            } else {
                reply.extend(neg.offer(&["MaxRecvDataSegmentLength"]));
            }
            let done = req.transit && req.nsg == Stage::FullFeature;
            let rsp = LoginResponse {
                transit: req.transit,
                continue_: false,
                csg: req.csg,
                nsg: req.nsg,
                version_max: 0,
                version_active: 0,
                isid: req.isid,
                tsih: if done { 9 } else { 0 },
                itt: req.itt,
                stat_sn: SerialNumber(self.stat_sn),
                exp_cmd_sn: req.cmd_sn,
                max_cmd_sn: req.cmd_sn.plus(31),
                status: LoginStatus::SUCCESS,
                data: Bytes::from(encode_pairs(&reply)),
            };
            self.stat_sn += 1;
            self.send(&Pdu::LoginResponse(rsp)).await;
            if done {
                let p = neg.params();
                self.rx = Framer {
                    header_digest: p.header_digest,
                    data_digest: p.data_digest,
                    max_recv_data_segment: 8192,
                };
                self.tx = (p.header_digest, p.data_digest);
                return Some(());
            }
        }
    }
}

/// A SCSI Response without data or residuals for command `c` (its `itt` given apart, so
/// a wrong one can be sent).
fn response(c: &ScsiCommand, itt: u32, stat_sn: u32, status: ScsiStatus) -> ScsiResponse {
    ScsiResponse {
        bidi_overflow: false,
        bidi_underflow: false,
        overflow: false,
        underflow: false,
        response: ServiceResponse::COMPLETED,
        status,
        itt,
        snack_tag: 0,
        stat_sn: SerialNumber(stat_sn),
        exp_cmd_sn: c.cmd_sn.next(),
        max_cmd_sn: c.cmd_sn.plus(32),
        exp_data_sn: 0,
        bidi_read_residual_count: 0,
        residual_count: 0,
        data: Bytes::new(),
    }
}

async fn fake_target(how: Misbehave, data_digest: bool) -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal = l.local_addr().unwrap().to_string();
    let h = tokio::spawn(async move {
        let Some(mut f) = Fake::accept(&l).await else {
            return;
        };
        if f.login(data_digest).await.is_none() {
            return;
        }
        while let Some(p) = f.recv().await {
            if let Pdu::TaskMgmtRequest(t) = &p {
                let r = TaskMgmtResponse {
                    response: TmfResponse::COMPLETE,
                    itt: t.itt,
                    stat_sn: SerialNumber(f.stat_sn),
                    exp_cmd_sn: t.cmd_sn,
                    max_cmd_sn: t.cmd_sn.plus(32),
                };
                f.stat_sn += 1;
                f.send(&Pdu::TaskMgmtResponse(r)).await;
                continue;
            }
            let Pdu::ScsiCommand(c) = p else { continue };
            let di = |f: &Fake, data: Bytes| DataIn {
                final_: true,
                ack: false,
                overflow: false,
                underflow: false,
                status_present: true,
                status: ScsiStatus::GOOD,
                lun: c.lun,
                itt: c.itt,
                ttt: RESERVED_TAG,
                stat_sn: SerialNumber(f.stat_sn),
                exp_cmd_sn: c.cmd_sn.next(),
                max_cmd_sn: c.cmd_sn.plus(32),
                data_sn: 0,
                buffer_offset: 0,
                residual_count: 0,
                data,
            };
            let resp = |itt: u32, stat_sn: u32| response(&c, itt, stat_sn, ScsiStatus::GOOD);
            let len = c.expected_data_transfer_length as usize;
            match how {
                Misbehave::Nothing => {
                    let d = di(&f, Bytes::from(vec![0xabu8; len]));
                    f.stat_sn += 1;
                    f.send(&Pdu::DataIn(d)).await;
                }
                Misbehave::Trickle => {
                    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                    let d = di(&f, Bytes::from(data));
                    f.stat_sn += 1;
                    let wire = Framer::encode(&Pdu::DataIn(d), f.tx.0, f.tx.1).to_vec();
                    let _ = f.sock.set_nodelay(true);
                    for piece in wire.chunks(16 * 1024) {
                        f.send_raw(piece).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Misbehave::MalformedBhs => {
                    let mut d = di(&f, Bytes::from(vec![0u8; len]));
                    d.final_ = true;
                    let mut wire = Framer::encode(&Pdu::DataIn(d), f.tx.0, f.tx.1).to_vec();
                    wire[1] &= !0x80; // clear F, keep S
                    f.send_raw(&wire).await;
                }
                Misbehave::OversizedSegment => {
                    let mut bhs = [0u8; 48];
                    Pdu::DataIn(di(&f, Bytes::new())).encode_bhs(&mut bhs);
                    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
                    f.send_raw(&bhs).await;
                }
                Misbehave::BadDataDigest => {
                    let d = di(&f, Bytes::from(vec![1u8; len]));
                    let mut wire = Framer::encode(&Pdu::DataIn(d), f.tx.0, f.tx.1).to_vec();
                    let n = wire.len();
                    wire[n - 1] ^= 0x5a;
                    f.send_raw(&wire).await;
                }
                Misbehave::Silent => {}
                Misbehave::Stall => {
                    f.send_raw(&[0x25u8; 20]).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Misbehave::UnknownItt => {
                    let r = resp(0xdead_beef, f.stat_sn);
                    f.send(&Pdu::ScsiResponse(r)).await;
                }
                Misbehave::StatSnJump => {
                    let r = resp(c.itt, f.stat_sn + 5);
                    f.send(&Pdu::ScsiResponse(r)).await;
                }
            }
        }
    });
    (portal, h)
}

/// A target that reads slowly: a small receive buffer, nothing read for a while after
/// the first command, then every write taken whole (unsolicited data, InitialR2T=No)
/// and checked against the pattern `i % 251` before its GOOD (CHECK CONDITION if any
/// byte differs).
async fn slow_reader_target() -> (String, tokio::task::JoinHandle<()>) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = sock.listen(1).unwrap();
    let portal = l.local_addr().unwrap().to_string();
    let h = tokio::spawn(async move {
        let Some(mut f) = Fake::accept(&l).await else {
            return;
        };
        if f.login_with(false, &[("InitialR2T", "No")]).await.is_none() {
            return;
        }
        // itt -> (command, bytes received, all of them as expected)
        let mut writes: std::collections::HashMap<u32, (ScsiCommand, usize, bool)> =
            Default::default();
        let mut paused = false;
        while let Some(p) = f.recv().await {
            let (itt, data, offset) = match p {
                Pdu::ScsiCommand(c) => {
                    if !paused {
                        paused = true;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let (itt, data) = (c.itt, c.data.clone());
                    writes.insert(itt, (c, 0, true));
                    (itt, data, 0)
                }
                Pdu::DataOut(d) => (d.itt, d.data, d.buffer_offset as usize),
                _ => continue,
            };
            let Some((c, got, ok)) = writes.get_mut(&itt) else {
                continue;
            };
            *ok &= data
                .iter()
                .enumerate()
                .all(|(i, b)| *b == ((offset + i) % 251) as u8);
            *got += data.len();
            if *got < c.expected_data_transfer_length as usize {
                continue;
            }
            let status = if *ok {
                ScsiStatus::GOOD
            } else {
                ScsiStatus::CHECK_CONDITION
            };
            let r = response(c, itt, f.stat_sn, status);
            f.stat_sn += 1;
            writes.remove(&itt);
            f.send(&Pdu::ScsiResponse(r)).await;
        }
    });
    (portal, h)
}

fn config(portal: &str) -> SessionConfig {
    let mut c = SessionConfig::new(portal, "iqn.2026-11.test:fake");
    c.initiator_name = "iqn.2026-11.test:hostile".into();
    c.login_timeout = Duration::from_secs(3);
    c
}

/// Run a read of 8 KiB against the fake and return the error, after checking that every
/// other command in flight also ended and the session refuses new work.
async fn provoke(how: Misbehave, digest: bool) -> Error {
    provoke_len(how, digest, 8192).await
}

/// As [`provoke`], with reads of `len` bytes (64 KiB and more take the in-place path).
async fn provoke_len(how: Misbehave, digest: bool, len: u32) -> Error {
    let (portal, fake) = fake_target(how, digest).await;
    let mut cfg = config(&portal);
    if digest {
        cfg.data_digest = DigestChoice::Crc32c;
    }
    let s = Session::connect(cfg)
        .await
        .expect("the fake's login is well-formed");
    let t0 = Instant::now();
    let bystanders: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                s.execute(
                    0,
                    vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 16, 0],
                    Bytes::new(),
                    len,
                )
                .await
            })
        })
        .collect();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        s.execute(
            0,
            vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 16, 0],
            Bytes::new(),
            len,
        ),
    )
    .await
    .expect("no hang: the command must end");
    for b in bystanders {
        // Every command in flight ends too (with the same failure or, if it was answered
        // first, successfully) — none is left waiting.
        let _ = tokio::time::timeout(Duration::from_secs(10), b)
            .await
            .expect("no task left waiting");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    let after = tokio::time::timeout(
        Duration::from_secs(5),
        s.execute(0, vec![0u8; 6], Bytes::new(), 0),
    )
    .await
    .expect("a closed session answers at once");
    assert!(
        after.is_err(),
        "the session must be closed after a protocol violation"
    );
    fake.abort();
    match r {
        Err(e) => e,
        Ok(ok) => panic!("expected a failure, got {ok:?}"),
    }
}

fn assert_names(e: &Error, pdu: &str, rule: &str) {
    let msg = e.to_string();
    assert!(
        msg.contains(pdu),
        "error should name the PDU {pdu:?}: {msg}"
    );
    assert!(msg.contains(rule), "error should cite {rule}: {msg}");
}

#[tokio::test]
async fn well_behaved_fake_works() {
    let (portal, fake) = fake_target(Misbehave::Nothing, false).await;
    let s = Session::connect(config(&portal)).await.unwrap();
    let r = s
        .execute(
            0,
            vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 16, 0],
            Bytes::new(),
            8192,
        )
        .await
        .unwrap();
    assert_eq!(r.data.len(), 8192);
    fake.abort();
}

/// A large Data-In that arrives slowly in pieces, then small ones: the initiator waits
/// for a large payload whole (SO_RCVLOWAT), and must go back to waking for every byte
/// between frames, or the small PDUs after it would never wake it.
async fn slow_pieces_then_small_pdus() {
    let (portal, fake) = fake_target(Misbehave::Trickle, false).await;
    let s = Session::connect(config(&portal)).await.unwrap();
    for len in [256 * 1024u32, 8192, 200 * 1024, 512, 96 * 1024, 4096] {
        let t0 = Instant::now();
        let read = s.execute(
            0,
            vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 16, 0],
            Bytes::new(),
            len,
        );
        let Ok(r) = tokio::time::timeout(Duration::from_secs(5), read).await else {
            panic!("read of {len} bytes stalled");
        };
        check_trickled(&r.unwrap().data, len, t0);
    }
    fake.abort();
}

/// A read of `len` bytes from the trickling fake, started at `t0`: the fake's data, and
/// no slower than its pieces (20 ms apart) allow, never a timer's worth.
fn check_trickled(data: &[u8], len: u32, t0: Instant) {
    assert_eq!(data.len(), len as usize);
    assert!(
        data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "read of {len} bytes: wrong data"
    );
    let pieces = (len as usize + 48).div_ceil(16 * 1024) as u32;
    let bound = Duration::from_millis(20) * pieces + Duration::from_secs(1);
    assert!(
        t0.elapsed() < bound,
        "read of {len} bytes took {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn large_payload_in_slow_pieces_then_small_pdus() {
    slow_pieces_then_small_pdus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payload_in_slow_pieces_then_small_pdus_multi_thread() {
    slow_pieces_then_small_pdus().await;
}

#[tokio::test]
async fn malformed_bhs() {
    let e = provoke(Misbehave::MalformedBhs, false).await;
    assert_names(&e, "SCSI Data-In", "§11.7.1");
}

#[tokio::test]
async fn data_segment_over_our_limit() {
    let e = provoke(Misbehave::OversizedSegment, false).await;
    assert_names(&e, "SCSI Data-In", "§13.12");
    assert!(
        e.to_string().contains("16777215") && e.to_string().contains("MaxRecvDataSegmentLength"),
        "{e}"
    );
}

#[tokio::test]
async fn bad_data_digest() {
    let e = provoke(Misbehave::BadDataDigest, true).await;
    assert_names(&e, "SCSI Data-In", "§7.8");
    assert!(e.to_string().contains("data digest mismatch"), "{e}");
}

#[tokio::test]
async fn unknown_itt() {
    let e = provoke(Misbehave::UnknownItt, false).await;
    assert_names(&e, "SCSI Response", "§11.2.1.8");
    assert!(e.to_string().contains("0xdeadbeef"), "{e}");
}

#[tokio::test]
async fn stat_sn_jump() {
    let e = provoke(Misbehave::StatSnJump, false).await;
    assert_names(&e, "SCSI Response", "§4.2.2.2");
}

#[tokio::test]
async fn login_that_never_answers() {
    assert_eq!(
        SessionConfig::new("x:1", "iqn.x:y").login_timeout,
        Duration::from_secs(15),
        "default login timeout"
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal = l.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        // Accept and read, never answer.
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = vec![0u8; 4096];
        while s.read(&mut b).await.map(|n| n > 0).unwrap_or(false) {}
    });
    let t0 = Instant::now();
    let e = Session::connect(config(&portal))
        .await
        .expect_err("must time out");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert!(e.is_login(), "{e}");
    assert!(e.to_string().contains("no login response within 3s"), "{e}");
    hold.abort();
}

#[tokio::test]
async fn garbage_instead_of_login_response() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal = l.local_addr().unwrap().to_string();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = vec![0u8; 4096];
        let _ = s.read(&mut b).await;
        // A Reject-opcode header with nonsense, then close.
        let mut junk = [0x5au8; 48];
        junk[0] = 0x3f;
        junk[4] = 0;
        junk[5..8].copy_from_slice(&[0, 0, 0]);
        let _ = s.write_all(&junk).await;
    });
    let e = Session::connect(config(&portal))
        .await
        .expect_err("must fail");
    assert!(
        e.to_string().contains("Reject") && e.to_string().contains("§6"),
        "{e}"
    );
    h.abort();
}

#[tokio::test]
async fn stalled_target_is_declared_dead_by_nop_timeout() {
    let (portal, fake) = fake_target(Misbehave::Stall, false).await;
    let mut cfg = config(&portal);
    cfg.connection.nop_interval = Some(Duration::from_secs(1));
    cfg.connection.nop_timeout = Duration::from_secs(1);
    let s = Session::connect(cfg).await.unwrap();
    let t0 = Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        s.execute(
            0,
            vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 16, 0],
            Bytes::new(),
            8192,
        ),
    )
    .await
    .expect("bounded by the NOP timer")
    .expect_err("a stalled target fails the command");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t0.elapsed()
    );
    assert_names(&e, "NOP-In", "§11.18");
    fake.abort();
}

/// A portal that answers every login with a redirect (status class 1) to `to`.
async fn redirector(to: String, permanent: bool) -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let portal = l.local_addr().unwrap().to_string();
    let to = if to.is_empty() { portal.clone() } else { to };
    let h = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else {
                return;
            };
            let mut f = Fake {
                sock,
                buf: BytesMut::new(),
                rx: Framer::default(),
                tx: (Digest::None, Digest::None),
                stat_sn: 0,
            };
            let Some(Pdu::LoginRequest(req)) = f.recv().await else {
                continue;
            };
            let rsp = LoginResponse {
                transit: false,
                continue_: false,
                csg: req.csg,
                nsg: req.csg,
                version_max: 0,
                version_active: 0,
                isid: req.isid,
                tsih: 0,
                itt: req.itt,
                stat_sn: SerialNumber(0),
                exp_cmd_sn: req.cmd_sn,
                max_cmd_sn: req.cmd_sn,
                status: if permanent {
                    LoginStatus::TARGET_MOVED_PERMANENTLY
                } else {
                    LoginStatus::TARGET_MOVED_TEMPORARILY
                },
                data: Bytes::from(encode_pairs(&[("TargetAddress", format!("{to},1"))])),
            };
            f.send(&Pdu::LoginResponse(rsp)).await;
        }
    });
    (portal, h)
}

#[tokio::test]
async fn login_redirect_is_followed() {
    for permanent in [false, true] {
        let (real, fake) = fake_target(Misbehave::Nothing, false).await;
        let (front, r) = redirector(real.clone(), permanent).await;
        let s = Session::connect(config(&front))
            .await
            .expect("login after redirect");
        assert_eq!(
            s.info().portal,
            real,
            "the session runs where the redirect pointed"
        );
        let d = s
            .execute(
                0,
                vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                Bytes::new(),
                512,
            )
            .await
            .unwrap();
        assert_eq!(d.data.len(), 512);
        r.abort();
        fake.abort();
    }
}

#[tokio::test]
async fn redirect_loop_stops_at_the_hop_limit() {
    let (front, r) = redirector(String::new(), false).await;
    let mut cfg = config(&front);
    cfg.max_redirects = 3;
    let t0 = Instant::now();
    let e = Session::connect(cfg)
        .await
        .expect_err("a redirect loop must end");
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(e.is_login(), "{e}");
    assert!(
        e.to_string().contains("redirected more than 3 times"),
        "{e}"
    );
    r.abort();
}

#[tokio::test]
async fn bad_data_digest_on_a_payload_read_in_place() {
    // 128 KiB Data-In: its payload is read straight into the command's buffer, and the
    // digest check must still catch the corruption.
    let e = provoke_len(Misbehave::BadDataDigest, true, 128 * 1024).await;
    assert_names(&e, "SCSI Data-In", "§7.8");
}

#[tokio::test]
async fn abort_one_command_in_flight() {
    let (portal, fake) = fake_target(Misbehave::Silent, false).await;
    let s = Session::connect(config(&portal)).await.unwrap();
    let read = vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 16, 0];
    let p = s.start(0, read.clone(), Bytes::new(), 8192).await.unwrap();
    let other = s.start(0, read, Bytes::new(), 8192).await.unwrap();
    assert_ne!(p.id(), other.id());
    assert_eq!(s.abort(&p).await.unwrap(), TmfResponse::COMPLETE);
    let e = tokio::time::timeout(Duration::from_secs(5), p.wait())
        .await
        .expect("ends at once")
        .unwrap_err();
    assert!(e.to_string().contains("aborted by task management"), "{e}");
    // The other command is untouched: still waiting for the (silent) target.
    let still = tokio::time::timeout(Duration::from_millis(300), other.wait()).await;
    assert!(still.is_err(), "only the aborted command may end");
    fake.abort();
}

/// Writes faster than the target reads: the socket fills, writing stops short, and the
/// driver must wait until the socket is writable again and go on where it stopped. 32
/// writes of 64 KiB (2 MiB) against a target with a 4 KiB receive buffer that reads
/// nothing for 300 ms: every write completes, every byte arrives as sent, and all of it
/// well before the session's 1 s task check, which would otherwise be what wakes a
/// driver that missed the socket turning writable (it then took 1.3 s).
async fn writes_wait_while_the_socket_is_full() {
    let (portal, fake) = slow_reader_target().await;
    let s = Session::connect(config(&portal)).await.unwrap();
    let t0 = Instant::now();
    let data = Bytes::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let writes: Vec<_> = (0..32u32)
        .map(|i| {
            let (s, data) = (s.clone(), data.clone());
            tokio::spawn(async move {
                let lba = (i * 128).to_be_bytes();
                let cdb = vec![0x2a, 0, lba[0], lba[1], lba[2], lba[3], 0, 0, 128, 0];
                s.execute(0, cdb, data, 0).await
            })
        })
        .collect();
    for (i, w) in writes.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .unwrap_or_else(|_| panic!("write {i} stalled"))
            .unwrap()
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        assert_eq!(
            r.status,
            ScsiStatus::GOOD,
            "write {i}: the data arrived changed"
        );
    }
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "2 MiB of writes took {:?}: the driver was not woken when the socket drained",
        t0.elapsed()
    );
    fake.abort();
}

#[tokio::test]
async fn writes_wait_while_the_socket_is_full_current_thread() {
    writes_wait_while_the_socket_is_full().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_while_the_socket_is_full_multi_thread() {
    writes_wait_while_the_socket_is_full().await;
}

/// Commands 0-3 all came back, each failed with an error naming `what`.
fn all_four_failed(done: &[oxiscsi_initiator::Completion], what: &str) {
    let mut tokens: Vec<u64> = done.iter().map(|c| c.token).collect();
    tokens.sort();
    assert_eq!(tokens, [0, 1, 2, 3]);
    for c in done {
        let e = c.result.as_ref().expect_err("the session failed");
        assert!(e.to_string().contains(what), "{e}");
    }
}

/// Commands in flight through a completion queue when the target breaks a rule: each
/// comes back failed with the reason (none is left waiting), a closed session refuses
/// new submissions, and an empty queue answers at once.
#[tokio::test]
async fn queued_commands_fail_with_the_session() {
    use oxiscsi_initiator::proto::session::Command;
    let (portal, fake) = fake_target(Misbehave::MalformedBhs, false).await;
    let s = Session::connect(config(&portal)).await.unwrap();
    let mut q = s.queue();
    let read = || {
        Command::new(
            Lun::from_number(0),
            vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 16, 0],
        )
        .with_read(8192)
    };
    for token in 0..4 {
        q.submit(token, read()).unwrap();
    }
    let mut done = Vec::new();
    while q.in_flight() > 0 {
        tokio::time::timeout(Duration::from_secs(10), q.next(&mut done))
            .await
            .expect("no hang: every queued command ends");
    }
    all_four_failed(&done, "SCSI Data-In");
    let e = q.submit(9, read()).unwrap_err();
    assert!(matches!(e.error, Error::Closed(_)), "{e}");
    assert!(e.command.is_some(), "a refused command is handed back");
    assert_eq!(q.next(&mut done).await, 0);
    fake.abort();
}

/// An 8 KiB READ(10) of LUN 0, as the fake answers it.
fn read_cmd(len: u32) -> oxiscsi_initiator::proto::session::Command {
    oxiscsi_initiator::proto::session::Command::new(
        Lun::from_number(0),
        vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 16, 0],
    )
    .with_read(len)
}

/// The caller-driven session (Poller) when the target breaks a rule: every command in
/// flight comes back failed with the reason, a closed session refuses new submissions
/// (handing the command back) and `service` then fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_commands_fail_with_the_session() {
    let (portal, fake) = fake_target(Misbehave::MalformedBhs, false).await;
    let mut p = Poller::connect(config(&portal)).await.unwrap();
    tokio::task::spawn_blocking(move || {
        for token in 0..4 {
            p.submit(token, read_cmd(8192)).unwrap();
        }
        let mut done = Vec::new();
        let t0 = Instant::now();
        while p.in_flight() > 0 {
            p.service(&mut done, Some(Duration::from_secs(1))).unwrap();
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "commands left waiting"
            );
        }
        all_four_failed(&done, "SCSI Data-In");
        assert!(p
            .closed_reason()
            .is_some_and(|r| r.contains("SCSI Data-In")));
        let e = p.submit(9, read_cmd(8192)).unwrap_err();
        assert!(matches!(e.error, Error::Closed(_)), "{e}");
        assert!(e.command.is_some(), "a refused command is handed back");
        let e = p.service(&mut done, None).unwrap_err();
        assert!(matches!(e, Error::Closed(_)), "{e}");
        let e = p.logout().expect_err("a failed session cannot log out");
        assert!(e.to_string().contains("SCSI Data-In"), "{e}");
    })
    .await
    .unwrap();
    fake.abort();
}

/// A target that stops mid-PDU: the Poller's own timer (a NOP-Out, then its timeout)
/// ends the wait of a caller blocked in `execute`, with the PDU and the rule named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_stalled_target_is_declared_dead_by_nop_timeout() {
    let (portal, fake) = fake_target(Misbehave::Stall, false).await;
    let mut cfg = config(&portal);
    cfg.connection.nop_interval = Some(Duration::from_secs(1));
    cfg.connection.nop_timeout = Duration::from_secs(1);
    let mut p = Poller::connect(cfg).await.unwrap();
    let (e, took) = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let e = p
            .execute(read_cmd(8192))
            .expect_err("a stalled target fails it");
        (e, t0.elapsed())
    })
    .await
    .unwrap();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_names(&e, "NOP-In", "§11.18");
    fake.abort();
}

/// Large payloads that arrive slowly in pieces, then small ones, through the Poller: it
/// waits for a large payload whole and must go back to waking for every byte between
/// frames (its socket is watched edge-triggered, so a wait after a read that left bytes
/// behind would never end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_large_payload_in_slow_pieces_then_small_pdus() {
    let (portal, fake) = fake_target(Misbehave::Trickle, false).await;
    let mut p = Poller::connect(config(&portal)).await.unwrap();
    tokio::task::spawn_blocking(move || {
        for len in [256 * 1024u32, 8192, 200 * 1024, 512, 96 * 1024, 4096] {
            let t0 = Instant::now();
            p.submit(u64::from(len), read_cmd(len)).unwrap();
            let mut done = Vec::new();
            let n = p.service(&mut done, Some(Duration::from_secs(5))).unwrap();
            assert_eq!(n, 1, "read of {len} bytes stalled");
            check_trickled(&done.pop().unwrap().result.unwrap().data, len, t0);
        }
    })
    .await
    .unwrap();
    fake.abort();
}
