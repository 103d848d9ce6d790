//! Round trips for every PDU type (property tests) and framing edge cases.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::digest::Digest;
use crate::serial::SerialNumber;

fn sn() -> impl Strategy<Value = SerialNumber> {
    any::<u32>().prop_map(SerialNumber)
}
fn lun() -> impl Strategy<Value = Lun> {
    any::<u64>().prop_map(Lun)
}
fn data(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}
fn stage() -> impl Strategy<Value = Stage> {
    prop_oneof![
        Just(Stage::Security),
        Just(Stage::Operational),
        Just(Stage::FullFeature)
    ]
}
fn attr() -> impl Strategy<Value = TaskAttr> {
    prop_oneof![
        Just(TaskAttr::Untagged),
        Just(TaskAttr::Simple),
        Just(TaskAttr::Ordered),
        Just(TaskAttr::HeadOfQueue),
        Just(TaskAttr::Aca),
    ]
}

prop_compose! {
    fn scsi_command()(immediate in any::<bool>(), final_ in any::<bool>(), read in any::<bool>(),
        write in any::<bool>(), attr in attr(), lun in lun(), itt in any::<u32>(),
        edtl in any::<u32>(), cmd_sn in sn(), exp_stat_sn in sn(),
        cdb_len in prop_oneof![Just(6usize), Just(10), Just(12), Just(16), 17usize..=260],
        bidi in proptest::option::of(any::<u32>()), data in data(300), seed in any::<u8>())
        -> Pdu {
        let cdb: Vec<u8> = (0..cdb_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        // A CDB shorter than 16 bytes is carried zero-padded in the BHS (§11.3.5).
        let mut cdb = cdb;
        if cdb.len() < 16 { cdb.resize(16, 0); }
        Pdu::ScsiCommand(ScsiCommand { immediate, final_, read, write, attr, lun, itt,
            expected_data_transfer_length: edtl, cmd_sn, exp_stat_sn, cdb: cdb.into(),
            bidi_read_length: bidi, data })
    }
}

prop_compose! {
    fn scsi_response()(flags in 0u8..9, response in any::<u8>(), status in any::<u8>(),
        itt in any::<u32>(), snack_tag in any::<u32>(), stat_sn in sn(), exp in sn(), max in sn(),
        exp_data_sn in any::<u32>(), brrc in any::<u32>(), rc in any::<u32>(), data in data(300))
        -> Pdu {
        let (o, u) = match flags % 3 { 0 => (false, false), 1 => (true, false), _ => (false, true) };
        let (bo, bu) = match flags / 3 { 0 => (false, false), 1 => (true, false), _ => (false, true) };
        Pdu::ScsiResponse(ScsiResponse { bidi_overflow: bo, bidi_underflow: bu, overflow: o,
            underflow: u, response: ServiceResponse(response), status: ScsiStatus(status), itt,
            snack_tag, stat_sn, exp_cmd_sn: exp, max_cmd_sn: max, exp_data_sn,
            bidi_read_residual_count: brrc, residual_count: rc, data })
    }
}

prop_compose! {
    fn data_in()(final_ in any::<bool>(), ack in any::<bool>(), ou in 0u8..3, s in any::<bool>(),
        status in any::<u8>(), lun in lun(), itt in any::<u32>(), ttt in any::<u32>(),
        stat_sn in sn(), exp in sn(), max in sn(), data_sn in any::<u32>(), off in any::<u32>(),
        rc in any::<u32>(), data in data(300)) -> Pdu {
        let final_ = final_ || s;
        Pdu::DataIn(DataIn { final_, ack, overflow: ou == 1, underflow: ou == 2,
            status_present: s, status: ScsiStatus(if s { status } else { 0 }), lun, itt, ttt,
            stat_sn, exp_cmd_sn: exp, max_cmd_sn: max, data_sn, buffer_offset: off,
            residual_count: rc, data })
    }
}

fn login_request() -> impl Strategy<Value = Pdu> {
    (
        (
            any::<bool>(),
            any::<bool>(),
            stage(),
            stage(),
            any::<u8>(),
            any::<u8>(),
        ),
        (
            any::<[u8; 6]>(),
            any::<u16>(),
            any::<u32>(),
            any::<u16>(),
            sn(),
            sn(),
            data(300),
        ),
    )
        .prop_map(
            |((t, c, csg, nsg, vmax, vmin), (isid, tsih, itt, cid, cmd_sn, exp, data))| {
                let c = c && !t;
                let nsg = if t { nsg } else { csg };
                Pdu::LoginRequest(LoginRequest {
                    transit: t,
                    continue_: c,
                    csg,
                    nsg,
                    version_max: vmax,
                    version_min: vmin,
                    isid: Isid(isid),
                    tsih,
                    itt,
                    cid,
                    cmd_sn,
                    exp_stat_sn: exp,
                    data,
                })
            },
        )
}

fn login_response() -> impl Strategy<Value = Pdu> {
    (
        (
            any::<bool>(),
            any::<bool>(),
            stage(),
            stage(),
            any::<u8>(),
            any::<u8>(),
        ),
        (
            any::<[u8; 6]>(),
            any::<u16>(),
            any::<u32>(),
            sn(),
            sn(),
            sn(),
            any::<(u8, u8)>(),
            data(300),
        ),
    )
        .prop_map(
            |((t, c, csg, nsg, vmax, vact), (isid, tsih, itt, stat_sn, exp, max, st, data))| {
                let c = c && !t;
                let nsg = if t { nsg } else { csg };
                Pdu::LoginResponse(LoginResponse {
                    transit: t,
                    continue_: c,
                    csg,
                    nsg,
                    version_max: vmax,
                    version_active: vact,
                    isid: Isid(isid),
                    tsih,
                    itt,
                    stat_sn,
                    exp_cmd_sn: exp,
                    max_cmd_sn: max,
                    status: LoginStatus::new(st.0, st.1),
                    data,
                })
            },
        )
}

fn any_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        (
            any::<bool>(),
            lun(),
            any::<u32>(),
            any::<u32>(),
            sn(),
            sn(),
            data(100)
        )
            .prop_map(|(i, lun, itt, ttt, cmd_sn, exp, data)| {
                let immediate = i || itt == RESERVED_TAG;
                Pdu::NopOut(NopOut {
                    immediate,
                    lun,
                    itt,
                    ttt,
                    cmd_sn,
                    exp_stat_sn: exp,
                    data,
                })
            }),
        scsi_command(),
        (
            any::<bool>(),
            any::<u8>(),
            lun(),
            any::<u32>(),
            any::<u32>(),
            sn(),
            sn(),
            sn(),
            any::<u32>()
        )
            .prop_map(|(i, f, lun, itt, rtt, cmd_sn, exp, rsn, eds)| {
                Pdu::TaskMgmtRequest(TaskMgmtRequest {
                    immediate: i,
                    function: TmfFunction(f & 0x7f),
                    lun,
                    itt,
                    referenced_task_tag: rtt,
                    cmd_sn,
                    exp_stat_sn: exp,
                    ref_cmd_sn: rsn,
                    exp_data_sn: eds,
                })
            }),
        login_request(),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            lun(),
            any::<u32>(),
            any::<u32>(),
            sn(),
            sn(),
            data(300)
        )
            .prop_map(|(i, f, c, lun, itt, ttt, cmd_sn, exp, data)| {
                Pdu::TextRequest(TextRequest {
                    immediate: i,
                    final_: f,
                    continue_: c && !f,
                    lun,
                    itt,
                    ttt,
                    cmd_sn,
                    exp_stat_sn: exp,
                    data,
                })
            }),
        (
            any::<bool>(),
            lun(),
            any::<u32>(),
            any::<u32>(),
            sn(),
            any::<u32>(),
            any::<u32>(),
            data(300)
        )
            .prop_map(|(f, lun, itt, ttt, exp, dsn, off, data)| {
                Pdu::DataOut(DataOut {
                    final_: f,
                    lun,
                    itt,
                    ttt,
                    exp_stat_sn: exp,
                    data_sn: dsn,
                    buffer_offset: off,
                    data,
                })
            }),
        (
            any::<bool>(),
            0u8..3,
            any::<u32>(),
            any::<u16>(),
            sn(),
            sn()
        )
            .prop_map(|(i, r, itt, cid, cmd_sn, exp)| {
                Pdu::LogoutRequest(LogoutRequest {
                    immediate: i,
                    reason: LogoutReason(r),
                    itt,
                    cid,
                    cmd_sn,
                    exp_stat_sn: exp,
                })
            }),
        (
            0u8..4,
            lun(),
            any::<u32>(),
            any::<u32>(),
            sn(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(t, lun, itt, ttt, exp, beg, run)| {
                Pdu::SnackRequest(SnackRequest {
                    snack_type: SnackType(t),
                    lun,
                    itt,
                    ttt,
                    exp_stat_sn: exp,
                    beg_run: beg,
                    run_length: run,
                })
            }),
        (
            lun(),
            any::<bool>(),
            any::<u32>(),
            sn(),
            sn(),
            sn(),
            data(100)
        )
            .prop_map(|(lun, ping, tag, stat_sn, exp, max, data)| {
                let (itt, ttt) = if ping {
                    (RESERVED_TAG, tag)
                } else {
                    (tag, RESERVED_TAG)
                };
                Pdu::NopIn(NopIn {
                    lun,
                    itt,
                    ttt,
                    stat_sn,
                    exp_cmd_sn: exp,
                    max_cmd_sn: max,
                    data,
                })
            }),
        scsi_response(),
        (any::<u8>(), any::<u32>(), sn(), sn(), sn()).prop_map(|(r, itt, s, e, m)| {
            Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: TmfResponse(r),
                itt,
                stat_sn: s,
                exp_cmd_sn: e,
                max_cmd_sn: m,
            })
        }),
        login_response(),
        (
            any::<bool>(),
            any::<bool>(),
            lun(),
            any::<u32>(),
            any::<u32>(),
            sn(),
            sn(),
            sn(),
            data(300)
        )
            .prop_map(|(f, c, lun, itt, ttt, s, e, m, data)| {
                Pdu::TextResponse(TextResponse {
                    final_: f,
                    continue_: c && !f,
                    lun,
                    itt,
                    ttt,
                    stat_sn: s,
                    exp_cmd_sn: e,
                    max_cmd_sn: m,
                    data,
                })
            }),
        data_in(),
        (
            any::<u8>(),
            any::<u32>(),
            sn(),
            sn(),
            sn(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(r, itt, s, e, m, w, t)| {
                Pdu::LogoutResponse(LogoutResponse {
                    response: LogoutResponseCode(r),
                    itt,
                    stat_sn: s,
                    exp_cmd_sn: e,
                    max_cmd_sn: m,
                    time2wait: w,
                    time2retain: t,
                })
            }),
        (
            lun(),
            any::<u32>(),
            0u32..RESERVED_TAG,
            sn(),
            sn(),
            sn(),
            any::<u32>(),
            any::<u32>(),
            1u32..
        )
            .prop_map(|(lun, itt, ttt, s, e, m, r2tsn, off, len)| {
                Pdu::R2t(R2t {
                    lun,
                    itt,
                    ttt,
                    stat_sn: s,
                    exp_cmd_sn: e,
                    max_cmd_sn: m,
                    r2t_sn: r2tsn,
                    buffer_offset: off,
                    desired_data_transfer_length: len,
                })
            }),
        (
            lun(),
            sn(),
            sn(),
            sn(),
            any::<u8>(),
            any::<u8>(),
            any::<(u16, u16, u16)>(),
            data(100)
        )
            .prop_map(|(lun, s, e, m, ev, vc, p, data)| {
                Pdu::AsyncMessage(AsyncMessage {
                    lun,
                    stat_sn: s,
                    exp_cmd_sn: e,
                    max_cmd_sn: m,
                    event: AsyncEvent(ev),
                    vcode: vc,
                    parameter1: p.0,
                    parameter2: p.1,
                    parameter3: p.2,
                    data,
                })
            }),
        (any::<u8>(), sn(), sn(), sn(), any::<u32>(), data(100)).prop_map(
            |(r, s, e, m, dsn, data)| {
                Pdu::Reject(Reject {
                    reason: RejectReason(r),
                    stat_sn: s,
                    exp_cmd_sn: e,
                    max_cmd_sn: m,
                    data_sn_or_r2t_sn: dsn,
                    data,
                })
            }
        ),
    ]
}

fn digests() -> impl Strategy<Value = (Digest, Digest)> {
    let d = || prop_oneof![Just(Digest::None), Just(Digest::Crc32c)];
    (d(), d())
}

proptest! {
    #[test]
    fn every_pdu_round_trips(pdu in any_pdu(), (hd, dd) in digests(), split in any::<prop::sample::Index>()) {
        let wire = Framer::encode(&pdu, hd, dd).to_vec();
        prop_assert_eq!(wire.len() % 4, 0);
        let framer = Framer { header_digest: hd, data_digest: dd, max_recv_data_segment: 1 << 20 };
        // Feed in two pieces: the first must report "incomplete", never an error.
        let cut = split.index(wire.len());
        let mut buf = BytesMut::from(&wire[..cut]);
        if cut < wire.len() {
            prop_assert_eq!(framer.decode(&mut buf).unwrap(), None);
        }
        buf.extend_from_slice(&wire[cut..]);
        let back = framer.decode(&mut buf).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        prop_assert_eq!(back, pdu);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                   (hd, dd) in digests()) {
        let framer = Framer { header_digest: hd, data_digest: dd, max_recv_data_segment: 8192 };
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = framer.decode(&mut buf) {}
        // decode_frame is public: a frame that is not whole is an error, not a panic.
        let _ = framer.decode_frame(Bytes::from(bytes));
    }
}

#[test]
fn truncated_frame_is_an_error() {
    let pdu = Pdu::NopOut(NopOut {
        immediate: true,
        lun: Lun(0),
        itt: 7,
        ttt: RESERVED_TAG,
        cmd_sn: SerialNumber(1),
        exp_stat_sn: SerialNumber(1),
        data: Bytes::from_static(b"ping"),
    });
    let wire = Framer::encode(&pdu, Digest::Crc32c, Digest::Crc32c).to_vec();
    let framer = Framer {
        header_digest: Digest::Crc32c,
        data_digest: Digest::Crc32c,
        max_recv_data_segment: 8192,
    };
    assert_eq!(framer.decode_frame(Bytes::from(wire.clone())).unwrap(), pdu);
    for cut in [0, 20, 48, 52, wire.len() - 1] {
        let err = framer
            .decode_frame(Bytes::copy_from_slice(&wire[..cut]))
            .unwrap_err();
        assert!(err.to_string().contains("shorter than its header"), "{err}");
    }
}

#[test]
fn oversized_segment_rejected_before_buffering() {
    let mut bhs = [0u8; 48];
    bhs[0] = 0x25;
    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    let framer = Framer::default();
    let mut buf = BytesMut::from(&bhs[..]);
    let err = framer.decode(&mut buf).unwrap_err();
    assert!(!err.resynced);
    assert!(matches!(
        err.error,
        DecodeError::DataSegmentTooLong {
            len: 0xffffff,
            limit: 8192,
            ..
        }
    ));
    assert!(
        err.to_string().contains("MaxRecvDataSegmentLength"),
        "{err}"
    );
}

#[test]
fn bad_data_digest_is_reported_and_consumed() {
    let pdu = Pdu::NopIn(NopIn {
        lun: Lun(0),
        itt: 7,
        ttt: RESERVED_TAG,
        stat_sn: SerialNumber(1),
        exp_cmd_sn: SerialNumber(1),
        max_cmd_sn: SerialNumber(1),
        data: Bytes::from_static(b"hello"),
    });
    let mut wire = Framer::encode(&pdu, Digest::Crc32c, Digest::Crc32c).to_vec();
    let n = wire.len();
    wire[n - 1] ^= 0xff;
    let framer = Framer {
        header_digest: Digest::Crc32c,
        data_digest: Digest::Crc32c,
        max_recv_data_segment: 8192,
    };
    let mut buf = BytesMut::from(&wire[..]);
    let err = framer.decode(&mut buf).unwrap_err();
    assert!(err.resynced);
    assert!(buf.is_empty());
    assert_eq!(
        err.error.reject_reason(),
        Some(RejectReason::DATA_DIGEST_ERROR)
    );
}

#[test]
fn bad_header_digest_drops_connection() {
    let pdu = Pdu::NopIn(NopIn {
        lun: Lun(0),
        itt: 7,
        ttt: RESERVED_TAG,
        stat_sn: SerialNumber(1),
        exp_cmd_sn: SerialNumber(1),
        max_cmd_sn: SerialNumber(1),
        data: Bytes::new(),
    });
    let mut wire = Framer::encode(&pdu, Digest::Crc32c, Digest::None).to_vec();
    wire[20] ^= 1;
    let framer = Framer {
        header_digest: Digest::Crc32c,
        data_digest: Digest::None,
        max_recv_data_segment: 8192,
    };
    let err = framer.decode(&mut BytesMut::from(&wire[..])).unwrap_err();
    assert!(!err.resynced);
    assert!(err.to_string().contains("header digest"), "{err}");
}

#[test]
fn unknown_opcode_names_itself() {
    let mut bhs = [0u8; 48];
    bhs[0] = 0x1c;
    bhs[16..20].copy_from_slice(&5u32.to_be_bytes());
    let err = Framer::default()
        .decode(&mut BytesMut::from(&bhs[..]))
        .unwrap_err();
    assert_eq!(
        err.error.reject_reason(),
        Some(RejectReason::COMMAND_NOT_SUPPORTED)
    );
    assert!(err.to_string().contains("0x1c"), "{err}");
}

#[test]
fn lun_numbers() {
    assert_eq!(Lun::from_number(1).0, 0x0001_0000_0000_0000);
    assert_eq!(Lun::from_number(300).0, 0x412c_0000_0000_0000);
    assert_eq!(Lun::from_number(300).number(), Some(300));
    assert_eq!(Lun::from_number(7).number(), Some(7));
}

#[test]
fn data_in_status_ignored_without_s_bit() {
    // Found by the `pdu` fuzz target: a status byte on a Data-In without S must not be
    // taken as status (§11.7.4), or decode → encode → decode changes the PDU.
    let mut bhs = [0u8; 48];
    bhs[0] = 0x25;
    bhs[1] = 0x80; // F, no S
    bhs[3] = 0x36;
    let p = Framer::default()
        .decode(&mut BytesMut::from(&bhs[..]))
        .unwrap()
        .unwrap();
    let Pdu::DataIn(d) = &p else { panic!("{p:?}") };
    assert_eq!(d.status, ScsiStatus::GOOD);
    let wire = Framer::encode(&p, Digest::None, Digest::None).to_vec();
    assert_eq!(
        Framer::default()
            .decode(&mut BytesMut::from(&wire[..]))
            .unwrap(),
        Some(p)
    );
}
