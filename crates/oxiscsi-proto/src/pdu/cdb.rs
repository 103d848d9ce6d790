//! The CDB bytes a SCSI Command PDU carries (RFC 7143 §11.3.5): the first 16 in the
//! header, the rest of a longer one (up to 260) in an Extended CDB AHS.
//!
//! Nearly every CDB is 6 to 16 bytes, so those are kept inline: building, cloning (the
//! task keeps its CDB for a later retry) and dropping a command's CDB touch no allocator
//! and no reference count, on the initiator and on the target alike.

use std::ops::Deref;

use bytes::Bytes;

/// CDB bytes, inline up to 16.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CdbBuf(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Inline { bytes: [u8; 16], len: u8 },
    Long(Bytes),
}

impl CdbBuf {
    /// The bytes of `b`, copied when they fit inline.
    pub fn copy_from_slice(b: &[u8]) -> CdbBuf {
        match u8::try_from(b.len()) {
            Ok(len) if len <= 16 => {
                let mut bytes = [0u8; 16];
                bytes[..b.len()].copy_from_slice(b);
                CdbBuf(Repr::Inline { bytes, len })
            }
            _ => CdbBuf(Repr::Long(Bytes::copy_from_slice(b))),
        }
    }

    /// The first `len` bytes of a 16-byte array (`len` is capped at 16).
    pub fn from_array(bytes: [u8; 16], len: usize) -> CdbBuf {
        CdbBuf(Repr::Inline {
            bytes,
            len: len.min(16) as u8,
        })
    }
}

impl Default for CdbBuf {
    fn default() -> Self {
        CdbBuf::from_array([0; 16], 0)
    }
}

impl Deref for CdbBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { bytes, len } => &bytes[..usize::from(*len)],
            Repr::Long(b) => b,
        }
    }
}

impl AsRef<[u8]> for CdbBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for CdbBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CdbBuf({:02x?})", &**self)
    }
}

impl From<&[u8]> for CdbBuf {
    fn from(b: &[u8]) -> Self {
        CdbBuf::copy_from_slice(b)
    }
}

impl<const N: usize> From<[u8; N]> for CdbBuf {
    fn from(b: [u8; N]) -> Self {
        CdbBuf::copy_from_slice(&b)
    }
}

impl<const N: usize> From<&[u8; N]> for CdbBuf {
    fn from(b: &[u8; N]) -> Self {
        CdbBuf::copy_from_slice(b)
    }
}

impl From<Vec<u8>> for CdbBuf {
    fn from(v: Vec<u8>) -> Self {
        if v.len() <= 16 {
            CdbBuf::copy_from_slice(&v)
        } else {
            CdbBuf(Repr::Long(Bytes::from(v)))
        }
    }
}

impl From<Bytes> for CdbBuf {
    fn from(b: Bytes) -> Self {
        if b.len() <= 16 {
            CdbBuf::copy_from_slice(&b)
        } else {
            CdbBuf(Repr::Long(b))
        }
    }
}

impl PartialEq<[u8]> for CdbBuf {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cdbs_are_inline_and_long_ones_whole() {
        for len in [0usize, 6, 10, 12, 16, 17, 32, 260] {
            let v: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let from_vec = CdbBuf::from(v.clone());
            let from_bytes = CdbBuf::from(Bytes::from(v.clone()));
            let from_slice = CdbBuf::copy_from_slice(&v);
            for c in [&from_vec, &from_bytes, &from_slice] {
                assert_eq!(&c[..], &v[..], "len {len}");
                assert_eq!(matches!(c.0, Repr::Inline { .. }), len <= 16, "len {len}");
            }
            assert_eq!(from_vec, from_bytes);
            assert_eq!(from_vec.clone(), from_slice);
        }
        assert_eq!(&CdbBuf::from_array([7; 16], 40)[..], &[7; 16][..]);
        assert!(CdbBuf::default().is_empty());
    }
}
