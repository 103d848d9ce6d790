//! A SCSI block device (SPC-4 / SBC-3) over a [`Backend`]: decodes each CDB, checks it,
//! runs it and answers with status, sense and data. Every error is a specific sense
//! key/ASC/ASCQ (see [`ScsiError`]); nothing from the initiator panics.
//!
//! Modules: `inquiry` (INQUIRY and VPD pages), `rw` (media access commands),
//! `mode` (MODE SENSE pages).

mod extra;
mod inquiry;
mod mode;
mod opcodes;
mod reserve;
mod rw;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use oxiscsi_proto::pdu::ScsiStatus;
use oxiscsi_proto::session::{ScsiOutcome, ScsiTask};
use oxiscsi_scsi::{Sense, SenseKey};
use sha2::{Digest, Sha256};

use crate::backend::Backend;

/// A SCSI error with its sense code (SPC-4 §4.5.6), mapped to the wire by
/// [`ScsiError::outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiError {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
}

impl ScsiError {
    pub const INVALID_OPCODE: ScsiError = ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: ScsiError = ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: ScsiError =
        ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x24, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: ScsiError =
        ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x26, 0x00);
    pub const PARAMETER_LIST_LENGTH: ScsiError =
        ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x1a, 0x00);
    pub const LUN_NOT_SUPPORTED: ScsiError = ScsiError::new(SenseKey::ILLEGAL_REQUEST, 0x25, 0x00);
    pub const WRITE_PROTECTED: ScsiError = ScsiError::new(SenseKey::DATA_PROTECT, 0x27, 0x00);
    pub const MISCOMPARE: ScsiError = ScsiError::new(SenseKey::MISCOMPARE, 0x1d, 0x00);
    pub const READ_ERROR: ScsiError = ScsiError::new(SenseKey::MEDIUM_ERROR, 0x11, 0x00);
    pub const WRITE_ERROR: ScsiError = ScsiError::new(SenseKey::MEDIUM_ERROR, 0x0c, 0x00);
    pub const POWER_ON: ScsiError = ScsiError::new(SenseKey::UNIT_ATTENTION, 0x29, 0x00);
    pub const LUN_RESET: ScsiError = ScsiError::new(SenseKey::UNIT_ATTENTION, 0x29, 0x03);

    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> ScsiError {
        ScsiError { key, asc, ascq }
    }

    /// CHECK CONDITION with this sense, fixed or descriptor format (D_SENSE).
    pub fn outcome(self, descriptor: bool) -> ScsiOutcome {
        let sense = if descriptor {
            Sense::descriptor(self.key, self.asc, self.ascq)
        } else {
            Sense::fixed(self.key, self.asc, self.ascq)
        };
        ScsiOutcome {
            status: ScsiStatus::CHECK_CONDITION,
            sense: Bytes::from(sense),
            ..Default::default()
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, ScsiError>;

/// Who is talking to the LU: the I_T nexus (initiator name + ISID), for unit attentions.
pub type Nexus = String;

/// Settings of one logical unit.
#[derive(Debug, Clone)]
pub struct LuConfig {
    pub block_size: u32,
    pub read_only: bool,
    /// Seed for the serial number and NAA identifier (target IQN + LUN): stable across
    /// restarts for the same configuration.
    pub id_seed: String,
    pub product: String,
    /// Where persistent reservations with APTPL are kept (file-backed LUNs).
    pub pr_state: Option<std::path::PathBuf>,
}

/// One logical unit.
#[derive(Debug)]
pub struct LogicalUnit {
    backend: Arc<dyn Backend>,
    cfg: LuConfig,
    blocks: u64,
    /// Write cache enabled (caching mode page): writes are durable only after
    /// SYNCHRONIZE CACHE or FUA. Off means every write is followed by fdatasync.
    wce: AtomicBool,
    /// Descriptor-format sense (control mode page D_SENSE).
    d_sense: AtomicBool,
    /// Software write protect (control mode page SWP).
    swp: AtomicBool,
    serial: String,
    naa: [u8; 8],
    unit_attentions: Mutex<HashMap<Nexus, Vec<ScsiError>>>,
    /// Shared by ordinary reads and writes; held exclusively by COMPARE AND WRITE and
    /// ORWRITE so nothing lands between their read and their write.
    io_lock: RwLock<()>,
    /// RESERVE(6) holder and persistent reservations.
    reservations: Mutex<reserve::Reservations>,
}

/// Largest transfer one command may move, in bytes (VPD B0 says it in blocks).
pub const MAX_TRANSFER_BYTES: u64 = 8 << 20;

impl LogicalUnit {
    pub fn new(backend: Arc<dyn Backend>, cfg: LuConfig) -> LogicalUnit {
        let bs = u64::from(cfg.block_size.max(512));
        let blocks = backend.len() / bs;
        let h = Sha256::digest(cfg.id_seed.as_bytes());
        // NAA 6 (IEEE registered extended) with a locally chosen OUI-like prefix.
        let mut naa = [0u8; 8];
        naa.copy_from_slice(&h[..8]);
        naa[0] = 0x60 | (naa[0] & 0x0f);
        let serial: String = h[8..16].iter().map(|b| format!("{b:02x}")).collect();
        let reservations = reserve::Reservations::with_state_file(cfg.pr_state.clone());
        LogicalUnit {
            backend,
            blocks,
            wce: AtomicBool::new(true),
            d_sense: AtomicBool::new(false),
            swp: AtomicBool::new(false),
            serial,
            naa,
            cfg,
            unit_attentions: Mutex::new(HashMap::new()),
            io_lock: RwLock::new(()),
            reservations: Mutex::new(reservations),
        }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn block_size(&self) -> u32 {
        self.cfg.block_size
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Commands may wait on a device: run them off the async workers.
    pub fn may_block(&self) -> bool {
        self.backend.may_block()
    }

    /// The NAA designator of VPD page 0x83 (how EXTENDED COPY names this LU).
    pub fn naa(&self) -> &[u8] {
        &self.naa
    }

    /// Copy blocks to `dst` (EXTENDED COPY), as `nexus`: the reservation rules apply on
    /// both LUs, the destination must be writable. Errors come back as the outcome.
    pub fn copy_blocks_to(
        &self,
        nexus: &str,
        src_lba: u64,
        dst: &LogicalUnit,
        dst_lba: u64,
        blocks: u64,
    ) -> std::result::Result<(), ScsiOutcome> {
        let d_sense = self.d_sense.load(Ordering::Relaxed);
        self.check_reservation(nexus, 0x28, &[0x28])?;
        dst.check_reservation(nexus, 0x2a, &[0x2a])?;
        if dst.write_protected() {
            return Err(ScsiError::WRITE_PROTECTED.outcome(d_sense));
        }
        let bs = u64::from(self.cfg.block_size);
        let chunk_blocks = (1u64 << 20) / bs;
        let mut buf = vec![0u8; (chunk_blocks * bs) as usize];
        let mut done = 0;
        while done < blocks {
            let n = (blocks - done).min(chunk_blocks);
            let len = (n * bs) as usize;
            {
                let _g = self
                    .io_lock
                    .read()
                    .map_err(|_| ScsiError::READ_ERROR.outcome(d_sense))?;
                self.backend
                    .read_at((src_lba + done) * bs, &mut buf[..len])
                    .map_err(|_| {
                        ScsiError::new(SenseKey::COPY_ABORTED, 0x11, 0x00).outcome(d_sense)
                    })?;
            }
            let _g = dst
                .io_lock
                .read()
                .map_err(|_| ScsiError::WRITE_ERROR.outcome(d_sense))?;
            dst.backend
                .write_at((dst_lba + done) * bs, &buf[..len])
                .map_err(|_| ScsiError::new(SenseKey::COPY_ABORTED, 0x0c, 0x00).outcome(d_sense))?;
            done += n;
        }
        Ok(())
    }

    fn write_protected(&self) -> bool {
        self.cfg.read_only || self.swp.load(Ordering::Relaxed)
    }

    /// A new I_T nexus sees POWER ON OCCURRED once (SAM-5 §6.3.1).
    pub fn add_nexus(&self, nexus: &str) {
        if let Ok(mut ua) = self.unit_attentions.lock() {
            ua.insert(nexus.to_string(), vec![ScsiError::POWER_ON]);
        }
    }

    /// The I_T nexuses this LU knows (sessions that can see it).
    pub fn nexuses(&self) -> Vec<Nexus> {
        self.unit_attentions
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Take over the sessions of the LU this one replaces (a reload changed the LUN):
    /// each sees CAPACITY DATA HAS CHANGED when the size differs, else POWER ON (a
    /// different medium now answers). With no predecessor (a new LUN), `nexuses` get
    /// POWER ON.
    pub fn adopt(&self, old: Option<&LogicalUnit>, nexuses: &[Nexus]) {
        let ua = match old {
            Some(o) if o.blocks != self.blocks => {
                ScsiError::new(SenseKey::UNIT_ATTENTION, 0x2a, 0x09)
            }
            _ => ScsiError::POWER_ON,
        };
        if let Ok(mut m) = self.unit_attentions.lock() {
            for n in nexuses {
                m.entry(n.clone()).or_default().push(ua);
            }
        }
    }

    pub fn remove_nexus(&self, nexus: &str) {
        if let Ok(mut ua) = self.unit_attentions.lock() {
            ua.remove(nexus);
        }
        // SPC-2 §7.21: a RESERVE(6) ends with the nexus that made it.
        if let Ok(mut r) = self.reservations.lock() {
            if r.reserve6.as_deref() == Some(nexus) {
                r.reserve6 = None;
            }
        }
    }

    /// REPORTED LUNS DATA HAS CHANGED (0x3f/0x0e) for every nexus (after a reload).
    pub fn luns_changed(&self) {
        self.unit_attention_others("", ScsiError::new(SenseKey::UNIT_ATTENTION, 0x3f, 0x0e));
    }

    /// Queue a unit attention for every nexus but `except`.
    fn unit_attention_others(&self, except: &str, e: ScsiError) {
        if let Ok(mut ua) = self.unit_attentions.lock() {
            for (n, v) in ua.iter_mut() {
                if n != except && !v.contains(&e) {
                    v.push(e);
                }
            }
        }
    }

    /// After a LUN or target reset: every nexus sees the reset once, and RESERVE(6)
    /// reservations end (SPC-2 §5.5.2; persistent ones stay).
    pub fn reset(&self) {
        if let Ok(mut r) = self.reservations.lock() {
            r.reserve6 = None;
        }
        if let Ok(mut ua) = self.unit_attentions.lock() {
            for v in ua.values_mut() {
                v.retain(|e| *e != ScsiError::LUN_RESET);
                v.push(ScsiError::LUN_RESET);
            }
        }
    }

    fn take_unit_attention(&self, nexus: &str) -> Option<ScsiError> {
        let mut ua = self.unit_attentions.lock().ok()?;
        let v = ua.get_mut(nexus)?;
        if v.is_empty() {
            None
        } else {
            Some(v.remove(0))
        }
    }

    /// Run one command for `nexus`.
    pub fn execute(&self, nexus: &str, task: &ScsiTask) -> ScsiOutcome {
        let d_sense = self.d_sense.load(Ordering::Relaxed);
        let cdb = &task.cdb[..];
        let Some(&op) = cdb.first() else {
            return ScsiError::INVALID_OPCODE.outcome(d_sense);
        };
        // SPC-4 §5.14: INQUIRY, REPORT LUNS and REQUEST SENSE do not report a unit
        // attention; everything else reports it first and is not run.
        if !matches!(op, 0x12 | 0xa0 | 0x03) {
            if let Some(ua) = self.take_unit_attention(nexus) {
                return ua.outcome(d_sense);
            }
        }
        if let Err(e) = self.check_reservation(nexus, op, cdb) {
            return e;
        }
        match self.dispatch(nexus, op, cdb, task) {
            Ok(o) => o,
            Err(e) => e.outcome(self.d_sense.load(Ordering::Relaxed)),
        }
    }

    fn dispatch(&self, nexus: &str, op: u8, cdb: &[u8], task: &ScsiTask) -> Result<ScsiOutcome> {
        let need = match op {
            0x00..=0x1f => 6,
            0x20..=0x5f => 10,
            0x80..=0x9f => 16,
            0xa0..=0xbf => 12,
            _ => 6,
        };
        if cdb.len() < need {
            return Err(ScsiError::INVALID_FIELD_IN_CDB);
        }
        match op {
            0x00 => Ok(ScsiOutcome::default()), // TEST UNIT READY
            0x03 => Ok(self.request_sense(nexus, cdb)),
            0x12 => self.inquiry(cdb),
            0x1a | 0x5a => self.mode_sense(cdb),
            0x1b | 0x1e => Ok(ScsiOutcome::default()), // START STOP UNIT, PREVENT ALLOW
            0x25 => Ok(self.read_capacity10()),
            0x9e if cdb[1] & 0x1f == 0x10 => Ok(self.read_capacity16(cdb)),
            0x08 | 0x28 | 0xa8 | 0x88 => self.read(op, cdb, task),
            0x0a | 0x2a | 0xaa | 0x8a => self.write(op, cdb, task),
            0x2f | 0xaf | 0x8f => self.verify(op, cdb, task),
            0x35 | 0x91 => self.synchronize_cache(op, cdb),
            0x41 | 0x93 => self.write_same(op, cdb, task),
            0x42 => self.unmap(cdb, task),
            0x2e | 0xae | 0x8e => self.write_and_verify(op, cdb, task),
            0x8b => self.orwrite(cdb, task),
            0x34 | 0x90 => self.prefetch(op, cdb),
            0x89 => self.compare_and_write(cdb, task),
            0x9e if cdb[1] & 0x1f == 0x12 => self.get_lba_status(cdb),
            0xa3 if cdb[1] & 0x1f == 0x0c => self.report_supported_opcodes(cdb),
            0x15 | 0x55 => self.mode_select(nexus, cdb, task),
            0x16 => self.reserve6(nexus),
            0x17 => Ok(self.release6(nexus)),
            0x5e => self.persistent_reserve_in(nexus, cdb),
            0x5f => self.persistent_reserve_out(nexus, cdb, task),
            _ => Err(ScsiError::INVALID_OPCODE),
        }
    }

    fn request_sense(&self, nexus: &str, cdb: &[u8]) -> ScsiOutcome {
        let alloc = usize::from(cdb[4]);
        let desc = cdb[1] & 1 == 1;
        let sense = match self.take_unit_attention(nexus) {
            Some(e) => {
                if desc {
                    Sense::descriptor(e.key, e.asc, e.ascq)
                } else {
                    Sense::fixed(e.key, e.asc, e.ascq)
                }
            }
            None if desc => Sense::descriptor(SenseKey::NO_SENSE, 0, 0),
            None => Sense::fixed(SenseKey::NO_SENSE, 0, 0),
        };
        alloc_truncate(sense, alloc)
    }

    fn read_capacity10(&self) -> ScsiOutcome {
        let last = self.blocks.saturating_sub(1).min(0xffff_ffff) as u32;
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&last.to_be_bytes());
        d.extend_from_slice(&self.cfg.block_size.to_be_bytes());
        ScsiOutcome {
            data: Bytes::from(d),
            ..Default::default()
        }
    }

    fn read_capacity16(&self, cdb: &[u8]) -> ScsiOutcome {
        let alloc = u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]]) as usize;
        let mut d = vec![0u8; 32];
        d[..8].copy_from_slice(&self.blocks.saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&self.cfg.block_size.to_be_bytes());
        // LBPME: thin provisioning (UNMAP works); LBPRZ: unmapped blocks read as zeros.
        d[14] = 0x80 | 0x40;
        alloc_truncate(d, alloc)
    }
}

/// Data truncated to the CDB's allocation length.
pub(crate) fn alloc_truncate(mut d: Vec<u8>, alloc: usize) -> ScsiOutcome {
    d.truncate(alloc);
    ScsiOutcome {
        data: Bytes::from(d),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
