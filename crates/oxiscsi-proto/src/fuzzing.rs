//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the unit test that
//! replays their corpus (STYLE §12, §15). Each asserts properties, never just "no panic".

use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::digest::Digest;
use crate::login::{InitiatorLogin, LoginConfig, LoginOutcome, SessionType};
use crate::pdu::{Framer, Isid, Lun};
use crate::serial::SerialNumber;
use crate::session::{Command, ConnectionConfig, InitiatorConnection};
use crate::text::{encode_pairs, parse_pairs, Negotiator, OperationalParams, Role};

/// Decode PDUs from arbitrary bytes under every digest setting; whatever decodes must
/// survive encode → decode unchanged.
pub fn pdu(data: &[u8]) {
    for (hd, dd) in [
        (Digest::None, Digest::None),
        (Digest::Crc32c, Digest::None),
        (Digest::None, Digest::Crc32c),
        (Digest::Crc32c, Digest::Crc32c),
    ] {
        let framer = Framer {
            header_digest: hd,
            data_digest: dd,
            max_recv_data_segment: 65536,
        };
        let mut buf = BytesMut::from(data);
        while let Ok(Some(p)) = framer.decode(&mut buf) {
            let wire = Framer::encode(&p, hd, dd).to_vec();
            let again = framer.decode(&mut BytesMut::from(&wire[..]));
            assert_eq!(again, Ok(Some(p)), "PDU did not survive a round trip");
        }
    }
}

/// Parse text; what parses must round-trip, and a negotiator of either role must
/// answer it without panicking.
pub fn text(data: &[u8]) {
    if let Ok(pairs) = parse_pairs(data) {
        assert_eq!(
            parse_pairs(&encode_pairs(&pairs)).as_ref(),
            Ok(&pairs),
            "text did not round-trip"
        );
        for role in [Role::Initiator, Role::Target] {
            let mut n = Negotiator::new(
                role,
                data.first().is_some_and(|b| b & 1 == 1),
                &LoginConfig::default_operational(),
            );
            n.offer(&[
                "HeaderDigest",
                "MaxBurstLength",
                "InitialR2T",
                "ImmediateData",
            ]);
            let _ = n.handle(&pairs);
            let p = n.params();
            assert!(p.first_burst_length <= p.max_burst_length);
        }
    }
}

fn outcome() -> LoginOutcome {
    LoginOutcome {
        params: OperationalParams {
            max_xmit_data_segment_length: 8192,
            ..Default::default()
        },
        tsih: 1,
        isid: Isid([0x80, 0, 0, 0, 0, 1]),
        cid: 0,
        cmd_sn: SerialNumber(u32::MAX - 3),
        exp_stat_sn: SerialNumber(0),
        exp_cmd_sn: SerialNumber(u32::MAX - 3),
        max_cmd_sn: SerialNumber(4),
        chap: None,
        mutual: false,
    }
}

/// Feed arbitrary PDUs and clock ticks to an initiator connection with commands in
/// flight. It must never panic, and once closed it must hold no task.
pub fn initiator_connection(data: &[u8]) {
    let t0 = Instant::now();
    let mut c = InitiatorConnection::new(&outcome(), ConnectionConfig::default(), t0);
    let lun = Lun::from_number(1);
    let _ = c.submit(
        t0,
        Command::new(lun, vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 8, 0]).with_read(4096),
    );
    let _ = c.submit(
        t0,
        Command::new(lun, vec![0x2au8, 0, 0, 0, 0, 0, 0, 0, 64, 0])
            .with_data_out(vec![7u8; 32768].into()),
    );
    let framer = Framer {
        header_digest: Digest::None,
        data_digest: Digest::None,
        max_recv_data_segment: 65536,
    };
    let mut buf = BytesMut::from(data);
    let mut now = t0;
    loop {
        match framer.decode(&mut buf) {
            Ok(Some(p)) => c.handle_pdu(now, p),
            Ok(None) => break,
            Err(e) => {
                c.handle_frame_error(e);
                break;
            }
        }
        while c.poll_transmit().is_some() {}
        while c.poll_event().is_some() {}
        now += Duration::from_millis(700);
        c.handle_timeout(now);
    }
    now += Duration::from_secs(120);
    c.handle_timeout(now);
    while c.poll_event().is_some() {}
    if c.is_closed() {
        assert_eq!(c.in_flight(), 0, "a closed connection left tasks waiting");
    }
}

/// Feed arbitrary PDUs to an initiator login (AuthMethod None or CHAP).
pub fn initiator_login(data: &[u8]) {
    let chap = data
        .first()
        .is_some_and(|b| b & 1 == 1)
        .then(|| crate::login::ChapConfig {
            initiator: crate::login::ChapCredentials {
                user: "u".into(),
                secret: b"initiator-secret".to_vec(),
            },
            target: data.get(1).is_some_and(|b| b & 1 == 1).then(|| {
                crate::login::ChapCredentials {
                    user: "t".into(),
                    secret: b"target-secret-1".to_vec(),
                }
            }),
            algorithms: crate::login::ChapConfig::DEFAULT_ALGORITHMS.to_vec(),
        });
    let cfg = LoginConfig {
        initiator_name: "iqn.2026-11.fuzz:i".into(),
        initiator_alias: None,
        target_name: Some("iqn.2026-11.fuzz:t".into()),
        session_type: SessionType::Normal,
        isid: Isid([0x80, 0, 0, 0, 0, 1]),
        tsih: 0,
        cid: 0,
        itt: 1,
        cmd_sn: SerialNumber(1),
        exp_stat_sn: SerialNumber(0),
        chap,
        operational: LoginConfig::default_operational(),
        timeout: Duration::from_secs(15),
    };
    let rng = Box::new(rand::rngs::mock::StepRng::new(7, 13));
    let Ok(mut l) = InitiatorLogin::new(cfg, Instant::now(), rng) else {
        return;
    };
    let framer = Framer::default();
    let mut buf = BytesMut::from(data.get(2..).unwrap_or_default());
    while l.poll_transmit().is_some() {}
    while let Ok(Some(p)) = framer.decode(&mut buf) {
        if l.handle_pdu(p).is_err() {
            break;
        }
        while l.poll_transmit().is_some() {}
    }
}

/// Feed arbitrary PDUs and clock ticks to a target connection, running every command it
/// hands out. It must never panic; every PDU it sends must encode and decode unchanged;
/// it never holds more tasks than its window and immediate-command bound allow.
pub fn target_connection(data: &[u8]) {
    use crate::pdu::ScsiStatus;
    use crate::session::{ScsiOutcome, TargetConfig, TargetConnection, TargetEvent};
    let t0 = Instant::now();
    let params = OperationalParams {
        initial_r2t: data.first().is_some_and(|b| b & 1 == 1),
        immediate_data: data.first().is_some_and(|b| b & 2 == 2),
        max_burst_length: 16384,
        first_burst_length: 8192,
        max_outstanding_r2t: 2,
        max_recv_data_segment_length: 8192,
        max_xmit_data_segment_length: 4096,
        ..Default::default()
    };
    let depth = 8;
    let mut c = TargetConnection::new(
        params,
        TargetConfig {
            queue_depth: depth,
            max_write_len: 1 << 20,
            nop_interval: Some(Duration::from_secs(5)),
            nop_timeout: Duration::from_secs(5),
        },
        SerialNumber(u32::MAX - 2),
        SerialNumber(1),
        t0,
    );
    let framer = Framer {
        header_digest: Digest::None,
        data_digest: Digest::None,
        max_recv_data_segment: 8192,
    };
    let mut buf = BytesMut::from(data.get(1..).unwrap_or_default());
    let mut now = t0;
    loop {
        match framer.decode(&mut buf) {
            Ok(Some(p)) => c.handle_pdu(now, p),
            Ok(None) => break,
            Err(e) => {
                let resynced = e.resynced;
                c.handle_frame_error(e);
                if !resynced {
                    break;
                }
            }
        }
        while let Some(ev) = c.poll_event() {
            match ev {
                TargetEvent::Execute(t) => {
                    let n = (t.read_len as usize).min(20_000);
                    let out = ScsiOutcome {
                        status: if t.cdb.first() == Some(&0) {
                            ScsiStatus::CHECK_CONDITION
                        } else {
                            ScsiStatus::GOOD
                        },
                        sense: if t.cdb.first() == Some(&0) {
                            bytes::Bytes::from_static(&[0x70, 0, 5, 0, 0, 0, 0, 10])
                        } else {
                            bytes::Bytes::new()
                        },
                        data: vec![0xa5u8; n].into(),
                        write_len_needed: None,
                    };
                    c.complete(t.itt, out);
                }
                TargetEvent::Text { itt, pairs } => {
                    c.respond_text(itt, &pairs);
                }
                TargetEvent::Reset { .. } | TargetEvent::Close { .. } => {}
            }
        }
        assert!(
            c.active_tasks() <= depth as usize + crate::session::target::MAX_IMMEDIATE,
            "more tasks than the window allows: {}",
            c.active_tasks()
        );
        while let Some(p) = c.poll_transmit() {
            let wire = Framer::encode(&p, Digest::None, Digest::None).to_vec();
            let back = Framer {
                max_recv_data_segment: 1 << 24,
                ..framer
            }
            .decode(&mut BytesMut::from(&wire[..]));
            assert_eq!(back, Ok(Some(p)), "a PDU we send did not round-trip");
        }
        now += Duration::from_millis(900);
        c.handle_timeout(now);
    }
}

/// Feed arbitrary PDUs to a target login (CHAP required or not). Never panics; a
/// completed login always names an initiator, and a Normal one the only target.
pub fn target_login(data: &[u8]) {
    use crate::login::target::{
        Admission, Directory, TargetChap, TargetLogin, TargetLoginConfig, TargetLoginStep,
    };
    use crate::pdu::LoginStatus;
    struct Dir(bool);
    impl Directory for Dir {
        fn admit(&self, _: &str, _: SessionType, target: Option<&str>) -> Admission {
            if target.is_some_and(|t| t != "iqn.2026-11.fuzz:t") {
                return Admission::Refuse(LoginStatus::NOT_FOUND);
            }
            Admission::Accept {
                chap: self.0.then(|| TargetChap {
                    initiator: crate::login::ChapCredentials {
                        user: "u".into(),
                        secret: b"initiator-secret".to_vec(),
                    },
                    mutual: Some(crate::login::ChapCredentials {
                        user: "t".into(),
                        secret: b"target-secret-1".to_vec(),
                    }),
                    algorithms: crate::login::ChapConfig::DEFAULT_ALGORITHMS.to_vec(),
                }),
                target_alias: None,
            }
        }
        fn tsih(&self, _: &str, _: Isid, requested: u16) -> Result<u16, LoginStatus> {
            if requested == 0 {
                Ok(1)
            } else {
                Err(LoginStatus::SESSION_DOES_NOT_EXIST)
            }
        }
    }
    let dir = Dir(data.first().is_some_and(|b| b & 1 == 1));
    let mut l = TargetLogin::new(
        TargetLoginConfig {
            operational: TargetLoginConfig::default_operational(),
            target_portal_group_tag: 1,
            timeout: Duration::from_secs(15),
            initial_stat_sn: SerialNumber(9),
            queue_depth: 32,
        },
        Instant::now(),
    );
    let mut rng = rand::rngs::mock::StepRng::new(3, 11);
    let framer = Framer::default();
    let mut buf = BytesMut::from(data.get(1..).unwrap_or_default());
    while let Ok(Some(p)) = framer.decode(&mut buf) {
        let step = l.handle_pdu(p, &dir, &mut rng);
        while l.poll_transmit().is_some() {}
        match step {
            TargetLoginStep::Continue => {}
            TargetLoginStep::Complete(o) => {
                assert!(!o.initiator_name.is_empty());
                if o.session_type == SessionType::Normal {
                    assert_eq!(o.target_name.as_deref(), Some("iqn.2026-11.fuzz:t"));
                }
                if dir.0 {
                    assert!(o.chap_user.is_some(), "CHAP required but skipped");
                }
                break;
            }
            TargetLoginStep::Failed(_) => break,
        }
    }
}
