//! Negotiation of operational keys (RFC 7143 §6.2, §13).
//!
//! Either side runs a [`Negotiator`]: it offers its values, answers the peer's offers by
//! each key's result function, checks the peer's answers against what it offered, and
//! yields [`OperationalParams`] when both sides are done. The same code serves login
//! (§6.2) and full-feature-phase text negotiation.

use std::collections::BTreeMap;

use super::keys::{bool_str, lookup, parse_bool, parse_number, KeyDef, KeyKind, KeyPhase};
use super::pairs::TextError;
use crate::digest::Digest;

/// Which end of the connection this negotiator speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Target,
}

/// A negotiation that cannot complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error("peer answered {key}={answer}, which is not among the values we offered ({offered}) (RFC 7143 §6.2.2)")]
    NotOffered {
        key: String,
        answer: String,
        offered: String,
    },
    #[error("peer answered {key}={answer}, breaking the {rule} result function against our {offered} (RFC 7143 {section})")]
    BadResult {
        key: String,
        answer: String,
        offered: String,
        rule: &'static str,
        section: &'static str,
    },
    #[error(
        "peer sent {key}={value}, outside the allowed range {min}..={max} (RFC 7143 {section})"
    )]
    OutOfRange {
        key: String,
        value: String,
        min: u32,
        max: u32,
        section: &'static str,
    },
    #[error("peer refused {key} ({answer}) and its default {default} is not acceptable to us (we offered {offered})")]
    Refused {
        key: String,
        answer: String,
        default: String,
        offered: String,
    },
    #[error("key {0} negotiated twice in one login (RFC 7143 §6.2)")]
    Renegotiated(String),
}

/// The operational parameters of a session and connection once negotiation is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationalParams {
    pub header_digest: Digest,
    pub data_digest: Digest,
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    /// The largest data segment we accept (what we declared, §13.12).
    pub max_recv_data_segment_length: u32,
    /// The largest data segment we may send (what the peer declared; 8192 if it did not).
    pub max_xmit_data_segment_length: u32,
    pub target_alias: Option<String>,
    pub target_portal_group_tag: Option<u16>,
}

impl Default for OperationalParams {
    /// The RFC 7143 defaults (§13).
    fn default() -> Self {
        OperationalParams {
            header_digest: Digest::None,
            data_digest: Digest::None,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            max_recv_data_segment_length: 8192,
            max_xmit_data_segment_length: 8192,
            target_alias: None,
            target_portal_group_tag: None,
        }
    }
}

impl OperationalParams {
    /// Key=value lines as shown to people (`iscsiadm -m session -P 3` style).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HeaderDigest", self.header_digest.key_value().into()),
            ("DataDigest", self.data_digest.key_value().into()),
            (
                "MaxRecvDataSegmentLength",
                self.max_recv_data_segment_length.to_string(),
            ),
            (
                "MaxXmitDataSegmentLength",
                self.max_xmit_data_segment_length.to_string(),
            ),
            ("FirstBurstLength", self.first_burst_length.to_string()),
            ("MaxBurstLength", self.max_burst_length.to_string()),
            ("ImmediateData", bool_str(self.immediate_data).into()),
            ("InitialR2T", bool_str(self.initial_r2t).into()),
            ("MaxOutstandingR2T", self.max_outstanding_r2t.to_string()),
            ("ErrorRecoveryLevel", self.error_recovery_level.to_string()),
            ("MaxConnections", self.max_connections.to_string()),
            ("DefaultTime2Wait", self.default_time2wait.to_string()),
            ("DefaultTime2Retain", self.default_time2retain.to_string()),
            ("DataPDUInOrder", bool_str(self.data_pdu_in_order).into()),
            (
                "DataSequenceInOrder",
                bool_str(self.data_sequence_in_order).into(),
            ),
        ]
    }
}

/// Drives negotiation of a set of keys for one side.
#[derive(Debug, Clone)]
pub struct Negotiator {
    role: Role,
    discovery: bool,
    /// Our values: for list keys the acceptable values in preference order.
    local: BTreeMap<&'static str, String>,
    /// Keys we offered and still await an answer for.
    offered: BTreeMap<&'static str, String>,
    /// Results.
    agreed: BTreeMap<&'static str, String>,
    /// Declarations received from the peer.
    declared: BTreeMap<String, String>,
    /// Keys we already offered or answered (a key is negotiated once per login).
    done: Vec<&'static str>,
}

impl Negotiator {
    /// `local` holds our values; only keys known to [`super::KEYS`] are kept.
    pub fn new(role: Role, discovery: bool, local: &[(&str, String)]) -> Negotiator {
        let mut map = BTreeMap::new();
        for (k, v) in local {
            if let Some(def) = lookup(k) {
                map.insert(def.name, v.clone());
            }
        }
        Negotiator {
            role,
            discovery,
            local: map,
            offered: BTreeMap::new(),
            agreed: BTreeMap::new(),
            declared: BTreeMap::new(),
            done: Vec::new(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Offer every local key not yet offered or answered, in the order given by
    /// `order` (keys not in `order` are skipped). Declarations are sent but not awaited.
    pub fn offer(&mut self, order: &[&str]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for name in order {
            let Some(def) = lookup(name) else { continue };
            if self.done.contains(&def.name) {
                continue;
            }
            let Some(v) = self.local.get(def.name).cloned() else {
                continue;
            };
            if self.discovery && !def.discovery {
                continue;
            }
            self.done.push(def.name);
            if !matches!(def.kind, KeyKind::Declarative { .. }) {
                self.offered.insert(def.name, v.clone());
            }
            out.push((def.name.to_string(), v));
        }
        out
    }

    /// True while offers of ours await an answer.
    pub fn awaiting_answers(&self) -> bool {
        !self.offered.is_empty()
    }

    /// Handle the peer's key=value pairs (one complete text, not CHAP or AuthMethod).
    /// Returns the answers we must send back.
    pub fn handle(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<Vec<(String, String)>, NegotiationError> {
        let mut seen: Vec<&str> = Vec::new();
        let mut replies = Vec::new();
        for (key, value) in pairs {
            if seen.contains(&key.as_str()) && key != "TargetAddress" {
                return Err(TextError::Duplicate(key.clone()).into());
            }
            seen.push(key);
            let Some(def) = lookup(key) else {
                // §6.2: an unknown key is answered NotUnderstood (unless it is itself an
                // answer word, which needs no reply).
                if !is_answer_word(value) {
                    replies.push((key.clone(), "NotUnderstood".to_string()));
                }
                continue;
            };
            if let Some(offer) = self.offered.remove(def.name) {
                let result = check_answer(def, &offer, value, self.local.get(def.name))?;
                self.agreed.insert(def.name, result);
                continue;
            }
            match def.kind {
                KeyKind::Declarative { range } => {
                    if let Some((min, max)) = range {
                        let ok = parse_number(value)
                            .is_some_and(|n| n >= u64::from(min) && n <= u64::from(max));
                        if !ok {
                            return Err(NegotiationError::OutOfRange {
                                key: key.clone(),
                                value: value.clone(),
                                min,
                                max,
                                section: def.section,
                            });
                        }
                    }
                    self.declared.insert(key.clone(), value.clone());
                }
                _ if is_answer_word(value) => {
                    // An answer to something we never offered: nothing to do.
                }
                _ => {
                    if self.done.contains(&def.name) && self.agreed.contains_key(def.name) {
                        return Err(NegotiationError::Renegotiated(key.clone()));
                    }
                    self.done.push(def.name);
                    let reply = if self.discovery && !def.discovery {
                        "Irrelevant".to_string()
                    } else {
                        respond(def, self.local.get(def.name).map(String::as_str), value)
                    };
                    if !is_answer_word(&reply) {
                        self.agreed.insert(def.name, reply.clone());
                    }
                    replies.push((key.clone(), reply));
                }
            }
        }
        Ok(replies)
    }

    /// A declaration received from the peer (TargetAlias, MaxRecvDataSegmentLength, ...).
    pub fn declared(&self, key: &str) -> Option<&str> {
        self.declared.get(key).map(String::as_str)
    }

    /// The agreed value of a key, if it was negotiated.
    pub fn agreed(&self, key: &str) -> Option<&str> {
        self.agreed.get(key).map(String::as_str)
    }

    /// The parameters in force: agreed values, else RFC defaults.
    pub fn params(&self) -> OperationalParams {
        let d = OperationalParams::default();
        let num = |k: &str, dflt: u32| -> u32 {
            self.agreed
                .get(k)
                .and_then(|v| parse_number(v))
                .map_or(dflt, |n| n.min(u64::from(u32::MAX)) as u32)
        };
        let boolean = |k: &str, dflt: bool| {
            self.agreed
                .get(k)
                .and_then(|v| parse_bool(v))
                .unwrap_or(dflt)
        };
        let digest = |k: &str| match self.agreed.get(k).map(String::as_str) {
            Some("CRC32C") => Digest::Crc32c,
            _ => Digest::None,
        };
        let mbl = num("MaxBurstLength", d.max_burst_length);
        // §13.14: "FirstBurstLength MUST NOT exceed MaxBurstLength".
        let fbl = num("FirstBurstLength", d.first_burst_length).min(mbl);
        let our_mrdsl = self
            .local
            .get("MaxRecvDataSegmentLength")
            .and_then(|v| parse_number(v))
            .map_or(8192, |n| n as u32);
        let their_mrdsl = self
            .declared
            .get("MaxRecvDataSegmentLength")
            .and_then(|v| parse_number(v))
            .map_or(8192, |n| n as u32);
        OperationalParams {
            header_digest: digest("HeaderDigest"),
            data_digest: digest("DataDigest"),
            max_connections: num("MaxConnections", 1) as u16,
            initial_r2t: boolean("InitialR2T", d.initial_r2t),
            immediate_data: boolean("ImmediateData", d.immediate_data),
            max_burst_length: mbl,
            first_burst_length: fbl,
            default_time2wait: num("DefaultTime2Wait", 2) as u16,
            default_time2retain: num("DefaultTime2Retain", 20) as u16,
            max_outstanding_r2t: num("MaxOutstandingR2T", 1) as u16,
            data_pdu_in_order: boolean("DataPDUInOrder", true),
            data_sequence_in_order: boolean("DataSequenceInOrder", true),
            error_recovery_level: num("ErrorRecoveryLevel", 0) as u8,
            max_recv_data_segment_length: our_mrdsl,
            max_xmit_data_segment_length: their_mrdsl,
            target_alias: self.declared.get("TargetAlias").cloned(),
            target_portal_group_tag: self
                .declared
                .get("TargetPortalGroupTag")
                .and_then(|v| parse_number(v))
                .map(|n| n as u16),
        }
    }
}

fn is_answer_word(v: &str) -> bool {
    matches!(v, "NotUnderstood" | "Irrelevant" | "Reject")
}

fn range(kind: KeyKind) -> Option<(u32, u32)> {
    match kind {
        KeyKind::NumMin { min, max } | KeyKind::NumMax { min, max } => Some((min, max)),
        _ => None,
    }
}

/// Our answer to the peer's offer of `def` (§6.2.2 result functions). Values we cannot
/// parse or that are out of range are answered "Reject".
pub fn respond(def: &KeyDef, local: Option<&str>, offered: &str) -> String {
    match def.kind {
        KeyKind::List => {
            let ours: Vec<&str> = local.or(def.default).unwrap_or("").split(',').collect();
            offered
                .split(',')
                .find(|v| ours.contains(v))
                .map_or_else(|| "Reject".to_string(), str::to_string)
        }
        KeyKind::NumMin { min, max } | KeyKind::NumMax { min, max } => {
            let Some(theirs) =
                parse_number(offered).filter(|n| *n >= u64::from(min) && *n <= u64::from(max))
            else {
                return "Reject".to_string();
            };
            let ours = local.and_then(parse_number).unwrap_or(theirs);
            let r = if matches!(def.kind, KeyKind::NumMin { .. }) {
                ours.min(theirs)
            } else {
                ours.max(theirs)
            };
            r.clamp(u64::from(min), u64::from(max)).to_string()
        }
        KeyKind::BoolAnd | KeyKind::BoolOr => {
            let Some(theirs) = parse_bool(offered) else {
                return "Reject".to_string();
            };
            let ours = local.and_then(parse_bool).unwrap_or(theirs);
            let r = if def.kind == KeyKind::BoolAnd {
                ours && theirs
            } else {
                ours || theirs
            };
            bool_str(r).to_string()
        }
        KeyKind::Obsolete => "Reject".to_string(),
        KeyKind::Declarative { .. } => "Irrelevant".to_string(),
    }
}

/// Check the peer's answer to our offer and return the result in force.
pub fn check_answer(
    def: &KeyDef,
    offered: &str,
    answer: &str,
    local: Option<&String>,
) -> Result<String, NegotiationError> {
    let err_result = |rule: &'static str| NegotiationError::BadResult {
        key: def.name.to_string(),
        answer: answer.to_string(),
        offered: offered.to_string(),
        rule,
        section: def.section,
    };
    if is_answer_word(answer) {
        // The key takes its default; that must be acceptable to us.
        let default = def.default.unwrap_or("").to_string();
        let acceptable = match def.kind {
            KeyKind::List => local.is_none_or(|l| l.split(',').any(|v| v == default)),
            _ => true,
        };
        if !acceptable {
            return Err(NegotiationError::Refused {
                key: def.name.to_string(),
                answer: answer.to_string(),
                default,
                offered: offered.to_string(),
            });
        }
        return Ok(default);
    }
    match def.kind {
        KeyKind::List => {
            if answer.contains(',') || !offered.split(',').any(|v| v == answer) {
                return Err(NegotiationError::NotOffered {
                    key: def.name.to_string(),
                    answer: answer.to_string(),
                    offered: offered.to_string(),
                });
            }
            Ok(answer.to_string())
        }
        KeyKind::NumMin { .. } | KeyKind::NumMax { .. } => {
            let (min, max) = range(def.kind).unwrap_or((0, u32::MAX));
            let a = parse_number(answer).ok_or_else(|| err_result("numerical"))?;
            if a < u64::from(min) || a > u64::from(max) {
                return Err(NegotiationError::OutOfRange {
                    key: def.name.to_string(),
                    value: answer.to_string(),
                    min,
                    max,
                    section: def.section,
                });
            }
            let o = parse_number(offered).unwrap_or(a);
            match def.kind {
                KeyKind::NumMin { .. } if a > o => Err(err_result("minimum")),
                KeyKind::NumMax { .. } if a < o => Err(err_result("maximum")),
                _ => Ok(a.to_string()),
            }
        }
        KeyKind::BoolAnd | KeyKind::BoolOr => {
            let a = parse_bool(answer).ok_or_else(|| err_result("boolean"))?;
            let o = parse_bool(offered).unwrap_or(a);
            match def.kind {
                KeyKind::BoolAnd if !o && a => Err(err_result("AND")),
                KeyKind::BoolOr if o && !a => Err(err_result("OR")),
                _ => Ok(bool_str(a).to_string()),
            }
        }
        KeyKind::Obsolete | KeyKind::Declarative { .. } => Ok(answer.to_string()),
    }
}

/// The phase a key belongs to, for callers filtering by login stage.
pub fn phase_of(key: &str) -> Option<KeyPhase> {
    lookup(key).map(|d| d.phase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        v.to_string()
    }

    fn init_offer() -> Vec<(&'static str, String)> {
        crate::login::LoginConfig::default_operational()
    }

    fn order() -> Vec<&'static str> {
        init_offer().iter().map(|(k, _)| *k).collect()
    }

    /// Table: (key, our offer, target's answer, expected result or error).
    #[test]
    fn result_function_table() {
        let cases: &[(&str, &str, &str, Result<&str, ()>)] = &[
            ("MaxBurstLength", "16776192", "262144", Ok("262144")),
            ("MaxBurstLength", "262144", "16776192", Err(())), // min broken
            ("MaxBurstLength", "262144", "100", Err(())),      // below 512
            ("DefaultTime2Wait", "2", "5", Ok("5")),
            ("DefaultTime2Wait", "5", "2", Err(())), // max broken
            ("InitialR2T", "No", "Yes", Ok("Yes")),
            ("InitialR2T", "Yes", "No", Err(())), // OR broken
            ("ImmediateData", "Yes", "No", Ok("No")),
            ("ImmediateData", "No", "Yes", Err(())), // AND broken
            ("HeaderDigest", "CRC32C,None", "None", Ok("None")),
            ("HeaderDigest", "None", "CRC32C", Err(())), // not offered
            ("HeaderDigest", "CRC32C,None", "CRC32C,None", Err(())), // a list is no answer
            ("HeaderDigest", "CRC32C", "Reject", Err(())), // default None unacceptable
            ("HeaderDigest", "CRC32C,None", "Reject", Ok("None")),
            ("MaxConnections", "1", "NotUnderstood", Ok("1")),
            ("ErrorRecoveryLevel", "0", "Irrelevant", Ok("0")),
            ("MaxBurstLength", "262144", "0x10000", Ok("65536")),
            ("ErrorRecoveryLevel", "2", "3", Err(())),
        ];
        for (key, offer, answer, want) in cases {
            let mut n = Negotiator::new(Role::Initiator, false, &[(key, s(offer))]);
            let sent = n.offer(&[key]);
            assert_eq!(sent, vec![(s(key), s(offer))]);
            let r = n.handle(&[(s(key), s(answer))]);
            match want {
                Ok(v) => {
                    assert!(r.is_ok(), "{key} {offer} -> {answer}: {r:?}");
                    assert_eq!(n.agreed(key), Some(*v), "{key} {offer} -> {answer}");
                }
                Err(()) => assert!(
                    r.is_err(),
                    "{key} {offer} -> {answer} should fail, got {:?}",
                    n.agreed(key)
                ),
            }
        }
    }

    #[test]
    fn responder_table() {
        // (key, our local value, peer offer, our reply)
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            ("HeaderDigest", Some("None"), "CRC32C,None", "None"),
            ("HeaderDigest", Some("CRC32C,None"), "CRC32C,None", "CRC32C"),
            ("HeaderDigest", Some("CRC32C"), "None", "Reject"),
            ("MaxBurstLength", Some("262144"), "16776192", "262144"),
            ("MaxBurstLength", None, "16776192", "16776192"),
            ("MaxBurstLength", Some("262144"), "99999999", "Reject"),
            ("MaxBurstLength", Some("262144"), "abc", "Reject"),
            ("DefaultTime2Wait", Some("2"), "0", "2"),
            ("InitialR2T", Some("Yes"), "No", "Yes"),
            ("ImmediateData", Some("No"), "Yes", "No"),
            ("ImmediateData", Some("Yes"), "Maybe", "Reject"),
            ("OFMarker", None, "No", "Reject"),
            ("TaskReporting", None, "ResponseFence,RFC3720", "RFC3720"),
        ];
        for (key, local, offer, want) in cases {
            let l: Vec<(&str, String)> = local.iter().map(|v| (*key, s(v))).collect();
            let mut n = Negotiator::new(Role::Target, false, &l);
            let replies = n.handle(&[(s(key), s(offer))]).unwrap();
            assert_eq!(
                replies,
                vec![(s(key), s(want))],
                "{key} local {local:?} offer {offer}"
            );
        }
    }

    #[test]
    fn unknown_and_irrelevant_keys() {
        let mut n = Negotiator::new(Role::Target, true, &[]);
        let r = n
            .handle(&[
                (s("X-com.example.Foo"), s("1")),
                (s("MaxBurstLength"), s("512")),
                (s("Bogus"), s("Reject")),
            ])
            .unwrap();
        assert_eq!(
            r,
            vec![
                (s("X-com.example.Foo"), s("NotUnderstood")),
                (s("MaxBurstLength"), s("Irrelevant"))
            ]
        );
    }

    #[test]
    fn duplicate_key_is_an_error() {
        let mut n = Negotiator::new(Role::Target, false, &[]);
        let e = n
            .handle(&[
                (s("MaxBurstLength"), s("512")),
                (s("MaxBurstLength"), s("1024")),
            ])
            .unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
    }

    #[test]
    fn full_initiator_target_exchange() {
        let mut ini = Negotiator::new(Role::Initiator, false, &init_offer());
        let mut tgt = Negotiator::new(
            Role::Target,
            false,
            &[
                ("MaxRecvDataSegmentLength", s("8192")),
                ("MaxBurstLength", s("262144")),
                ("FirstBurstLength", s("65536")),
                ("InitialR2T", s("Yes")),
                ("MaxOutstandingR2T", s("1")),
            ],
        );
        let offer = ini.offer(&order());
        let mut reply = tgt.handle(&offer).unwrap();
        reply.extend(tgt.offer(&["MaxRecvDataSegmentLength"]));
        let back = ini.handle(&reply).unwrap();
        assert!(back.is_empty(), "{back:?}");
        assert!(!ini.awaiting_answers());
        let p = ini.params();
        assert_eq!(p.max_burst_length, 262144);
        assert_eq!(p.first_burst_length, 65536);
        assert!(p.initial_r2t);
        assert!(p.immediate_data);
        assert_eq!(p.max_recv_data_segment_length, 262144);
        assert_eq!(p.max_xmit_data_segment_length, 8192);
        let tp = tgt.params();
        assert_eq!(tp.max_xmit_data_segment_length, 262144);
        assert_eq!(tp.max_burst_length, 262144);
    }

    #[test]
    fn first_burst_clamped_to_max_burst() {
        let mut n = Negotiator::new(
            Role::Initiator,
            false,
            &[
                ("MaxBurstLength", s("4096")),
                ("FirstBurstLength", s("8192")),
            ],
        );
        n.offer(&["MaxBurstLength", "FirstBurstLength"]);
        n.handle(&[
            (s("MaxBurstLength"), s("4096")),
            (s("FirstBurstLength"), s("8192")),
        ])
        .unwrap();
        assert_eq!(n.params().first_burst_length, 4096);
    }
}
