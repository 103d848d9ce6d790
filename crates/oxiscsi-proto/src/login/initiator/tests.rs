use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::mock::StepRng;

use super::*;
use crate::login::chap::{ChapAlgorithm, ChapCredentials};
use crate::pdu::LoginStatus;
use crate::text::parse_pairs;

fn cfg(chap: Option<ChapConfig>) -> LoginConfig {
    LoginConfig {
        initiator_name: "iqn.2026-11.test:ini".into(),
        initiator_alias: None,
        target_name: Some("iqn.2026-11.test:tgt".into()),
        session_type: SessionType::Normal,
        isid: Isid([0x80, 1, 2, 3, 4, 5]),
        tsih: 0,
        cid: 0,
        itt: 1,
        cmd_sn: SerialNumber(100),
        exp_stat_sn: SerialNumber(0),
        chap,
        operational: LoginConfig::default_operational(),
        timeout: Duration::from_secs(15),
    }
}

fn rsp(
    req: &LoginRequest,
    transit: bool,
    nsg: Stage,
    stat_sn: u32,
    keys: &[(&str, &str)],
) -> LoginResponse {
    LoginResponse {
        transit,
        continue_: false,
        csg: req.csg,
        nsg: if transit { nsg } else { req.csg },
        version_max: 0,
        version_active: 0,
        isid: req.isid,
        tsih: if transit && nsg == Stage::FullFeature {
            7
        } else {
            0
        },
        itt: req.itt,
        stat_sn: SerialNumber(stat_sn),
        exp_cmd_sn: SerialNumber(100),
        max_cmd_sn: SerialNumber(131),
        status: LoginStatus::SUCCESS,
        data: Bytes::from(encode_pairs(keys)),
    }
}

fn next(l: &mut InitiatorLogin) -> LoginRequest {
    match l.poll_transmit() {
        Some(Pdu::LoginRequest(r)) => r,
        other => panic!("expected a Login Request, got {other:?}"),
    }
}

fn keys(r: &LoginRequest) -> Vec<(String, String)> {
    parse_pairs(&r.data).unwrap()
}

fn get<'a>(k: &'a [(String, String)], name: &str) -> Option<&'a str> {
    k.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn tgt_ops() -> Vec<(&'static str, &'static str)> {
    vec![
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxConnections", "1"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "Yes"),
        ("MaxRecvDataSegmentLength", "8192"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("MaxOutstandingR2T", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("ErrorRecoveryLevel", "0"),
    ]
}

fn rng() -> Box<StepRng> {
    Box::new(StepRng::new(0x1234_5678, 0x0101_0101))
}

#[test]
fn auth_none_then_operational() {
    let now = Instant::now();
    let mut l = InitiatorLogin::new(cfg(None), now, rng()).unwrap();
    let r1 = next(&mut l);
    assert!(r1.transit && r1.csg == Stage::Security && r1.nsg == Stage::Operational);
    let k = keys(&r1);
    assert_eq!(get(&k, "AuthMethod"), Some("None"));
    assert_eq!(get(&k, "TargetName"), Some("iqn.2026-11.test:tgt"));
    assert_eq!(get(&k, "SessionType"), Some("Normal"));
    let step = l
        .handle_response(rsp(
            &r1,
            true,
            Stage::Operational,
            5,
            &[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")],
        ))
        .unwrap();
    assert!(matches!(step, LoginStep::Continue));
    let r2 = next(&mut l);
    assert_eq!(r2.csg, Stage::Operational);
    assert_eq!(r2.exp_stat_sn, SerialNumber(6));
    let k = keys(&r2);
    assert_eq!(get(&k, "InitialR2T"), Some("No"));
    assert_eq!(get(&k, "MaxRecvDataSegmentLength"), Some("262144"));
    let step = l
        .handle_response(rsp(&r2, true, Stage::FullFeature, 6, &tgt_ops()))
        .unwrap();
    let LoginStep::Complete(out) = step else {
        panic!("{step:?}")
    };
    assert_eq!(out.tsih, 7);
    assert_eq!(out.exp_stat_sn, SerialNumber(7));
    assert_eq!(out.cmd_sn, SerialNumber(100));
    assert!(out.params.initial_r2t);
    assert_eq!(out.params.max_xmit_data_segment_length, 8192);
    assert_eq!(out.params.first_burst_length, 65536);
    assert_eq!(out.params.target_portal_group_tag, Some(1));
}

fn chap_cfg(mutual: bool) -> ChapConfig {
    ChapConfig {
        initiator: ChapCredentials {
            user: "alice".into(),
            secret: b"initiator-secret".to_vec(),
        },
        target: mutual.then(|| ChapCredentials {
            user: "tgt".into(),
            secret: b"target-secret-1".to_vec(),
        }),
        algorithms: ChapConfig::DEFAULT_ALGORITHMS.to_vec(),
    }
}

fn run_chap(
    mutual: bool,
    target_answer: impl Fn(u8, &[u8]) -> Vec<(String, String)>,
) -> Result<LoginStep, LoginError> {
    let now = Instant::now();
    let mut l = InitiatorLogin::new(cfg(Some(chap_cfg(mutual))), now, rng()).unwrap();
    let r1 = next(&mut l);
    assert!(!r1.transit);
    assert_eq!(get(&keys(&r1), "AuthMethod"), Some("CHAP"));
    l.handle_response(rsp(
        &r1,
        false,
        Stage::Security,
        1,
        &[("AuthMethod", "CHAP")],
    ))
    .unwrap();
    let r2 = next(&mut l);
    assert_eq!(get(&keys(&r2), "CHAP_A"), Some("5,6,7,8"));
    let challenge = [9u8; 16];
    let c = crate::login::chap::encode_binary(&challenge);
    l.handle_response(rsp(
        &r2,
        false,
        Stage::Security,
        2,
        &[("CHAP_A", "5"), ("CHAP_I", "42"), ("CHAP_C", &c)],
    ))
    .unwrap();
    let r3 = next(&mut l);
    assert!(r3.transit);
    let k = keys(&r3);
    assert_eq!(get(&k, "CHAP_N"), Some("alice"));
    let expect = ChapAlgorithm::MD5.response(42, b"initiator-secret", &challenge);
    assert_eq!(
        get(&k, "CHAP_R"),
        Some(crate::login::chap::encode_binary(&expect).as_str())
    );
    let mut answer: Vec<(String, String)> = Vec::new();
    if mutual {
        let id: u8 = get(&k, "CHAP_I").unwrap().parse().unwrap();
        let ch = crate::login::chap::decode_binary(get(&k, "CHAP_C").unwrap()).unwrap();
        assert_ne!(ch, challenge.to_vec());
        answer = target_answer(id, &ch);
    } else {
        assert_eq!(get(&k, "CHAP_C"), None);
    }
    let ans: Vec<(&str, &str)> = answer
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    l.handle_response(rsp(&r3, true, Stage::Operational, 3, &ans))?;
    let r4 = next(&mut l);
    l.handle_response(rsp(&r4, true, Stage::FullFeature, 4, &tgt_ops()))
}

#[test]
fn chap_one_way() {
    let step = run_chap(false, |_, _| vec![]).unwrap();
    let LoginStep::Complete(out) = step else {
        panic!()
    };
    assert_eq!(out.chap, Some(ChapAlgorithm::MD5));
    assert!(!out.mutual);
}

#[test]
fn chap_mutual_ok_and_wrong() {
    let good = |id: u8, ch: &[u8]| {
        let r = ChapAlgorithm::MD5.response(id, b"target-secret-1", ch);
        vec![
            ("CHAP_N".to_string(), "tgt".to_string()),
            ("CHAP_R".to_string(), crate::login::chap::encode_binary(&r)),
        ]
    };
    let LoginStep::Complete(out) = run_chap(true, good).unwrap() else {
        panic!()
    };
    assert!(out.mutual);

    let bad = |id: u8, ch: &[u8]| {
        let r = ChapAlgorithm::MD5.response(id, b"wrong", ch);
        vec![
            ("CHAP_N".to_string(), "tgt".to_string()),
            ("CHAP_R".to_string(), crate::login::chap::encode_binary(&r)),
        ]
    };
    let err = run_chap(true, bad).unwrap_err();
    assert!(err.to_string().contains("mutual CHAP secret"), "{err}");
    let missing = |_: u8, _: &[u8]| vec![];
    let err = run_chap(true, missing).unwrap_err();
    assert!(
        err.to_string().contains("cannot prove its identity"),
        "{err}"
    );
}

#[test]
fn failure_status_in_words() {
    let mut l = InitiatorLogin::new(cfg(None), Instant::now(), rng()).unwrap();
    let r1 = next(&mut l);
    let mut r = rsp(&r1, false, Stage::Security, 0, &[]);
    r.status = LoginStatus::AUTHENTICATION_FAILURE;
    let e = l.handle_response(r).unwrap_err();
    assert_eq!(
        e.to_string(),
        "authentication failure (0x0201): check the CHAP user and secret"
    );
    assert!(e.is_auth());

    let mut l = InitiatorLogin::new(cfg(None), Instant::now(), rng()).unwrap();
    let r1 = next(&mut l);
    let mut r = rsp(&r1, false, Stage::Security, 0, &[]);
    r.status = LoginStatus::NOT_FOUND;
    let e = l.handle_response(r).unwrap_err();
    assert!(
        e.to_string().starts_with("target not found (0x0203)"),
        "{e}"
    );
}

#[test]
fn redirect() {
    let mut l = InitiatorLogin::new(cfg(None), Instant::now(), rng()).unwrap();
    let r1 = next(&mut l);
    let mut r = rsp(
        &r1,
        false,
        Stage::Security,
        0,
        &[("TargetAddress", "10.0.0.9:3261,2")],
    );
    r.status = LoginStatus::TARGET_MOVED_TEMPORARILY;
    match l.handle_response(r).unwrap() {
        LoginStep::Redirect { address, permanent } => {
            assert_eq!(address, "10.0.0.9:3261,2");
            assert!(!permanent);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn timeout() {
    let now = Instant::now();
    let mut l = InitiatorLogin::new(cfg(None), now, rng()).unwrap();
    let _ = next(&mut l);
    assert!(l.handle_timeout(now + Duration::from_secs(14)).is_ok());
    let e = l.handle_timeout(l.poll_timeout()).unwrap_err();
    assert!(matches!(e, LoginError::Timeout(_)));
}

#[test]
fn continued_response_text() {
    let mut l = InitiatorLogin::new(cfg(None), Instant::now(), rng()).unwrap();
    let r1 = next(&mut l);
    l.handle_response(rsp(
        &r1,
        true,
        Stage::Operational,
        1,
        &[("AuthMethod", "None")],
    ))
    .unwrap();
    let r2 = next(&mut l);
    let all = encode_pairs(&tgt_ops());
    let (a, b) = all.split_at(37);
    let mut p1 = rsp(&r2, false, Stage::Operational, 2, &[]);
    p1.continue_ = true;
    p1.data = Bytes::copy_from_slice(a);
    assert!(matches!(
        l.handle_response(p1).unwrap(),
        LoginStep::Continue
    ));
    let r3 = next(&mut l);
    assert!(
        !r3.transit && r3.data.is_empty(),
        "empty request asks for the rest"
    );
    let mut p2 = rsp(&r3, true, Stage::FullFeature, 3, &[]);
    p2.data = Bytes::copy_from_slice(b);
    let LoginStep::Complete(out) = l.handle_response(p2).unwrap() else {
        panic!()
    };
    assert_eq!(out.params.max_burst_length, 262144);
}

#[test]
fn hostile_responses() {
    // Wrong ITT.
    let mut l = InitiatorLogin::new(cfg(None), Instant::now(), rng()).unwrap();
    let r1 = next(&mut l);
    let mut r = rsp(&r1, true, Stage::Operational, 1, &[]);
    r.itt = 99;
    assert!(l
        .handle_response(r)
        .unwrap_err()
        .to_string()
        .contains("ITT"));
    // Version out of range.
    let mut l = InitiatorLogin::new(cfg(None), Instant::now(), rng()).unwrap();
    let r1 = next(&mut l);
    let mut r = rsp(&r1, true, Stage::Operational, 1, &[]);
    r.version_active = 3;
    assert!(l
        .handle_response(r)
        .unwrap_err()
        .to_string()
        .contains("version"));
    // Endless login.
    let mut l = InitiatorLogin::new(cfg(None), Instant::now(), rng()).unwrap();
    let mut sn = 1;
    let err = loop {
        let Some(Pdu::LoginRequest(req)) = l.poll_transmit() else {
            panic!()
        };
        match l.handle_response(rsp(&req, false, req.csg, sn, &[])) {
            Ok(_) => sn += 1,
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("round trips"), "{err}");
    // CHAP with an algorithm we did not offer.
    let mut c = chap_cfg(false);
    c.algorithms = vec![ChapAlgorithm::MD5];
    let mut l = InitiatorLogin::new(cfg(Some(c)), Instant::now(), rng()).unwrap();
    let r1 = next(&mut l);
    l.handle_response(rsp(
        &r1,
        false,
        Stage::Security,
        1,
        &[("AuthMethod", "CHAP")],
    ))
    .unwrap();
    let r2 = next(&mut l);
    let e = l
        .handle_response(rsp(
            &r2,
            false,
            Stage::Security,
            2,
            &[("CHAP_A", "7"), ("CHAP_I", "1"), ("CHAP_C", "0x00")],
        ))
        .unwrap_err();
    assert!(e.to_string().contains("did not offer"), "{e}");
}

#[test]
fn long_login_text_is_sent_with_the_c_bit() {
    // More than 8192 bytes of keys: the request is split with C=1 and T=0 on all but the
    // last PDU (§11.12.2), and the pieces join to the whole text.
    let mut c = cfg(None);
    c.initiator_alias = Some("a".repeat(5000));
    c.target_name = Some(format!("iqn.2026-11.test:{}", "t".repeat(4000)));
    let mut l = InitiatorLogin::new(c, Instant::now(), rng()).unwrap();
    let first = next(&mut l);
    let second = next(&mut l);
    assert!(first.continue_ && !first.transit && first.data.len() == 8192);
    assert!(!second.continue_ && second.transit);
    let mut all = first.data.to_vec();
    all.extend_from_slice(&second.data);
    let k = parse_pairs(&all).unwrap();
    assert_eq!(get(&k, "InitiatorAlias").map(str::len), Some(5000));
    assert_eq!(get(&k, "TargetName").map(str::len), Some(4017));
    assert!(l.poll_transmit().is_none());
}
