//! Target login against our own initiator login, in memory, and against crafted hostile
//! requests.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::login::chap::ChapConfig;
use crate::login::{InitiatorLogin, LoginConfig, LoginError, LoginStep};
use crate::text::parse_pairs;

const TGT: &str = "iqn.2026-11.test:tgt";
const INI: &str = "iqn.2026-11.test:ini";

struct Dir {
    chap: Option<TargetChap>,
}

impl Directory for Dir {
    fn admit(&self, _i: &str, st: SessionType, target: Option<&str>) -> Admission {
        if st == SessionType::Normal && target != Some(TGT) {
            return Admission::Refuse(LoginStatus::NOT_FOUND);
        }
        Admission::Accept {
            chap: self.chap.clone(),
            target_alias: Some("disk".into()),
        }
    }
    fn tsih(&self, _i: &str, _isid: Isid, requested: u16) -> Result<u16, LoginStatus> {
        if requested != 0 {
            return Err(LoginStatus::SESSION_DOES_NOT_EXIST);
        }
        Ok(42)
    }
}

fn creds(u: &str, s: &str) -> ChapCredentials {
    ChapCredentials {
        user: u.into(),
        secret: s.as_bytes().to_vec(),
    }
}

fn tcfg() -> TargetLoginConfig {
    TargetLoginConfig {
        operational: TargetLoginConfig::default_operational(),
        target_portal_group_tag: 1,
        timeout: Duration::from_secs(15),
        initial_stat_sn: SerialNumber(1000),
        queue_depth: 32,
    }
}

fn icfg(chap: Option<ChapConfig>) -> LoginConfig {
    LoginConfig {
        initiator_name: INI.into(),
        initiator_alias: None,
        target_name: Some(TGT.into()),
        session_type: SessionType::Normal,
        isid: Isid([0x80, 1, 2, 3, 4, 5]),
        tsih: 0,
        cid: 0,
        itt: 9,
        cmd_sn: SerialNumber(5),
        exp_stat_sn: SerialNumber(0),
        chap,
        operational: LoginConfig::default_operational(),
        timeout: Duration::from_secs(15),
    }
}

/// Run both logins against each other until one side ends.
fn pump(
    ini: &mut InitiatorLogin,
    tgt: &mut TargetLogin,
    dir: &Dir,
) -> (
    Result<Box<crate::login::LoginOutcome>, LoginError>,
    Option<TargetLoginStep>,
) {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..40 {
        let Some(req) = ini.poll_transmit() else {
            panic!("initiator has nothing to send");
        };
        let step = tgt.handle_pdu(req, dir, &mut rng);
        let failed = matches!(step, TargetLoginStep::Failed(_));
        let last = Some(step);
        while let Some(rsp) = tgt.poll_transmit() {
            match ini.handle_pdu(rsp) {
                Ok(LoginStep::Continue) => {}
                Ok(LoginStep::Complete(o)) => return (Ok(o), last),
                Ok(LoginStep::Redirect { .. }) => panic!("redirect"),
                Err(e) => return (Err(e), last),
            }
        }
        if failed {
            panic!("target failed without a response: {last:?}");
        }
    }
    panic!("login did not end");
}

fn complete(step: Option<TargetLoginStep>) -> Box<TargetLoginOutcome> {
    match step {
        Some(TargetLoginStep::Complete(o)) => o,
        other => panic!("target did not complete: {other:?}"),
    }
}

#[test]
fn none_login_reaches_full_feature_with_matching_params() {
    let now = Instant::now();
    let dir = Dir { chap: None };
    let mut ini = InitiatorLogin::new(icfg(None), now, Box::new(StdRng::seed_from_u64(1))).unwrap();
    let mut tgt = TargetLogin::new(tcfg(), now);
    let (i, t) = pump(&mut ini, &mut tgt, &dir);
    let i = i.unwrap();
    let t = complete(t);
    assert_eq!(i.tsih, 42);
    assert_eq!(t.tsih, 42);
    assert_eq!(t.initiator_name, INI);
    assert_eq!(t.target_name.as_deref(), Some(TGT));
    assert_eq!(t.exp_cmd_sn, SerialNumber(5));
    assert_eq!(i.cmd_sn, SerialNumber(5));
    assert_eq!(i.max_cmd_sn, SerialNumber(5 + 31));
    // StatSN continuity: the initiator expects what the target will send next.
    assert_eq!(i.exp_stat_sn, t.stat_sn);
    // Each side sends at most what the other declared.
    assert_eq!(t.params.max_xmit_data_segment_length, 262_144);
    assert_eq!(i.params.max_xmit_data_segment_length, 262_144);
    assert!(!t.params.initial_r2t && t.params.immediate_data);
    assert_eq!(i.params.initial_r2t, t.params.initial_r2t);
    assert_eq!(i.params.max_burst_length, t.params.max_burst_length);
    assert_eq!(i.params.first_burst_length, t.params.first_burst_length);
    assert_eq!(i.params.target_portal_group_tag, Some(1));
    assert!(t.chap.is_none());
}

#[test]
fn chap_all_algorithms_one_way_and_mutual() {
    for alg in ChapConfig::DEFAULT_ALGORITHMS {
        for mutual in [false, true] {
            let now = Instant::now();
            let dir = Dir {
                chap: Some(TargetChap {
                    initiator: creds("alice", "alicesecret12"),
                    mutual: mutual.then(|| creds("tgt", "targetsecret12")),
                    algorithms: ChapConfig::DEFAULT_ALGORITHMS.to_vec(),
                }),
            };
            let chap = ChapConfig {
                initiator: creds("alice", "alicesecret12"),
                target: mutual.then(|| creds("tgt", "targetsecret12")),
                algorithms: vec![alg],
            };
            let mut ini =
                InitiatorLogin::new(icfg(Some(chap)), now, Box::new(StdRng::seed_from_u64(2)))
                    .unwrap();
            let mut tgt = TargetLogin::new(tcfg(), now);
            let (i, t) = pump(&mut ini, &mut tgt, &dir);
            let i = i.unwrap_or_else(|e| panic!("{alg:?} mutual={mutual}: {e}"));
            let t = complete(t);
            assert_eq!(i.chap, Some(alg));
            assert_eq!(t.chap, Some(alg));
            assert_eq!(i.mutual, mutual);
            assert_eq!(t.mutual, mutual);
            assert_eq!(t.chap_user.as_deref(), Some("alice"));
        }
    }
}

#[test]
fn wrong_secret_and_missing_chap_fail_with_authentication_failure() {
    let now = Instant::now();
    let dir = Dir {
        chap: Some(TargetChap {
            initiator: creds("alice", "alicesecret12"),
            mutual: None,
            algorithms: ChapConfig::DEFAULT_ALGORITHMS.to_vec(),
        }),
    };
    let chap = ChapConfig {
        initiator: creds("alice", "wrongsecret12"),
        target: None,
        algorithms: ChapConfig::DEFAULT_ALGORITHMS.to_vec(),
    };
    let mut ini =
        InitiatorLogin::new(icfg(Some(chap)), now, Box::new(StdRng::seed_from_u64(3))).unwrap();
    let mut tgt = TargetLogin::new(tcfg(), now);
    let (i, t) = pump(&mut ini, &mut tgt, &dir);
    assert_eq!(
        i.unwrap_err(),
        LoginError::Status {
            status: LoginStatus::AUTHENTICATION_FAILURE
        }
    );
    assert!(matches!(t, Some(TargetLoginStep::Failed(_))));

    // No CHAP offered to a target that requires it.
    let mut ini = InitiatorLogin::new(icfg(None), now, Box::new(StdRng::seed_from_u64(3))).unwrap();
    let mut tgt = TargetLogin::new(tcfg(), now);
    let (i, _) = pump(&mut ini, &mut tgt, &dir);
    assert!(i.unwrap_err().is_auth());
}

#[test]
fn unknown_target_is_not_found() {
    let now = Instant::now();
    let dir = Dir { chap: None };
    let mut c = icfg(None);
    c.target_name = Some("iqn.2026-11.test:nope".into());
    let mut ini = InitiatorLogin::new(c, now, Box::new(StdRng::seed_from_u64(1))).unwrap();
    let mut tgt = TargetLogin::new(tcfg(), now);
    let (i, _) = pump(&mut ini, &mut tgt, &dir);
    assert_eq!(
        i.unwrap_err(),
        LoginError::Status {
            status: LoginStatus::NOT_FOUND
        }
    );
}

fn req(csg: Stage, nsg: Stage, transit: bool, keys: &[(&str, &str)]) -> LoginRequest {
    LoginRequest {
        transit,
        continue_: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: Isid([0x80, 0, 0, 0, 0, 1]),
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: SerialNumber(1),
        exp_stat_sn: SerialNumber(0),
        data: Bytes::from(encode_pairs(keys)),
    }
}

fn first_keys() -> Vec<(&'static str, &'static str)> {
    vec![
        ("InitiatorName", INI),
        ("SessionType", "Normal"),
        ("TargetName", TGT),
    ]
}

/// Feed one request; return the status of the single response.
fn status_of(
    tgt: &mut TargetLogin,
    dir: &Dir,
    r: LoginRequest,
) -> (LoginStatus, Vec<(String, String)>) {
    let mut rng = StdRng::seed_from_u64(9);
    let _ = tgt.handle_request(r, dir, &mut rng);
    match tgt.poll_transmit() {
        Some(Pdu::LoginResponse(rsp)) => (rsp.status, parse_pairs(&rsp.data).unwrap()),
        other => panic!("no response: {other:?}"),
    }
}

#[test]
fn hostile_requests_get_the_right_status() {
    let now = Instant::now();
    let dir = Dir { chap: None };
    let mut k = first_keys();
    k.push(("AuthMethod", "None"));

    // C and T both set.
    let mut r = req(Stage::Security, Stage::Operational, true, &k);
    r.continue_ = true;
    let (s, _) = status_of(&mut TargetLogin::new(tcfg(), now), &dir, r);
    assert_eq!(s, LoginStatus::INITIATOR_ERROR);

    // Version out of range.
    let mut r = req(Stage::Security, Stage::Operational, true, &k);
    r.version_min = 2;
    r.version_max = 2;
    let (s, _) = status_of(&mut TargetLogin::new(tcfg(), now), &dir, r);
    assert_eq!(s, LoginStatus::UNSUPPORTED_VERSION);

    // 4,096 unknown keys.
    let many: Vec<(String, String)> = (0..4096).map(|i| (format!("X-k{i}"), "v".into())).collect();
    let mut all: Vec<(String, String)> = k
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    all.extend(many);
    let mut r = req(Stage::Security, Stage::Operational, true, &[]);
    r.data = Bytes::from(encode_pairs(&all));
    let (s, _) = status_of(&mut TargetLogin::new(tcfg(), now), &dir, r);
    assert_eq!(s, LoginStatus::INITIATOR_ERROR);

    // A key twice.
    let mut twice = k.clone();
    twice.push(("HeaderDigest", "None"));
    twice.push(("HeaderDigest", "CRC32C"));
    let (s, _) = status_of(
        &mut TargetLogin::new(tcfg(), now),
        &dir,
        req(Stage::Security, Stage::Operational, true, &twice),
    );
    assert_eq!(s, LoginStatus::INITIATOR_ERROR);

    // Text without a final NUL.
    let mut r = req(Stage::Security, Stage::Operational, true, &k);
    let mut d = r.data.to_vec();
    d.pop();
    r.data = Bytes::from(d);
    let (s, _) = status_of(&mut TargetLogin::new(tcfg(), now), &dir, r);
    assert_eq!(s, LoginStatus::INITIATOR_ERROR);

    // A path-like or control-character target name.
    for bad in [
        "iqn.2026-11.test:../../etc/passwd",
        "iqn.2026-11.test:a\u{1}b",
        "/etc/passwd",
    ] {
        let kk = vec![
            ("InitiatorName", INI),
            ("SessionType", "Normal"),
            ("TargetName", bad),
            ("AuthMethod", "None"),
        ];
        let (s, _) = status_of(
            &mut TargetLogin::new(tcfg(), now),
            &dir,
            req(Stage::Security, Stage::Operational, true, &kk),
        );
        assert_eq!(s, LoginStatus::NOT_FOUND, "{bad:?}");
    }

    // No InitiatorName.
    let (s, _) = status_of(
        &mut TargetLogin::new(tcfg(), now),
        &dir,
        req(
            Stage::Security,
            Stage::Operational,
            true,
            &[("TargetName", TGT)],
        ),
    );
    assert_eq!(s, LoginStatus::MISSING_PARAMETER);

    // A non-login PDU first: fail, no response.
    let mut t = TargetLogin::new(tcfg(), now);
    let mut rng = StdRng::seed_from_u64(1);
    let step = t.handle_pdu(
        Pdu::NopOut(crate::pdu::NopOut {
            immediate: true,
            lun: crate::pdu::Lun(0),
            itt: 1,
            ttt: 0xffff_ffff,
            cmd_sn: SerialNumber(0),
            exp_stat_sn: SerialNumber(0),
            data: Bytes::new(),
        }),
        &dir,
        &mut rng,
    );
    assert!(matches!(step, TargetLoginStep::Failed(_)));
    assert!(t.poll_transmit().is_none());
}

/// Drive CHAP by hand up to the target's challenge; returns (target, alg id, challenge).
fn chap_until_challenge(dir: &Dir) -> (TargetLogin, u8, Vec<u8>) {
    let now = Instant::now();
    let mut t = TargetLogin::new(tcfg(), now);
    let mut k = first_keys();
    k.push(("AuthMethod", "CHAP,None"));
    let (s, keys) = status_of(
        &mut t,
        dir,
        req(Stage::Security, Stage::Security, false, &k),
    );
    assert_eq!(s, LoginStatus::SUCCESS);
    assert!(keys.contains(&("AuthMethod".into(), "CHAP".into())));
    let (s, keys) = status_of(
        &mut t,
        dir,
        req(Stage::Security, Stage::Security, false, &[("CHAP_A", "5")]),
    );
    assert_eq!(s, LoginStatus::SUCCESS);
    let get = |n: &str| keys.iter().find(|(k, _)| k == n).unwrap().1.clone();
    let id: u8 = get("CHAP_I").parse().unwrap();
    let ch = decode_binary(&get("CHAP_C")).unwrap();
    assert_eq!(ch.len(), CHALLENGE_LEN);
    (t, id, ch)
}

#[test]
fn chap_hostile_responses() {
    let dir = Dir {
        chap: Some(TargetChap {
            initiator: creds("alice", "alicesecret12"),
            mutual: Some(creds("tgt", "targetsecret12")),
            algorithms: vec![ChapAlgorithm::MD5],
        }),
    };
    let good =
        |id: u8, ch: &[u8]| encode_binary(&ChapAlgorithm::MD5.response(id, b"alicesecret12", ch));
    // Reflection: the initiator's challenge is ours.
    let (mut t, id, ch) = chap_until_challenge(&dir);
    let r = good(id, &ch);
    let c = encode_binary(&ch);
    let (s, _) = status_of(
        &mut t,
        &dir,
        req(
            Stage::Security,
            Stage::Operational,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "7"),
                ("CHAP_C", &c),
            ],
        ),
    );
    assert_eq!(s, LoginStatus::AUTHENTICATION_FAILURE);
    // CHAP_I over 255.
    let (mut t, id, ch) = chap_until_challenge(&dir);
    let r = good(id, &ch);
    let (s, _) = status_of(
        &mut t,
        &dir,
        req(
            Stage::Security,
            Stage::Operational,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "256"),
                ("CHAP_C", "0x0102030405060708"),
            ],
        ),
    );
    assert_eq!(s, LoginStatus::AUTHENTICATION_FAILURE);
    // CHAP_R of the wrong length, and bad hex / base64.
    for bad in ["0x0102", "0xzz", "0b!!!!", "nothex"] {
        let (mut t, _, _) = chap_until_challenge(&dir);
        let (s, _) = status_of(
            &mut t,
            &dir,
            req(
                Stage::Security,
                Stage::Operational,
                true,
                &[("CHAP_N", "alice"), ("CHAP_R", bad)],
            ),
        );
        assert_eq!(s, LoginStatus::AUTHENTICATION_FAILURE, "{bad}");
    }
}

#[test]
fn same_secret_both_ways_is_refused() {
    let dir = Dir {
        chap: Some(TargetChap {
            initiator: creds("alice", "samesecret1234"),
            mutual: Some(creds("tgt", "samesecret1234")),
            algorithms: vec![ChapAlgorithm::MD5],
        }),
    };
    let (mut t, id, ch) = chap_until_challenge(&dir);
    let r = encode_binary(&ChapAlgorithm::MD5.response(id, b"samesecret1234", &ch));
    let (s, _) = status_of(
        &mut t,
        &dir,
        req(
            Stage::Security,
            Stage::Operational,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &r),
                ("CHAP_I", "7"),
                ("CHAP_C", "0x0102030405060708"),
            ],
        ),
    );
    assert_ne!(s, LoginStatus::SUCCESS);
}

#[test]
fn continued_text_is_gathered() {
    let now = Instant::now();
    let dir = Dir { chap: None };
    let mut k = first_keys();
    k.push(("AuthMethod", "None"));
    let text = encode_pairs(&k);
    let (a, b) = text.split_at(10);
    let mut t = TargetLogin::new(tcfg(), now);
    let mut r1 = req(Stage::Security, Stage::Security, false, &[]);
    r1.continue_ = true;
    r1.data = Bytes::copy_from_slice(a);
    let (s, keys) = status_of(&mut t, &dir, r1);
    assert_eq!(s, LoginStatus::SUCCESS);
    assert!(keys.is_empty());
    let mut r2 = req(Stage::Security, Stage::Operational, true, &[]);
    r2.data = Bytes::copy_from_slice(b);
    let (s, keys) = status_of(&mut t, &dir, r2);
    assert_eq!(s, LoginStatus::SUCCESS);
    assert!(keys.contains(&("AuthMethod".into(), "None".into())));
}

#[test]
fn deadline_is_reported() {
    let now = Instant::now();
    let t = TargetLogin::new(tcfg(), now);
    assert!(!t.timed_out(now));
    assert!(t.timed_out(now + Duration::from_secs(16)));
}

#[test]
fn leaving_security_mid_chap_is_refused() {
    // Found by the target_login fuzz target: CHAP agreed, challenge sent, then the
    // initiator jumps to the operational stage and asks for full feature phase.
    let dir = Dir {
        chap: Some(TargetChap {
            initiator: creds("alice", "alicesecret12"),
            mutual: None,
            algorithms: vec![ChapAlgorithm::MD5],
        }),
    };
    let (mut t, _, _) = chap_until_challenge(&dir);
    let (s, _) = status_of(
        &mut t,
        &dir,
        req(
            Stage::Operational,
            Stage::FullFeature,
            true,
            &[("CHAP_N", "alice"), ("CHAP_R", "0x00")],
        ),
    );
    assert_eq!(s, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn redirect_carries_the_target_address() {
    struct Moved;
    impl Directory for Moved {
        fn admit(&self, _: &str, _: SessionType, _: Option<&str>) -> Admission {
            Admission::Redirect {
                address: "10.0.0.2:3260,1".into(),
                permanent: true,
            }
        }
        fn tsih(&self, _: &str, _: Isid, _: u16) -> Result<u16, LoginStatus> {
            Ok(1)
        }
    }
    let now = Instant::now();
    let mut ini = InitiatorLogin::new(icfg(None), now, Box::new(StdRng::seed_from_u64(1))).unwrap();
    let mut tgt = TargetLogin::new(tcfg(), now);
    let mut rng = StdRng::seed_from_u64(7);
    let req = ini.poll_transmit().unwrap();
    let _ = tgt.handle_pdu(req, &Moved, &mut rng);
    let rsp = tgt.poll_transmit().unwrap();
    assert!(tgt.poll_transmit().is_none(), "exactly one response");
    match ini.handle_pdu(rsp).unwrap() {
        LoginStep::Redirect { address, permanent } => {
            assert_eq!(address, "10.0.0.2:3260,1");
            assert!(permanent);
        }
        other => panic!("{other:?}"),
    }
}
