//! CHAP for iSCSI (RFC 7143 §12.1.3, RFC 1994) with the CHAP_A values of the IANA
//! registry: 5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256 (RFC 7143 §13.x / IANA "iSCSI CHAP").
//!
//! Digests come from RustCrypto's md-5/sha1/sha2/sha3 crates: one audited family with
//! the same `Digest` trait, pure Rust, no C toolchain.

use base64::Engine;
use md5::Md5;
use sha1::Sha1;
use sha2::Sha256;
use sha3::Sha3_256;

/// Longest binary CHAP value we accept (RFC 7143 §12.1.3 allows challenges up to 1024
/// bytes).
pub const MAX_BINARY_LEN: usize = 1024;

/// Shortest secret that does not draw a warning (RFC 7143 §12.1.3 recommends ≥ 96 bits).
pub const MIN_SECRET_LEN: usize = 12;

code_space! {
    /// CHAP_A algorithm identifier.
    pub struct ChapAlgorithm(u8) {
        MD5 = 5 => "MD5",
        SHA1 = 6 => "SHA-1",
        SHA256 = 7 => "SHA-256",
        SHA3_256 = 8 => "SHA3-256",
    }
}

impl ChapAlgorithm {
    pub const ALL: [ChapAlgorithm; 4] = [
        ChapAlgorithm::MD5,
        ChapAlgorithm::SHA1,
        ChapAlgorithm::SHA256,
        ChapAlgorithm::SHA3_256,
    ];

    pub fn is_supported(self) -> bool {
        (5..=8).contains(&self.0)
    }

    /// Length of the response (and of the challenges we generate).
    pub fn digest_len(self) -> usize {
        match self.0 {
            5 => 16,
            6 => 20,
            _ => 32,
        }
    }

    /// CHAP response: H(identifier ‖ secret ‖ challenge) (RFC 1994 §4.1).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn h<D: sha2::Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update([id]);
            d.update(secret);
            d.update(challenge);
            d.finalize().to_vec()
        }
        match self.0 {
            5 => h::<Md5>(id, secret, challenge),
            6 => h::<Sha1>(id, secret, challenge),
            7 => h::<Sha256>(id, secret, challenge),
            _ => h::<Sha3_256>(id, secret, challenge),
        }
    }

    /// Parse a name such as `md5`, `sha1`, `sha256`, `sha3-256`, or a number.
    pub fn parse(s: &str) -> Option<ChapAlgorithm> {
        let a = match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "md5" | "5" => ChapAlgorithm::MD5,
            "sha1" | "6" => ChapAlgorithm::SHA1,
            "sha256" | "7" => ChapAlgorithm::SHA256,
            "sha3256" | "8" => ChapAlgorithm::SHA3_256,
            _ => return None,
        };
        Some(a)
    }
}

/// Errors in CHAP values or configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("CHAP binary value {0:?} is neither 0x-hex nor 0b-base64 (RFC 7143 §6.1)")]
    BadEncoding(String),
    #[error("CHAP binary value of {0} bytes exceeds {MAX_BINARY_LEN} (RFC 7143 §12.1.3)")]
    TooLong(usize),
    #[error("CHAP binary value is empty (RFC 7143 §12.1.3)")]
    Empty,
    #[error(
        "the same CHAP secret is configured for both directions; RFC 7143 §9.2.1 forbids it: \
         give the target (mutual) account a different secret"
    )]
    SameSecretBothWays,
    #[error("CHAP user name is empty: set the CHAP user")]
    EmptyUser,
    #[error("CHAP secret is empty: set the CHAP secret")]
    EmptySecret,
}

/// Encode a binary value as `0x` + hex (§6.1 "hex-constant").
pub fn encode_binary(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decode a binary value given as `0x`/`0X` hex or `0b`/`0B` base64 (§6.1).
pub fn decode_binary(s: &str) -> Result<Vec<u8>, ChapError> {
    let bad = || ChapError::BadEncoding(s.chars().take(40).collect());
    let out = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if h.len() > MAX_BINARY_LEN * 2 + 1 {
            return Err(ChapError::TooLong(h.len() / 2));
        }
        // An odd number of digits is read with an implied leading zero.
        let padded = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        let mut v = Vec::with_capacity(padded.len() / 2);
        for pair in padded.as_bytes().chunks(2) {
            let txt = std::str::from_utf8(pair).map_err(|_| bad())?;
            v.push(u8::from_str_radix(txt, 16).map_err(|_| bad())?);
        }
        v
    } else if let Some(b) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        if b.len() > MAX_BINARY_LEN * 2 {
            return Err(ChapError::TooLong(b.len() * 3 / 4));
        }
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    if out.is_empty() {
        return Err(ChapError::Empty);
    }
    if out.len() > MAX_BINARY_LEN {
        return Err(ChapError::TooLong(out.len()));
    }
    Ok(out)
}

/// One CHAP account: a name and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    pub user: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("user", &self.user)
            .field("secret", &"********")
            .finish()
    }
}

/// CHAP settings of an initiator: our account (one-way) and optionally the target's
/// (mutual), and the algorithms we offer, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapConfig {
    pub initiator: ChapCredentials,
    pub target: Option<ChapCredentials>,
    pub algorithms: Vec<ChapAlgorithm>,
}

impl ChapConfig {
    /// Default algorithm order: MD5 first. tgtd reads CHAP_A=7 as SHA-1 although IANA
    /// assigns 7 to SHA-256, so offering 7 first fails against it (PEERS.md).
    pub const DEFAULT_ALGORITHMS: [ChapAlgorithm; 4] = [
        ChapAlgorithm::MD5,
        ChapAlgorithm::SHA1,
        ChapAlgorithm::SHA256,
        ChapAlgorithm::SHA3_256,
    ];

    /// Check the configuration; returns warnings a person should see.
    pub fn validate(&self) -> Result<Vec<String>, ChapError> {
        let mut warnings = Vec::new();
        let mut check = |c: &ChapCredentials, what: &str| -> Result<(), ChapError> {
            if c.user.is_empty() {
                return Err(ChapError::EmptyUser);
            }
            if c.secret.is_empty() {
                return Err(ChapError::EmptySecret);
            }
            if c.secret.len() < MIN_SECRET_LEN {
                warnings.push(format!(
                    "{what} CHAP secret for {} is {} bytes; RFC 7143 §12.1.3 recommends at least {MIN_SECRET_LEN}",
                    c.user,
                    c.secret.len()
                ));
            }
            Ok(())
        };
        check(&self.initiator, "initiator")?;
        if let Some(t) = &self.target {
            check(t, "target (mutual)")?;
            // §9.2.1: "the same CHAP secret MUST NOT be configured for authentication of
            // multiple initiators or multiple targets" in both directions.
            if t.secret == self.initiator.secret {
                return Err(ChapError::SameSecretBothWays);
            }
        }
        Ok(warnings)
    }

    /// The CHAP_A offer: `5,6,7,8`.
    pub fn offer(&self) -> String {
        let list: Vec<String> = self.algorithms.iter().map(|a| a.0.to_string()).collect();
        list.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    #[test]
    fn vectors_for_all_four_algorithms() {
        // Independently computed with Python's hashlib over 0x2a ‖ "secretsecret1" ‖ 00..0f.
        let ch: Vec<u8> = (0u8..16).collect();
        let s = b"secretsecret1";
        assert_eq!(
            ChapAlgorithm::MD5.response(0x2a, s, &ch),
            hex!("ec81cd0a4bf810bfcb485d7600dadf3f")
        );
        assert_eq!(
            ChapAlgorithm::SHA1.response(0x2a, s, &ch),
            hex!("563873f1f0717e003b971f5171b459719226e931")
        );
        assert_eq!(
            ChapAlgorithm::SHA256.response(0x2a, s, &ch),
            hex!("55954403e439449807f74596471a25e2b31edd9f17019f69bd8753307f7a8f04")
        );
        assert_eq!(
            ChapAlgorithm::SHA3_256.response(0x2a, s, &ch),
            hex!("ac6a9338ba31f2312a6761a2539a6446922c962735afa50653b89fc0f79fc51b")
        );
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x0a0B").unwrap(), vec![0x0a, 0x0b]);
        assert_eq!(decode_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(decode_binary("0bAAEC").unwrap(), vec![0, 1, 2]);
        assert_eq!(encode_binary(&[0, 255]), "0x00ff");
        assert!(decode_binary("abc").is_err());
        assert!(decode_binary("0xzz").is_err());
        assert!(decode_binary("0b!!").is_err());
        assert_eq!(decode_binary("0x"), Err(ChapError::Empty));
        assert!(matches!(
            decode_binary(&format!("0x{}", "00".repeat(1025))),
            Err(ChapError::TooLong(_))
        ));
    }

    #[test]
    fn config_rules() {
        let c = |u: &str, s: &str| ChapCredentials {
            user: u.into(),
            secret: s.as_bytes().to_vec(),
        };
        let mut cfg = ChapConfig {
            initiator: c("u", "short"),
            target: None,
            algorithms: ChapConfig::DEFAULT_ALGORITHMS.to_vec(),
        };
        let w = cfg.validate().unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("recommends at least 12"), "{w:?}");
        cfg.target = Some(c("t", "short"));
        assert_eq!(cfg.validate(), Err(ChapError::SameSecretBothWays));
        assert_eq!(cfg.offer(), "5,6,7,8");
    }
}
