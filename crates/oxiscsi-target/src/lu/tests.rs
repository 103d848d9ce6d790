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
        },
    )
}

fn task(cdb: &[u8], data: &[u8]) -> ScsiTask {
    ScsiTask {
        itt: 1,
        lun: Lun::from_number(1),
        cdb: Bytes::copy_from_slice(cdb),
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
