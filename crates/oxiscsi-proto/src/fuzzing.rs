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
