//! Tasks: one SCSI command's life from submission to status, with its Data-Out plan
//! (immediate, unsolicited, R2T-solicited; RFC 7143 §4.2.5, §11.8) and its Data-In
//! reassembly (§11.7). Tasks keep their CDB and data so that a later recovery issue can
//! reissue them on a new connection.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::pdu::{CdbBuf, DataOut, Lun, Opcode, ScsiStatus, TaskAttr, TmfFunction, RESERVED_TAG};
use crate::serial::SerialNumber;
use crate::text::OperationalParams;

use super::error::ProtocolError;

/// A SCSI command to execute.
#[derive(Debug, Clone)]
pub struct Command {
    pub lun: Lun,
    pub cdb: CdbBuf,
    /// Data to send (write); empty for none.
    pub data_out: Bytes,
    /// Bytes we expect to read; 0 for none.
    pub read_length: u32,
    pub attr: TaskAttr,
    /// Abort the task when it has not completed by then (None: the connection default).
    pub timeout: Option<Duration>,
    /// A buffer for the data read, reused across commands by callers that recycle the
    /// returned `Bytes` (`Bytes::try_into_mut`), as libiscsi reads into a caller's iovec.
    pub read_into: Option<BytesMut>,
    /// Check and count the data read, then drop it (no buffer per command): for reads
    /// whose data nobody needs, as iscsi-perf lands every read in one shared buffer and
    /// multipath's readsector0 checker throws the sector away.
    pub discard_read: bool,
}

impl Command {
    pub fn new(lun: Lun, cdb: impl Into<CdbBuf>) -> Self {
        Command {
            lun,
            cdb: cdb.into(),
            data_out: Bytes::new(),
            read_length: 0,
            attr: TaskAttr::Simple,
            timeout: None,
            read_into: None,
            discard_read: false,
        }
    }

    pub fn with_data_out(mut self, data: Bytes) -> Self {
        self.data_out = data;
        self
    }

    pub fn with_read(mut self, len: u32) -> Self {
        self.read_length = len;
        self.discard_read = false;
        self
    }

    /// Read `len` bytes and drop them once checked: the result's `data` stays empty.
    pub fn with_read_discarded(mut self, len: u32) -> Self {
        self.read_length = len;
        self.read_into = None;
        self.discard_read = true;
        self
    }

    /// Read `len` bytes into `buf` (its contents are replaced).
    pub fn with_read_into(mut self, len: u32, buf: BytesMut) -> Self {
        self.read_length = len;
        self.read_into = Some(buf);
        self.discard_read = false;
        self
    }
}

/// How a task ended with a SCSI status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResult {
    pub status: ScsiStatus,
    /// Sense data, empty unless the status is CHECK CONDITION (or the target sent some).
    pub sense: Bytes,
    /// Data read (Data-In), at most `read_length` bytes.
    pub data: Bytes,
    /// Residual count with the U (underflow, positive) or O (overflow) flag (§11.4.5).
    pub residual: Residual,
}

/// Residual reported by the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    /// The target transferred fewer bytes than expected by this many.
    Underflow(u32),
    /// The target wanted to transfer this many bytes more than expected.
    Overflow(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Scsi,
    /// `internal`: sent by the connection itself (abort of a timed-out task).
    Tmf {
        function: TmfFunction,
        referenced: Option<u32>,
        internal: bool,
    },
    /// `internal`: sent by the connection itself (renegotiation after Async event 4).
    Text {
        internal: bool,
    },
}

/// Task state in the table.
#[derive(Debug)]
pub struct Task {
    pub itt: u32,
    pub kind: TaskKind,
    pub cmd: Command,
    /// Set once the command PDU was queued for sending.
    pub cmd_sn: Option<SerialNumber>,
    pub deadline: Option<Instant>,
    /// ABORT TASK in progress for this task (its TMF's ITT) and when it gives up.
    pub aborting: Option<(u32, Instant)>,
    // Data-In reassembly: payloads as received, or (once a payload was placed directly)
    // one buffer of the whole read.
    pub data_in: Vec<Bytes>,
    pub read_buf: Option<BytesMut>,
    pub data_in_len: u32,
    pub next_data_sn: u32,
    // Data-Out bookkeeping.
    pub next_r2t_sn: u32,
    pub outstanding_r2t: u32,
    /// Text gathered for continued Text Responses.
    pub text: Vec<u8>,
}

impl Task {
    pub fn new(itt: u32, kind: TaskKind, cmd: Command, deadline: Option<Instant>) -> Self {
        Task {
            itt,
            kind,
            cmd,
            cmd_sn: None,
            deadline,
            aborting: None,
            data_in: Vec::new(),
            read_buf: None,
            data_in_len: 0,
            next_data_sn: 0,
            next_r2t_sn: 0,
            outstanding_r2t: 0,
            text: Vec::new(),
        }
    }

    pub fn is_write(&self) -> bool {
        !self.cmd.data_out.is_empty()
    }

    /// Accept one Data-In payload (§11.7). With DataPDUInOrder=Yes (which we always
    /// offer, OR result, §13.18) offsets must follow each other.
    pub fn accept_data_in(
        &mut self,
        data_sn: u32,
        offset: u32,
        data: Bytes,
    ) -> Result<(), ProtocolError> {
        self.check_data_in(data_sn, offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        self.data_in_len = offset + data.len() as u32;
        if self.cmd.discard_read {
            return Ok(());
        }
        if self.read_buf.is_none() && self.cmd.read_into.is_some() {
            self.read_buf = Some(self.fresh_read_buf());
        }
        match &mut self.read_buf {
            Some(buf) => buf.extend_from_slice(&data),
            None => self.data_in.push(data),
        }
        Ok(())
    }

    /// The caller's buffer (emptied, grown to fit) or a new one, sized exactly: an odd size
    /// (say 1 MiB + 64) falls outside the allocator's cached classes and was measured to be
    /// purged and faulted back (madvise x7) on every read.
    fn fresh_read_buf(&mut self) -> BytesMut {
        let len = self.cmd.read_length as usize;
        match self.cmd.read_into.take() {
            Some(mut b) => {
                b.clear();
                b.reserve(len);
                b
            }
            None => BytesMut::with_capacity(len),
        }
    }

    /// Hand out the part of the read buffer where a payload of `len` bytes at `offset`
    /// belongs, so a driver can read it from the socket in place. `None` when the
    /// payload is not the next in order or does not fit (the normal path then reports
    /// the violation).
    /// A discarding read has no buffer: `None` (see [`Task::fits_next`]).
    pub fn placement(&mut self, offset: u32, len: u32) -> Option<BytesMut> {
        if !self.fits_next(offset, len) || self.cmd.discard_read {
            return None;
        }
        if self.read_buf.is_none() {
            let mut b = self.fresh_read_buf();
            for c in self.data_in.drain(..) {
                b.extend_from_slice(&c);
            }
            self.read_buf = Some(b);
        }
        let buf = self.read_buf.as_mut()?;
        Some(buf.split_off(offset as usize))
    }

    /// Whether a payload of `len` bytes at `offset` is the next in order and fits.
    pub fn fits_next(&self, offset: u32, len: u32) -> bool {
        offset == self.data_in_len
            && u64::from(offset) + u64::from(len) <= u64::from(self.cmd.read_length)
    }

    /// Take back a placed payload (filled by the driver) after the PDU's checks. A
    /// discarding read hands the buffer back (`Some`) for the next placement.
    pub fn accept_placed(
        &mut self,
        data_sn: u32,
        offset: u32,
        placed: BytesMut,
    ) -> Result<Option<BytesMut>, ProtocolError> {
        self.check_data_in(data_sn, offset, placed.len())?;
        self.data_in_len = offset + placed.len() as u32;
        if self.cmd.discard_read {
            return Ok(Some(placed));
        }
        match &mut self.read_buf {
            // Contiguous with what is there, from the same allocation: O(1).
            Some(buf) => buf.unsplit(placed),
            None => self.read_buf = Some(placed),
        }
        Ok(None)
    }

    fn check_data_in(
        &mut self,
        data_sn: u32,
        offset: u32,
        len: usize,
    ) -> Result<(), ProtocolError> {
        if data_sn != self.next_data_sn {
            return Err(ProtocolError::DataSnGap {
                itt: self.itt,
                expected: self.next_data_sn,
                got: data_sn,
            });
        }
        self.next_data_sn = self.next_data_sn.wrapping_add(1);
        if len == 0 {
            return Ok(());
        }
        if offset != self.data_in_len {
            return Err(ProtocolError::BadTransfer {
                opcode: Opcode::DATA_IN,
                itt: self.itt,
                what: format!(
                    "buffer offset {offset} where {} was expected with DataPDUInOrder=Yes",
                    self.data_in_len
                ),
                rule: "§13.18",
            });
        }
        if u64::from(offset) + len as u64 > u64::from(self.cmd.read_length) {
            return Err(ProtocolError::BadTransfer {
                opcode: Opcode::DATA_IN,
                itt: self.itt,
                what: format!(
                    "{len} bytes at offset {offset} run past the {}-byte expected data transfer length",
                    self.cmd.read_length
                ),
                rule: "§11.7.5",
            });
        }
        Ok(())
    }

    /// The data read so far as one buffer (no copy when it arrived in one PDU).
    pub fn take_data_in(&mut self) -> Bytes {
        if let Some(buf) = self.read_buf.take() {
            return buf.freeze();
        }
        match self.data_in.len() {
            0 => Bytes::new(),
            1 => self.data_in.pop().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(self.data_in_len as usize);
                for c in self.data_in.drain(..) {
                    b.extend_from_slice(&c);
                }
                b.freeze()
            }
        }
    }
}

/// Split `data[offset..offset+len]` into Data-Out PDUs of at most `max_seg` bytes,
/// DataSN from 0, F on the last (§11.7.2: the final PDU of a sequence carries F).
pub fn data_out_sequence(
    task: &Task,
    ttt: u32,
    offset: u32,
    len: u32,
    max_seg: u32,
    exp_stat_sn: SerialNumber,
) -> Vec<DataOut> {
    let mut out = Vec::new();
    let end = offset + len;
    let mut pos = offset;
    let mut sn = 0;
    let max_seg = max_seg.max(512);
    while pos < end {
        let n = (end - pos).min(max_seg);
        out.push(DataOut {
            final_: pos + n == end,
            lun: task.cmd.lun,
            itt: task.itt,
            ttt,
            exp_stat_sn,
            data_sn: sn,
            buffer_offset: pos,
            data: task.cmd.data_out.slice(pos as usize..(pos + n) as usize),
        });
        pos += n;
        sn += 1;
    }
    out
}

/// How a write is split before any R2T (§4.2.5.1/§4.2.5.2): bytes of immediate data in
/// the command PDU, and the end offset of unsolicited Data-Out.
pub fn unsolicited_plan(params: &OperationalParams, len: u32) -> (u32, u32) {
    let fbl = params.first_burst_length;
    let mxdsl = params.max_xmit_data_segment_length;
    let immediate = if params.immediate_data {
        len.min(fbl).min(mxdsl)
    } else {
        0
    };
    let unsolicited_end = if params.initial_r2t {
        immediate
    } else {
        len.min(fbl)
    };
    (immediate, unsolicited_end.max(immediate))
}

/// `TTT` of unsolicited Data-Out (§11.7.4).
pub const UNSOLICITED_TTT: u32 = RESERVED_TAG;

#[cfg(test)]
mod tests {
    use super::*;

    fn params(imm: bool, r2t: bool, fbl: u32, mxdsl: u32) -> OperationalParams {
        OperationalParams {
            immediate_data: imm,
            initial_r2t: r2t,
            first_burst_length: fbl,
            max_xmit_data_segment_length: mxdsl,
            ..Default::default()
        }
    }

    #[test]
    fn plans() {
        // open-iscsi defaults against tgtd: ImmediateData=Yes, InitialR2T=Yes (tgtd), FBL 64K, 8K segments.
        assert_eq!(
            unsolicited_plan(&params(true, true, 65536, 8192), 1 << 20),
            (8192, 8192)
        );
        // InitialR2T=No: unsolicited up to FirstBurstLength.
        assert_eq!(
            unsolicited_plan(&params(true, false, 65536, 8192), 1 << 20),
            (8192, 65536)
        );
        assert_eq!(
            unsolicited_plan(&params(false, false, 65536, 8192), 4096),
            (0, 4096)
        );
        assert_eq!(
            unsolicited_plan(&params(false, true, 65536, 8192), 4096),
            (0, 0)
        );
        assert_eq!(
            unsolicited_plan(&params(true, false, 65536, 262144), 512),
            (512, 512)
        );
    }

    #[test]
    fn sequence_split() {
        let data = Bytes::from(vec![7u8; 20000]);
        let t = Task::new(
            5,
            TaskKind::Scsi,
            Command::new(Lun(0), vec![0u8; 16]).with_data_out(data),
            None,
        );
        let seq = data_out_sequence(&t, 9, 1000, 17000, 8192, SerialNumber(3));
        let lens: Vec<usize> = seq.iter().map(|d| d.data.len()).collect();
        assert_eq!(lens, vec![8192, 8192, 616]);
        assert_eq!(
            seq.iter().map(|d| d.data_sn).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(
            seq.iter().map(|d| d.final_).collect::<Vec<_>>(),
            vec![false, false, true]
        );
        assert_eq!(seq[2].buffer_offset, 1000 + 16384);
    }

    #[test]
    fn data_in_checks() {
        let mut t = Task::new(
            5,
            TaskKind::Scsi,
            Command::new(Lun(0), vec![0u8; 16]).with_read(100),
            None,
        );
        t.accept_data_in(0, 0, Bytes::from(vec![1u8; 60])).unwrap();
        assert!(matches!(
            t.accept_data_in(2, 60, Bytes::from(vec![1u8; 4])),
            Err(ProtocolError::DataSnGap { .. })
        ));
        let mut t = Task::new(
            5,
            TaskKind::Scsi,
            Command::new(Lun(0), vec![0u8; 16]).with_read(100),
            None,
        );
        t.accept_data_in(0, 0, Bytes::from(vec![1u8; 60])).unwrap();
        assert!(t.accept_data_in(1, 60, Bytes::from(vec![1u8; 41])).is_err());
        let mut t = Task::new(
            5,
            TaskKind::Scsi,
            Command::new(Lun(0), vec![0u8; 16]).with_read(100),
            None,
        );
        t.accept_data_in(0, 0, Bytes::from(vec![1u8; 60])).unwrap();
        t.accept_data_in(1, 60, Bytes::from(vec![2u8; 40])).unwrap();
        let d = t.take_data_in();
        assert_eq!(d.len(), 100);
        assert_eq!(d[60], 2);
    }

    #[test]
    fn placed_segments_share_one_buffer() {
        // As a driver uses it: each segment but the last is read into its place together
        // with the bytes that follow it (padding, digest, next header) in the room after
        // it, then truncated. The next segment must keep that room, and the whole read
        // must stay in one buffer.
        let cmd = Command::new(Lun(0), vec![0u8; 16]).with_read(3 * 4096);
        let mut t = Task::new(5, TaskKind::Scsi, cmd, None);
        let mut ptrs = Vec::new();
        for i in 0..3u32 {
            let mut dst = t.placement(i * 4096, 4096).expect("in order");
            assert_eq!(dst.capacity(), (3 - i as usize) * 4096, "segment {i}");
            ptrs.push(dst.as_ptr() as usize);
            let extra = if i < 2 { 52 } else { 0 };
            dst.extend_from_slice(&vec![i as u8; 4096 + extra]);
            dst.truncate(4096);
            t.accept_placed(i, i * 4096, dst).unwrap();
        }
        assert_eq!(ptrs, vec![ptrs[0], ptrs[0] + 4096, ptrs[0] + 8192]);
        let d = t.take_data_in();
        assert_eq!(
            (d.len(), d.as_ptr() as usize, d[4096], d[8191 + 4096]),
            (12288, ptrs[0], 1, 2)
        );
        // A reused buffer keeps its size.
        let again = d.try_into_mut().expect("unique");
        assert!(again.capacity() >= 12288);
    }
}
