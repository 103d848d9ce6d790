//! Gathering a write's data on the target: immediate data, unsolicited Data-Out up to
//! FirstBurstLength, then R2T-solicited bursts of at most MaxBurstLength with at most
//! MaxOutstandingR2T outstanding (RFC 7143 §4.2.2.2, §11.7, §11.8, §13.13–§13.17).
//! Every Data-Out is checked (TTT, DataSN, offset, burst bounds) before a byte is kept.
//! With DataPDUInOrder and DataSequenceInOrder (the only values we accept) data arrives
//! strictly by offset, so the buffer only grows by what arrived: a hostile initiator
//! announcing huge writes costs no memory until it sends the bytes.

use bytes::{Bytes, BytesMut};

use crate::pdu::DataOut;
use crate::text::OperationalParams;

const NO_TAG: u32 = 0xffff_ffff;

#[derive(Debug)]
struct OpenR2t {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

#[derive(Debug)]
pub(super) struct WriteState {
    buf: BytesMut,
    total: u32,
    /// Bytes in place (always a prefix-free count; with DataPDUInOrder=Yes the data
    /// arrives in order within each sequence, and sequences in order).
    received: u32,
    /// Unsolicited Data-Out still allowed: (next offset, limit, next DataSN).
    unsolicited: Option<(u32, u32, u32)>,
    r2ts: Vec<OpenR2t>,
    /// Next offset to solicit.
    next_r2t_offset: u32,
    r2t_sn: u32,
}

impl WriteState {
    /// `imm`: immediate data (already checked against FirstBurstLength and the length);
    /// `unsolicited_follows`: the command's F bit was 0 (§11.4.1).
    pub(super) fn new(
        params: &OperationalParams,
        total: u32,
        imm: Bytes,
        unsolicited_follows: bool,
    ) -> WriteState {
        let mut buf = BytesMut::with_capacity((total as usize).min(256 * 1024));
        let imm_len = imm.len() as u32;
        buf.extend_from_slice(&imm);
        let first_burst = params.first_burst_length.min(total);
        let unsolicited = (unsolicited_follows && !params.initial_r2t && imm_len < first_burst)
            .then_some((imm_len, first_burst, 0));
        WriteState {
            buf,
            total,
            received: imm_len,
            next_r2t_offset: imm_len,
            unsolicited,
            r2ts: Vec::new(),
            r2t_sn: 0,
        }
    }

    pub(super) fn is_complete(&self) -> bool {
        self.received == self.total
    }

    pub(super) fn into_data(self) -> Bytes {
        self.buf.freeze()
    }

    /// The next R2T to send, if the window of outstanding R2Ts has room.
    pub(super) fn next_r2t(&self, params: &OperationalParams) -> Option<(u32, u32)> {
        // Solicit only after the unsolicited burst ended: it may end early (F bit), and
        // with DataSequenceInOrder=Yes the solicited bursts must follow it in order.
        if self.unsolicited.is_some()
            || self.next_r2t_offset >= self.total
            || self.r2ts.len() >= usize::from(params.max_outstanding_r2t.max(1))
        {
            return None;
        }
        let len = (self.total - self.next_r2t_offset).min(params.max_burst_length.max(512));
        Some((self.next_r2t_offset, len))
    }

    /// Record an R2T sent; returns its R2TSN.
    pub(super) fn add_r2t(&mut self, ttt: u32, offset: u32, len: u32) -> u32 {
        self.r2ts.push(OpenR2t {
            ttt,
            offset,
            len,
            received: 0,
            next_data_sn: 0,
        });
        self.next_r2t_offset = offset + len;
        let sn = self.r2t_sn;
        self.r2t_sn += 1;
        sn
    }

    /// Check and place one Data-Out. The error names the rule broken.
    pub(super) fn accept(&mut self, d: &DataOut) -> Result<(), String> {
        let len = d.data.len() as u32;
        if d.ttt == NO_TAG {
            let Some((next, limit, data_sn)) = self.unsolicited else {
                return Err(
                    "unsolicited Data-Out where none is allowed (InitialR2T, F bit or FirstBurstLength, RFC 7143 §13.10)"
                        .into(),
                );
            };
            if d.data_sn != data_sn {
                return Err(format!(
                    "unsolicited Data-Out DataSN {} where {data_sn} was due (RFC 7143 §11.7.3)",
                    d.data_sn
                ));
            }
            if d.buffer_offset != next {
                return Err(format!(
                    "unsolicited Data-Out at offset {} where {next} was due (DataPDUInOrder, RFC 7143 §13.19)",
                    d.buffer_offset
                ));
            }
            let end = next.checked_add(len).filter(|e| *e <= limit).ok_or_else(|| {
                format!(
                    "unsolicited data past FirstBurstLength/expected length {limit} (RFC 7143 §13.14)"
                )
            })?;
            self.place(next, &d.data)?;
            if d.final_ {
                self.unsolicited = None;
                // Solicit whatever the initiator did not send unsolicited.
                self.next_r2t_offset = end;
            } else {
                self.unsolicited = Some((end, limit, data_sn + 1));
            }
            return Ok(());
        }
        let Some(i) = self.r2ts.iter().position(|r| r.ttt == d.ttt) else {
            return Err(format!(
                "Data-Out with Target Transfer Tag {:#x}, which no open R2T carries (RFC 7143 §11.7.2)",
                d.ttt
            ));
        };
        let r = &mut self.r2ts[i];
        if d.data_sn != r.next_data_sn {
            return Err(format!(
                "Data-Out DataSN {} where {} was due (RFC 7143 §11.7.3)",
                d.data_sn, r.next_data_sn
            ));
        }
        let want = r.offset + r.received;
        if d.buffer_offset != want {
            return Err(format!(
                "Data-Out at offset {} where {want} was due (DataPDUInOrder, RFC 7143 §13.19)",
                d.buffer_offset
            ));
        }
        if r.received + len > r.len {
            return Err(format!(
                "Data-Out runs {} bytes past the {}-byte burst its R2T asked for (MaxBurstLength, RFC 7143 §13.13)",
                r.received + len - r.len,
                r.len
            ));
        }
        let received = r.received + len;
        let done = received == r.len;
        if d.final_ != done {
            return Err(format!(
                "Data-Out F bit {} at {} of {} bytes of the burst (RFC 7143 §11.7.1)",
                u8::from(d.final_),
                received,
                r.len
            ));
        }
        self.place(want, &d.data)?;
        let r = &mut self.r2ts[i];
        r.received = received;
        r.next_data_sn += 1;
        if done {
            self.r2ts.remove(i);
        }
        Ok(())
    }

    /// Append data at `offset`, which must be where the data so far ends.
    fn place(&mut self, offset: u32, data: &[u8]) -> Result<(), String> {
        if offset as usize != self.buf.len() {
            return Err(format!(
                "Data-Out at offset {offset} while the data so far ends at {} (DataSequenceInOrder, RFC 7143 §13.20)",
                self.buf.len()
            ));
        }
        // Bounds were checked against the R2T or FirstBurstLength, both within `total`.
        self.buf.extend_from_slice(data);
        self.received += data.len() as u32;
        Ok(())
    }
}
