//! The SCSI emulation, command by command, on a memory backend.

use std::sync::Arc;

use bytes::Bytes;
use oxiscsi_proto::pdu::{Lun, ScsiStatus, TaskAttr};
use oxiscsi_proto::serial::SerialNumber;
use oxiscsi_proto::session::ScsiTask;
use oxiscsi_scsi::Sense;

use super::*;
use crate::backend::MemBackend;

fn lu(read_only: bool) -> LogicalUnit {
    LogicalUnit::new(
        Arc::new(MemBackend::new(1 << 20, "t").unwrap()),
        LuConfig {
            block_size: 512,
            read_only,
            id_seed: "iqn.2026-11.test:t/1".into(),
            product: "TEST".into(),
            pr_state: None,
        },
    )
}

fn task(cdb: &[u8], data: &[u8]) -> ScsiTask {
    ScsiTask {
        itt: 1,
        lun: Lun::from_number(1),
        cdb: cdb.into(),
        attr: TaskAttr::Simple,
        cmd_sn: SerialNumber(0),
        read_len: 0,
        write_len: data.len() as u32,
        data_out: Bytes::copy_from_slice(data),
    }
}

fn sense(o: &oxiscsi_proto::session::ScsiOutcome) -> (u8, u8, u8) {
    assert_eq!(o.status, ScsiStatus::CHECK_CONDITION, "{o:?}");
    let s = Sense::parse(&o.sense).unwrap();
    (s.key.0, s.asc, s.ascq)
}

#[test]
fn unit_attention_once_per_nexus_except_inquiry() {
    let l = lu(false);
    l.add_nexus("a");
    // INQUIRY does not report it.
    assert_eq!(
        l.execute("a", &task(&[0x12, 0, 0, 0, 36, 0], &[])).status,
        ScsiStatus::GOOD
    );
    // TEST UNIT READY does, once.
    assert_eq!(sense(&l.execute("a", &task(&[0; 6], &[]))), (6, 0x29, 0));
    assert_eq!(l.execute("a", &task(&[0; 6], &[])).status, ScsiStatus::GOOD);
    // After a reset every nexus sees it; REQUEST SENSE returns and clears it.
    l.reset();
    let o = l.execute("a", &task(&[0x03, 0, 0, 0, 252, 0], &[]));
    assert_eq!(o.status, ScsiStatus::GOOD);
    let s = Sense::parse(&o.data).unwrap();
    assert_eq!((s.key.0, s.asc, s.ascq), (6, 0x29, 0x03));
    assert_eq!(l.execute("a", &task(&[0; 6], &[])).status, ScsiStatus::GOOD);
}

#[test]
fn reads_writes_and_range_checks() {
    let l = lu(false);
    let mut w = vec![0u8; 10];
    w[0] = 0x2a;
    w[5] = 10; // LBA 10
    w[8] = 2; // 2 blocks
    let data = vec![0x5au8; 1024];
    let o = l.execute("a", &task(&w, &data));
    assert_eq!(o.status, ScsiStatus::GOOD);
    let mut r = w.clone();
    r[0] = 0x28;
    let o = l.execute("a", &task(&r, &[]));
    assert_eq!(&o.data[..], &data[..]);
    // READ (16) past the end.
    let mut r16 = vec![0u8; 16];
    r16[0] = 0x88;
    r16[2..10].copy_from_slice(&2047u64.to_be_bytes());
    r16[13] = 2;
    assert_eq!(sense(&l.execute("a", &task(&r16, &[]))), (5, 0x21, 0));
    // Overflowing LBA + length.
    r16[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(sense(&l.execute("a", &task(&r16, &[]))), (5, 0x21, 0));
    // RDPROTECT set.
    r[1] = 0x20;
    assert_eq!(sense(&l.execute("a", &task(&r, &[]))), (5, 0x24, 0));
    // Unknown opcode.
    assert_eq!(
        sense(&l.execute("a", &task(&[0xe7, 0, 0, 0, 0, 0], &[]))),
        (5, 0x20, 0)
    );
    // Short CDB for its opcode.
    assert_eq!(
        sense(&l.execute("a", &task(&[0x88, 0, 0], &[]))),
        (5, 0x24, 0)
    );
}

#[test]
fn write_protect_and_mode_pages_tell_the_truth() {
    let l = lu(true);
    let mut w = vec![0u8; 10];
    w[0] = 0x2a;
    w[8] = 1;
    assert_eq!(sense(&l.execute("a", &task(&w, &[0u8; 512]))), (7, 0x27, 0));
    // MODE SENSE (6), all pages: WP set, WCE set in the caching page.
    let o = l.execute("a", &task(&[0x1a, 0x08, 0x3f, 0, 255, 0], &[]));
    assert_eq!(o.status, ScsiStatus::GOOD);
    assert_eq!(o.data[2] & 0x80, 0x80, "WP bit");
    assert_eq!(o.data[3], 0, "DBD: no block descriptor");
    assert_eq!(o.data[4], 0x08);
    assert_eq!(o.data[6] & 0x04, 0x04, "WCE");
    assert_eq!(o.data[0] as usize + 1, o.data.len());
    // Unknown page; saved values.
    assert_eq!(
        sense(&l.execute("a", &task(&[0x1a, 0, 0x33, 0, 255, 0], &[]))),
        (5, 0x24, 0)
    );
    assert_eq!(
        sense(&l.execute("a", &task(&[0x1a, 0, 0xc8, 0, 255, 0], &[]))),
        (5, 0x39, 0)
    );
}

#[test]
fn inquiry_truncates_to_allocation_length_and_ids_are_stable() {
    let l = lu(false);
    let o = l.execute("a", &task(&[0x12, 0, 0, 0, 5, 0], &[]));
    assert_eq!(o.data.len(), 5);
    let o = l.execute("a", &task(&[0x12, 0, 0, 0, 255, 0], &[]));
    assert_eq!(o.data.len(), 66);
    assert_eq!(&o.data[8..16], b"OXISCSI ");
    // Page code without EVPD.
    assert_eq!(
        sense(&l.execute("a", &task(&[0x12, 0, 0x80, 0, 255, 0], &[]))),
        (5, 0x24, 0)
    );
    let a = l.execute("a", &task(&[0x12, 1, 0x83, 0, 255, 0], &[])).data;
    let b = lu(false)
        .execute("a", &task(&[0x12, 1, 0x83, 0, 255, 0], &[]))
        .data;
    assert_eq!(a, b);
    assert_eq!(a[4] & 0x0f, 0x01, "NAA designator, binary");
}

#[test]
fn unmap_and_write_same() {
    let l = lu(false);
    let mut w = vec![0u8; 10];
    w[0] = 0x2a;
    w[8] = 8;
    l.execute("a", &task(&w, &[0xffu8; 4096]));
    // UNMAP blocks 2..4.
    let mut p = vec![0u8; 24];
    p[1] = 22;
    p[3] = 16;
    p[8..16].copy_from_slice(&2u64.to_be_bytes());
    p[16..20].copy_from_slice(&2u32.to_be_bytes());
    let mut c = vec![0u8; 10];
    c[0] = 0x42;
    c[8] = 24;
    assert_eq!(l.execute("a", &task(&c, &p)).status, ScsiStatus::GOOD);
    let mut r = w.clone();
    r[0] = 0x28;
    let d = l.execute("a", &task(&r, &[])).data;
    assert!(d[..1024].iter().all(|&b| b == 0xff));
    assert!(d[1024..2048].iter().all(|&b| b == 0));
    assert!(d[2048..].iter().all(|&b| b == 0xff));
    // A descriptor past the end changes nothing.
    p[8..16].copy_from_slice(&2047u64.to_be_bytes());
    assert_eq!(sense(&l.execute("a", &task(&c, &p))), (5, 0x21, 0));
    // A truncated parameter list.
    assert_eq!(sense(&l.execute("a", &task(&c, &p[..4]))), (5, 0x1a, 0));
    // WRITE SAME (10) of a pattern, then ANCHOR is refused, 0 blocks refused.
    let mut ws = vec![0u8; 10];
    ws[0] = 0x41;
    ws[8] = 4;
    assert_eq!(
        l.execute("a", &task(&ws, &[0x11u8; 512])).status,
        ScsiStatus::GOOD
    );
    let d = l.execute("a", &task(&r, &[])).data;
    assert!(d[..2048].iter().all(|&b| b == 0x11));
    ws[1] = 0x10;
    assert_eq!(
        sense(&l.execute("a", &task(&ws, &[0u8; 512]))),
        (5, 0x24, 0)
    );
    ws[1] = 0;
    ws[8] = 0;
    assert_eq!(
        sense(&l.execute("a", &task(&ws, &[0u8; 512]))),
        (5, 0x24, 0)
    );
}

#[test]
fn verify_compares_bytes() {
    let l = lu(false);
    let mut v = vec![0u8; 10];
    v[0] = 0x2f;
    v[1] = 0x02; // BYTCHK 1
    v[8] = 1;
    assert_eq!(
        l.execute("a", &task(&v, &[0u8; 512])).status,
        ScsiStatus::GOOD
    );
    assert_eq!(
        sense(&l.execute("a", &task(&v, &[1u8; 512]))),
        (0x0e, 0x1d, 0)
    );
}

fn pr_out(sa: u8, rtype: u8, key: u64, sa_key: u64) -> (Vec<u8>, Vec<u8>) {
    let mut c = vec![0u8; 10];
    c[0] = 0x5f;
    c[1] = sa;
    c[2] = rtype;
    c[8] = 24;
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    (c, p)
}

#[test]
fn persistent_reservations_register_reserve_conflict_preempt() {
    let l = lu(false);
    for n in ["a", "b", "c"] {
        l.add_nexus(n);
        l.execute(n, &task(&[0; 6], &[])); // clear the power-on UA
    }
    let run = |n: &str, sa: u8, t: u8, k: u64, s: u64| {
        let (c, p) = pr_out(sa, t, k, s);
        l.execute(n, &task(&c, &p)).status
    };
    assert_eq!(run("a", 0, 0, 0, 0xa), ScsiStatus::GOOD);
    assert_eq!(run("b", 0, 0, 0, 0xb), ScsiStatus::GOOD);
    // Wrong key: conflict.
    assert_eq!(run("a", 1, 1, 0xbad, 0), ScsiStatus::RESERVATION_CONFLICT);
    // a takes WRITE EXCLUSIVE; b (registered) may read but not write; c likewise.
    assert_eq!(run("a", 1, 1, 0xa, 0), ScsiStatus::GOOD);
    let mut w = vec![0u8; 10];
    w[0] = 0x2a;
    w[8] = 1;
    let mut r = w.clone();
    r[0] = 0x28;
    assert_eq!(
        l.execute("b", &task(&w, &[0u8; 512])).status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    assert_eq!(l.execute("c", &task(&r, &[])).status, ScsiStatus::GOOD);
    assert_eq!(
        l.execute("a", &task(&w, &[0u8; 512])).status,
        ScsiStatus::GOOD
    );
    // READ RESERVATION shows a's key and the type.
    let o = l.execute("c", &task(&[0x5e, 1, 0, 0, 0, 0, 0, 0, 64, 0], &[]));
    assert_eq!(&o.data[8..16], &0xau64.to_be_bytes());
    assert_eq!(o.data[21], 1);
    // b preempts a: a's registration goes, b holds the reservation, a gets a UA.
    assert_eq!(run("b", 4, 1, 0xb, 0xa), ScsiStatus::GOOD);
    let o = l.execute("c", &task(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 64, 0], &[]));
    assert_eq!(
        u32::from_be_bytes(o.data[4..8].try_into().unwrap()),
        8,
        "one key left"
    );
    assert_eq!(sense(&l.execute("a", &task(&[0; 6], &[]))), (6, 0x2a, 0x05));
    // RESERVE(6) conflicts with persistent reservations.
    assert_eq!(
        l.execute("c", &task(&[0x16, 0, 0, 0, 0, 0], &[])).status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    // CLEAR by the holder removes everything.
    assert_eq!(run("b", 3, 0, 0xb, 0), ScsiStatus::GOOD);
    assert_eq!(
        l.execute("c", &task(&w, &[0u8; 512])).status,
        ScsiStatus::GOOD
    );
}

#[test]
fn reserve6_is_exclusive_until_released_or_reset() {
    let l = lu(false);
    for n in ["a", "b"] {
        l.add_nexus(n);
        l.execute(n, &task(&[0; 6], &[]));
    }
    assert_eq!(
        l.execute("a", &task(&[0x16, 0, 0, 0, 0, 0], &[])).status,
        ScsiStatus::GOOD
    );
    assert_eq!(
        l.execute("b", &task(&[0x16, 0, 0, 0, 0, 0], &[])).status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    assert_eq!(
        l.execute("b", &task(&[0; 6], &[])).status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    assert_eq!(
        l.execute("b", &task(&[0x12, 0, 0, 0, 36, 0], &[])).status,
        ScsiStatus::GOOD
    );
    // A release by someone else is a no-op.
    assert_eq!(
        l.execute("b", &task(&[0x17, 0, 0, 0, 0, 0], &[])).status,
        ScsiStatus::GOOD
    );
    assert_eq!(
        l.execute("b", &task(&[0; 6], &[])).status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    l.reset();
    l.execute("b", &task(&[0; 6], &[])); // the reset UA
    assert_eq!(l.execute("b", &task(&[0; 6], &[])).status, ScsiStatus::GOOD);
}

#[test]
fn compare_and_write_is_all_or_nothing() {
    let l = lu(false);
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[13] = 1;
    let mut data = vec![0u8; 512];
    data.extend_from_slice(&[0x77u8; 512]);
    // The medium is zeros: compare matches, write happens.
    assert_eq!(l.execute("a", &task(&c, &data)).status, ScsiStatus::GOOD);
    // Now it is 0x77: comparing with zeros fails at byte 0, nothing is written.
    let o = l.execute("a", &task(&c, &data));
    assert_eq!(sense(&o), (0x0e, 0x1d, 0));
    assert_eq!(&o.sense[3..7], &0u32.to_be_bytes());
    let mut r = vec![0u8; 10];
    r[0] = 0x28;
    r[8] = 1;
    assert!(l
        .execute("a", &task(&r, &[]))
        .data
        .iter()
        .all(|&b| b == 0x77));
    // 256 blocks wrap to 0 in the one-byte field: refused, not ignored.
    c[13] = 0;
    assert_eq!(sense(&l.execute("a", &task(&c, &data))), (5, 0x24, 0));
}

#[test]
fn report_supported_opcodes_and_mode_select() {
    let l = lu(false);
    let all = l.execute(
        "a",
        &task(&[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]),
    );
    let n = u32::from_be_bytes(all.data[..4].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    assert!(
        all.data[4..].chunks(8).any(|d| d[0] == 0x89),
        "COMPARE AND WRITE listed"
    );
    // One command: READ (10) supported, opcode 0xe7 not.
    let one = l.execute(
        "a",
        &task(&[0xa3, 0x0c, 1, 0x28, 0, 0, 0, 0, 1, 0, 0, 0], &[]),
    );
    assert_eq!(one.data[1] & 0x07, 3);
    assert_eq!(one.data[4], 0x28);
    let none = l.execute(
        "a",
        &task(&[0xa3, 0x0c, 1, 0xe7, 0, 0, 0, 0, 1, 0, 0, 0], &[]),
    );
    assert_eq!(none.data[1] & 0x07, 1);
    // MODE SELECT (6): turn the write cache off, then MODE SENSE shows WCE clear.
    let sensed = l
        .execute("a", &task(&[0x1a, 0x08, 0x08, 0, 255, 0], &[]))
        .data;
    let mut p = vec![0u8; 4];
    p.extend_from_slice(&sensed[4..]);
    p[4 + 2] &= !0x04;
    let c = [0x15, 0x10, 0, 0, p.len() as u8, 0];
    assert_eq!(l.execute("a", &task(&c, &p)).status, ScsiStatus::GOOD);
    let again = l
        .execute("a", &task(&[0x1a, 0x08, 0x08, 0, 255, 0], &[]))
        .data;
    assert_eq!(again[6] & 0x04, 0);
    // Changing a bit that is not changeable is refused.
    p[4 + 3] = 0xff;
    assert_eq!(sense(&l.execute("a", &task(&c, &p))), (5, 0x26, 0));
}
