use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::login::LoginOutcome;
use crate::text::OperationalParams;

const LUN: Lun = Lun(0x0001_0000_0000_0000);

fn outcome(cmd_sn: u32, max_cmd_sn: u32, params: OperationalParams) -> LoginOutcome {
    LoginOutcome {
        params,
        tsih: 1,
        isid: Isid([0x80, 0, 0, 0, 0, 1]),
        cid: 0,
        cmd_sn: SerialNumber(cmd_sn),
        exp_stat_sn: SerialNumber(10),
        exp_cmd_sn: SerialNumber(cmd_sn),
        max_cmd_sn: SerialNumber(max_cmd_sn),
        chap: None,
        mutual: false,
    }
}

fn conn(now: Instant) -> InitiatorConnection {
    let params = OperationalParams {
        max_xmit_data_segment_length: 8192,
        ..Default::default()
    };
    InitiatorConnection::new(&outcome(1, 32, params), ConnectionConfig::default(), now)
}

fn drain(c: &mut InitiatorConnection) -> Vec<Pdu> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}

fn events(c: &mut InitiatorConnection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn read_cmd(len: u32) -> Command {
    Command::new(LUN, vec![0x28u8, 0, 0, 0, 0, 0, 0, 0, 1, 0]).with_read(len)
}

fn data_in(itt: u32, sn: u32, off: u32, data: &[u8], status: Option<(u32, ScsiStatus)>) -> Pdu {
    Pdu::DataIn(DataIn {
        final_: status.is_some(),
        ack: false,
        overflow: false,
        underflow: false,
        status_present: status.is_some(),
        status: status.map_or(ScsiStatus::GOOD, |s| s.1),
        lun: LUN,
        itt,
        ttt: RESERVED_TAG,
        stat_sn: SerialNumber(status.map_or(0, |s| s.0)),
        exp_cmd_sn: SerialNumber(2),
        max_cmd_sn: SerialNumber(33),
        data_sn: sn,
        buffer_offset: off,
        residual_count: 0,
        data: Bytes::copy_from_slice(data),
    })
}

fn response(itt: u32, stat_sn: u32, status: ScsiStatus, data: Bytes) -> Pdu {
    Pdu::ScsiResponse(ScsiResponse {
        bidi_overflow: false,
        bidi_underflow: false,
        overflow: false,
        underflow: false,
        response: ServiceResponse::COMPLETED,
        status,
        itt,
        snack_tag: 0,
        stat_sn: SerialNumber(stat_sn),
        exp_cmd_sn: SerialNumber(2),
        max_cmd_sn: SerialNumber(33),
        exp_data_sn: 0,
        bidi_read_residual_count: 0,
        residual_count: 0,
        data,
    })
}

fn cmd_itt(p: &Pdu) -> u32 {
    match p {
        Pdu::ScsiCommand(c) => c.itt,
        other => panic!("expected a SCSI Command, got {other:?}"),
    }
}

#[test]
fn read_with_status_in_last_data_in() {
    let now = Instant::now();
    let mut c = conn(now);
    let id = c.submit(now, read_cmd(1024)).unwrap();
    let out = drain(&mut c);
    assert_eq!(out.len(), 1);
    let Pdu::ScsiCommand(cmd) = &out[0] else {
        panic!()
    };
    assert!(cmd.read && !cmd.write && cmd.final_);
    assert_eq!(cmd.expected_data_transfer_length, 1024);
    assert_eq!(cmd.cmd_sn, SerialNumber(1));
    assert_eq!(cmd.exp_stat_sn, SerialNumber(10));
    c.handle_pdu(now, data_in(id.0, 0, 0, &[1u8; 512], None));
    c.handle_pdu(
        now,
        data_in(id.0, 1, 512, &[2u8; 512], Some((10, ScsiStatus::GOOD))),
    );
    let ev = events(&mut c);
    let [Event::Completed {
        id: got,
        result: Ok(r),
    }] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(*got, id);
    assert_eq!(r.data.len(), 1024);
    assert_eq!(r.data[511], 1);
    assert_eq!(r.data[512], 2);
    assert_eq!(c.exp_stat_sn(), SerialNumber(11));
    assert_eq!(c.in_flight(), 0);
    let st = c.stats();
    assert_eq!(
        (st.scsi_cmd_pdus, st.data_in_pdus, st.rx_data_octets),
        (1, 2, 1024)
    );
    assert_eq!(
        (st.tx_data_octets, st.scsi_rsp_pdus, st.timeout_errors),
        (0, 0, 0)
    );
}

/// A discarding read is checked and counted like any other, its data dropped; placed
/// payloads of several reads share one scratch buffer.
#[test]
fn discarded_read_checks_counts_and_reuses_one_buffer() {
    let now = Instant::now();
    let mut c = conn(now);
    let cmd = |len| read_cmd(len).with_read_discarded(len);
    let a = c.submit(now, cmd(2048)).unwrap();
    let b = c.submit(now, cmd(2048)).unwrap();
    assert_eq!(drain(&mut c).len(), 2);
    // First half of `a` through the normal path, second half placed.
    c.handle_pdu(now, data_in(a.0, 0, 0, &[1u8; 1024], None));
    let Pdu::DataIn(mut hdr) = data_in(a.0, 1, 1024, &[], Some((10, ScsiStatus::GOOD))) else {
        unreachable!()
    };
    hdr.data = Bytes::new();
    // Out of order: no place for it (the normal path reports the violation).
    let mut wrong = hdr.clone();
    wrong.buffer_offset = 512;
    assert!(c.data_in_placement(&wrong, 1024).is_none());
    let mut place = c
        .data_in_placement(&hdr, 1024)
        .expect("a place for the payload");
    assert!(
        place.capacity() >= 1024 + 52,
        "room for the tail and the next header"
    );
    let first = place.as_ptr();
    place.extend_from_slice(&[2u8; 1024]);
    c.handle_placed_data_in(now, hdr, place);
    let Pdu::DataIn(mut hdr) = data_in(b.0, 0, 0, &[], Some((11, ScsiStatus::GOOD))) else {
        unreachable!()
    };
    hdr.data = Bytes::new();
    let mut place = c
        .data_in_placement(&hdr, 2048)
        .expect("a place for the payload");
    assert_eq!(place.as_ptr(), first, "the same scratch buffer again");
    place.extend_from_slice(&[3u8; 2048]);
    c.handle_placed_data_in(now, hdr, place);
    let ev = events(&mut c);
    assert_eq!(ev.len(), 2, "{ev:?}");
    for e in &ev {
        let Event::Completed { result: Ok(r), .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(r.status, ScsiStatus::GOOD);
        assert!(r.data.is_empty());
    }
    assert_eq!(c.stats().rx_data_octets, 4096);
    // A discarding read that gets more than it asked for still fails the connection.
    let d = c.submit(now, cmd(512)).unwrap();
    drain(&mut c);
    c.handle_pdu(
        now,
        data_in(d.0, 0, 0, &[0u8; 1024], Some((12, ScsiStatus::GOOD))),
    );
    assert!(events(&mut c).iter().any(|e| matches!(e, Event::Failed(_))));
}

#[test]
fn check_condition_with_sense_and_underflow() {
    let now = Instant::now();
    let mut c = conn(now);
    let id = c.submit(now, read_cmd(4096)).unwrap();
    drain(&mut c);
    let sense = [
        0x70u8, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0,
    ];
    let Pdu::ScsiResponse(mut r) = response(
        id.0,
        10,
        ScsiStatus::CHECK_CONDITION,
        ScsiResponse::sense_segment(&sense),
    ) else {
        unreachable!()
    };
    r.underflow = true;
    r.residual_count = 4096;
    c.handle_pdu(now, Pdu::ScsiResponse(r));
    let ev = events(&mut c);
    let [Event::Completed { result: Ok(r), .. }] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(r.status, ScsiStatus::CHECK_CONDITION);
    assert_eq!(&r.sense[..], &sense[..]);
    assert_eq!(r.residual, Residual::Underflow(4096));
}

fn write_params(imm: bool, r2t: bool, fbl: u32) -> OperationalParams {
    OperationalParams {
        immediate_data: imm,
        initial_r2t: r2t,
        first_burst_length: fbl,
        max_burst_length: 65536,
        max_outstanding_r2t: 4,
        max_xmit_data_segment_length: 8192,
        ..Default::default()
    }
}

#[test]
fn write_immediate_unsolicited_and_r2t() {
    let now = Instant::now();
    let mut c = InitiatorConnection::new(
        &outcome(1, 32, write_params(true, false, 16384)),
        Default::default(),
        now,
    );
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let cmd = Command::new(LUN, vec![0x2au8; 10]).with_data_out(Bytes::from(data.clone()));
    let id = c.submit(now, cmd).unwrap();
    let out = drain(&mut c);
    // Command with 8192 immediate bytes, then one unsolicited Data-Out up to FirstBurstLength.
    assert_eq!(out.len(), 2, "{out:?}");
    let Pdu::ScsiCommand(sc) = &out[0] else {
        panic!()
    };
    assert!(!sc.final_, "unsolicited data follows");
    assert_eq!(sc.data.len(), 8192);
    assert_eq!(sc.expected_data_transfer_length, 100_000);
    let Pdu::DataOut(d) = &out[1] else { panic!() };
    assert_eq!(
        (d.ttt, d.buffer_offset, d.data.len(), d.final_, d.data_sn),
        (RESERVED_TAG, 8192, 8192, true, 0)
    );
    // Two outstanding R2Ts at once (MaxOutstandingR2T 4).
    let r2t = |sn: u32, off: u32, len: u32| {
        Pdu::R2t(R2t {
            lun: LUN,
            itt: id.0,
            ttt: 0x100 + sn,
            stat_sn: SerialNumber(10),
            exp_cmd_sn: SerialNumber(2),
            max_cmd_sn: SerialNumber(33),
            r2t_sn: sn,
            buffer_offset: off,
            desired_data_transfer_length: len,
        })
    };
    c.handle_pdu(now, r2t(0, 16384, 65536));
    c.handle_pdu(now, r2t(1, 81920, 18080));
    let out = drain(&mut c);
    let mut got = vec![0u8; 100_000];
    got[..8192].copy_from_slice(&sc.data);
    got[8192..16384].copy_from_slice(&d.data);
    for p in &out {
        let Pdu::DataOut(d) = p else { panic!() };
        assert!(d.data.len() <= 8192);
        got[d.buffer_offset as usize..d.buffer_offset as usize + d.data.len()]
            .copy_from_slice(&d.data);
    }
    assert_eq!(got, data);
    assert_eq!(
        out.iter()
            .filter(|p| matches!(p, Pdu::DataOut(d) if d.final_))
            .count(),
        2
    );
    // A third R2T past the end is a protocol error.
    c.handle_pdu(now, r2t(2, 99_000, 2000));
    let ev = events(&mut c);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Failed(ProtocolError::BadTransfer { .. }))),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Completed {
            result: Err(TaskError::ConnectionLost(_)),
            ..
        }
    )));
}

#[test]
fn initial_r2t_yes_sends_only_immediate() {
    let now = Instant::now();
    let mut c = InitiatorConnection::new(
        &outcome(1, 32, write_params(true, true, 65536)),
        Default::default(),
        now,
    );
    c.submit(
        now,
        Command::new(LUN, vec![0x2au8; 10]).with_data_out(Bytes::from(vec![0u8; 65536])),
    )
    .unwrap();
    let out = drain(&mut c);
    assert_eq!(out.len(), 1);
    let Pdu::ScsiCommand(sc) = &out[0] else {
        panic!()
    };
    assert!(sc.final_);
    assert_eq!(sc.data.len(), 8192);
}

#[test]
fn command_window_across_wrap() {
    let now = Instant::now();
    let start = u32::MAX - 1;
    let params = OperationalParams::default();
    let mut c = InitiatorConnection::new(
        &outcome(start, start.wrapping_add(2), params),
        Default::default(),
        now,
    );
    let ids: Vec<TaskId> = (0..5)
        .map(|_| c.submit(now, read_cmd(512)).unwrap())
        .collect();
    let out = drain(&mut c);
    let sns: Vec<u32> = out
        .iter()
        .map(|p| {
            if let Pdu::ScsiCommand(s) = p {
                s.cmd_sn.0
            } else {
                0
            }
        })
        .collect();
    assert_eq!(sns, vec![u32::MAX - 1, u32::MAX, 0], "window admits three");
    // The target completes the first and opens the window by two.
    let Pdu::ScsiResponse(mut r) = response(ids[0].0, 10, ScsiStatus::GOOD, Bytes::new()) else {
        unreachable!()
    };
    r.exp_cmd_sn = SerialNumber(u32::MAX);
    r.max_cmd_sn = SerialNumber(2);
    c.handle_pdu(now, Pdu::ScsiResponse(r));
    let out = drain(&mut c);
    let sns: Vec<u32> = out
        .iter()
        .map(|p| {
            if let Pdu::ScsiCommand(s) = p {
                s.cmd_sn.0
            } else {
                0
            }
        })
        .collect();
    assert_eq!(sns, vec![1, 2]);
}

#[test]
fn nop_both_ways() {
    let now = Instant::now();
    let mut c = conn(now);
    // Target ping: answered with its TTT.
    c.handle_pdu(
        now,
        Pdu::NopIn(NopIn {
            lun: Lun(0),
            itt: RESERVED_TAG,
            ttt: 77,
            stat_sn: SerialNumber(10),
            exp_cmd_sn: SerialNumber(1),
            max_cmd_sn: SerialNumber(32),
            data: Bytes::new(),
        }),
    );
    let out = drain(&mut c);
    let [Pdu::NopOut(n)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((n.ttt, n.itt, n.immediate), (77, RESERVED_TAG, true));
    // Our ping after 5 s of silence; answered.
    let t1 = now + Duration::from_secs(5);
    assert_eq!(c.poll_timeout(), Some(t1));
    c.handle_timeout(t1);
    let out = drain(&mut c);
    let [Pdu::NopOut(ping)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(ping.ttt, RESERVED_TAG);
    c.handle_pdu(
        t1,
        Pdu::NopIn(NopIn {
            lun: Lun(0),
            itt: ping.itt,
            ttt: RESERVED_TAG,
            stat_sn: SerialNumber(10),
            exp_cmd_sn: SerialNumber(1),
            max_cmd_sn: SerialNumber(32),
            data: Bytes::new(),
        }),
    );
    assert!(events(&mut c).is_empty());
    // Next ping is never answered: the connection fails after nop_timeout.
    let t2 = t1 + Duration::from_secs(5);
    c.handle_timeout(t2);
    assert_eq!(drain(&mut c).len(), 1);
    c.handle_timeout(t2 + Duration::from_secs(5));
    let ev = events(&mut c);
    assert!(
        matches!(&ev[..], [Event::Failed(ProtocolError::NopTimeout(_))]),
        "{ev:?}"
    );
    assert!(c.is_closed());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn hostile_stat_sn_jump_and_unknown_itt() {
    let now = Instant::now();
    let mut c = conn(now);
    let id = c.submit(now, read_cmd(512)).unwrap();
    drain(&mut c);
    c.handle_pdu(now, response(id.0, 15, ScsiStatus::GOOD, Bytes::new()));
    let ev = events(&mut c);
    assert!(
        matches!(
            &ev[0],
            Event::Completed {
                result: Err(TaskError::ConnectionLost(_)),
                ..
            }
        ),
        "{ev:?}"
    );
    let Event::Failed(e) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert!(
        e.to_string().contains("StatSN 15 where 10 was expected")
            && e.to_string().contains("§4.2.2.2"),
        "{e}"
    );

    let mut c = conn(now);
    c.submit(now, read_cmd(512)).unwrap();
    drain(&mut c);
    c.handle_pdu(now, data_in(0xdead, 0, 0, &[0u8; 16], None));
    let ev = events(&mut c);
    let Some(Event::Failed(e)) = ev.last() else {
        panic!("{ev:?}")
    };
    assert!(
        e.to_string().contains("0x0000dead") && e.to_string().contains("§11.2.1.8"),
        "{e}"
    );
    assert_eq!(c.in_flight(), 0, "no task left waiting");
}

#[test]
fn abort_task_and_lun_reset() {
    let now = Instant::now();
    let mut c = conn(now);
    let a = c.submit(now, read_cmd(512)).unwrap();
    let b = c.submit(now, read_cmd(512)).unwrap();
    drain(&mut c);
    let tmf = c
        .submit_tmf(now, TmfFunction::ABORT_TASK, LUN, Some(a))
        .unwrap();
    let out = drain(&mut c);
    let [Pdu::TaskMgmtRequest(t)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (t.referenced_task_tag, t.ref_cmd_sn, t.immediate),
        (a.0, SerialNumber(1), true)
    );
    let tmf_rsp = |itt: u32, sn: u32| {
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: TmfResponse::COMPLETE,
            itt,
            stat_sn: SerialNumber(sn),
            exp_cmd_sn: SerialNumber(3),
            max_cmd_sn: SerialNumber(34),
        })
    };
    c.handle_pdu(now, tmf_rsp(tmf.0, 10));
    let ev = events(&mut c);
    assert_eq!(
        ev,
        vec![
            Event::Completed {
                id: a,
                result: Err(TaskError::Aborted)
            },
            Event::TmfCompleted {
                id: tmf,
                response: TmfResponse::COMPLETE
            }
        ]
    );
    // A late response for the aborted task is dropped, not fatal.
    c.handle_pdu(now, response(a.0, 11, ScsiStatus::GOOD, Bytes::new()));
    assert!(events(&mut c).is_empty());
    let reset = c
        .submit_tmf(now, TmfFunction::LOGICAL_UNIT_RESET, LUN, None)
        .unwrap();
    drain(&mut c);
    c.handle_pdu(now, tmf_rsp(reset.0, 12));
    let ev = events(&mut c);
    assert!(
        ev.contains(&Event::Completed {
            id: b,
            result: Err(TaskError::Aborted)
        }),
        "{ev:?}"
    );
}

#[test]
fn task_timeout_aborts() {
    let now = Instant::now();
    let cfg = ConnectionConfig {
        nop_interval: None,
        ..Default::default()
    };
    let mut c = InitiatorConnection::new(&outcome(1, 32, OperationalParams::default()), cfg, now);
    let id = c.submit(now, read_cmd(512)).unwrap();
    drain(&mut c);
    let mut t = now;
    while t < now + Duration::from_secs(31) {
        t += Duration::from_secs(1);
        c.handle_timeout(t);
    }
    let out = drain(&mut c);
    let [Pdu::TaskMgmtRequest(abort)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(abort.referenced_task_tag, id.0);
    c.handle_pdu(
        t,
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: TmfResponse::COMPLETE,
            itt: abort.itt,
            stat_sn: SerialNumber(10),
            exp_cmd_sn: SerialNumber(2),
            max_cmd_sn: SerialNumber(33),
        }),
    );
    let ev = events(&mut c);
    assert_eq!(
        ev,
        vec![Event::Completed {
            id,
            result: Err(TaskError::Timeout(Duration::from_secs(30)))
        }]
    );
    let st = c.stats();
    assert_eq!(
        (st.timeout_errors, st.tmf_cmd_pdus, st.tmf_rsp_pdus),
        (1, 1, 1)
    );
}

#[test]
fn logout_waits_for_in_flight() {
    let now = Instant::now();
    let mut c = conn(now);
    let id = c.submit(now, read_cmd(512)).unwrap();
    drain(&mut c);
    c.logout(now);
    assert!(drain(&mut c).is_empty(), "logout waits for the read");
    assert_eq!(
        c.submit(now, read_cmd(512)).unwrap_err(),
        TaskError::LoggingOut
    );
    c.handle_pdu(now, response(id.0, 10, ScsiStatus::GOOD, Bytes::new()));
    let out = drain(&mut c);
    let [Pdu::LogoutRequest(l)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(l.reason, LogoutReason::CLOSE_SESSION);
    c.handle_pdu(
        now,
        Pdu::LogoutResponse(LogoutResponse {
            response: LogoutResponseCode::SUCCESS,
            itt: l.itt,
            stat_sn: SerialNumber(11),
            exp_cmd_sn: SerialNumber(2),
            max_cmd_sn: SerialNumber(33),
            time2wait: 2,
            time2retain: 0,
        }),
    );
    let ev = events(&mut c);
    assert!(
        matches!(
            ev.last(),
            Some(Event::LoggedOut {
                response: LogoutResponseCode::SUCCESS,
                ..
            })
        ),
        "{ev:?}"
    );
    assert!(c.is_closed());
}

#[test]
fn async_logout_request_drains_then_logs_out() {
    let now = Instant::now();
    let mut c = conn(now);
    let id = c.submit(now, read_cmd(512)).unwrap();
    drain(&mut c);
    c.handle_pdu(
        now,
        Pdu::AsyncMessage(AsyncMessage {
            lun: Lun(0),
            stat_sn: SerialNumber(10),
            exp_cmd_sn: SerialNumber(2),
            max_cmd_sn: SerialNumber(33),
            event: AsyncEvent::LOGOUT_REQUEST,
            vcode: 0,
            parameter1: 0,
            parameter2: 0,
            parameter3: 10,
            data: Bytes::new(),
        }),
    );
    assert_eq!(
        events(&mut c),
        vec![Event::LogoutRequested {
            within: Duration::from_secs(10)
        }]
    );
    assert!(c.is_draining());
    assert!(drain(&mut c).is_empty());
    c.handle_pdu(now, response(id.0, 11, ScsiStatus::GOOD, Bytes::new()));
    let out = drain(&mut c);
    assert!(matches!(&out[..], [Pdu::LogoutRequest(_)]), "{out:?}");
}

#[test]
fn reject_fails_the_command() {
    let now = Instant::now();
    let mut c = conn(now);
    let id = c.submit(now, read_cmd(512)).unwrap();
    let out = drain(&mut c);
    let wire = Framer::encode(&out[0], Digest::None, Digest::None).to_vec();
    c.handle_pdu(
        now,
        Pdu::Reject(Reject {
            reason: RejectReason::INVALID_PDU_FIELD,
            stat_sn: SerialNumber(10),
            exp_cmd_sn: SerialNumber(2),
            max_cmd_sn: SerialNumber(33),
            data_sn_or_r2t_sn: 0,
            data: Bytes::copy_from_slice(&wire[..48]),
        }),
    );
    assert_eq!(
        events(&mut c),
        vec![Event::Completed {
            id,
            result: Err(TaskError::Rejected(RejectReason::INVALID_PDU_FIELD))
        }]
    );
    assert_eq!(c.exp_stat_sn(), SerialNumber(11));
    assert_eq!(cmd_itt(&out[0]), id.0);
}

#[test]
fn send_targets_with_continuation() {
    let now = Instant::now();
    let mut c = conn(now);
    let id = c
        .send_text(now, &[("SendTargets".into(), "All".into())])
        .unwrap();
    let out = drain(&mut c);
    let [Pdu::TextRequest(t)] = &out[..] else {
        panic!()
    };
    assert_eq!(&t.data[..], b"SendTargets=All\0");
    let text = b"TargetName=iqn.a\0TargetAddress=127.0.0.1:3260,1\0";
    let rsp = |sn: u32, cont: bool, data: &[u8]| {
        Pdu::TextResponse(TextResponse {
            final_: !cont,
            continue_: cont,
            lun: Lun(0),
            itt: id.0,
            ttt: if cont { 5 } else { RESERVED_TAG },
            stat_sn: SerialNumber(sn),
            exp_cmd_sn: SerialNumber(2),
            max_cmd_sn: SerialNumber(33),
            data: Bytes::copy_from_slice(data),
        })
    };
    c.handle_pdu(now, rsp(10, true, &text[..20]));
    let out = drain(&mut c);
    let [Pdu::TextRequest(more)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!((more.ttt, more.itt, more.data.len()), (5, id.0, 0));
    c.handle_pdu(now, rsp(11, false, &text[20..]));
    let ev = events(&mut c);
    let [Event::TextCompleted {
        result: Ok(pairs), ..
    }] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(pairs.len(), 2);
}

fn async_msg(event: AsyncEvent, stat_sn: u32) -> Pdu {
    Pdu::AsyncMessage(AsyncMessage {
        lun: LUN,
        stat_sn: SerialNumber(stat_sn),
        exp_cmd_sn: SerialNumber(2),
        max_cmd_sn: SerialNumber(33),
        event,
        vcode: 0,
        parameter1: 0,
        parameter2: 2,
        parameter3: 0,
        data: Bytes::new(),
    })
}

#[test]
fn async_drop_connection_fails_everything() {
    let now = Instant::now();
    let mut c = conn(now);
    let id = c.submit(now, read_cmd(512)).unwrap();
    drain(&mut c);
    c.handle_pdu(now, async_msg(AsyncEvent::DROP_CONNECTION, 10));
    let ev = events(&mut c);
    assert!(
        matches!(&ev[0], Event::Completed { id: got, result: Err(TaskError::ConnectionLost(_)) } if *got == id)
    );
    let Event::Failed(e) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert!(
        e.to_string().contains("target will drop the connection")
            && e.to_string().contains("§11.9"),
        "{e}"
    );
    assert!(c.is_closed());
}

#[test]
fn async_renegotiate_updates_max_xmit() {
    let now = Instant::now();
    let mut c = conn(now);
    c.handle_pdu(now, async_msg(AsyncEvent::RENEGOTIATE, 10));
    let out = drain(&mut c);
    let [Pdu::TextRequest(t)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(&t.data[..], b"MaxRecvDataSegmentLength=8192\0");
    c.handle_pdu(
        now,
        Pdu::TextResponse(TextResponse {
            final_: true,
            continue_: false,
            lun: Lun(0),
            itt: t.itt,
            ttt: RESERVED_TAG,
            stat_sn: SerialNumber(11),
            exp_cmd_sn: SerialNumber(2),
            max_cmd_sn: SerialNumber(33),
            data: Bytes::from_static(b"MaxRecvDataSegmentLength=65536\0"),
        }),
    );
    assert!(events(&mut c).is_empty(), "internal exchange, no event");
    assert_eq!(c.params().max_xmit_data_segment_length, 65536);
}

#[test]
fn async_scsi_event_and_task_termination() {
    let now = Instant::now();
    let mut c = conn(now);
    let id = c.submit(now, read_cmd(512)).unwrap();
    drain(&mut c);
    c.handle_pdu(now, async_msg(AsyncEvent::SCSI_EVENT, 10));
    assert!(matches!(
        &events(&mut c)[..],
        [Event::Async {
            event: AsyncEvent::SCSI_EVENT,
            ..
        }]
    ));
    c.handle_pdu(now, async_msg(AsyncEvent::TASK_TERMINATION, 11));
    assert_eq!(
        events(&mut c),
        vec![Event::Completed {
            id,
            result: Err(TaskError::Aborted)
        }]
    );
    assert!(!c.is_closed());
}

#[test]
fn target_warm_reset_aborts_all_luns() {
    let now = Instant::now();
    let mut c = conn(now);
    let a = c.submit(now, read_cmd(512)).unwrap();
    let mut other = read_cmd(512);
    other.lun = Lun::from_number(2);
    let b = c.submit(now, other).unwrap();
    drain(&mut c);
    let r = c
        .submit_tmf(now, TmfFunction::TARGET_WARM_RESET, Lun(0), None)
        .unwrap();
    drain(&mut c);
    c.handle_pdu(
        now,
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: TmfResponse::COMPLETE,
            itt: r.0,
            stat_sn: SerialNumber(10),
            exp_cmd_sn: SerialNumber(3),
            max_cmd_sn: SerialNumber(34),
        }),
    );
    let ev = events(&mut c);
    assert!(ev.contains(&Event::Completed {
        id: a,
        result: Err(TaskError::Aborted)
    }));
    assert!(ev.contains(&Event::Completed {
        id: b,
        result: Err(TaskError::Aborted)
    }));
    assert!(ev.contains(&Event::TmfCompleted {
        id: r,
        response: TmfResponse::COMPLETE
    }));
}
