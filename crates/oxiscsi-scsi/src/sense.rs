//! Sense data (SPC-4 §4.5): fixed (0x70/0x71) and descriptor (0x72/0x73) formats,
//! decoded into a key and ASC/ASCQ with their names, e.g.
//! "ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (0x21/0x00)".

use std::fmt;

/// Sense key (SPC-4 Table 48).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SenseKey(pub u8);

impl SenseKey {
    pub const NO_SENSE: SenseKey = SenseKey(0x0);
    pub const RECOVERED_ERROR: SenseKey = SenseKey(0x1);
    pub const NOT_READY: SenseKey = SenseKey(0x2);
    pub const MEDIUM_ERROR: SenseKey = SenseKey(0x3);
    pub const HARDWARE_ERROR: SenseKey = SenseKey(0x4);
    pub const ILLEGAL_REQUEST: SenseKey = SenseKey(0x5);
    pub const UNIT_ATTENTION: SenseKey = SenseKey(0x6);
    pub const DATA_PROTECT: SenseKey = SenseKey(0x7);
    pub const BLANK_CHECK: SenseKey = SenseKey(0x8);
    pub const VENDOR_SPECIFIC: SenseKey = SenseKey(0x9);
    pub const COPY_ABORTED: SenseKey = SenseKey(0xa);
    pub const ABORTED_COMMAND: SenseKey = SenseKey(0xb);
    pub const VOLUME_OVERFLOW: SenseKey = SenseKey(0xd);
    pub const MISCOMPARE: SenseKey = SenseKey(0xe);

    pub fn name(self) -> &'static str {
        match self.0 {
            0x0 => "NO SENSE",
            0x1 => "RECOVERED ERROR",
            0x2 => "NOT READY",
            0x3 => "MEDIUM ERROR",
            0x4 => "HARDWARE ERROR",
            0x5 => "ILLEGAL REQUEST",
            0x6 => "UNIT ATTENTION",
            0x7 => "DATA PROTECT",
            0x8 => "BLANK CHECK",
            0x9 => "VENDOR SPECIFIC",
            0xa => "COPY ABORTED",
            0xb => "ABORTED COMMAND",
            0xd => "VOLUME OVERFLOW",
            0xe => "MISCOMPARE",
            0xf => "COMPLETED",
            _ => "RESERVED SENSE KEY",
        }
    }
}

/// ASC/ASCQ names (SPC-4 Annex D), the ones block storage meets.
static ASC_TABLE: &[(u8, u8, &str)] = &[
    (0x00, 0x00, "NO ADDITIONAL SENSE INFORMATION"),
    (0x00, 0x16, "OPERATION IN PROGRESS"),
    (0x02, 0x00, "NO SEEK COMPLETE"),
    (0x03, 0x00, "PERIPHERAL DEVICE WRITE FAULT"),
    (0x04, 0x00, "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE"),
    (0x04, 0x01, "LOGICAL UNIT IS IN PROCESS OF BECOMING READY"),
    (
        0x04,
        0x02,
        "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED",
    ),
    (
        0x04,
        0x03,
        "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED",
    ),
    (0x04, 0x04, "LOGICAL UNIT NOT READY, FORMAT IN PROGRESS"),
    (
        0x04,
        0x0a,
        "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION",
    ),
    (
        0x04,
        0x0b,
        "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE",
    ),
    (
        0x04,
        0x0c,
        "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE",
    ),
    (0x05, 0x00, "LOGICAL UNIT DOES NOT RESPOND TO SELECTION"),
    (0x08, 0x00, "LOGICAL UNIT COMMUNICATION FAILURE"),
    (0x08, 0x01, "LOGICAL UNIT COMMUNICATION TIME-OUT"),
    (0x0c, 0x00, "WRITE ERROR"),
    (0x0c, 0x02, "WRITE ERROR - AUTO REALLOCATION FAILED"),
    (0x10, 0x01, "LOGICAL BLOCK GUARD CHECK FAILED"),
    (0x11, 0x00, "UNRECOVERED READ ERROR"),
    (0x14, 0x01, "RECORD NOT FOUND"),
    (0x1a, 0x00, "PARAMETER LIST LENGTH ERROR"),
    (0x1d, 0x00, "MISCOMPARE DURING VERIFY OPERATION"),
    (0x20, 0x00, "INVALID COMMAND OPERATION CODE"),
    (0x20, 0x02, "ACCESS DENIED - NO ACCESS RIGHTS"),
    (0x21, 0x00, "LOGICAL BLOCK ADDRESS OUT OF RANGE"),
    (0x21, 0x01, "INVALID ELEMENT ADDRESS"),
    (0x24, 0x00, "INVALID FIELD IN CDB"),
    (0x25, 0x00, "LOGICAL UNIT NOT SUPPORTED"),
    (0x26, 0x00, "INVALID FIELD IN PARAMETER LIST"),
    (0x26, 0x01, "PARAMETER NOT SUPPORTED"),
    (0x26, 0x02, "PARAMETER VALUE INVALID"),
    (0x26, 0x04, "INVALID RELEASE OF PERSISTENT RESERVATION"),
    (
        0x26,
        0x07,
        "INVALID FIELD IN PARAMETER LIST - TOO MANY SEGMENT DESCRIPTORS",
    ),
    (0x27, 0x00, "WRITE PROTECTED"),
    (0x27, 0x01, "HARDWARE WRITE PROTECTED"),
    (0x27, 0x02, "LOGICAL UNIT SOFTWARE WRITE PROTECTED"),
    (
        0x28,
        0x00,
        "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED",
    ),
    (0x29, 0x00, "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED"),
    (0x29, 0x01, "POWER ON OCCURRED"),
    (0x29, 0x02, "SCSI BUS RESET OCCURRED"),
    (0x29, 0x03, "BUS DEVICE RESET FUNCTION OCCURRED"),
    (0x29, 0x04, "DEVICE INTERNAL RESET"),
    (0x29, 0x07, "I_T NEXUS LOSS OCCURRED"),
    (0x2a, 0x00, "PARAMETERS CHANGED"),
    (0x2a, 0x01, "MODE PARAMETERS CHANGED"),
    (0x2a, 0x03, "RESERVATIONS PREEMPTED"),
    (0x2a, 0x04, "RESERVATIONS RELEASED"),
    (0x2a, 0x05, "REGISTRATIONS PREEMPTED"),
    (0x2a, 0x06, "ASYMMETRIC ACCESS STATE CHANGED"),
    (0x2a, 0x09, "CAPACITY DATA HAS CHANGED"),
    (0x2c, 0x00, "COMMAND SEQUENCE ERROR"),
    (0x2c, 0x0c, "ORWRITE GENERATION DOES NOT MATCH"),
    (0x2f, 0x00, "COMMANDS CLEARED BY ANOTHER INITIATOR"),
    (0x2f, 0x01, "COMMANDS CLEARED BY POWER LOSS NOTIFICATION"),
    (0x2f, 0x02, "COMMANDS CLEARED BY DEVICE SERVER"),
    (0x31, 0x00, "MEDIUM FORMAT CORRUPTED"),
    (0x34, 0x00, "ENCLOSURE FAILURE"),
    (0x38, 0x07, "THIN PROVISIONING SOFT THRESHOLD REACHED"),
    (0x39, 0x00, "SAVING PARAMETERS NOT SUPPORTED"),
    (0x3a, 0x00, "MEDIUM NOT PRESENT"),
    (0x3e, 0x00, "LOGICAL UNIT HAS NOT SELF-CONFIGURED YET"),
    (0x3e, 0x01, "LOGICAL UNIT FAILURE"),
    (0x3e, 0x02, "TIMEOUT ON LOGICAL UNIT"),
    (0x3f, 0x01, "MICROCODE HAS BEEN CHANGED"),
    (0x3f, 0x03, "INQUIRY DATA HAS CHANGED"),
    (0x3f, 0x0e, "REPORTED LUNS DATA HAS CHANGED"),
    (0x44, 0x00, "INTERNAL TARGET FAILURE"),
    (0x47, 0x00, "SCSI PARITY ERROR"),
    (0x47, 0x03, "INFORMATION UNIT iuCRC ERROR DETECTED"),
    (0x47, 0x05, "PROTOCOL SERVICE CRC ERROR"),
    (0x48, 0x00, "INITIATOR DETECTED ERROR MESSAGE RECEIVED"),
    (0x49, 0x00, "INVALID MESSAGE ERROR"),
    (0x4b, 0x00, "DATA PHASE ERROR"),
    (0x4b, 0x01, "INVALID TARGET PORT TRANSFER TAG RECEIVED"),
    (0x4b, 0x02, "TOO MUCH WRITE DATA"),
    (0x4b, 0x03, "ACK/NAK TIMEOUT"),
    (0x4b, 0x04, "NAK RECEIVED"),
    (0x4b, 0x05, "DATA OFFSET ERROR"),
    (0x4b, 0x06, "INITIATOR RESPONSE TIMEOUT"),
    (0x4c, 0x00, "LOGICAL UNIT FAILED SELF-CONFIGURATION"),
    (0x53, 0x02, "MEDIUM REMOVAL PREVENTED"),
    (0x55, 0x03, "INSUFFICIENT RESOURCES"),
    (0x55, 0x04, "INSUFFICIENT REGISTRATION RESOURCES"),
    (0x5d, 0x00, "FAILURE PREDICTION THRESHOLD EXCEEDED"),
    (0x5e, 0x00, "LOW POWER CONDITION ON"),
    (0x67, 0x0a, "SET TARGET PORT GROUPS COMMAND FAILED"),
];

/// The name of an ASC/ASCQ pair, if known.
pub fn asc_name(asc: u8, ascq: u8) -> Option<&'static str> {
    ASC_TABLE
        .iter()
        .find(|(a, q, _)| *a == asc && *q == ascq)
        .map(|(_, _, n)| *n)
}

/// Decoded sense data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sense {
    /// 0x70/0x71 fixed, 0x72/0x73 descriptor; odd values are deferred errors.
    pub response_code: u8,
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field (often the failing LBA), when valid.
    pub information: Option<u64>,
}

/// Sense data that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenseError {
    #[error("sense data is empty")]
    Empty,
    #[error("sense data of {0} bytes is too short for its format")]
    Short(usize),
    #[error("unknown sense response code 0x{0:02x}")]
    UnknownFormat(u8),
}

impl Sense {
    /// Decode fixed or descriptor format sense data (SPC-4 §4.5.2, §4.5.3).
    pub fn parse(b: &[u8]) -> Result<Sense, SenseError> {
        let first = *b.first().ok_or(SenseError::Empty)?;
        let code = first & 0x7f;
        match code {
            0x70 | 0x71 => {
                if b.len() < 3 {
                    return Err(SenseError::Short(b.len()));
                }
                let info = (first & 0x80 != 0 && b.len() >= 7)
                    .then(|| u64::from(u32::from_be_bytes([b[3], b[4], b[5], b[6]])));
                Ok(Sense {
                    response_code: code,
                    key: SenseKey(b[2] & 0x0f),
                    asc: b.get(12).copied().unwrap_or(0),
                    ascq: b.get(13).copied().unwrap_or(0),
                    information: info,
                })
            }
            0x72 | 0x73 => {
                if b.len() < 4 {
                    return Err(SenseError::Short(b.len()));
                }
                // Walk descriptors for an Information descriptor (type 0, VALID bit).
                let mut information = None;
                let total = 8 + usize::from(b.get(7).copied().unwrap_or(0));
                let mut pos = 8;
                while pos + 2 <= total.min(b.len()) {
                    let dtype = b[pos];
                    let dlen = usize::from(b[pos + 1]);
                    if dtype == 0 && dlen >= 0x0a && pos + 12 <= b.len() && b[pos + 2] & 0x80 != 0 {
                        let mut v = [0u8; 8];
                        v.copy_from_slice(&b[pos + 4..pos + 12]);
                        information = Some(u64::from_be_bytes(v));
                    }
                    pos += 2 + dlen;
                }
                Ok(Sense {
                    response_code: code,
                    key: SenseKey(b[1] & 0x0f),
                    asc: b[2],
                    ascq: b[3],
                    information,
                })
            }
            other => Err(SenseError::UnknownFormat(other)),
        }
    }

    /// Fixed-format sense data (18 bytes), current error.
    pub fn fixed(key: SenseKey, asc: u8, ascq: u8) -> Vec<u8> {
        let mut v = vec![0u8; 18];
        v[0] = 0x70;
        v[2] = key.0 & 0x0f;
        v[7] = 10;
        v[12] = asc;
        v[13] = ascq;
        v
    }

    /// Descriptor-format sense data (8 bytes, no descriptors), current error.
    pub fn descriptor(key: SenseKey, asc: u8, ascq: u8) -> Vec<u8> {
        vec![0x72, key.0 & 0x0f, asc, ascq, 0, 0, 0, 0]
    }

    pub fn asc_name(&self) -> Option<&'static str> {
        asc_name(self.asc, self.ascq)
    }

    pub fn is_deferred(&self) -> bool {
        self.response_code & 1 == 1
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.asc_name() {
            Some(n) => n.to_string(),
            None if (0x80..=0xff).contains(&self.asc) || (0x80..=0xff).contains(&self.ascq) => {
                "VENDOR SPECIFIC ADDITIONAL SENSE".to_string()
            }
            None => "UNKNOWN ADDITIONAL SENSE CODE".to_string(),
        };
        write!(
            f,
            "{}: {} (0x{:02x}/0x{:02x})",
            self.key.name(),
            name,
            self.asc,
            self.ascq
        )?;
        if self.is_deferred() {
            f.write_str(" [deferred]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    #[test]
    fn fixed_lba_out_of_range() {
        let s = Sense::parse(&hex!(
            "70 00 05 00 00 00 00 0a 00 00 00 00 21 00 00 00 00 00"
        ))
        .unwrap();
        assert_eq!(
            s.to_string(),
            "ILLEGAL REQUEST: LOGICAL BLOCK ADDRESS OUT OF RANGE (0x21/0x00)"
        );
        assert_eq!(s.information, None);
    }

    #[test]
    fn fixed_with_information() {
        let s = Sense::parse(&hex!(
            "f0 00 03 00 00 10 00 0a 00 00 00 00 11 00 00 00 00 00"
        ))
        .unwrap();
        assert_eq!(s.information, Some(0x1000));
        assert_eq!(
            s.to_string(),
            "MEDIUM ERROR: UNRECOVERED READ ERROR (0x11/0x00)"
        );
    }

    #[test]
    fn descriptor_with_information() {
        let s = Sense::parse(&hex!(
            "72 06 29 00 00 00 00 0c 00 0a 80 00 00 00 00 00 00 00 00 2a"
        ))
        .unwrap();
        assert_eq!(s.key, SenseKey::UNIT_ATTENTION);
        assert_eq!(s.information, Some(42));
        assert!(s.to_string().starts_with("UNIT ATTENTION: POWER ON, RESET"));
    }

    #[test]
    fn round_trip_and_bad() {
        let s = Sense::parse(&Sense::fixed(SenseKey::DATA_PROTECT, 0x27, 0)).unwrap();
        assert_eq!(s.to_string(), "DATA PROTECT: WRITE PROTECTED (0x27/0x00)");
        let d = Sense::parse(&Sense::descriptor(SenseKey::ILLEGAL_REQUEST, 0x24, 0)).unwrap();
        assert_eq!(
            d.to_string(),
            "ILLEGAL REQUEST: INVALID FIELD IN CDB (0x24/0x00)"
        );
        assert_eq!(Sense::parse(&[]), Err(SenseError::Empty));
        assert_eq!(Sense::parse(&[0x12]), Err(SenseError::UnknownFormat(0x12)));
        assert_eq!(Sense::parse(&[0x70, 0]), Err(SenseError::Short(2)));
        let v = Sense::parse(&Sense::fixed(SenseKey(0x9), 0x80, 0x01)).unwrap();
        assert!(v.to_string().contains("VENDOR SPECIFIC"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = Sense::parse(&b).map(|s| s.to_string());
        }
    }
}
