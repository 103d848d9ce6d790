//! The target side of login (RFC 7143 §6, §11.12, §11.13, §12.1.3): who may log in to
//! what, AuthMethod None or CHAP (one-way and mutual), operational negotiation and the
//! move to full feature phase. Sans-IO: feed Login Requests with `now`, poll Login
//! Responses, ask for the deadline. Decisions that need the portal's tables (does the
//! target exist, may this initiator see it, which TSIH) go through [`Directory`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;

use super::chap::{decode_binary, encode_binary, ChapAlgorithm, ChapCredentials};
use super::SessionType;
use crate::pdu::{Isid, LoginRequest, LoginResponse, LoginStatus, Pdu, Stage};
use crate::serial::SerialNumber;
use crate::text::keys::{is_chap_key, parse_number};
use crate::text::pairs::{encode_pairs, TextAssembler};
use crate::text::{Negotiator, OperationalParams, Role};

/// What the portal says about a login, once the first request has named the initiator,
/// the session type and (for Normal sessions) the target.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Go ahead; `chap` set means CHAP is required.
    Accept {
        chap: Option<TargetChap>,
        target_alias: Option<String>,
    },
    /// End the login with this status (target not found, not authorized, ...).
    Refuse(LoginStatus),
    /// Send the initiator elsewhere (§11.13.5, status class 1).
    Redirect { address: String, permanent: bool },
}

/// CHAP settings for one login: the initiator's account we check, the target's account
/// for mutual CHAP, and the algorithms we accept in preference order.
#[derive(Debug, Clone)]
pub struct TargetChap {
    pub initiator: ChapCredentials,
    pub mutual: Option<ChapCredentials>,
    pub algorithms: Vec<ChapAlgorithm>,
}

/// The portal's tables as login sees them.
pub trait Directory {
    /// May `initiator` open a session of `session_type` to `target`?
    fn admit(&self, initiator: &str, session_type: SessionType, target: Option<&str>) -> Admission;
    /// The TSIH for the new session. `requested` is the initiator's TSIH: 0 for a new
    /// session (or a reinstatement, §6.3.5), else the session it wants to join.
    fn tsih(&self, initiator: &str, isid: Isid, requested: u16) -> Result<u16, LoginStatus>;
}

/// Target-side login settings.
#[derive(Debug, Clone)]
pub struct TargetLoginConfig {
    /// Our operational values: for list keys what we accept in preference order, for
    /// numbers our limit, for MaxRecvDataSegmentLength what we declare.
    pub operational: Vec<(&'static str, String)>,
    pub target_portal_group_tag: u16,
    /// The whole login must finish within this (the driver enforces it).
    pub timeout: Duration,
    /// The StatSN of the first Login Response.
    pub initial_stat_sn: SerialNumber,
    /// The command window the final Login Response opens (MaxCmdSN = CmdSN + depth − 1).
    pub queue_depth: u32,
}

impl TargetLoginConfig {
    /// What our target accepts by default.
    pub fn default_operational() -> Vec<(&'static str, String)> {
        vec![
            ("HeaderDigest", "None,CRC32C".into()),
            ("DataDigest", "None,CRC32C".into()),
            ("MaxConnections", "1".into()),
            ("InitialR2T", "No".into()),
            ("ImmediateData", "Yes".into()),
            ("MaxRecvDataSegmentLength", "262144".into()),
            ("MaxBurstLength", "16776192".into()),
            ("FirstBurstLength", "262144".into()),
            ("DefaultTime2Wait", "2".into()),
            ("DefaultTime2Retain", "0".into()),
            ("MaxOutstandingR2T", "16".into()),
            ("DataPDUInOrder", "Yes".into()),
            ("DataSequenceInOrder", "Yes".into()),
            ("ErrorRecoveryLevel", "0".into()),
        ]
    }
}

/// A login that reached the full feature phase.
#[derive(Debug, Clone)]
pub struct TargetLoginOutcome {
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// None for Discovery sessions.
    pub target_name: Option<String>,
    pub session_type: SessionType,
    pub isid: Isid,
    pub tsih: u16,
    pub cid: u16,
    /// From our side: max_recv is what we declared, max_xmit what the initiator did.
    pub params: OperationalParams,
    /// CmdSN the first full-feature command carries (login does not advance it, §6.3).
    pub exp_cmd_sn: SerialNumber,
    /// StatSN of the first full-feature response.
    pub stat_sn: SerialNumber,
    /// The CHAP user that authenticated, if CHAP ran.
    pub chap_user: Option<String>,
    pub chap: Option<ChapAlgorithm>,
    pub mutual: bool,
}

/// What a Login Request led to. In every case the responses to send are in
/// [`TargetLogin::poll_transmit`].
#[derive(Debug, Clone)]
pub enum TargetLoginStep {
    /// Wait for the next request.
    Continue,
    /// The final response is queued; the connection is in full feature phase once it is
    /// sent.
    Complete(Box<TargetLoginOutcome>),
    /// The login failed; the response saying why is queued. Send it, then close (§6.1).
    Failed(TargetLoginError),
}

/// Why a login was refused, for the log. The wire status is in [`Self::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({status})")]
pub struct TargetLoginError {
    pub status: LoginStatus,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// AuthMethod not agreed yet.
    Start,
    /// We chose CHAP and wait for CHAP_A.
    ChapAlgorithm,
    /// We sent CHAP_I/C and wait for CHAP_N/R.
    ChapResponse,
    /// Security stage done (None, or CHAP passed).
    Done,
}

/// Requests a login may take before we call the initiator hostile.
const MAX_ROUNDS: u32 = 32;
/// Text one login stage may gather across continued PDUs.
const MAX_LOGIN_TEXT: usize = 64 * 1024;
/// Keys one request may carry that we answer NotUnderstood before we give up on it.
const MAX_UNKNOWN_KEYS: usize = 64;
/// Our CHAP challenge length (§12.1.3: at least as long as the hash's output is wise).
const CHALLENGE_LEN: usize = 32;

/// Target login state machine for one connection.
pub struct TargetLogin {
    cfg: TargetLoginConfig,
    outq: VecDeque<Pdu>,
    assembler: TextAssembler,
    deadline: Instant,
    stat_sn: SerialNumber,
    rounds: u32,
    /// Set by the first request.
    first: Option<First>,
    auth: Auth,
    chap: Option<TargetChap>,
    chap_alg: Option<ChapAlgorithm>,
    challenge: Option<(u8, Vec<u8>)>,
    chap_user: Option<String>,
    mutual_done: bool,
    target_alias: Option<String>,
    negotiator: Option<Negotiator>,
    stage: Stage,
    sent_tpgt: bool,
    declared_mrdsl: bool,
    ended: bool,
}

#[derive(Debug, Clone)]
struct First {
    initiator: String,
    alias: Option<String>,
    target: Option<String>,
    session_type: SessionType,
    isid: Isid,
    tsih: u16,
    cid: u16,
    itt: u32,
    cmd_sn: SerialNumber,
}

impl std::fmt::Debug for TargetLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetLogin")
            .field("stage", &self.stage)
            .field("auth", &self.auth)
            .finish()
    }
}

fn refuse(status: LoginStatus, reason: impl Into<String>) -> TargetLoginError {
    TargetLoginError {
        status,
        reason: reason.into(),
    }
}

fn initiator_error(reason: impl Into<String>) -> TargetLoginError {
    refuse(LoginStatus::INITIATOR_ERROR, reason)
}

/// iSCSI names (§4.2.7.1): iqn./eui./naa. forms, printable, no path separators or
/// control characters, at most 223 bytes.
pub fn check_iscsi_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 223 {
        return Err(format!(
            "iSCSI name of {} bytes (must be 1..=223, RFC 7143 §4.2.7.1)",
            name.len()
        ));
    }
    let lower = name.to_ascii_lowercase();
    if !(lower.starts_with("iqn.") || lower.starts_with("eui.") || lower.starts_with("naa.")) {
        return Err(format!(
            "iSCSI name {:?} does not start with iqn., eui. or naa. (RFC 7143 §4.2.7.1)",
            name.escape_debug().to_string()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '.' | '-' | ':')))
    {
        return Err(format!(
            "iSCSI name {:?} contains {:?}; only letters, digits, '.', '-' and ':' are allowed (RFC 7143 §4.2.7.1)",
            name.escape_debug().to_string(),
            c
        ));
    }
    Ok(())
}

impl TargetLogin {
    pub fn new(cfg: TargetLoginConfig, now: Instant) -> TargetLogin {
        TargetLogin {
            deadline: now + cfg.timeout,
            stat_sn: cfg.initial_stat_sn,
            cfg,
            outq: VecDeque::new(),
            assembler: TextAssembler::new(MAX_LOGIN_TEXT),
            rounds: 0,
            first: None,
            auth: Auth::Start,
            chap: None,
            chap_alg: None,
            challenge: None,
            chap_user: None,
            mutual_done: false,
            target_alias: None,
            negotiator: None,
            stage: Stage::Security,
            sent_tpgt: false,
            declared_mrdsl: false,
            ended: false,
        }
    }

    /// The next Login Response to send.
    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        self.outq.pop_front()
    }

    /// When the login is given up.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// True once the deadline passed: close the connection without an answer (the
    /// initiator stopped talking; there is no request to answer).
    pub fn timed_out(&self, now: Instant) -> bool {
        !self.ended && now >= self.deadline
    }

    /// Feed a PDU received before the full feature phase. Anything but a Login Request
    /// ends the connection (§6: "any PDU except a Login request ... MUST immediately
    /// terminate the connection"); the caller closes without a response.
    pub fn handle_pdu(
        &mut self,
        pdu: Pdu,
        dir: &dyn Directory,
        rng: &mut dyn RngCore,
    ) -> TargetLoginStep {
        match pdu {
            Pdu::LoginRequest(r) => self.handle_request(r, dir, rng),
            other => {
                self.ended = true;
                TargetLoginStep::Failed(initiator_error(format!(
                    "sent a {} before login completed (RFC 7143 §6)",
                    other.opcode()
                )))
            }
        }
    }

    /// Feed a Login Request.
    pub fn handle_request(
        &mut self,
        req: LoginRequest,
        dir: &dyn Directory,
        rng: &mut dyn RngCore,
    ) -> TargetLoginStep {
        if self.ended {
            return TargetLoginStep::Failed(initiator_error(
                "sent a Login Request after the login ended",
            ));
        }
        match self.step(&req, dir, rng) {
            Ok(step) => step,
            Err(e) => {
                self.ended = true;
                // A redirect's response (with its TargetAddress) is already queued.
                if !e.status.is_redirect() {
                    self.respond_status(&req, e.status, Vec::new());
                }
                TargetLoginStep::Failed(e)
            }
        }
    }

    fn step(
        &mut self,
        req: &LoginRequest,
        dir: &dyn Directory,
        rng: &mut dyn RngCore,
    ) -> Result<TargetLoginStep, TargetLoginError> {
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(initiator_error(format!(
                "kept the login going for over {MAX_ROUNDS} requests"
            )));
        }
        // §11.12: version 0 is the only one; Version-min above it cannot be served.
        if req.version_min > 0 {
            return Err(refuse(
                LoginStatus::UNSUPPORTED_VERSION,
                format!(
                    "asked for iSCSI version {}..={}; only 0 exists (RFC 7143 §11.12.4)",
                    req.version_min, req.version_max
                ),
            ));
        }
        // §11.12.2: "If the C bit is set to 1, the T bit MUST be set to 0."
        if req.continue_ && req.transit {
            return Err(initiator_error(
                "Login Request with both C and T set (RFC 7143 §11.12.2)",
            ));
        }
        if req.csg == Stage::FullFeature || (req.transit && req.nsg == Stage::Security) {
            return Err(initiator_error(format!(
                "Login Request with stages CSG={:?} NSG={:?} (RFC 7143 §11.12.3)",
                req.csg, req.nsg
            )));
        }
        if let Some(f) = &self.first {
            // §11.12: ISID, TSIH, CID and ITT stay the same through one login.
            if req.isid != f.isid || req.tsih != f.tsih || req.cid != f.cid || req.itt != f.itt {
                return Err(initiator_error(
                    "changed ISID, TSIH, CID or ITT during the login (RFC 7143 §11.12)",
                ));
            }
            if (req.csg as u8) < (self.stage as u8) {
                return Err(initiator_error(
                    "went back to an earlier login stage (RFC 7143 §6.3)",
                ));
            }
        }
        if self.stage == Stage::Operational && req.csg == Stage::Security {
            return Err(initiator_error(
                "went back to the security stage (RFC 7143 §6.3)",
            ));
        }
        self.assembler
            .push(&req.data)
            .map_err(|e| initiator_error(e.to_string()))?;
        if req.continue_ {
            // §6.2: answer a continued request with an empty response and wait.
            self.respond(req, false, req.csg, Vec::new(), LoginStatus::SUCCESS);
            return Ok(TargetLoginStep::Continue);
        }
        let pairs = self
            .assembler
            .finish()
            .map_err(|e| initiator_error(e.to_string()))?;
        if self.first.is_none() {
            self.first_request(req, &pairs, dir)?;
        }
        // §6.3: the security stage is left only once authentication is complete (the
        // fuzzer found a CHAP login that jumped to the operational stage mid-exchange).
        if req.csg != Stage::Security && self.auth != Auth::Done {
            return Err(refuse(
                LoginStatus::AUTHENTICATION_FAILURE,
                "left the security stage before authentication completed (RFC 7143 §6.3)",
            ));
        }
        self.stage = req.csg;
        let mut reply: Vec<(String, String)> = Vec::new();
        if !self.sent_tpgt && self.session_type() == SessionType::Normal {
            // §13.9: "MUST be returned in the first Login Response PDU" of a Normal session.
            reply.push((
                "TargetPortalGroupTag".into(),
                self.cfg.target_portal_group_tag.to_string(),
            ));
            if let Some(a) = &self.target_alias {
                reply.push(("TargetAlias".into(), a.clone()));
            }
            self.sent_tpgt = true;
        }
        let mut operational: Vec<(String, String)> = Vec::new();
        let mut unknown = 0usize;
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in &pairs {
            if seen.contains(&k.as_str()) {
                return Err(initiator_error(format!(
                    "key {k} sent twice in one request (RFC 7143 §6.2)"
                )));
            }
            seen.push(k);
            match k.as_str() {
                "InitiatorName" | "SessionType" | "TargetName" | "InitiatorAlias" => {
                    if self.rounds > 1 && k != "InitiatorAlias" {
                        // Leading-only keys (§13): only in the first request.
                        let first = self.first.as_ref().map(|f| match k.as_str() {
                            "InitiatorName" => f.initiator == *v,
                            "TargetName" => f.target.as_deref() == Some(v.as_str()),
                            _ => true,
                        });
                        if first != Some(true) {
                            return Err(initiator_error(format!(
                                "{k} changed after the first Login Request (RFC 7143 §13)"
                            )));
                        }
                    }
                }
                "AuthMethod" => {
                    if req.csg != Stage::Security {
                        reply.push((k.clone(), "Irrelevant".into()));
                    } else {
                        reply.push((k.clone(), self.auth_method(v)?));
                    }
                }
                _ if is_chap_key(k) => {}
                _ => {
                    if crate::text::keys::lookup(k).is_none() {
                        unknown += 1;
                        if unknown > MAX_UNKNOWN_KEYS {
                            return Err(initiator_error(format!(
                                "over {MAX_UNKNOWN_KEYS} unknown keys in one request"
                            )));
                        }
                    }
                    operational.push((k.clone(), v.clone()));
                }
            }
        }
        if req.csg == Stage::Security {
            self.chap_step(&pairs, &mut reply, rng)?;
        }
        if !operational.is_empty() {
            let neg = self.negotiator_mut();
            let answers = neg
                .handle(&operational)
                .map_err(|e| initiator_error(e.to_string()))?;
            reply.extend(answers);
        }
        if req.csg == Stage::Operational || (req.transit && req.nsg == Stage::FullFeature) {
            self.declare(&mut reply);
        }
        // May the initiator move on? Only once the security stage is done.
        let mut transit = req.transit;
        if req.csg == Stage::Security && transit {
            match self.auth {
                Auth::Done => {}
                Auth::Start => {
                    return Err(refuse(
                        LoginStatus::AUTHENTICATION_FAILURE,
                        "asked to leave the security stage without AuthMethod (RFC 7143 §6.2)",
                    ));
                }
                _ => transit = false,
            }
        }
        if transit && req.nsg == Stage::FullFeature {
            if self
                .negotiator
                .as_ref()
                .is_some_and(|n| n.awaiting_answers())
            {
                transit = false;
            } else {
                return self.finish(req, reply, dir);
            }
        }
        let nsg = if transit { req.nsg } else { req.csg };
        if transit {
            self.stage = req.nsg;
        }
        self.respond(req, transit, nsg, reply, LoginStatus::SUCCESS);
        Ok(TargetLoginStep::Continue)
    }

    fn session_type(&self) -> SessionType {
        self.first
            .as_ref()
            .map_or(SessionType::Normal, |f| f.session_type)
    }

    fn first_request(
        &mut self,
        req: &LoginRequest,
        pairs: &[(String, String)],
        dir: &dyn Directory,
    ) -> Result<(), TargetLoginError> {
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let initiator = get("InitiatorName").ok_or_else(|| {
            refuse(
                LoginStatus::MISSING_PARAMETER,
                "first Login Request without InitiatorName (RFC 7143 §13.12)",
            )
        })?;
        check_iscsi_name(&initiator).map_err(initiator_error)?;
        let session_type = match get("SessionType").as_deref() {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(other) => {
                return Err(refuse(
                    LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
                    format!("SessionType={} (RFC 7143 §13.21)", other.escape_debug()),
                ))
            }
        };
        let target = get("TargetName");
        if session_type == SessionType::Normal {
            let t = target.as_deref().ok_or_else(|| {
                refuse(
                    LoginStatus::MISSING_PARAMETER,
                    "Normal session without TargetName (RFC 7143 §13.4)",
                )
            })?;
            check_iscsi_name(t).map_err(|e| refuse(LoginStatus::NOT_FOUND, e))?;
        }
        self.first = Some(First {
            initiator: initiator.clone(),
            alias: get("InitiatorAlias"),
            target: target.clone(),
            session_type,
            isid: req.isid,
            tsih: req.tsih,
            cid: req.cid,
            itt: req.itt,
            cmd_sn: req.cmd_sn,
        });
        match dir.admit(&initiator, session_type, target.as_deref()) {
            Admission::Accept { chap, target_alias } => {
                self.chap = chap;
                self.target_alias = target_alias;
            }
            Admission::Refuse(status) => {
                return Err(refuse(
                    status,
                    format!(
                        "{initiator} may not log in to {}",
                        target.as_deref().unwrap_or("discovery")
                    ),
                ))
            }
            Admission::Redirect { address, permanent } => {
                self.ended = true;
                let status = if permanent {
                    LoginStatus::TARGET_MOVED_PERMANENTLY
                } else {
                    LoginStatus::TARGET_MOVED_TEMPORARILY
                };
                self.respond_status(req, status, vec![("TargetAddress".into(), address)]);
                return Err(refuse(status, "redirected"));
            }
        }
        if req.csg == Stage::Operational && self.chap.is_some() {
            return Err(refuse(
                LoginStatus::AUTHENTICATION_FAILURE,
                "skipped the security stage but this target requires CHAP (RFC 7143 §6.3)",
            ));
        }
        if req.csg == Stage::Operational {
            self.auth = Auth::Done;
        }
        let discovery = session_type == SessionType::Discovery;
        self.negotiator = Some(Negotiator::new(
            Role::Target,
            discovery,
            &self.cfg.operational,
        ));
        Ok(())
    }

    fn negotiator_mut(&mut self) -> &mut Negotiator {
        let discovery = self.session_type() == SessionType::Discovery;
        let ops = &self.cfg.operational;
        self.negotiator
            .get_or_insert_with(|| Negotiator::new(Role::Target, discovery, ops))
    }

    /// Declare our MaxRecvDataSegmentLength once (§13.12: each side declares its own).
    fn declare(&mut self, reply: &mut Vec<(String, String)>) {
        if self.declared_mrdsl {
            return;
        }
        self.declared_mrdsl = true;
        let out = self.negotiator_mut().offer(&["MaxRecvDataSegmentLength"]);
        reply.extend(out);
    }

    /// Choose the AuthMethod from the initiator's list (§12, §13.? AuthMethod).
    fn auth_method(&mut self, offered: &str) -> Result<String, TargetLoginError> {
        if self.auth != Auth::Start {
            return Err(initiator_error(
                "AuthMethod negotiated twice (RFC 7143 §6.2)",
            ));
        }
        let list: Vec<&str> = offered.split(',').map(str::trim).collect();
        if self.chap.is_some() {
            if list.contains(&"CHAP") {
                self.auth = Auth::ChapAlgorithm;
                return Ok("CHAP".into());
            }
            return Err(refuse(
                LoginStatus::AUTHENTICATION_FAILURE,
                format!("offered AuthMethod={offered} but this target requires CHAP"),
            ));
        }
        if list.contains(&"None") {
            self.auth = Auth::Done;
            return Ok("None".into());
        }
        Err(refuse(
            LoginStatus::AUTHENTICATION_FAILURE,
            format!("offered AuthMethod={offered}; this target has no CHAP account configured, so only None works"),
        ))
    }

    fn chap_step(
        &mut self,
        pairs: &[(String, String)],
        reply: &mut Vec<(String, String)>,
        rng: &mut dyn RngCore,
    ) -> Result<(), TargetLoginError> {
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let auth_fail = |why: String| refuse(LoginStatus::AUTHENTICATION_FAILURE, why);
        let Some(chap) = self.chap.clone() else {
            if pairs.iter().any(|(k, _)| is_chap_key(k)) {
                return Err(initiator_error(
                    "sent CHAP keys but AuthMethod=None was agreed (RFC 7143 §12.1.3)",
                ));
            }
            return Ok(());
        };
        match self.auth {
            Auth::ChapAlgorithm => {
                let Some(offer) = get("CHAP_A") else {
                    return Ok(());
                };
                let offered: Vec<ChapAlgorithm> =
                    offer.split(',').filter_map(ChapAlgorithm::parse).collect();
                let Some(alg) = chap
                    .algorithms
                    .iter()
                    .copied()
                    .find(|a| offered.contains(a))
                else {
                    return Err(auth_fail(format!(
                        "offered CHAP_A={offer}, none of which this target accepts ({})",
                        chap.algorithms
                            .iter()
                            .map(|a| a.0.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    )));
                };
                let mut id = [0u8; 1];
                rng.fill_bytes(&mut id);
                let mut challenge = vec![0u8; CHALLENGE_LEN];
                rng.fill_bytes(&mut challenge);
                reply.push(("CHAP_A".into(), alg.0.to_string()));
                reply.push(("CHAP_I".into(), id[0].to_string()));
                reply.push(("CHAP_C".into(), encode_binary(&challenge)));
                self.chap_alg = Some(alg);
                self.challenge = Some((id[0], challenge));
                self.auth = Auth::ChapResponse;
                Ok(())
            }
            Auth::ChapResponse => {
                let (Some(name), Some(resp)) = (get("CHAP_N"), get("CHAP_R")) else {
                    return Err(auth_fail(
                        "expected CHAP_N and CHAP_R (RFC 7143 §12.1.3)".into(),
                    ));
                };
                let (alg, (id, challenge)) = match (self.chap_alg, self.challenge.clone()) {
                    (Some(a), Some(c)) => (a, c),
                    _ => return Err(auth_fail("CHAP state lost".into())),
                };
                let got = decode_binary(resp).map_err(|e| auth_fail(format!("CHAP_R: {e}")))?;
                if got.len() != alg.digest_len() {
                    return Err(auth_fail(format!(
                        "CHAP_R is {} bytes; {alg} responses are {} (RFC 7143 §12.1.3)",
                        got.len(),
                        alg.digest_len()
                    )));
                }
                let want = alg.response(id, &chap.initiator.secret, &challenge);
                if name != chap.initiator.user || !constant_time_eq(&got, &want) {
                    return Err(auth_fail(format!(
                        "CHAP_N={} or its response does not match the configured account",
                        name.escape_debug()
                    )));
                }
                self.chap_user = Some(name.to_string());
                // Mutual CHAP: the initiator challenges us.
                match (get("CHAP_I"), get("CHAP_C")) {
                    // One-way: the initiator does not ask us to prove ourselves; a
                    // configured mutual account only answers when asked (as tgt and LIO).
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        let Some(m) = &chap.mutual else {
                            return Err(auth_fail(
                                "initiator asked for mutual CHAP but the target has no outgoing account".into(),
                            ));
                        };
                        let their_id = parse_number(i).filter(|n| *n <= 255).ok_or_else(|| {
                            auth_fail(format!(
                                "CHAP_I={} is not 0..=255 (RFC 7143 §12.1.3)",
                                i.escape_debug()
                            ))
                        })? as u8;
                        let their_challenge =
                            decode_binary(c).map_err(|e| auth_fail(format!("CHAP_C: {e}")))?;
                        // §9.2.1: a challenge equal to ours is a reflection attack.
                        if their_challenge == challenge {
                            return Err(auth_fail(
                                "the initiator's CHAP challenge repeats ours (reflection, RFC 7143 §9.2.1)".into(),
                            ));
                        }
                        // §9.2.1: the same secret MUST NOT be used in both directions.
                        if m.secret == chap.initiator.secret {
                            return Err(refuse(
                                LoginStatus::TARGET_ERROR,
                                "the target's mutual CHAP secret equals the initiator's (RFC 7143 §9.2.1); fix the configuration",
                            ));
                        }
                        let r = alg.response(their_id, &m.secret, &their_challenge);
                        reply.push(("CHAP_N".into(), m.user.clone()));
                        reply.push(("CHAP_R".into(), encode_binary(&r)));
                        self.mutual_done = true;
                    }
                    _ => {
                        return Err(auth_fail(
                            "mutual CHAP needs both CHAP_I and CHAP_C (RFC 7143 §12.1.3)".into(),
                        ))
                    }
                }
                self.auth = Auth::Done;
                Ok(())
            }
            Auth::Done | Auth::Start => {
                if pairs.iter().any(|(k, _)| is_chap_key(k)) {
                    return Err(auth_fail("CHAP keys out of turn (RFC 7143 §12.1.3)".into()));
                }
                Ok(())
            }
        }
    }

    fn finish(
        &mut self,
        req: &LoginRequest,
        reply: Vec<(String, String)>,
        dir: &dyn Directory,
    ) -> Result<TargetLoginStep, TargetLoginError> {
        let first = self
            .first
            .clone()
            .ok_or_else(|| initiator_error("login ended before it began"))?;
        let tsih = dir
            .tsih(&first.initiator, first.isid, first.tsih)
            .map_err(|s| refuse(s, "no session for this login"))?;
        let params = self.negotiator_mut().params();
        self.ended = true;
        let stat_sn = self.stat_sn;
        self.respond_with_tsih(
            req,
            true,
            Stage::FullFeature,
            reply,
            LoginStatus::SUCCESS,
            tsih,
        );
        if let Some(Pdu::LoginResponse(r)) = self.outq.back_mut() {
            r.max_cmd_sn = r.exp_cmd_sn.plus(self.cfg.queue_depth.max(1) - 1);
        }
        Ok(TargetLoginStep::Complete(Box::new(TargetLoginOutcome {
            initiator_name: first.initiator,
            initiator_alias: first.alias,
            target_name: first.target,
            session_type: first.session_type,
            isid: first.isid,
            tsih,
            cid: first.cid,
            params,
            exp_cmd_sn: req.cmd_sn,
            stat_sn: stat_sn.next(),
            chap_user: self.chap_user.clone(),
            chap: if self.chap_user.is_some() {
                self.chap_alg
            } else {
                None
            },
            mutual: self.mutual_done,
        })))
    }

    fn respond(
        &mut self,
        req: &LoginRequest,
        transit: bool,
        nsg: Stage,
        pairs: Vec<(String, String)>,
        status: LoginStatus,
    ) {
        self.respond_with_tsih(req, transit, nsg, pairs, status, 0);
    }

    fn respond_status(
        &mut self,
        req: &LoginRequest,
        status: LoginStatus,
        pairs: Vec<(String, String)>,
    ) {
        self.outq.clear();
        self.respond(req, false, req.csg, pairs, status);
    }

    fn respond_with_tsih(
        &mut self,
        req: &LoginRequest,
        transit: bool,
        nsg: Stage,
        pairs: Vec<(String, String)>,
        status: LoginStatus,
        tsih: u16,
    ) {
        let cmd_sn = self.first.as_ref().map_or(req.cmd_sn, |f| f.cmd_sn);
        // §11.13.4: each Login Response carries the next StatSN.
        let stat_sn = self.stat_sn;
        self.stat_sn = self.stat_sn.next();
        self.outq.push_back(Pdu::LoginResponse(LoginResponse {
            transit,
            continue_: false,
            csg: req.csg,
            nsg: if transit { nsg } else { req.csg },
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih,
            itt: req.itt,
            stat_sn,
            exp_cmd_sn: cmd_sn,
            max_cmd_sn: cmd_sn,
            status,
            data: Bytes::from(encode_pairs(&pairs)),
        }));
    }
}

/// Compare secrets-derived bytes without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
