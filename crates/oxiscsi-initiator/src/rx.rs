//! The read side of the driver: where each socket read lands.
//!
//! Small PDUs and headers are read into one shared buffer in large reads. A frame of
//! [`LARGE_FRAME`] bytes or more gets a buffer of its own as soon as its header is seen,
//! so its payload is read where it stays. A large Data-In for a read in progress goes
//! further: its payload is read straight into the command's buffer (handed out by the
//! core after its checks), like libiscsi reading into the caller's iovec. Reads are
//! bounded (`take`) so they never run past what the current state expects, except by
//! design into the room after a segment in its command's buffer (every segment but a
//! read's last has some): the payload's padding/digest and the next PDU's header then
//! arrive in the same read and are moved out afterwards (at most ~60 bytes).

use std::time::Instant;

use bytes::{Buf, BytesMut};
use oxiscsi_proto::pdu::{DataIn, Framer, Pdu};
use oxiscsi_proto::session::InitiatorConnection;

/// Spare room kept in the shared read buffer.
const READ_CHUNK: usize = 256 * 1024;
/// Frames at least this long are read into a buffer of their own.
const LARGE_FRAME: usize = 32 * 1024;

enum State {
    /// The shared buffer (headers, small PDUs).
    Shared,
    /// The rest of one large frame of `total` bytes.
    Large { frame: BytesMut, total: usize },
    /// A Data-In payload of `len` bytes read in place, followed by `tail_len` bytes of
    /// padding/digest.
    Placed {
        header: DataIn,
        dst: BytesMut,
        len: usize,
        tail_len: usize,
    },
}

pub(crate) struct Reader {
    state: State,
    shared: BytesMut,
    framer: Framer,
    /// Length of a header without AHS, with its digest.
    next_header: usize,
    /// The last placed payload ended its buffer, so the next header was not read with
    /// it: read just a header next, so a following large Data-In's payload is not pulled
    /// into the shared buffer (and copied out of it).
    header_only: bool,
}

impl Reader {
    /// `leftover`: bytes read past the final Login Response.
    pub(crate) fn new(framer: Framer, leftover: BytesMut) -> Reader {
        Reader {
            state: State::Shared,
            shared: leftover,
            framer,
            next_header: 48 + framer.header_digest.wire_len(),
            header_only: false,
        }
    }

    /// True while a large frame or placed payload is being read (reads of up to its
    /// whole length; the driver does not hold the core's lock over those).
    pub(crate) fn reads_large(&self) -> bool {
        !matches!(self.state, State::Shared)
    }

    /// Bytes still to come for the large frame or placed payload being read (with its
    /// padding/digest); 0 between frames.
    pub(crate) fn frame_remaining(&self) -> usize {
        match &self.state {
            State::Shared => 0,
            State::Large { frame, total } => total.saturating_sub(frame.len()),
            State::Placed {
                dst, len, tail_len, ..
            } => (len + tail_len).saturating_sub(dst.len()),
        }
    }

    /// True when every byte read so far was a whole PDU and has been handed over: no
    /// frame is half read, so nothing more is known to be on its way.
    pub(crate) fn at_boundary(&self) -> bool {
        matches!(self.state, State::Shared) && self.shared.is_empty()
    }

    /// The buffer the next read fills and the most bytes it may take.
    pub(crate) fn target(&mut self) -> (&mut BytesMut, u64) {
        let need = self.frame_remaining();
        match &mut self.state {
            State::Shared => {
                if self.shared.capacity() - self.shared.len() < 16 * 1024 {
                    self.shared.reserve(READ_CHUNK);
                }
                let limit = if self.header_only {
                    self.next_header.saturating_sub(self.shared.len()).max(1) as u64
                } else {
                    u64::MAX
                };
                (&mut self.shared, limit)
            }
            State::Large { frame, .. } => (frame, need as u64),
            State::Placed { dst, .. } => {
                // The rest of the payload, its padding/digest and the next header, when
                // the command buffer has room after this segment; else the payload only.
                let want = need + self.next_header;
                let room = dst.capacity() - dst.len();
                let n = if room >= want { want } else { need };
                (dst, n.max(1) as u64)
            }
        }
    }

    /// Hand every complete PDU to the core.
    pub(crate) fn feed(&mut self, conn: &mut InitiatorConnection) {
        // Most feeds follow a read in the middle of a payload and hand nothing over:
        // the clock is read once something is.
        let mut clock = None;
        let mut now = || *clock.get_or_insert_with(Instant::now);
        match &mut self.state {
            State::Shared => {}
            State::Large { frame, total } => {
                if frame.len() < *total {
                    return;
                }
                let frame = std::mem::take(frame).freeze();
                self.state = State::Shared;
                match self.framer.decode_frame(frame) {
                    Ok(pdu) => conn.handle_pdu(now(), pdu),
                    Err(e) => return conn.handle_frame_error(e),
                }
            }
            State::Placed {
                dst, len, tail_len, ..
            } => {
                if dst.len() < *len + *tail_len {
                    return;
                }
                let State::Placed {
                    header,
                    mut dst,
                    len,
                    tail_len,
                } = std::mem::replace(&mut self.state, State::Shared)
                else {
                    return;
                };
                // Past the payload: padding/digest, then the start of the next PDU, which
                // goes back to the shared buffer. `truncate`, not `split_off`: the command
                // buffer must keep its capacity for the next segment placed after this one
                // (split_off gave it away and the next placement got an empty buffer).
                self.shared.extend_from_slice(&dst[len + tail_len..]);
                self.header_only = dst.len() == len + tail_len;
                let pdu = Pdu::DataIn(header);
                if let Err(e) =
                    self.framer
                        .check_placed_digest(&pdu, &dst[..len], &dst[len..len + tail_len])
                {
                    return conn.handle_frame_error(e);
                }
                dst.truncate(len);
                let Pdu::DataIn(header) = pdu else { return };
                conn.handle_placed_data_in(now(), header, dst);
            }
        }
        loop {
            if conn.is_closed() {
                return;
            }
            if self.shared.len() >= self.next_header {
                self.header_only = false;
            }
            match self.framer.frame_length(&self.shared) {
                Ok(None) => return,
                Ok(Some(total)) if self.shared.len() >= total => {
                    match self.framer.decode(&mut self.shared) {
                        Ok(Some(pdu)) => conn.handle_pdu(now(), pdu),
                        Ok(None) => return,
                        Err(e) => return conn.handle_frame_error(e),
                    }
                }
                Ok(Some(total)) if total >= LARGE_FRAME => {
                    // Everything before this frame was consumed: what is left is its start.
                    if let Some(placed) = self.try_place(conn, total) {
                        self.state = placed;
                        return;
                    }
                    let mut frame = BytesMut::with_capacity(total);
                    frame.extend_from_slice(&self.shared);
                    self.shared.clear();
                    self.state = State::Large { frame, total };
                    return;
                }
                Ok(Some(total)) => {
                    let n = total - self.shared.len();
                    self.shared.reserve(n);
                    return;
                }
                Err(e) => return conn.handle_frame_error(e),
            }
        }
    }

    /// For a large Data-In whose header is in the shared buffer, get the place for its
    /// payload from the core and move the bytes already read there.
    fn try_place(&mut self, conn: &mut InitiatorConnection, total: usize) -> Option<State> {
        let Ok(Some((Pdu::DataIn(header), hlen, len))) = self.framer.decode_header(&self.shared)
        else {
            return None;
        };
        let mut dst = conn.data_in_placement(&header, u32::try_from(len).ok()?)?;
        let tail_len = total - hlen - len;
        self.shared.advance(hlen);
        // The frame is incomplete, so all that is left belongs to its payload and tail.
        dst.extend_from_slice(&self.shared);
        self.shared.clear();
        Some(State::Placed {
            header,
            dst,
            len,
            tail_len,
        })
    }
}
