//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 §6.4, §6.26; SPC-3 §6.3): block
//! to block copies between LUs *of the session's target only*. Copy targets are named
//! by their NAA designator; one that is not a LUN of this target is "not reachable",
//! whatever else the host serves. CVE-2020-28374 (LIO) was exactly the opposite: any
//! LU on the host, found by its NAA, could be read or written through XCOPY.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use oxiscsi_proto::pdu::ScsiStatus;
use oxiscsi_proto::session::{ScsiOutcome, ScsiTask};
use oxiscsi_scsi::{Sense, SenseKey};

use crate::lu::{LogicalUnit, ScsiError};

const MAX_TARGET_DESCRIPTORS: usize = 8;
const MAX_SEGMENT_DESCRIPTORS: usize = 8;
const MAX_DESCRIPTOR_LIST: usize = 1024;
/// Largest segment, bytes.
const MAX_SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 16;
const TARGET_DESC: usize = 32;
const SEGMENT_B2B: usize = 28;

const TOO_MANY_TARGETS: ScsiError = ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x26, 0x06);
const UNSUPPORTED_TARGET_TYPE: ScsiError = ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x26, 0x07);
const TOO_MANY_SEGMENTS: ScsiError = ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x26, 0x08);
const UNSUPPORTED_SEGMENT_TYPE: ScsiError = ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x26, 0x09);
const NOT_REACHABLE: ScsiError = ScsiError::new(SenseKey::COPY_ABORTED, 0x0d, 0x02);

/// Results of finished copies, per (nexus, list identifier), for RECEIVE COPY RESULTS.
#[derive(Debug, Default)]
pub struct CopyResults {
    done: Mutex<HashMap<(String, u8), (u16, u64)>>,
}

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}
fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn aborted(asc: u8, ascq: u8) -> ScsiOutcome {
    ScsiError::new(SenseKey::COPY_ABORTED, asc, ascq).outcome(false)
}

/// EXTENDED COPY (LID1).
pub fn extended_copy(
    luns: &BTreeMap<u16, Arc<LogicalUnit>>,
    results: &CopyResults,
    nexus: &str,
    task: &ScsiTask,
) -> ScsiOutcome {
    let cdb = &task.cdb;
    if cdb.len() < 16 {
        return ScsiError::INVALID_FIELD_IN_CDB.outcome(false);
    }
    if cdb[1] & 0x1f != 0 {
        // Only LID1 (service action 0).
        return ScsiError::INVALID_FIELD_IN_CDB.outcome(false);
    }
    let plen = be32(&cdb[10..14]);
    if plen == 0 {
        return ScsiOutcome::default();
    }
    let p = &task.data_out[..task.data_out.len().min(plen)];
    if p.len() < HEADER {
        return ScsiError::PARAMETER_LIST_LENGTH.outcome(false);
    }
    let list_id = p[0];
    let tlen = be16(&p[2..4]);
    let slen = be32(&p[8..12]);
    let inline = be32(&p[12..16]);
    if tlen + slen + inline > MAX_DESCRIPTOR_LIST || HEADER + tlen + slen + inline > p.len() {
        return ScsiError::PARAMETER_LIST_LENGTH.outcome(false);
    }
    if !tlen.is_multiple_of(TARGET_DESC) {
        return ScsiError::PARAMETER_LIST_LENGTH.outcome(false);
    }
    if tlen / TARGET_DESC > MAX_TARGET_DESCRIPTORS {
        return TOO_MANY_TARGETS.outcome(false);
    }
    // Resolve each target descriptor to one of this target's LUs.
    let mut targets: Vec<Option<Arc<LogicalUnit>>> = Vec::new();
    for d in p[HEADER..HEADER + tlen].chunks_exact(TARGET_DESC) {
        if d[0] != 0xe4 {
            return UNSUPPORTED_TARGET_TYPE.outcome(false);
        }
        let dlen = usize::from(d[7]).min(20);
        let designator = &d[8..8 + dlen];
        let lu = luns
            .values()
            .find(|lu| d[5] & 0x0f == 0x03 && designator == lu.naa())
            .cloned();
        targets.push(lu);
    }
    // Segment descriptors: block to block only.
    let segs = &p[HEADER + tlen..HEADER + tlen + slen];
    let mut plan = Vec::new();
    let mut off = 0;
    while off < segs.len() {
        if segs.len() - off < 4 {
            return ScsiError::PARAMETER_LIST_LENGTH.outcome(false);
        }
        let d = &segs[off..];
        if d[0] != 0x02 {
            return UNSUPPORTED_SEGMENT_TYPE.outcome(false);
        }
        if be16(&d[2..4]) != SEGMENT_B2B - 4 || d.len() < SEGMENT_B2B {
            return ScsiError::PARAMETER_LIST_LENGTH.outcome(false);
        }
        plan.push((
            be16(&d[4..6]),
            be16(&d[6..8]),
            be16(&d[10..12]) as u64,
            be64(&d[12..20]),
            be64(&d[20..28]),
        ));
        off += SEGMENT_B2B;
        if plan.len() > MAX_SEGMENT_DESCRIPTORS {
            return TOO_MANY_SEGMENTS.outcome(false);
        }
    }
    let mut done_segments = 0u16;
    let mut bytes = 0u64;
    for (si, di, blocks, src_lba, dst_lba) in plan {
        let (Some(Some(src)), Some(Some(dst))) = (targets.get(si), targets.get(di)) else {
            return NOT_REACHABLE.outcome(false);
        };
        let bs = u64::from(src.block_size());
        if bs != u64::from(dst.block_size()) || blocks * bs > MAX_SEGMENT_BYTES {
            return aborted(0x26, 0x0a); // UNEXPECTED INEXACT SEGMENT
        }
        if src_lba.checked_add(blocks).is_none_or(|e| e > src.blocks())
            || dst_lba.checked_add(blocks).is_none_or(|e| e > dst.blocks())
        {
            // Past the end of a copy target: COPY ABORTED with no additional sense, as
            // SPC-4 §6.4.6 leaves it and libiscsi's suite expects (0x21/0x00 belongs to
            // ILLEGAL REQUEST).
            return aborted(0x00, 0x00);
        }
        if let Err(o) = src.copy_blocks_to(nexus, src_lba, dst, dst_lba, blocks) {
            return o;
        }
        done_segments += 1;
        bytes += blocks * bs;
    }
    if let Ok(mut m) = results.done.lock() {
        if m.len() > 256 {
            m.clear();
        }
        m.insert((nexus.to_string(), list_id), (done_segments, bytes));
    }
    ScsiOutcome::default()
}

/// RECEIVE COPY RESULTS: COPY STATUS (0) and OPERATING PARAMETERS (3).
pub fn receive_copy_results(results: &CopyResults, nexus: &str, cdb: &[u8]) -> ScsiOutcome {
    if cdb.len() < 16 {
        return ScsiError::INVALID_FIELD_IN_CDB.outcome(false);
    }
    let sa = cdb[1] & 0x1f;
    let list_id = cdb[2];
    let alloc = be32(&cdb[10..14]);
    let mut d = match sa {
        0 => {
            let Some((segments, bytes)) = results
                .done
                .lock()
                .ok()
                .and_then(|m| m.get(&(nexus.to_string(), list_id)).copied())
            else {
                // No copy with that list identifier from this nexus.
                return ScsiError::INVALID_FIELD_IN_CDB.outcome(false);
            };
            let mut d = vec![0u8; 12];
            d[3] = 8;
            d[4] = 0x01; // completed, no errors
            d[5..7].copy_from_slice(&segments.to_be_bytes());
            d[7] = 0x01; // transfer count in KiB
            d[8..12]
                .copy_from_slice(&((bytes / 1024).min(u64::from(u32::MAX)) as u32).to_be_bytes());
            d
        }
        3 => {
            let mut d = vec![0u8; 46];
            let n = (d.len() - 4) as u32;
            d[..4].copy_from_slice(&n.to_be_bytes());
            d[4] = 0x01; // SNLID: list identifiers are kept per nexus
            d[8..10].copy_from_slice(&(MAX_TARGET_DESCRIPTORS as u16).to_be_bytes());
            d[10..12].copy_from_slice(&(MAX_SEGMENT_DESCRIPTORS as u16).to_be_bytes());
            d[12..16].copy_from_slice(&(MAX_DESCRIPTOR_LIST as u32).to_be_bytes());
            d[16..20].copy_from_slice(&(MAX_SEGMENT_BYTES as u32).to_be_bytes());
            d[34..36].copy_from_slice(&1u16.to_be_bytes()); // total concurrent copies
            d[36] = 1; // maximum concurrent copies
            d[37] = 9; // data segment granularity: 512 bytes
            d[43] = 2; // implemented descriptor types:
            d[44] = 0x02; // block to block
            d[45] = 0xe4; // identification descriptor target
            d
        }
        _ => return ScsiError::INVALID_FIELD_IN_CDB.outcome(false),
    };
    d.truncate(alloc);
    ScsiOutcome {
        status: ScsiStatus::GOOD,
        data: Bytes::from(d),
        ..Default::default()
    }
}

/// For logs: what an XCOPY failure sense says.
pub fn describe(o: &ScsiOutcome) -> String {
    Sense::parse(&o.sense)
        .map(|s| s.to_string())
        .unwrap_or_default()
}
