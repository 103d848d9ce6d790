//! Framing: where a PDU ends, digests, padding and peer-supplied length limits.
//!
//! RFC 7143 §11.2: BHS (48) + AHS (TotalAHSLength × 4) + HeaderDigest + data segment
//! padded to 4 bytes + DataDigest. `Framer::decode` follows STYLE §6: `Ok(None)` means
//! "need more bytes"; the DataSegmentLength is checked against our negotiated
//! MaxRecvDataSegmentLength before a single byte of it is buffered or allocated.

use bytes::{Buf, Bytes, BytesMut};

use super::{be32, Opcode, Pdu, RejectReason, BHS_LEN};
use crate::digest::{crc32c, crc32c_append, Digest};

/// Why bytes from the peer could not be turned into a PDU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "{opcode} (ITT {itt:#010x}) announces a {len}-byte data segment, over our \
         MaxRecvDataSegmentLength of {limit} (RFC 7143 §13.12)"
    )]
    DataSegmentTooLong {
        opcode: Opcode,
        itt: u32,
        len: u32,
        limit: u32,
    },
    #[error(
        "header digest mismatch on a {opcode} PDU: received {received:#010x}, computed \
         {computed:#010x} (RFC 7143 §7.8: the PDU is discarded and the connection dropped)"
    )]
    HeaderDigest {
        opcode: Opcode,
        received: u32,
        computed: u32,
    },
    #[error(
        "data digest mismatch on {opcode} (ITT {itt:#010x}): received {received:#010x}, \
         computed {computed:#010x} (RFC 7143 §7.8)"
    )]
    DataDigest {
        opcode: Opcode,
        itt: u32,
        received: u32,
        computed: u32,
    },
    #[error("unknown opcode {opcode:?} (ITT {itt:#010x}) (RFC 7143 §11.2.1.2)")]
    UnknownOpcode { opcode: Opcode, itt: u32 },
    #[error("malformed {opcode} PDU: {what} (RFC 7143 {rule})")]
    Malformed {
        opcode: Opcode,
        what: &'static str,
        rule: &'static str,
    },
}

impl DecodeError {
    pub fn malformed(opcode: Opcode, what: &'static str, rule: &'static str) -> Self {
        DecodeError::Malformed { opcode, what, rule }
    }

    /// The Reject reason a target answers this with (§11.17.1), or `None` where the only
    /// answer is to drop the connection (the stream is out of sync).
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            DecodeError::DataSegmentTooLong { .. } | DecodeError::HeaderDigest { .. } => None,
            DecodeError::DataDigest { .. } => Some(RejectReason::DATA_DIGEST_ERROR),
            DecodeError::UnknownOpcode { .. } => Some(RejectReason::COMMAND_NOT_SUPPORTED),
            DecodeError::Malformed { .. } => Some(RejectReason::PROTOCOL_ERROR),
        }
    }
}

/// A decode failure with what the receiver needs to answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct FrameError {
    pub error: DecodeError,
    /// The offending BHS, for a Reject's data segment (§11.17).
    pub bhs: Option<[u8; BHS_LEN]>,
    /// True when the whole PDU was consumed and the stream is still in sync.
    pub resynced: bool,
}

/// Framing parameters of one connection, in the receive direction.
#[derive(Debug, Clone, Copy)]
pub struct Framer {
    pub header_digest: Digest,
    pub data_digest: Digest,
    /// Our MaxRecvDataSegmentLength: the largest data segment we accept (§13.12).
    pub max_recv_data_segment: u32,
}

impl Default for Framer {
    /// Login-phase framing: no digests, 8192-byte segments (§13.12: the default
    /// MaxRecvDataSegmentLength, which applies during login).
    fn default() -> Self {
        Framer {
            header_digest: Digest::None,
            data_digest: Digest::None,
            max_recv_data_segment: 8192,
        }
    }
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

impl Framer {
    /// Look at the buffer: `Ok(Some(total))` when a whole PDU of `total` bytes is there,
    /// `Ok(None)` when more bytes are needed.
    pub fn check(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if buf.len() < BHS_LEN {
            return Ok(None);
        }
        let opcode = Opcode(buf[0] & 0x3f);
        let dsl = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]);
        if dsl > self.max_recv_data_segment {
            let mut bhs = [0u8; BHS_LEN];
            bhs.copy_from_slice(&buf[..BHS_LEN]);
            return Err(FrameError {
                error: DecodeError::DataSegmentTooLong {
                    opcode,
                    itt: be32(buf, 16),
                    len: dsl,
                    limit: self.max_recv_data_segment,
                },
                bhs: Some(bhs),
                resynced: false,
            });
        }
        let total = self.frame_len(buf);
        if buf.len() < total {
            return Ok(None);
        }
        Ok(Some(total))
    }

    /// Length of the frame that starts `buf` once its BHS is there (`Ok(None)` before),
    /// after checking DataSegmentLength against our limit. Lets a reader give a large
    /// frame a buffer of its own before its bytes arrive.
    pub fn frame_length(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if buf.len() < BHS_LEN {
            return Ok(None);
        }
        match self.check(&buf[..BHS_LEN]) {
            Err(e) => Err(e),
            Ok(_) => Ok(Some(self.frame_len(buf))),
        }
    }

    /// Decode just the header of the frame that starts `buf` (BHS, AHS, header digest
    /// checked), with an empty data segment, so a reader can decide where the payload
    /// goes before it arrives. Returns the PDU, the header length (what precedes the
    /// payload) and the payload length; `Ok(None)` until the header is all there.
    pub fn decode_header(&self, buf: &[u8]) -> Result<Option<(Pdu, usize, usize)>, FrameError> {
        let Some(_) = self.frame_length(buf)? else {
            return Ok(None);
        };
        let ahs_len = usize::from(buf[4]) * 4;
        let hlen = BHS_LEN + ahs_len + self.header_digest.wire_len();
        if buf.len() < hlen {
            return Ok(None);
        }
        let dsl = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&buf[..BHS_LEN]);
        let opcode = Opcode(bhs[0] & 0x3f);
        if self.header_digest == Digest::Crc32c {
            let at = BHS_LEN + ahs_len;
            let received = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            let computed = crc32c(&buf[..at]);
            if received != computed {
                return Err(FrameError {
                    error: DecodeError::HeaderDigest {
                        opcode,
                        received,
                        computed,
                    },
                    bhs: None,
                    resynced: false,
                });
            }
        }
        let pdu =
            Pdu::decode(&bhs, &buf[BHS_LEN..BHS_LEN + ahs_len], Bytes::new()).map_err(|error| {
                FrameError {
                    error,
                    bhs: Some(bhs),
                    resynced: true,
                }
            })?;
        Ok(Some((pdu, hlen, dsl)))
    }

    /// Check the data digest of a payload that was read in place: `tail` holds the
    /// padding and the digest as they came off the wire.
    pub fn check_placed_digest(
        &self,
        pdu: &Pdu,
        payload: &[u8],
        tail: &[u8],
    ) -> Result<(), FrameError> {
        if self.data_digest != Digest::Crc32c || payload.is_empty() {
            return Ok(());
        }
        let pad = pad4(payload.len());
        let received = match tail.get(pad..pad + 4) {
            Some(d) => u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
            None => 0,
        };
        let computed = crc32c_append(crc32c(payload), &tail[..pad.min(tail.len())]);
        if received == computed {
            return Ok(());
        }
        let mut bhs = [0u8; BHS_LEN];
        pdu.encode_bhs(&mut bhs);
        Err(FrameError {
            error: DecodeError::DataDigest {
                opcode: pdu.opcode(),
                itt: pdu.itt(),
                received,
                computed,
            },
            bhs: Some(bhs),
            resynced: true,
        })
    }

    /// Bytes that follow a payload of `len` bytes on the wire: padding and data digest.
    pub fn tail_len(&self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            pad4(len) + self.data_digest.wire_len()
        }
    }

    /// Take one PDU off the front of `buf`, or `Ok(None)` when it is not all there yet.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Pdu>, FrameError> {
        let total = match self.check(buf)? {
            Some(t) => t,
            None => {
                // Reserve for the rest of a PDU whose length we have accepted, so large
                // Data-In segments are read without repeated reallocation.
                if buf.len() >= BHS_LEN {
                    let t = self.frame_len(buf);
                    buf.reserve(t.saturating_sub(buf.len()));
                }
                return Ok(None);
            }
        };
        let frame = buf.split_to(total).freeze();
        self.decode_frame(frame).map(Some)
    }

    /// Length of the frame whose BHS starts `buf` (at least 48 bytes long).
    fn frame_len(&self, buf: &[u8]) -> usize {
        let ahs_len = usize::from(buf[4]) * 4;
        let dsl = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        let data_part = if dsl > 0 {
            dsl + pad4(dsl) + self.data_digest.wire_len()
        } else {
            0
        };
        BHS_LEN + ahs_len + self.header_digest.wire_len() + data_part
    }

    /// Decode one complete frame (as measured by [`Framer::check`]).
    pub fn decode_frame(&self, mut frame: Bytes) -> Result<Pdu, FrameError> {
        if frame.len() < BHS_LEN || frame.len() < self.frame_len(&frame) {
            return Err(FrameError {
                error: DecodeError::Malformed {
                    opcode: Opcode(frame.first().map_or(0, |b| b & 0x3f)),
                    what: "frame shorter than its header announces",
                    rule: "§11.2.1",
                },
                bhs: None,
                resynced: false,
            });
        }
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&frame[..BHS_LEN]);
        let opcode = Opcode(bhs[0] & 0x3f);
        let itt = be32(&bhs, 16);
        let ahs_len = usize::from(bhs[4]) * 4;
        let dsl = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let hlen = BHS_LEN + ahs_len;
        let mut at = hlen;
        if self.header_digest == Digest::Crc32c {
            let received = le32(&frame[at..at + 4]);
            let computed = crc32c(&frame[..hlen]);
            if received != computed {
                return Err(FrameError {
                    error: DecodeError::HeaderDigest {
                        opcode,
                        received,
                        computed,
                    },
                    bhs: None,
                    resynced: false,
                });
            }
            at += 4;
        }
        // Slices and the payload share the frame's buffer: an AHS (rare on this path)
        // takes a reference of its own; the payload is the frame itself, narrowed, so a
        // PDU costs one reference count pair, not one per part.
        let ahs = if ahs_len > 0 {
            frame.slice(BHS_LEN..hlen)
        } else {
            Bytes::new()
        };
        let data = if dsl > 0 {
            let padded = dsl + pad4(dsl);
            if self.data_digest == Digest::Crc32c {
                let received = le32(&frame[at + padded..at + padded + 4]);
                let computed = crc32c(&frame[at..at + padded]);
                if received != computed {
                    return Err(FrameError {
                        error: DecodeError::DataDigest {
                            opcode,
                            itt,
                            received,
                            computed,
                        },
                        bhs: Some(bhs),
                        resynced: true,
                    });
                }
            }
            frame.advance(at);
            frame.truncate(dsl);
            frame
        } else {
            Bytes::new()
        };
        Pdu::decode(&bhs, &ahs, data).map_err(|error| FrameError {
            error,
            bhs: Some(bhs),
            resynced: true,
        })
    }

    /// Encode a PDU for sending with the given (transmit-direction) digests.
    pub fn encode(pdu: &Pdu, header_digest: Digest, data_digest: Digest) -> EncodedPdu {
        let mut inline = [0u8; HEADER_INLINE];
        let head = match Self::encode_header(pdu, header_digest, &mut inline) {
            Ok(n) => Bytes::copy_from_slice(&inline[..n]),
            Err(long) => long,
        };
        let data = pdu.data();
        let (tail, tail_len) = Self::encode_tail(&data, data_digest);
        EncodedPdu {
            head,
            data,
            tail,
            tail_len,
        }
    }

    /// The header (BHS, AHS, header digest) written into `out`, returning its length;
    /// a header longer than [`HEADER_INLINE`] (an Extended CDB AHS) comes back on the
    /// heap instead. For senders that keep headers inline, with no allocation per PDU.
    pub fn encode_header(
        pdu: &Pdu,
        header_digest: Digest,
        out: &mut [u8; HEADER_INLINE],
    ) -> Result<usize, Bytes> {
        let mut bhs = [0u8; BHS_LEN];
        let ahs = pdu.encode_bhs(&mut bhs);
        let digest_len = if header_digest == Digest::Crc32c {
            4
        } else {
            0
        };
        let len = BHS_LEN + ahs.len() + digest_len;
        let crc = (digest_len > 0).then(|| crc32c_append(crc32c(&bhs), &ahs).to_le_bytes());
        if len > HEADER_INLINE {
            let mut head = BytesMut::with_capacity(len);
            head.extend_from_slice(&bhs);
            head.extend_from_slice(&ahs);
            if let Some(crc) = crc {
                head.extend_from_slice(&crc);
            }
            return Err(head.freeze());
        }
        out[..BHS_LEN].copy_from_slice(&bhs);
        out[BHS_LEN..BHS_LEN + ahs.len()].copy_from_slice(&ahs);
        if let Some(crc) = crc {
            out[BHS_LEN + ahs.len()..len].copy_from_slice(&crc);
        }
        Ok(len)
    }

    /// What follows a payload of `data` on the wire: padding to 4 bytes and the data
    /// digest (§11.1). Returns the bytes and how many of them are used.
    pub fn encode_tail(data: &[u8], data_digest: Digest) -> ([u8; 8], usize) {
        let mut tail = [0u8; 8];
        let mut tail_len = 0;
        if !data.is_empty() {
            let pad = pad4(data.len());
            tail_len = pad;
            if data_digest == Digest::Crc32c {
                let crc = crc32c_append(crc32c(data), &[0u8; 3][..pad]);
                tail[pad..pad + 4].copy_from_slice(&crc.to_le_bytes());
                tail_len += 4;
            }
        }
        (tail, tail_len)
    }
}

/// Headers up to this long (a BHS, a small AHS and a header digest) are encoded inline
/// by [`Framer::encode_header`].
pub const HEADER_INLINE: usize = 64;

/// A PDU ready for the socket: header bytes, the payload (shared, not copied), and
/// padding plus data digest. Suited to vectored writes.
#[derive(Debug, Clone)]
pub struct EncodedPdu {
    pub head: Bytes,
    pub data: Bytes,
    tail: [u8; 8],
    tail_len: usize,
}

impl EncodedPdu {
    pub fn tail(&self) -> &[u8] {
        &self.tail[..self.tail_len]
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.data.len() + self.tail_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The non-empty byte chunks in wire order.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        [&self.head[..], &self.data[..], self.tail()]
            .into_iter()
            .filter(|c| !c.is_empty())
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for c in self.chunks() {
            v.extend_from_slice(c);
        }
        v
    }
}

/// A little-endian u32 (a digest on the wire) from the first 4 bytes of `b`; callers
/// have checked the frame's length.
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
