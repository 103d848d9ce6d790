//! Header and data digests: CRC32C (RFC 7143 §11.1 / §13.1, Castagnoli polynomial).
//!
//! The `crc32c` crate is used because it selects the SSE4.2 / ARMv8 CRC instructions at
//! run time and falls back to a table implementation elsewhere.

/// CRC32C over `data`, as iSCSI transmits it (little-endian on the wire, §12.1).
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continue a CRC32C over a further chunk.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// The digest negotiated for one direction of one kind (header or data).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Digest {
    #[default]
    None,
    Crc32c,
}

impl Digest {
    /// Bytes this digest adds on the wire.
    pub fn wire_len(self) -> usize {
        match self {
            Digest::None => 0,
            Digest::Crc32c => 4,
        }
    }

    pub fn is_none(self) -> bool {
        self == Digest::None
    }

    /// The key value (`HeaderDigest=` / `DataDigest=`).
    pub fn key_value(self) -> &'static str {
        match self {
            Digest::None => "None",
            Digest::Crc32c => "CRC32C",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    // RFC 7143 Appendix B.4 (CRC32C examples): the CRC value is shown as it appears on the
    // wire, byte 0 first; the integer is therefore the little-endian reading of those bytes.
    #[test]
    fn rfc7143_crc32c_examples() {
        assert_eq!(crc32c(&[0u8; 32]).to_le_bytes(), hex!("aa 36 91 8a"));
        assert_eq!(crc32c(&[0xffu8; 32]).to_le_bytes(), hex!("43 ab a8 62"));
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc).to_le_bytes(), hex!("4e 79 dd 46"));
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&dec).to_le_bytes(), hex!("5c db 3f 11"));
        // An iSCSI SCSI Read (10) command PDU.
        let pdu = hex!(
            "01 c0 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
            "14 00 00 00 00 00 04 00 00 00 00 14 00 00 00 18"
            "28 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00"
        );
        assert_eq!(crc32c(&pdu).to_le_bytes(), hex!("56 3a 96 d9"));
    }

    #[test]
    fn append_matches_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let split = crc32c_append(crc32c(&data[..333]), &data[333..]);
        assert_eq!(split, crc32c(&data));
    }
}
