//! NUL-delimited `key=value` text (RFC 7143 §6.1).

/// Longest key name (§6.1: "key names MUST NOT exceed 63 bytes").
pub const MAX_KEY_LEN: usize = 63;
/// Longest value we accept. §6.1 caps ordinary values at 255 bytes but lets binary values
/// (CHAP challenges, SendTargets replies) run to 8192.
pub const MAX_VALUE_LEN: usize = 8192;

/// Why a text data segment could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text key=value pair without '=' ({0:?}) (RFC 7143 §6.1)")]
    MissingEquals(String),
    #[error("text key of {0} bytes, over the 63-byte limit (RFC 7143 §6.1)")]
    KeyTooLong(usize),
    #[error("text value of key {key} is {len} bytes, over the {MAX_VALUE_LEN}-byte limit (RFC 7143 §6.1)")]
    ValueTooLong { key: String, len: usize },
    #[error("text key {0:?} has characters outside a-z, A-Z, 0-9, '.', '-', '+', '@', '_' (RFC 7143 §6.1)")]
    BadKeyChar(String),
    #[error("text data is not UTF-8 (RFC 7143 §6.1)")]
    NotUtf8,
    #[error("last key=value pair is not followed by a NUL (RFC 7143 §6.1)")]
    MissingNul,
    #[error("text spanning several PDUs exceeds {0} bytes in total")]
    TooLong(usize),
    #[error("key {0} sent more than once (RFC 7143 §6.2)")]
    Duplicate(String),
}

fn key_char_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_')
}

/// Parse a complete text data segment. Empty entries (runs of padding NULs) are skipped.
pub fn parse_pairs(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    if data.is_empty() {
        return Ok(out);
    }
    if data.last() != Some(&0) {
        return Err(TextError::MissingNul);
    }
    for item in data[..data.len() - 1].split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        let eq = item.iter().position(|&b| b == b'=').ok_or_else(|| {
            TextError::MissingEquals(
                String::from_utf8_lossy(&item[..item.len().min(64)]).into_owned(),
            )
        })?;
        let (k, v) = (&item[..eq], &item[eq + 1..]);
        if k.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong(k.len()));
        }
        if k.is_empty() || !k.iter().all(|&c| key_char_ok(c)) {
            return Err(TextError::BadKeyChar(
                String::from_utf8_lossy(k).into_owned(),
            ));
        }
        let key = String::from_utf8(k.to_vec()).map_err(|_| TextError::NotUtf8)?;
        if v.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong { key, len: v.len() });
        }
        let value = String::from_utf8(v.to_vec()).map_err(|_| TextError::NotUtf8)?;
        out.push((key, value));
    }
    Ok(out)
}

/// Encode pairs as `key=value\0...`.
pub fn encode_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// Reassembles text that arrives in several PDUs with the C bit set (§6.2: "a key=value
/// pair can span PDU boundaries"), bounded in total size.
#[derive(Debug, Default)]
pub struct TextAssembler {
    buf: Vec<u8>,
    limit: usize,
}

impl TextAssembler {
    pub fn new(limit: usize) -> Self {
        TextAssembler {
            buf: Vec::new(),
            limit,
        }
    }

    /// Add one PDU's data segment.
    pub fn push(&mut self, data: &[u8]) -> Result<(), TextError> {
        if self.buf.len() + data.len() > self.limit {
            return Err(TextError::TooLong(self.limit));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Parse and clear what was gathered.
    pub fn finish(&mut self) -> Result<Vec<(String, String)>, TextError> {
        let r = parse_pairs(&self.buf);
        self.buf.clear();
        r
    }
}

/// Split encoded text into chunks of at most `max` bytes for PDUs with the C bit.
pub fn chunk_text(text: &[u8], max: usize) -> Vec<Vec<u8>> {
    if text.is_empty() {
        return vec![Vec::new()];
    }
    text.chunks(max.max(1)).map(<[u8]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_basic() {
        let p = parse_pairs(b"HeaderDigest=None\0MaxBurstLength=262144\0").unwrap();
        assert_eq!(
            p,
            vec![
                ("HeaderDigest".into(), "None".into()),
                ("MaxBurstLength".into(), "262144".into())
            ]
        );
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(parse_pairs(b"A=B"), Err(TextError::MissingNul));
        assert!(matches!(
            parse_pairs(b"AB\0"),
            Err(TextError::MissingEquals(_))
        ));
        let long = format!("{}=1\0", "K".repeat(64));
        assert_eq!(parse_pairs(long.as_bytes()), Err(TextError::KeyTooLong(64)));
        assert!(matches!(
            parse_pairs(b"a/b=1\0"),
            Err(TextError::BadKeyChar(_))
        ));
        assert_eq!(parse_pairs(b"A=\xff\0"), Err(TextError::NotUtf8));
    }

    #[test]
    fn empty_value_allowed() {
        assert_eq!(
            parse_pairs(b"TargetAlias=\0").unwrap(),
            vec![("TargetAlias".into(), String::new())]
        );
    }

    #[test]
    fn assembler_joins_split_pair_and_bounds_size() {
        let mut a = TextAssembler::new(32);
        a.push(b"Target").unwrap();
        a.push(b"Name=iqn.x\0").unwrap();
        assert_eq!(
            a.finish().unwrap(),
            vec![("TargetName".into(), "iqn.x".into())]
        );
        assert!(a.push(&[b'a'; 33]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(pairs in proptest::collection::vec(("[A-Za-z][A-Za-z0-9.]{0,20}", "[ -~&&[^=]]{0,40}"), 0..10)) {
            let enc = encode_pairs(&pairs);
            prop_assert_eq!(parse_pairs(&enc).unwrap(), pairs);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_pairs(&bytes);
        }
    }
}
