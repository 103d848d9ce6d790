//! The keys of RFC 7143 §13 (and §12 for AuthMethod), with their negotiation type.

/// How a key's result is reached (§6.2.2, §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Comma-separated list in preference order; the responder picks the first it supports.
    List,
    /// Numerical, result is the minimum of both values.
    NumMin { min: u32, max: u32 },
    /// Numerical, result is the maximum of both values.
    NumMax { min: u32, max: u32 },
    /// Boolean, result is the AND of both values.
    BoolAnd,
    /// Boolean, result is the OR of both values.
    BoolOr,
    /// Declarative: the sender states a value, no response is needed (numerical range
    /// checked where one is given).
    Declarative { range: Option<(u32, u32)> },
    /// Removed by RFC 7143 (markers, §13.25 "obsoleted keys"): answered with Reject.
    Obsolete,
}

/// Where in a session's life a key may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPhase {
    /// Security negotiation stage only.
    Security,
    /// Leading-only: negotiated on the leading connection's login (LO, §13).
    LeadingOnly,
    /// Initialize-only: during login, not in the full feature phase (IO).
    InitializeOnly,
    /// Also allowed in the full feature phase (e.g. MaxRecvDataSegmentLength, SendTargets).
    Any,
}

/// One key's definition.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    pub name: &'static str,
    pub kind: KeyKind,
    pub phase: KeyPhase,
    /// Default value (§13), `None` where there is none.
    pub default: Option<&'static str>,
    /// True for keys a Discovery session negotiates (others are Irrelevant there, §13).
    pub discovery: bool,
    /// RFC section defining the key.
    pub section: &'static str,
}

const B24: u32 = (1 << 24) - 1;

macro_rules! key {
    ($name:expr, $kind:expr, $phase:expr, $default:expr, $disc:expr, $sec:expr) => {
        KeyDef {
            name: $name,
            kind: $kind,
            phase: $phase,
            default: $default,
            discovery: $disc,
            section: $sec,
        }
    };
}

/// Every key this implementation knows.
pub static KEYS: &[KeyDef] = &[
    key!(
        "AuthMethod",
        KeyKind::List,
        KeyPhase::Security,
        Some("None"),
        true,
        "§12.1"
    ),
    key!(
        "HeaderDigest",
        KeyKind::List,
        KeyPhase::InitializeOnly,
        Some("None"),
        true,
        "§13.1"
    ),
    key!(
        "DataDigest",
        KeyKind::List,
        KeyPhase::InitializeOnly,
        Some("None"),
        true,
        "§13.1"
    ),
    key!(
        "MaxConnections",
        KeyKind::NumMin { min: 1, max: 65535 },
        KeyPhase::LeadingOnly,
        Some("1"),
        false,
        "§13.2"
    ),
    key!(
        "SendTargets",
        KeyKind::Declarative { range: None },
        KeyPhase::Any,
        None,
        true,
        "§13.3"
    ),
    key!(
        "TargetName",
        KeyKind::Declarative { range: None },
        KeyPhase::InitializeOnly,
        None,
        true,
        "§13.4"
    ),
    key!(
        "InitiatorName",
        KeyKind::Declarative { range: None },
        KeyPhase::InitializeOnly,
        None,
        true,
        "§13.5"
    ),
    key!(
        "TargetAlias",
        KeyKind::Declarative { range: None },
        KeyPhase::Any,
        None,
        true,
        "§13.6"
    ),
    key!(
        "InitiatorAlias",
        KeyKind::Declarative { range: None },
        KeyPhase::Any,
        None,
        true,
        "§13.7"
    ),
    key!(
        "TargetAddress",
        KeyKind::Declarative { range: None },
        KeyPhase::Any,
        None,
        true,
        "§13.8"
    ),
    key!(
        "TargetPortalGroupTag",
        KeyKind::Declarative {
            range: Some((0, 65535))
        },
        KeyPhase::InitializeOnly,
        None,
        true,
        "§13.9"
    ),
    key!(
        "InitialR2T",
        KeyKind::BoolOr,
        KeyPhase::LeadingOnly,
        Some("Yes"),
        false,
        "§13.10"
    ),
    key!(
        "ImmediateData",
        KeyKind::BoolAnd,
        KeyPhase::LeadingOnly,
        Some("Yes"),
        false,
        "§13.11"
    ),
    key!(
        "MaxRecvDataSegmentLength",
        KeyKind::Declarative {
            range: Some((512, B24))
        },
        KeyPhase::Any,
        Some("8192"),
        true,
        "§13.12"
    ),
    key!(
        "MaxBurstLength",
        KeyKind::NumMin { min: 512, max: B24 },
        KeyPhase::LeadingOnly,
        Some("262144"),
        false,
        "§13.13"
    ),
    key!(
        "FirstBurstLength",
        KeyKind::NumMin { min: 512, max: B24 },
        KeyPhase::LeadingOnly,
        Some("65536"),
        false,
        "§13.14"
    ),
    key!(
        "DefaultTime2Wait",
        KeyKind::NumMax { min: 0, max: 3600 },
        KeyPhase::LeadingOnly,
        Some("2"),
        true,
        "§13.15"
    ),
    key!(
        "DefaultTime2Retain",
        KeyKind::NumMin { min: 0, max: 3600 },
        KeyPhase::LeadingOnly,
        Some("20"),
        true,
        "§13.16"
    ),
    key!(
        "MaxOutstandingR2T",
        KeyKind::NumMin { min: 1, max: 65535 },
        KeyPhase::LeadingOnly,
        Some("1"),
        false,
        "§13.17"
    ),
    key!(
        "DataPDUInOrder",
        KeyKind::BoolOr,
        KeyPhase::LeadingOnly,
        Some("Yes"),
        false,
        "§13.18"
    ),
    key!(
        "DataSequenceInOrder",
        KeyKind::BoolOr,
        KeyPhase::LeadingOnly,
        Some("Yes"),
        false,
        "§13.19"
    ),
    key!(
        "ErrorRecoveryLevel",
        KeyKind::NumMin { min: 0, max: 2 },
        KeyPhase::LeadingOnly,
        Some("0"),
        true,
        "§13.20"
    ),
    key!(
        "SessionType",
        KeyKind::Declarative { range: None },
        KeyPhase::LeadingOnly,
        Some("Normal"),
        true,
        "§13.21"
    ),
    key!(
        "TaskReporting",
        KeyKind::List,
        KeyPhase::LeadingOnly,
        Some("RFC3720"),
        false,
        "§13.23"
    ),
    key!(
        "iSCSIProtocolLevel",
        KeyKind::NumMin { min: 0, max: 31 },
        KeyPhase::LeadingOnly,
        Some("1"),
        true,
        "§13.24"
    ),
    key!(
        "OFMarker",
        KeyKind::Obsolete,
        KeyPhase::InitializeOnly,
        None,
        true,
        "§13.25"
    ),
    key!(
        "IFMarker",
        KeyKind::Obsolete,
        KeyPhase::InitializeOnly,
        None,
        true,
        "§13.25"
    ),
    key!(
        "OFMarkInt",
        KeyKind::Obsolete,
        KeyPhase::InitializeOnly,
        None,
        true,
        "§13.25"
    ),
    key!(
        "IFMarkInt",
        KeyKind::Obsolete,
        KeyPhase::InitializeOnly,
        None,
        true,
        "§13.25"
    ),
];

/// Look a key up by its exact (case-sensitive, §6.1) name.
pub fn lookup(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// True for the CHAP keys of §12.1.3, which the login state machine handles.
pub fn is_chap_key(name: &str) -> bool {
    matches!(name, "CHAP_A" | "CHAP_I" | "CHAP_C" | "CHAP_N" | "CHAP_R")
}

/// Parse a numerical value: decimal, or hexadecimal with `0x` (§6.1: "numerical-value").
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        u64::from_str_radix(h, 16).ok()
    } else {
        if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }
}

/// Parse a boolean value (`Yes` / `No`, §6.1).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

pub fn bool_str(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}
