//! The target core against our initiator core in memory (STYLE §13: a pair simulator),
//! every PDU encoded and decoded on the way, plus hostile PDUs the initiator core would
//! never send.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::digest::Digest;
use crate::login::target::{Admission, Directory, TargetLogin, TargetLoginConfig, TargetLoginStep};
use crate::login::{InitiatorLogin, LoginConfig, LoginStep, SessionType};
use crate::pdu::{DataOut, Framer, Isid, LoginStatus};
use crate::session::{
    Command, ConnectionConfig, Event, InitiatorConnection, ScsiResult, TaskError, TaskId,
};

const BS: usize = 512;

type Keys = Vec<(&'static str, &'static str)>;
type MakePdu = Box<dyn Fn(u32) -> Pdu>;

struct OpenDir;
impl Directory for OpenDir {
    fn admit(&self, _: &str, _: SessionType, _: Option<&str>) -> Admission {
        Admission::Accept {
            chap: None,
            target_alias: None,
        }
    }
    fn tsih(&self, _: &str, _: Isid, _: u16) -> Result<u16, LoginStatus> {
        Ok(1)
    }
}

struct Pair {
    ini: InitiatorConnection,
    tgt: TargetConnection,
    disk: Vec<u8>,
    now: Instant,
    ifr: Framer,
    tfr: Framer,
    digests: (Digest, Digest),
    done: HashMap<TaskId, Result<ScsiResult, TaskError>>,
    hold: bool,
    held: Vec<ScsiTask>,
    executed: usize,
    closed: Option<String>,
    resets: Vec<TmfFunction>,
    texts: Vec<Vec<(String, String)>>,
}

fn with(ops: &[(&'static str, &str)], set: &mut Vec<(&'static str, String)>) {
    for (k, v) in ops {
        set.retain(|(n, _)| n != k);
        set.push((k, v.to_string()));
    }
}

impl Pair {
    fn new(ini_ops: &[(&'static str, &str)], tgt_ops: &[(&'static str, &str)]) -> Pair {
        let now = Instant::now();
        let mut iops = LoginConfig::default_operational();
        with(ini_ops, &mut iops);
        let mut tops = TargetLoginConfig::default_operational();
        with(tgt_ops, &mut tops);
        let mut il = InitiatorLogin::new(
            LoginConfig {
                initiator_name: "iqn.2026-11.test:ini".into(),
                initiator_alias: None,
                target_name: Some("iqn.2026-11.test:tgt".into()),
                session_type: SessionType::Normal,
                isid: Isid([0x80, 0, 0, 0, 0, 1]),
                tsih: 0,
                cid: 0,
                itt: 1,
                cmd_sn: SerialNumber(u32::MAX - 3),
                exp_stat_sn: SerialNumber(0),
                chap: None,
                operational: iops,
                timeout: Duration::from_secs(15),
            },
            now,
            Box::new(StdRng::seed_from_u64(1)),
        )
        .unwrap();
        let mut tl = TargetLogin::new(
            TargetLoginConfig {
                operational: tops,
                target_portal_group_tag: 1,
                timeout: Duration::from_secs(15),
                initial_stat_sn: SerialNumber(u32::MAX - 1),
                queue_depth: 16,
            },
            now,
        );
        let mut rng = StdRng::seed_from_u64(2);
        let (io, to) = loop {
            let req = il.poll_transmit().expect("initiator request");
            let step = tl.handle_pdu(req, &OpenDir, &mut rng);
            let rsp = tl.poll_transmit().expect("target response");
            match il.handle_pdu(rsp).expect("login step") {
                LoginStep::Complete(o) => match step {
                    TargetLoginStep::Complete(t) => break (o, t),
                    other => panic!("{other:?}"),
                },
                LoginStep::Continue => {}
                LoginStep::Redirect { .. } => panic!("redirect"),
            }
        };
        let ini = InitiatorConnection::new(
            &io,
            ConnectionConfig {
                nop_interval: None,
                queue_depth: 64,
                ..Default::default()
            },
            now,
        );
        let tgt = TargetConnection::new(
            to.params.clone(),
            TargetConfig {
                queue_depth: 16,
                max_write_len: 4 << 20,
                nop_interval: None,
                nop_timeout: Duration::from_secs(5),
            },
            to.exp_cmd_sn,
            to.stat_sn,
            now,
        );
        let ifr = ini.rx_framer();
        let tfr = Framer {
            header_digest: to.params.header_digest,
            data_digest: to.params.data_digest,
            max_recv_data_segment: to.params.max_recv_data_segment_length,
        };
        Pair {
            digests: (to.params.header_digest, to.params.data_digest),
            ini,
            tgt,
            disk: vec![0; 2 << 20],
            now,
            ifr,
            tfr,
            done: HashMap::new(),
            hold: false,
            held: Vec::new(),
            executed: 0,
            closed: None,
            resets: Vec::new(),
            texts: Vec::new(),
        }
    }

    fn wire(&self, pdu: Pdu, to_target: bool) -> Pdu {
        let enc = Framer::encode(&pdu, self.digests.0, self.digests.1);
        let mut b = BytesMut::from(&enc.to_vec()[..]);
        let fr = if to_target { self.tfr } else { self.ifr };
        fr.decode(&mut b).expect("decodes").expect("whole PDU")
    }

    fn execute(&mut self, t: &ScsiTask) -> ScsiOutcome {
        self.executed += 1;
        let c = &t.cdb;
        let lba = u64::from_be_bytes(c[2..10].try_into().unwrap()) as usize;
        let n = u32::from_be_bytes(c[10..14].try_into().unwrap()) as usize;
        let range = lba * BS..(lba + n) * BS;
        match c[0] {
            0x88 => ScsiOutcome {
                data: Bytes::copy_from_slice(&self.disk[range]),
                ..Default::default()
            },
            0x8a => {
                assert_eq!(t.data_out.len(), range.len(), "write data length");
                self.disk[range].copy_from_slice(&t.data_out);
                ScsiOutcome::default()
            }
            op => panic!("opcode {op:#x}"),
        }
    }

    fn pump(&mut self) {
        for _ in 0..100_000 {
            let mut progress = false;
            while let Some(p) = self.ini.poll_transmit() {
                progress = true;
                let p = self.wire(p, true);
                self.tgt.handle_pdu(self.now, p);
            }
            while let Some(ev) = self.tgt.poll_event() {
                progress = true;
                match ev {
                    TargetEvent::Execute(t) => {
                        if self.hold {
                            self.held.push(t);
                        } else {
                            let o = self.execute(&t);
                            self.tgt.complete(t.itt, o);
                        }
                    }
                    TargetEvent::Close { reason } => self.closed = Some(reason),
                    TargetEvent::Reset { function, .. } => self.resets.push(function),
                    TargetEvent::Text { itt, pairs } => {
                        let reply: Vec<(String, String)> = (0..pairs.len().max(1) * 400)
                            .map(|i| ("TargetName".into(), format!("iqn.2026-11.test:t{i:05}")))
                            .collect();
                        self.tgt.respond_text(itt, &reply);
                    }
                }
            }
            while let Some(p) = self.tgt.poll_transmit() {
                progress = true;
                let p = self.wire(p, false);
                self.ini.handle_pdu(self.now, p);
            }
            while let Some(ev) = self.ini.poll_event() {
                progress = true;
                match ev {
                    Event::Completed { id, result } => {
                        self.done.insert(id, result);
                    }
                    Event::TextCompleted { result, .. } => self.texts.push(result.expect("text")),
                    _ => {}
                }
            }
            if !progress {
                return;
            }
        }
        panic!("pair did not settle");
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> TaskId {
        let n = (data.len() / BS) as u32;
        let mut cdb = vec![0u8; 16];
        cdb[0] = 0x8a;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&n.to_be_bytes());
        let cmd =
            Command::new(Lun::from_number(0), cdb).with_data_out(Bytes::copy_from_slice(data));
        self.ini.submit(self.now, cmd).unwrap()
    }

    fn read(&mut self, lba: u64, blocks: u32) -> TaskId {
        let mut cdb = vec![0u8; 16];
        cdb[0] = 0x88;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        let cmd = Command::new(Lun::from_number(0), cdb).with_read(blocks * BS as u32);
        self.ini.submit(self.now, cmd).unwrap()
    }

    fn result(&mut self, id: TaskId) -> ScsiResult {
        self.done
            .remove(&id)
            .unwrap_or_else(|| panic!("task {id:?} not done (closed: {:?})", self.closed))
            .expect("task ok")
    }
}

/// Writes and reads of many sizes under each data-transfer variant, bit-exact, with
/// CmdSN and StatSN starting just below the wrap.
#[test]
fn every_data_transfer_variant_round_trips() {
    let variants: Vec<(Keys, Keys)> = vec![
        (vec![], vec![]),
        (vec![("ImmediateData", "No")], vec![]),
        (vec![("InitialR2T", "Yes")], vec![]),
        (vec![("InitialR2T", "Yes"), ("ImmediateData", "No")], vec![]),
        (
            vec![("MaxBurstLength", "16384"), ("FirstBurstLength", "8192")],
            vec![
                ("MaxOutstandingR2T", "4"),
                ("MaxRecvDataSegmentLength", "4096"),
            ],
        ),
        (
            vec![
                ("MaxRecvDataSegmentLength", "4096"),
                ("MaxBurstLength", "8192"),
                ("FirstBurstLength", "4096"),
            ],
            vec![("MaxOutstandingR2T", "1")],
        ),
        (
            vec![("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")],
            vec![],
        ),
    ];
    for (iops, tops) in variants {
        let mut p = Pair::new(&iops, &tops);
        let mut rng = StdRng::seed_from_u64(3);
        let mut model = vec![0u8; 2 << 20];
        for round in 0..40 {
            let blocks: usize = [1, 7, 16, 33, 64, 129, 512, 1024][round % 8];
            let lba = rng.gen_range(0..(2048 - blocks)) as u64;
            let mut data = vec![0u8; blocks * BS];
            rng.fill(&mut data[..]);
            model[lba as usize * BS..lba as usize * BS + data.len()].copy_from_slice(&data);
            let w = p.write(lba, &data);
            let w2 = if round % 3 == 0 {
                // Two in flight at once (apart: SIMPLE tasks may finish in any order).
                let lba2 = rng.gen_range(2048..4000) as u64;
                let d2 = vec![round as u8; 4 * BS];
                model[lba2 as usize * BS..lba2 as usize * BS + d2.len()].copy_from_slice(&d2);
                Some(p.write(lba2, &d2))
            } else {
                None
            };
            p.pump();
            if p.closed.is_some() {
                panic!(
                    "{iops:?} {tops:?} round {round} blocks {blocks}: {:?}",
                    p.closed
                );
            }
            assert_eq!(p.result(w).status, ScsiStatus::GOOD, "{iops:?} {tops:?}");
            if let Some(w2) = w2 {
                assert_eq!(p.result(w2).status, ScsiStatus::GOOD);
            }
            let r = p.read(lba, blocks as u32);
            p.pump();
            let got = p.result(r);
            assert_eq!(got.status, ScsiStatus::GOOD);
            let want = &model[lba as usize * BS..lba as usize * BS + blocks * BS];
            let first_bad = got.data.iter().zip(want).position(|(a, b)| a != b);
            assert!(
                got.data.len() == want.len() && first_bad.is_none(),
                "{iops:?} {tops:?} round {round}: read {} of {} bytes, first difference at {first_bad:?}",
                got.data.len(),
                want.len()
            );
        }
        assert!(
            p.disk == model,
            "{iops:?} {tops:?}: disk differs from the model"
        );
        assert!(p.closed.is_none());
    }
}

#[test]
fn window_opens_as_tasks_finish_and_never_shrinks() {
    let mut p = Pair::new(&[], &[]);
    p.hold = true;
    let exp0 = p.tgt.exp_cmd_sn();
    assert_eq!(p.tgt.max_cmd_sn(), exp0.plus(15));
    let ids: Vec<TaskId> = (0..20).map(|i| p.read(i, 1)).collect();
    p.pump();
    // Only 16 fit in the window; the initiator holds the rest.
    assert_eq!(p.held.len(), 16);
    let max_before = p.tgt.max_cmd_sn();
    let held = std::mem::take(&mut p.held);
    for t in held {
        let o = p.execute(&t);
        p.tgt.complete(t.itt, o);
    }
    assert!(p.tgt.max_cmd_sn().gt(max_before));
    p.hold = false;
    p.pump();
    for id in ids {
        assert_eq!(p.result(id).status, ScsiStatus::GOOD);
    }
}

fn raw_cmd(
    p: &Pair,
    itt: u32,
    cmd_sn: SerialNumber,
    write_len: u32,
    data: Bytes,
    final_: bool,
) -> Pdu {
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x8a;
    cdb[13] = (write_len / BS as u32) as u8;
    let _ = p;
    Pdu::ScsiCommand(ScsiCommand {
        immediate: false,
        final_,
        read: false,
        write: true,
        attr: TaskAttr::Simple,
        lun: Lun::from_number(0),
        itt,
        expected_data_transfer_length: write_len,
        cmd_sn,
        exp_stat_sn: SerialNumber(0),
        cdb: cdb.into(),
        bidi_read_length: None,
        data,
    })
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, off: u32, len: usize, final_: bool) -> Pdu {
    Pdu::DataOut(DataOut {
        final_,
        lun: Lun::from_number(0),
        itt,
        ttt,
        exp_stat_sn: SerialNumber(0),
        data_sn,
        buffer_offset: off,
        data: Bytes::from(vec![0xee; len]),
    })
}

fn drain(p: &mut Pair) -> (Vec<Pdu>, Vec<TargetEvent>) {
    let mut out = Vec::new();
    while let Some(x) = p.tgt.poll_transmit() {
        out.push(x);
    }
    let mut ev = Vec::new();
    while let Some(e) = p.tgt.poll_event() {
        ev.push(e);
    }
    (out, ev)
}

/// Hostile Data-Out: each fails its write with CHECK CONDITION (ABORTED COMMAND, DATA
/// PHASE ERROR) and writes nothing; the connection goes on.
#[test]
fn bad_data_out_writes_nothing() {
    let cases: Vec<(&str, MakePdu)> = vec![
        (
            "unknown TTT",
            Box::new(|_| data_out(0x10, 0x7777, 0, 0, 512, true)),
        ),
        (
            "DataSN gap",
            Box::new(|ttt| data_out(0x10, ttt, 1, 0, 512, false)),
        ),
        (
            "offset past the burst",
            Box::new(|ttt| data_out(0x10, ttt, 0, 8192, 512, false)),
        ),
        (
            "burst over its R2T",
            Box::new(|ttt| data_out(0x10, ttt, 0, 0, 8192 + 512, true)),
        ),
    ];
    for (name, make) in cases {
        let mut p = Pair::new(
            &[
                ("InitialR2T", "Yes"),
                ("ImmediateData", "No"),
                ("MaxBurstLength", "8192"),
            ],
            &[],
        );
        let exp = p.tgt.exp_cmd_sn();
        p.tgt
            .handle_pdu(p.now, raw_cmd(&p, 0x10, exp, 16384, Bytes::new(), true));
        let (out, _) = drain(&mut p);
        let ttt = match &out[..] {
            [Pdu::R2t(r)] => r.ttt,
            other => panic!("{name}: expected one R2T, got {other:?}"),
        };
        p.tgt.handle_pdu(p.now, make(ttt));
        // The rest of the write's data, which must be dropped.
        p.tgt
            .handle_pdu(p.now, data_out(0x10, ttt, 1, 512, 512, false));
        let (out, ev) = drain(&mut p);
        match &out[..] {
            [Pdu::ScsiResponse(r)] => {
                assert_eq!(r.status, ScsiStatus::CHECK_CONDITION, "{name}");
                assert_eq!(r.itt, 0x10);
                let sense = r.sense().unwrap();
                assert_eq!((sense[2], sense[12]), (0x0b, 0x4b), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(ev.is_empty(), "{name}: {ev:?}");
        assert_eq!(p.tgt.active_tasks(), 0, "{name}");
        assert!(!p.tgt.is_closed(), "{name}");
    }
}

#[test]
fn immediate_data_when_not_allowed_is_rejected() {
    let mut p = Pair::new(&[("ImmediateData", "No")], &[]);
    let exp = p.tgt.exp_cmd_sn();
    p.tgt.handle_pdu(
        p.now,
        raw_cmd(&p, 0x10, exp, 1024, Bytes::from(vec![1u8; 512]), false),
    );
    let (out, ev) = drain(&mut p);
    assert!(matches!(&out[..], [Pdu::Reject(r)] if r.reason == RejectReason::PROTOCOL_ERROR));
    assert!(!ev.iter().any(|e| matches!(e, TargetEvent::Execute(_))));
}

#[test]
fn out_of_window_commands_are_dropped_silently_and_duplicate_itt_rejected() {
    let mut p = Pair::new(&[], &[]);
    p.hold = true;
    let exp = p.tgt.exp_cmd_sn();
    let max = p.tgt.max_cmd_sn();
    // Behind ExpCmdSN and beyond MaxCmdSN.
    p.tgt.handle_pdu(
        p.now,
        raw_cmd(
            &p,
            0x20,
            exp.plus(u32::MAX),
            512,
            Bytes::from(vec![0; 512]),
            true,
        ),
    );
    p.tgt.handle_pdu(
        p.now,
        raw_cmd(&p, 0x21, max.next(), 512, Bytes::from(vec![0; 512]), true),
    );
    let (out, ev) = drain(&mut p);
    assert!(out.is_empty() && ev.is_empty(), "{out:?} {ev:?}");
    assert_eq!(p.tgt.exp_cmd_sn(), exp);
    // A good one, then the same ITT again while it runs.
    p.tgt.handle_pdu(
        p.now,
        raw_cmd(&p, 0x22, exp, 512, Bytes::from(vec![0; 512]), true),
    );
    p.tgt.handle_pdu(
        p.now,
        raw_cmd(&p, 0x22, exp.next(), 512, Bytes::from(vec![0; 512]), true),
    );
    let (out, ev) = drain(&mut p);
    assert_eq!(ev.len(), 1);
    assert!(matches!(&out[..], [Pdu::Reject(r)] if r.reason == RejectReason::INVALID_PDU_FIELD));
    // A gap: CmdSN exp+3 arrives before exp+2; it waits for it.
    p.tgt.handle_pdu(
        p.now,
        raw_cmd(&p, 0x24, exp.plus(3), 512, Bytes::from(vec![0; 512]), true),
    );
    let (_, ev) = drain(&mut p);
    assert!(ev.is_empty(), "executed out of order: {ev:?}");
    p.tgt.handle_pdu(
        p.now,
        raw_cmd(&p, 0x23, exp.plus(2), 512, Bytes::from(vec![0; 512]), true),
    );
    let (_, ev) = drain(&mut p);
    let order: Vec<u32> = ev
        .iter()
        .filter_map(|e| match e {
            TargetEvent::Execute(t) => Some(t.itt),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![0x23, 0x24]);
    assert_eq!(p.tgt.exp_cmd_sn(), exp.plus(4));
}

#[test]
fn abort_waits_for_the_running_task_and_drops_its_status() {
    let mut p = Pair::new(&[], &[]);
    p.hold = true;
    let id = p.write(0, &[5u8; 1024]);
    p.pump();
    assert_eq!(p.held.len(), 1);
    let tmf = p
        .ini
        .submit_tmf(
            p.now,
            TmfFunction::ABORT_TASK,
            Lun::from_number(0),
            Some(id),
        )
        .unwrap();
    p.pump();
    // No TMF response while the write is still running at the backend.
    assert!(!p.done.contains_key(&id));
    let t = p.held.pop().unwrap();
    let o = p.execute(&t);
    p.tgt.complete(t.itt, o);
    p.hold = false;
    p.pump();
    let _ = tmf;
    match p.done.remove(&id) {
        Some(Err(TaskError::Aborted)) => {}
        other => panic!("expected aborted, got {other:?}"),
    }
    // The connection goes on.
    let r = p.read(0, 2);
    p.pump();
    assert_eq!(p.result(r).status, ScsiStatus::GOOD);
}

#[test]
fn lun_reset_reports_a_reset_event() {
    let mut p = Pair::new(&[], &[]);
    p.ini
        .submit_tmf(
            p.now,
            TmfFunction::LOGICAL_UNIT_RESET,
            Lun::from_number(0),
            None,
        )
        .unwrap();
    p.pump();
    assert_eq!(p.resets, vec![TmfFunction::LOGICAL_UNIT_RESET]);
}

#[test]
fn long_text_response_goes_out_in_parts() {
    let mut p = Pair::new(&[("MaxRecvDataSegmentLength", "4096")], &[]);
    let id = p
        .ini
        .send_text(p.now, &[("SendTargets".to_string(), "All".to_string())])
        .unwrap();
    p.pump();
    let _ = id;
    assert!(p.closed.is_none());
    // 400 names of ~30 bytes: ~12 KiB, three or more 4 KiB parts, reassembled whole.
    assert_eq!(p.texts.len(), 1);
    assert_eq!(p.texts[0].len(), 400);
    assert_eq!(p.texts[0][399].1, "iqn.2026-11.test:t00399");
}

#[test]
fn pings_both_ways() {
    let mut p = Pair::new(&[], &[]);
    let t0 = p.now;
    p.tgt.cfg.nop_interval = Some(Duration::from_secs(2));
    p.tgt.last_rx = t0;
    assert_eq!(p.tgt.poll_timeout(), Some(t0 + Duration::from_secs(2)));
    p.tgt.handle_timeout(t0 + Duration::from_secs(2));
    let (out, _) = drain(&mut p);
    let ttt = match &out[..] {
        [Pdu::NopIn(n)] if n.itt == NO_TAG => n.ttt,
        other => panic!("{other:?}"),
    };
    // Answered: no close.
    p.tgt.handle_pdu(
        t0 + Duration::from_secs(3),
        Pdu::NopOut(NopOut {
            immediate: true,
            lun: Lun(0),
            itt: NO_TAG,
            ttt,
            cmd_sn: p.tgt.exp_cmd_sn(),
            exp_stat_sn: SerialNumber(0),
            data: Bytes::new(),
        }),
    );
    assert!(p.tgt.ping.is_none());
    // Unanswered: closed after the timeout.
    p.tgt.handle_timeout(t0 + Duration::from_secs(5));
    p.tgt.handle_timeout(t0 + Duration::from_secs(11));
    let (_, ev) = drain(&mut p);
    assert!(
        ev.iter().any(|e| matches!(e, TargetEvent::Close { .. })),
        "{ev:?}"
    );
}

#[test]
fn logout_waits_for_running_tasks() {
    let mut p = Pair::new(&[], &[]);
    p.hold = true;
    let w = p.write(3, &[9u8; 512]);
    p.pump();
    let exp = p.tgt.exp_cmd_sn();
    p.tgt.handle_pdu(
        p.now,
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: crate::pdu::LogoutReason::CLOSE_SESSION,
            itt: 0x999,
            cid: 0,
            cmd_sn: exp,
            exp_stat_sn: SerialNumber(0),
        }),
    );
    let (out, _) = drain(&mut p);
    assert!(
        out.is_empty(),
        "logout answered while a write runs: {out:?}"
    );
    let t = p.held.pop().unwrap();
    let o = p.execute(&t);
    p.tgt.complete(t.itt, o);
    let (out, ev) = drain(&mut p);
    assert!(matches!(out[0], Pdu::ScsiResponse(_)));
    assert!(matches!(out[1], Pdu::LogoutResponse(_)));
    assert!(ev.iter().any(|e| matches!(e, TargetEvent::Close { .. })));
    let _ = w;
}

#[test]
fn unknown_opcode_frame_is_rejected_and_snack_not_supported() {
    let mut p = Pair::new(&[], &[]);
    let mut bhs = [0u8; 48];
    bhs[0] = 0x1c;
    let mut b = BytesMut::from(&bhs[..]);
    let err = p.tfr.decode(&mut b).unwrap_err();
    p.tgt.handle_frame_error(err);
    let (out, ev) = drain(&mut p);
    assert!(
        matches!(&out[..], [Pdu::Reject(r)] if r.reason == RejectReason::COMMAND_NOT_SUPPORTED),
        "{out:?}"
    );
    assert!(ev.is_empty());
}

#[test]
fn refuses_a_write_larger_than_the_buffer_limit_before_taking_data() {
    let mut p = Pair::new(&[], &[]);
    let exp = p.tgt.exp_cmd_sn();
    p.tgt
        .handle_pdu(p.now, raw_cmd(&p, 0x30, exp, 64 << 20, Bytes::new(), true));
    let (out, ev) = drain(&mut p);
    assert!(ev.is_empty());
    match &out[..] {
        [Pdu::ScsiResponse(r)] => assert_eq!(r.status, ScsiStatus::CHECK_CONDITION),
        other => panic!("{other:?}"),
    }
}
