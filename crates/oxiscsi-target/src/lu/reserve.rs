//! Reservations: RESERVE(6)/RELEASE(6) (SPC-2 §7.21, §7.19) and persistent reservations,
//! PERSISTENT RESERVE IN/OUT (SPC-4 §5.12, §6.14, §6.15), all six types, with the
//! access rules of SPC-4 Table 69. Registrations are per I_T nexus (initiator name +
//! ISID, one target port). With APTPL the state survives restarts in a file beside the
//! LUN.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oxiscsi_proto::pdu::ScsiStatus;
use oxiscsi_proto::session::{ScsiOutcome, ScsiTask};
use oxiscsi_scsi::SenseKey;

use super::{alloc_truncate, LogicalUnit, Result, ScsiError};

const WRITE_EXCLUSIVE: u8 = 1;
const EXCLUSIVE_ACCESS: u8 = 3;
const WRITE_EXCLUSIVE_RO: u8 = 5;
const EXCLUSIVE_ACCESS_RO: u8 = 6;
const WRITE_EXCLUSIVE_AR: u8 = 7;
const EXCLUSIVE_ACCESS_AR: u8 = 8;

const RESERVATIONS_PREEMPTED: ScsiError = ScsiError::new(SenseKey::UNIT_ATTENTION, 0x2a, 0x03);
const RESERVATIONS_RELEASED: ScsiError = ScsiError::new(SenseKey::UNIT_ATTENTION, 0x2a, 0x04);
const REGISTRATIONS_PREEMPTED: ScsiError = ScsiError::new(SenseKey::UNIT_ATTENTION, 0x2a, 0x05);
const INVALID_RELEASE: ScsiError = ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x26, 0x04);

/// A persistent reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reservation {
    /// The holder; for the all-registrants types every registrant holds it.
    holder: String,
    rtype: u8,
}

/// Reservation state of one LU.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    /// RESERVE(6) holder.
    pub reserve6: Option<String>,
    /// Registered nexus → key.
    keys: BTreeMap<String, u64>,
    res: Option<Reservation>,
    generation: u32,
    aptpl: bool,
    /// Where APTPL state is kept (file-backed LUNs).
    pub state_file: Option<PathBuf>,
}

fn all_registrants(t: u8) -> bool {
    t == WRITE_EXCLUSIVE_AR || t == EXCLUSIVE_ACCESS_AR
}

fn conflict() -> ScsiOutcome {
    ScsiOutcome {
        status: ScsiStatus::RESERVATION_CONFLICT,
        ..Default::default()
    }
}

impl Reservations {
    fn holds(&self, nexus: &str) -> bool {
        match &self.res {
            Some(r) if all_registrants(r.rtype) => self.keys.contains_key(nexus),
            Some(r) => r.holder == nexus,
            None => false,
        }
    }

    pub(crate) fn with_state_file(state_file: Option<PathBuf>) -> Reservations {
        let mut r = Reservations {
            state_file,
            ..Default::default()
        };
        r.load();
        r
    }

    /// Load APTPL state written by [`Self::save`].
    pub(crate) fn load(&mut self) {
        let Some(p) = &self.state_file else { return };
        let Ok(text) = std::fs::read_to_string(p) else {
            return;
        };
        for line in text.lines() {
            let mut f = line.split_whitespace();
            match (f.next(), f.next(), f.next()) {
                (Some("key"), Some(k), Some(n)) => {
                    if let Ok(k) = u64::from_str_radix(k, 16) {
                        self.keys.insert(n.to_string(), k);
                    }
                }
                (Some("reservation"), Some(t), Some(h)) => {
                    if let Ok(t) = t.parse() {
                        self.res = Some(Reservation {
                            holder: h.to_string(),
                            rtype: t,
                        });
                    }
                }
                (Some("generation"), Some(g), None) => self.generation = g.parse().unwrap_or(0),
                _ => {}
            }
        }
        self.aptpl = !self.keys.is_empty();
    }

    /// Persist (temp file + fsync + rename) when APTPL is on; remove when off.
    fn save(&self) {
        let Some(p) = &self.state_file else { return };
        if !self.aptpl {
            let _ = std::fs::remove_file(p);
            return;
        }
        let mut text = format!("generation {}\n", self.generation);
        for (n, k) in &self.keys {
            text.push_str(&format!("key {k:016x} {n}\n"));
        }
        if let Some(r) = &self.res {
            text.push_str(&format!("reservation {} {}\n", r.rtype, r.holder));
        }
        let tmp = p.with_extension("pr.tmp");
        let ok = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, p)
        })();
        if let Err(e) = ok {
            tracing::warn!(error = %e, path = %p.display(), "could not persist reservations (APTPL)");
        }
    }
}

/// Does a command of this opcode only read (SPC-4 Table 69's "read" class)?
fn reads_only(op: u8, cdb: &[u8]) -> bool {
    matches!(
        op,
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x1a | 0x5a | 0x34 | 0x90
    ) || (op == 0x9e && cdb.get(1).is_some_and(|b| b & 0x1f == 0x12))
}

/// Allowed whatever the reservation (Table 69 and SPC-2 §5.5.1).
fn always_allowed(op: u8, cdb: &[u8]) -> bool {
    matches!(op, 0x12 | 0xa0 | 0x03 | 0x00 | 0x5e | 0x25 | 0xa3)
        || (op == 0x9e && cdb.get(1).is_some_and(|b| b & 0x1f == 0x10))
}

impl LogicalUnit {
    /// RESERVATION CONFLICT for a command this nexus may not run now.
    pub(crate) fn check_reservation(
        &self,
        nexus: &str,
        op: u8,
        cdb: &[u8],
    ) -> std::result::Result<(), ScsiOutcome> {
        let Ok(r) = self.reservations.lock() else {
            return Ok(());
        };
        if let Some(h) = &r.reserve6 {
            // SPC-2: a RESERVE(6) by another nexus blocks all but a few commands.
            if h != nexus && !matches!(op, 0x12 | 0xa0 | 0x03 | 0x17 | 0x5e) {
                return Err(conflict());
            }
        }
        if op == 0x5e || op == 0x5f || always_allowed(op, cdb) {
            return Ok(());
        }
        let Some(res) = &r.res else { return Ok(()) };
        if r.holds(nexus) {
            return Ok(());
        }
        let registered = r.keys.contains_key(nexus);
        let read = reads_only(op, cdb);
        let ok = match res.rtype {
            WRITE_EXCLUSIVE => read,
            EXCLUSIVE_ACCESS => false,
            WRITE_EXCLUSIVE_RO | WRITE_EXCLUSIVE_AR => registered || read,
            EXCLUSIVE_ACCESS_RO | EXCLUSIVE_ACCESS_AR => registered,
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(conflict())
        }
    }

    pub(super) fn reserve6(&self, nexus: &str) -> Result<ScsiOutcome> {
        let mut r = self
            .reservations
            .lock()
            .map_err(|_| ScsiError::WRITE_ERROR)?;
        if !r.keys.is_empty() || r.res.is_some() {
            // SPC-4 §5.12.3: RESERVE(6) conflicts with persistent reservations.
            return Ok(conflict());
        }
        match &r.reserve6 {
            Some(h) if h != nexus => Ok(conflict()),
            _ => {
                r.reserve6 = Some(nexus.to_string());
                Ok(ScsiOutcome::default())
            }
        }
    }

    pub(super) fn release6(&self, nexus: &str) -> ScsiOutcome {
        if let Ok(mut r) = self.reservations.lock() {
            if r.reserve6.as_deref() == Some(nexus) {
                r.reserve6 = None;
            }
        }
        // Releasing what another holds, or nothing, is a no-op (SPC-2 §7.19).
        ScsiOutcome::default()
    }

    pub(super) fn persistent_reserve_in(&self, nexus: &str, cdb: &[u8]) -> Result<ScsiOutcome> {
        let sa = cdb[1] & 0x1f;
        let alloc = usize::from(u16::from_be_bytes([cdb[7], cdb[8]]));
        let r = self
            .reservations
            .lock()
            .map_err(|_| ScsiError::READ_ERROR)?;
        let mut d = Vec::new();
        match sa {
            0 => {
                // READ KEYS
                d.extend_from_slice(&r.generation.to_be_bytes());
                d.extend_from_slice(&((r.keys.len() * 8) as u32).to_be_bytes());
                for k in r.keys.values() {
                    d.extend_from_slice(&k.to_be_bytes());
                }
            }
            1 => {
                // READ RESERVATION
                d.extend_from_slice(&r.generation.to_be_bytes());
                match &r.res {
                    Some(res) => {
                        d.extend_from_slice(&16u32.to_be_bytes());
                        let key = if all_registrants(res.rtype) {
                            0
                        } else {
                            r.keys.get(&res.holder).copied().unwrap_or(0)
                        };
                        d.extend_from_slice(&key.to_be_bytes());
                        d.extend_from_slice(&[0, 0, 0, 0, 0, res.rtype, 0, 0]);
                    }
                    None => d.extend_from_slice(&0u32.to_be_bytes()),
                }
            }
            2 => {
                // REPORT CAPABILITIES: CRH, ATP_C=0, PTPL_C if we can persist; TMV with
                // every type supported.
                let ptpl_c = u8::from(r.state_file.is_some());
                d = vec![
                    0,
                    8,
                    0x10 | ptpl_c,
                    0x80 | u8::from(r.aptpl),
                    0xea,
                    0x01,
                    0,
                    0,
                ];
            }
            3 => {
                // READ FULL STATUS
                d.extend_from_slice(&r.generation.to_be_bytes());
                d.extend_from_slice(&[0; 4]);
                for (n, k) in &r.keys {
                    let tid = transport_id(n);
                    let mut e = vec![0u8; 24];
                    e[..8].copy_from_slice(&k.to_be_bytes());
                    if r.holds(n) {
                        if let Some(res) = &r.res {
                            e[12] = 0x01;
                            e[13] = res.rtype;
                        }
                    }
                    e[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
                    e.extend_from_slice(&tid);
                    d.extend_from_slice(&e);
                }
                let len = (d.len() - 8) as u32;
                d[4..8].copy_from_slice(&len.to_be_bytes());
            }
            _ => return Err(ScsiError::INVALID_FIELD_IN_CDB),
        }
        let _ = nexus;
        Ok(alloc_truncate(d, alloc))
    }

    pub(super) fn persistent_reserve_out(
        &self,
        nexus: &str,
        cdb: &[u8],
        task: &ScsiTask,
    ) -> Result<ScsiOutcome> {
        let sa = cdb[1] & 0x1f;
        let scope = cdb[2] >> 4;
        let rtype = cdb[2] & 0x0f;
        let plen = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]) as usize;
        if sa == 7 {
            // REGISTER AND MOVE needs a second target port; there is one.
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        if sa > 7 {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        if plen != 24 {
            return Err(ScsiError::PARAMETER_LIST_LENGTH);
        }
        let p = task
            .data_out
            .get(..24)
            .ok_or(ScsiError::PARAMETER_LIST_LENGTH)?;
        let key = u64::from_be_bytes(
            p[0..8]
                .try_into()
                .map_err(|_| ScsiError::PARAMETER_LIST_LENGTH)?,
        );
        let sa_key = u64::from_be_bytes(
            p[8..16]
                .try_into()
                .map_err(|_| ScsiError::PARAMETER_LIST_LENGTH)?,
        );
        let spec_i_pt = p[20] & 0x08 != 0;
        let all_tg_pt = p[20] & 0x04 != 0;
        let aptpl = p[20] & 0x01 != 0;
        if spec_i_pt || all_tg_pt {
            return Err(ScsiError::INVALID_FIELD_IN_PARAMETER_LIST);
        }
        let mut r = self
            .reservations
            .lock()
            .map_err(|_| ScsiError::WRITE_ERROR)?;
        if r.reserve6.as_deref().is_some_and(|h| h != nexus) {
            return Ok(conflict());
        }
        if aptpl && r.state_file.is_none() && (sa == 0 || sa == 6) {
            return Err(ScsiError::INVALID_FIELD_IN_PARAMETER_LIST);
        }
        let mine = r.keys.get(nexus).copied();
        let type_ok = matches!(rtype, 1 | 3 | 5 | 6 | 7 | 8);
        let mut ua: Vec<(String, ScsiError)> = Vec::new();
        let out = match sa {
            0 | 6 => {
                // REGISTER / REGISTER AND IGNORE EXISTING KEY
                if sa == 0 && mine.unwrap_or(0) != key {
                    return Ok(conflict());
                }
                if sa_key == 0 {
                    if mine.is_some() {
                        r.keys.remove(nexus);
                        if let Some(res) = r.res.clone() {
                            let held = res.holder == nexus && !all_registrants(res.rtype);
                            if held || (all_registrants(res.rtype) && r.keys.is_empty()) {
                                r.res = None;
                                if matches!(res.rtype, WRITE_EXCLUSIVE_RO | EXCLUSIVE_ACCESS_RO) {
                                    for n in r.keys.keys() {
                                        ua.push((n.clone(), RESERVATIONS_RELEASED));
                                    }
                                }
                            }
                        }
                    }
                } else {
                    r.keys.insert(nexus.to_string(), sa_key);
                }
                r.aptpl = aptpl;
                r.generation = r.generation.wrapping_add(1);
                ScsiOutcome::default()
            }
            1 => {
                // RESERVE
                if mine != Some(key) {
                    return Ok(conflict());
                }
                if scope != 0 || !type_ok {
                    return Err(ScsiError::INVALID_FIELD_IN_CDB);
                }
                match &r.res {
                    None => {
                        r.res = Some(Reservation {
                            holder: nexus.to_string(),
                            rtype,
                        });
                        ScsiOutcome::default()
                    }
                    Some(res) if r.holds(nexus) && res.rtype == rtype => ScsiOutcome::default(),
                    Some(_) => return Ok(conflict()),
                }
            }
            2 => {
                // RELEASE
                if mine != Some(key) {
                    return Ok(conflict());
                }
                match r.res.clone() {
                    Some(res) if r.holds(nexus) => {
                        if scope != 0 || res.rtype != rtype {
                            return Err(INVALID_RELEASE);
                        }
                        r.res = None;
                        if res.rtype != WRITE_EXCLUSIVE && res.rtype != EXCLUSIVE_ACCESS {
                            for n in r.keys.keys().filter(|n| *n != nexus) {
                                ua.push((n.clone(), RESERVATIONS_RELEASED));
                            }
                        }
                        ScsiOutcome::default()
                    }
                    _ => ScsiOutcome::default(),
                }
            }
            3 => {
                // CLEAR
                if mine != Some(key) {
                    return Ok(conflict());
                }
                for n in r.keys.keys().filter(|n| *n != nexus) {
                    ua.push((n.clone(), RESERVATIONS_PREEMPTED));
                }
                r.keys.clear();
                r.res = None;
                r.generation = r.generation.wrapping_add(1);
                ScsiOutcome::default()
            }
            4 | 5 => {
                // PREEMPT (AND ABORT; tasks of the preempted nexuses end when they are
                // told by the unit attention - this target runs each command to completion)
                if mine != Some(key) {
                    return Ok(conflict());
                }
                let res = r.res.clone();
                let holder_key = res
                    .as_ref()
                    .filter(|x| !all_registrants(x.rtype))
                    .and_then(|x| r.keys.get(&x.holder).copied());
                match res {
                    Some(x) if all_registrants(x.rtype) && sa_key == 0 => {
                        // Preempt everyone else; the reservation becomes ours.
                        if scope != 0 || !type_ok {
                            return Err(ScsiError::INVALID_FIELD_IN_CDB);
                        }
                        let others: Vec<String> =
                            r.keys.keys().filter(|n| *n != nexus).cloned().collect();
                        for n in others {
                            r.keys.remove(&n);
                            ua.push((n, REGISTRATIONS_PREEMPTED));
                        }
                        r.res = Some(Reservation {
                            holder: nexus.to_string(),
                            rtype,
                        });
                    }
                    Some(_) if holder_key == Some(sa_key) => {
                        if scope != 0 || !type_ok {
                            return Err(ScsiError::INVALID_FIELD_IN_CDB);
                        }
                        let gone: Vec<String> = r
                            .keys
                            .iter()
                            .filter(|(n, k)| **k == sa_key && *n != nexus)
                            .map(|(n, _)| n.clone())
                            .collect();
                        for n in gone {
                            r.keys.remove(&n);
                            ua.push((n, REGISTRATIONS_PREEMPTED));
                        }
                        r.res = Some(Reservation {
                            holder: nexus.to_string(),
                            rtype,
                        });
                    }
                    _ => {
                        if sa_key == 0 {
                            return Err(ScsiError::INVALID_FIELD_IN_PARAMETER_LIST);
                        }
                        let gone: Vec<String> = r
                            .keys
                            .iter()
                            .filter(|(_, k)| **k == sa_key)
                            .map(|(n, _)| n.clone())
                            .collect();
                        if gone.is_empty() {
                            return Ok(conflict());
                        }
                        for n in gone {
                            r.keys.remove(&n);
                            if n != nexus {
                                ua.push((n, REGISTRATIONS_PREEMPTED));
                            }
                        }
                    }
                }
                r.generation = r.generation.wrapping_add(1);
                ScsiOutcome::default()
            }
            _ => return Err(ScsiError::INVALID_FIELD_IN_CDB),
        };
        r.save();
        drop(r);
        if let Ok(mut m) = self.unit_attentions.lock() {
            for (n, e) in ua {
                if let Some(v) = m.get_mut(&n) {
                    if !v.contains(&e) {
                        v.push(e);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// An iSCSI TransportID for an initiator port (SPC-4 §7.6.4.6, format 01b): the name,
/// ",i,0x", the ISID, NUL-padded to a multiple of four.
fn transport_id(nexus: &str) -> Vec<u8> {
    let (name, isid) = nexus.rsplit_once(',').unwrap_or((nexus, ""));
    let mut s = format!("{name},i,0x{isid}").into_bytes();
    s.push(0);
    while s.len() % 4 != 0 {
        s.push(0);
    }
    let mut v = vec![0x45, 0];
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(&s);
    v
}
