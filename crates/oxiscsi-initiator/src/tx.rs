//! The write side of a driver: encoded PDUs waiting for the socket, in wire order.
//!
//! Headers and padding/digests are kept inline (no allocation per PDU); payloads are the
//! commands' own `Bytes`, never copied. Both drivers (the tokio [`crate::Session`] and
//! the caller-driven [`crate::Poller`]) queue here and write with one `writev` per call.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use oxiscsi_proto::pdu::{Framer, Pdu, HEADER_INLINE};
use oxiscsi_proto::Digest;

/// Most buffers handed to one `writev`.
const MAX_IOV: usize = 64;
/// A short queue: one command's chunks (header, payload, padding/digest) fit.
const FEW_IOV: usize = 4;

pub(crate) struct TxQueue {
    chunks: VecDeque<Chunk>,
    header_digest: Digest,
    data_digest: Digest,
}

impl TxQueue {
    /// `digests`: header and data digest as negotiated for what we send.
    pub(crate) fn new((header_digest, data_digest): (Digest, Digest)) -> TxQueue {
        TxQueue {
            chunks: VecDeque::new(),
            header_digest,
            data_digest,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Queue one PDU: its header (with digest), payload and padding/digest.
    pub(crate) fn push(&mut self, pdu: &Pdu) {
        let mut head = [0u8; HEADER_INLINE];
        self.chunks.push_back(
            match Framer::encode_header(pdu, self.header_digest, &mut head) {
                Ok(len) => Chunk::inline(head, len),
                Err(long) => Chunk::Bytes(long),
            },
        );
        let data = pdu.data();
        if !data.is_empty() {
            let (tail, tail_len) = Framer::encode_tail(&data, self.data_digest);
            self.chunks.push_back(Chunk::Bytes(data));
            if tail_len > 0 {
                let mut t = [0u8; HEADER_INLINE];
                t[..tail_len].copy_from_slice(&tail[..tail_len]);
                self.chunks.push_back(Chunk::inline(t, tail_len));
            }
        }
    }

    /// Write with `writev` (one non-blocking `writev` per call) until the queue is empty
    /// (true) or the socket is full (false). Err says why the connection is unusable.
    pub(crate) fn write_with(
        &mut self,
        mut writev: impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
    ) -> Result<bool, String> {
        while !self.chunks.is_empty() {
            // A command alone is one to three chunks: filling 64 slots for it cost more
            // than the rest of the write path's user-space work.
            let written = if self.chunks.len() <= FEW_IOV {
                write_some::<FEW_IOV>(&mut writev, &self.chunks)
            } else {
                write_some::<MAX_IOV>(&mut writev, &self.chunks)
            };
            match written {
                Ok(0) => return Err("the socket accepted no bytes".into()),
                Ok(n) => advance(&mut self.chunks, n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write error: {e}")),
            }
        }
        Ok(true)
    }
}

/// One `writev` of the first `N` (or fewer) chunks of the queue.
fn write_some<const N: usize>(
    writev: &mut impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
    chunks: &VecDeque<Chunk>,
) -> std::io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); N];
    let n = chunks.len().min(N);
    for (s, b) in slices.iter_mut().zip(chunks.iter()) {
        *s = IoSlice::new(b.as_slice());
    }
    writev(&slices[..n])
}

/// One piece of the write queue: a header or padding/digest kept inline, or a payload
/// shared with its command.
enum Chunk {
    Inline {
        buf: [u8; HEADER_INLINE],
        start: u8,
        end: u8,
    },
    Bytes(Bytes),
}

impl Chunk {
    fn inline(buf: [u8; HEADER_INLINE], len: usize) -> Chunk {
        Chunk::Inline {
            buf,
            start: 0,
            end: len.min(HEADER_INLINE) as u8,
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Inline { buf, start, end } => &buf[usize::from(*start)..usize::from(*end)],
            Chunk::Bytes(b) => b,
        }
    }

    fn advance(&mut self, n: usize) {
        match self {
            Chunk::Inline { start, end, .. } => {
                *start = (usize::from(*start) + n).min(usize::from(*end)) as u8
            }
            Chunk::Bytes(b) => b.advance(n.min(b.len())),
        }
    }
}

fn advance(chunks: &mut VecDeque<Chunk>, mut n: usize) {
    while n > 0 {
        let Some(front) = chunks.front_mut() else {
            return;
        };
        let len = front.as_slice().len();
        if len <= n {
            n -= len;
            chunks.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(b: &[u8]) -> Chunk {
        let mut buf = [0u8; HEADER_INLINE];
        buf[..b.len()].copy_from_slice(b);
        Chunk::inline(buf, b.len())
    }

    fn wire(q: &VecDeque<Chunk>) -> Vec<u8> {
        q.iter().flat_map(|c| c.as_slice().to_vec()).collect()
    }

    #[test]
    fn partial_writes_resume_inside_inline_and_shared_chunks() {
        // A header, a payload and a digest, written in pieces of every size: what is left
        // is always the tail of the same byte stream.
        let head: Vec<u8> = (0..48).collect();
        let data: Vec<u8> = (100..=255).collect();
        let tail = [9u8, 8, 7, 6];
        let all: Vec<u8> = [&head[..], &data[..], &tail[..]].concat();
        for step in 1..=all.len() {
            let mut q = VecDeque::from([
                inline(&head),
                Chunk::Bytes(Bytes::from(data.clone())),
                inline(&tail),
            ]);
            let mut written = 0;
            while !q.is_empty() {
                let n = step.min(all.len() - written);
                advance(&mut q, n);
                written += n;
                assert_eq!(wire(&q), &all[written..], "step {step}, written {written}");
            }
            assert_eq!(written, all.len());
        }
    }

    #[test]
    fn write_with_stops_when_the_socket_is_full_and_resumes() {
        let mut q = TxQueue::new((Digest::None, Digest::None));
        q.chunks.push_back(inline(&[1, 2, 3, 4]));
        q.chunks
            .push_back(Chunk::Bytes(Bytes::from_static(&[5, 6, 7])));
        let mut out = Vec::new();
        let mut budget = 5;
        let full = q.write_with(|s| {
            if budget == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let flat: Vec<u8> = s.iter().flat_map(|b| b.to_vec()).collect();
            let n = flat.len().min(budget);
            budget -= n;
            out.extend_from_slice(&flat[..n]);
            Ok(n)
        });
        assert_eq!(full, Ok(false));
        assert_eq!(out, [1, 2, 3, 4, 5]);
        let done = q.write_with(|s| {
            let flat: Vec<u8> = s.iter().flat_map(|b| b.to_vec()).collect();
            out.extend_from_slice(&flat);
            Ok(flat.len())
        });
        assert_eq!(done, Ok(true));
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7]);
        assert!(q.is_empty());
        let zero = q.write_with(|_| Ok(0));
        assert_eq!(zero, Ok(true), "nothing queued, nothing written");
        q.chunks.push_back(inline(&[1]));
        assert!(
            q.write_with(|_| Ok(0)).is_err(),
            "a socket that takes nothing"
        );
    }
}
