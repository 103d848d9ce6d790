//! The initiator side of login (RFC 7143 §6): security stage with AuthMethod None or
//! CHAP (one-way and mutual), operational negotiation, and the move to full feature
//! phase. Sans-IO: feed Login Responses, poll Login Requests, ask for the deadline.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;

use super::chap::{decode_binary, encode_binary, ChapAlgorithm, ChapConfig};
use super::LoginError;
use crate::pdu::{Isid, LoginRequest, LoginResponse, LoginStatus, Pdu, Stage};
use crate::serial::SerialNumber;
use crate::text::keys::{is_chap_key, parse_number};
use crate::text::pairs::{chunk_text, encode_pairs, TextAssembler};
use crate::text::{Negotiator, OperationalParams, Role};

/// Normal (I/O) or Discovery session (§13.21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// Everything a login needs to know.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// Required for Normal sessions, absent for Discovery.
    pub target_name: Option<String>,
    pub session_type: SessionType,
    pub isid: Isid,
    /// 0 to create a session; the old TSIH to reinstate or add a connection (§6.3).
    pub tsih: u16,
    pub cid: u16,
    pub itt: u32,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
    pub chap: Option<ChapConfig>,
    /// Our operational key values, offered in this order.
    pub operational: Vec<(&'static str, String)>,
    pub timeout: Duration,
}

impl LoginConfig {
    /// What open-iscsi's iscsid.conf offers by default (issue 2 §3).
    pub fn default_operational() -> Vec<(&'static str, String)> {
        vec![
            ("HeaderDigest", "None".into()),
            ("DataDigest", "None".into()),
            ("MaxConnections", "1".into()),
            ("InitialR2T", "No".into()),
            ("ImmediateData", "Yes".into()),
            ("MaxRecvDataSegmentLength", "262144".into()),
            ("MaxBurstLength", "16776192".into()),
            ("FirstBurstLength", "262144".into()),
            ("DefaultTime2Wait", "2".into()),
            ("DefaultTime2Retain", "0".into()),
            ("MaxOutstandingR2T", "1".into()),
            ("DataPDUInOrder", "Yes".into()),
            ("DataSequenceInOrder", "Yes".into()),
            ("ErrorRecoveryLevel", "0".into()),
        ]
    }

    /// Keys a Discovery session offers.
    pub fn discovery_operational(
        mrdsl: u32,
        header: &str,
        data: &str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("HeaderDigest", header.into()),
            ("DataDigest", data.into()),
            ("MaxRecvDataSegmentLength", mrdsl.to_string()),
            ("DefaultTime2Wait", "2".into()),
            ("DefaultTime2Retain", "0".into()),
        ]
    }
}

/// Result of a successful login.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub params: OperationalParams,
    pub tsih: u16,
    pub isid: Isid,
    pub cid: u16,
    /// CmdSN of the first command (login PDUs do not advance it, §6.3).
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    /// The CHAP algorithm used, if CHAP ran; and whether the target proved itself.
    pub chap: Option<ChapAlgorithm>,
    pub mutual: bool,
}

/// What a Login Response led to.
#[derive(Debug, Clone)]
pub enum LoginStep {
    /// More PDUs to exchange: poll for the next request.
    Continue,
    /// Full feature phase reached.
    Complete(Box<LoginOutcome>),
    /// Status class 1 (§11.13.5): log in at `address` instead (`host:port[,tpgt]`).
    Redirect { address: String, permanent: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Sent AuthMethod, awaiting the target's choice.
    AuthMethod,
    /// Sent CHAP_A, awaiting CHAP_A/I/C.
    ChapChallenge,
    /// Sent CHAP_N/R, awaiting success (and CHAP_N/R for mutual).
    ChapResult,
    /// Security done, waiting for the target to allow the transit to operational.
    SecurityTransit,
    /// Operational negotiation in progress.
    Operational,
    Done,
    Failed,
}

/// Limit on login round trips: a target that keeps the login going forever is hostile.
const MAX_ROUNDS: u32 = 32;
/// Limit on the text one login stage may gather across continued PDUs.
const MAX_LOGIN_TEXT: usize = 64 * 1024;
/// Login PDUs carry at most 8192 bytes of data (§6.1, default MaxRecvDataSegmentLength).
const LOGIN_SEGMENT: usize = 8192;

/// Initiator login state machine.
pub struct InitiatorLogin {
    cfg: LoginConfig,
    state: State,
    stage: Stage,
    negotiator: Negotiator,
    outq: VecDeque<Pdu>,
    assembler: TextAssembler,
    deadline: Instant,
    exp_stat_sn: SerialNumber,
    first_response: bool,
    tsih: u16,
    rounds: u32,
    chap_alg: Option<ChapAlgorithm>,
    our_challenge: Option<(u8, Vec<u8>)>,
    mutual_ok: bool,
    rng: Box<dyn RngCore + Send>,
    /// Warnings to show a person (short CHAP secrets).
    warnings: Vec<String>,
}

impl std::fmt::Debug for InitiatorLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorLogin")
            .field("state", &self.state)
            .field("stage", &self.stage)
            .finish()
    }
}

impl InitiatorLogin {
    /// Start a login; the first request is ready to poll. `rng` makes CHAP challenges.
    pub fn new(
        cfg: LoginConfig,
        now: Instant,
        rng: Box<dyn RngCore + Send>,
    ) -> Result<Self, LoginError> {
        let warnings = match &cfg.chap {
            Some(c) => c.validate()?,
            None => Vec::new(),
        };
        if cfg.session_type == SessionType::Normal && cfg.target_name.is_none() {
            return Err(LoginError::Protocol(
                "a Normal session needs a TargetName (RFC 7143 §13.4)".into(),
            ));
        }
        let discovery = cfg.session_type == SessionType::Discovery;
        let negotiator = Negotiator::new(Role::Initiator, discovery, &cfg.operational);
        let mut login = InitiatorLogin {
            deadline: now + cfg.timeout,
            exp_stat_sn: cfg.exp_stat_sn,
            tsih: cfg.tsih,
            cfg,
            state: State::AuthMethod,
            stage: Stage::Security,
            negotiator,
            outq: VecDeque::new(),
            assembler: TextAssembler::new(MAX_LOGIN_TEXT),
            first_response: false,
            rounds: 0,
            chap_alg: None,
            our_challenge: None,
            mutual_ok: false,
            rng,
            warnings,
        };
        let mut keys: Vec<(String, String)> =
            vec![("InitiatorName".into(), login.cfg.initiator_name.clone())];
        if let Some(a) = &login.cfg.initiator_alias {
            keys.push(("InitiatorAlias".into(), a.clone()));
        }
        let st = if discovery { "Discovery" } else { "Normal" };
        keys.push(("SessionType".into(), st.into()));
        if let Some(t) = &login.cfg.target_name {
            keys.push(("TargetName".into(), t.clone()));
        }
        let method = if login.cfg.chap.is_some() {
            "CHAP"
        } else {
            "None"
        };
        keys.push(("AuthMethod".into(), method.into()));
        // With AuthMethod=None we ask to move on at once; with CHAP the target cannot
        // let us transit before the exchange (§6.2 / §12).
        let transit = login.cfg.chap.is_none();
        login.queue(Stage::Security, transit, Stage::Operational, &keys);
        Ok(login)
    }

    /// Warnings about the configuration (e.g. short CHAP secrets).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The next Login Request to send.
    pub fn poll_transmit(&mut self) -> Option<Pdu> {
        self.outq.pop_front()
    }

    /// When the login gives up if no response arrives.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Call when the deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LoginError> {
        if now >= self.deadline && self.state != State::Done {
            self.state = State::Failed;
            return Err(LoginError::Timeout(self.cfg.timeout));
        }
        Ok(())
    }

    fn queue(&mut self, csg: Stage, transit: bool, nsg: Stage, keys: &[(String, String)]) {
        let text = encode_pairs(keys);
        let chunks = chunk_text(&text, LOGIN_SEGMENT);
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let last = i + 1 == n;
            self.outq.push_back(Pdu::LoginRequest(LoginRequest {
                // §11.12.2: while continuing (C=1), T must be 0.
                transit: transit && last,
                continue_: !last,
                csg,
                nsg: if transit && last { nsg } else { csg },
                version_max: 0,
                version_min: 0,
                isid: self.cfg.isid,
                tsih: self.tsih,
                itt: self.cfg.itt,
                cid: self.cfg.cid,
                cmd_sn: self.cfg.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                data: Bytes::from(chunk),
            }));
        }
    }

    fn protocol(&mut self, what: String) -> LoginError {
        self.state = State::Failed;
        LoginError::Protocol(what)
    }

    /// Feed any PDU that arrived during login.
    pub fn handle_pdu(&mut self, pdu: Pdu) -> Result<LoginStep, LoginError> {
        match pdu {
            Pdu::LoginResponse(r) => self.handle_response(r),
            other => Err(self.protocol(format!(
                "sent a {} during login; only Login Responses are allowed before the full feature phase (RFC 7143 §6)",
                other.opcode()
            ))),
        }
    }

    /// Feed a Login Response.
    pub fn handle_response(&mut self, rsp: LoginResponse) -> Result<LoginStep, LoginError> {
        if matches!(self.state, State::Done | State::Failed) {
            return Err(
                self.protocol("sent a Login Response after the login ended (RFC 7143 §6)".into())
            );
        }
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(self.protocol(format!(
                "kept the login going for over {MAX_ROUNDS} round trips"
            )));
        }
        if rsp.itt != self.cfg.itt {
            return Err(self.protocol(format!(
                "Login Response carries ITT {:#x}, not the {:#x} of our request (RFC 7143 §11.13)",
                rsp.itt, self.cfg.itt
            )));
        }
        // Status first: a failure response may carry no valid stage fields.
        if !rsp.status.is_success() {
            self.state = State::Failed;
            if rsp.status.is_redirect() {
                let pairs = crate::text::parse_pairs(&rsp.data).unwrap_or_default();
                if let Some((_, addr)) = pairs.iter().find(|(k, _)| k == "TargetAddress") {
                    return Ok(LoginStep::Redirect {
                        address: addr.clone(),
                        permanent: rsp.status == LoginStatus::TARGET_MOVED_PERMANENTLY,
                    });
                }
                return Err(LoginError::Protocol(
                    "redirected the login without a TargetAddress key (RFC 7143 §11.13.5)".into(),
                ));
            }
            return Err(LoginError::Status { status: rsp.status });
        }
        // §11.13.4: version-active must be within what we offered (only 0 exists).
        if rsp.version_active != 0 {
            return Err(self.protocol(format!(
                "answered with iSCSI version {} but we offered only 0 (RFC 7143 §11.13.4)",
                rsp.version_active
            )));
        }
        if rsp.isid != self.cfg.isid {
            return Err(
                self.protocol("Login Response ISID differs from ours (RFC 7143 §11.13)".into())
            );
        }
        if rsp.csg != self.stage {
            return Err(self.protocol(format!(
                "Login Response is for stage {:?}, we are in {:?} (RFC 7143 §11.13.3)",
                rsp.csg, self.stage
            )));
        }
        // StatSN: the first response sets it (§11.13), each later one must follow.
        if self.first_response && rsp.stat_sn != self.exp_stat_sn {
            return Err(self.protocol(format!(
                "Login Response StatSN {} where {} was expected (RFC 7143 §4.2.2.2)",
                rsp.stat_sn, self.exp_stat_sn
            )));
        }
        self.first_response = true;
        self.exp_stat_sn = rsp.stat_sn.next();
        self.assembler.push(&rsp.data)?;
        if rsp.continue_ {
            // §6.2 / §11.13.2: more text follows; ask for it with an empty request.
            self.queue(self.stage, false, self.stage, &[]);
            return Ok(LoginStep::Continue);
        }
        let pairs = self.assembler.finish()?;
        if rsp.transit && rsp.tsih != 0 {
            self.tsih = rsp.tsih;
        }
        match self.state {
            State::AuthMethod => self.on_auth_method(&rsp, &pairs),
            State::ChapChallenge => self.on_chap_challenge(&pairs),
            State::ChapResult => self.on_chap_result(&rsp, &pairs),
            State::SecurityTransit => self.on_security_transit(&rsp, &pairs),
            State::Operational => self.on_operational(&rsp, &pairs),
            State::Done | State::Failed => unreachable!("checked above"),
        }
    }

    fn on_auth_method(
        &mut self,
        rsp: &LoginResponse,
        pairs: &[(String, String)],
    ) -> Result<LoginStep, LoginError> {
        let method = pairs
            .iter()
            .find(|(k, _)| k == "AuthMethod")
            .map(|(_, v)| v.as_str());
        let want_chap = self.cfg.chap.is_some();
        match method {
            Some("CHAP") if want_chap => {
                let offer = self.cfg.chap.as_ref().map(ChapConfig::offer).unwrap_or_default();
                self.state = State::ChapChallenge;
                self.queue(Stage::Security, false, Stage::Security, &[("CHAP_A".into(), offer)]);
                Ok(LoginStep::Continue)
            }
            Some("None") if !want_chap => self.on_security_transit(rsp, pairs),
            // A target that needs no authentication may skip AuthMethod entirely.
            None if !want_chap => self.on_security_transit(rsp, pairs),
            None if rsp.transit => Err(self.auth_fail(
                "we require CHAP but the target let us in without authentication; refusing (set no CHAP to allow this)"
                    .into(),
            )),
            None => Err(self.protocol("did not answer AuthMethod (RFC 7143 §12)".into())),
            Some("Reject") | Some("NotUnderstood") | Some("Irrelevant") => Err(self.auth_fail(format!(
                "the target refused AuthMethod={} (answered {}); check whether it requires CHAP",
                if want_chap { "CHAP" } else { "None" },
                method.unwrap_or_default()
            ))),
            Some(other) => Err(self.auth_fail(format!(
                "the target chose AuthMethod={other}, which we did not offer; {}",
                if want_chap { "it does not do CHAP" } else { "it requires authentication: configure CHAP" }
            ))),
        }
    }

    fn auth_fail(&mut self, msg: String) -> LoginError {
        self.state = State::Failed;
        LoginError::Auth(msg)
    }

    fn on_chap_challenge(&mut self, pairs: &[(String, String)]) -> Result<LoginStep, LoginError> {
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let Some(chap) = self.cfg.chap.clone() else {
            return Err(self.protocol("CHAP state without CHAP configuration".into()));
        };
        let a = get("CHAP_A").ok_or_else(|| {
            self.protocol("CHAP challenge without CHAP_A (RFC 7143 §12.1.3)".into())
        })?;
        let alg = parse_number(&a)
            .and_then(|n| u8::try_from(n).ok())
            .map(ChapAlgorithm)
            .filter(|alg| chap.algorithms.contains(alg));
        let Some(alg) = alg else {
            return Err(self.auth_fail(format!(
                "the target chose CHAP_A={a}, which we did not offer ({})",
                chap.offer()
            )));
        };
        let i = get("CHAP_I").ok_or_else(|| {
            self.protocol("CHAP challenge without CHAP_I (RFC 7143 §12.1.3)".into())
        })?;
        let id = parse_number(&i)
            .and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| {
                self.protocol(format!(
                    "CHAP_I={i} is not a number from 0 to 255 (RFC 7143 §12.1.3)"
                ))
            })?;
        let c = get("CHAP_C").ok_or_else(|| {
            self.protocol("CHAP challenge without CHAP_C (RFC 7143 §12.1.3)".into())
        })?;
        let challenge = decode_binary(&c).map_err(|e| {
            self.state = State::Failed;
            LoginError::Chap(e)
        })?;
        self.chap_alg = Some(alg);
        let response = alg.response(id, &chap.initiator.secret, &challenge);
        let mut keys = vec![
            ("CHAP_N".to_string(), chap.initiator.user.clone()),
            ("CHAP_R".to_string(), encode_binary(&response)),
        ];
        if chap.target.is_some() {
            // Our challenge must differ from the target's (§9.2.1 reflection): draw again
            // in the astronomically unlikely case it does not.
            let mut ours = vec![0u8; alg.digest_len().max(16)];
            loop {
                self.rng.fill_bytes(&mut ours);
                if ours != challenge {
                    break;
                }
            }
            let mut idb = [0u8; 1];
            self.rng.fill_bytes(&mut idb);
            keys.push(("CHAP_I".into(), idb[0].to_string()));
            keys.push(("CHAP_C".into(), encode_binary(&ours)));
            self.our_challenge = Some((idb[0], ours));
        }
        self.state = State::ChapResult;
        self.queue(Stage::Security, true, Stage::Operational, &keys);
        Ok(LoginStep::Continue)
    }

    fn on_chap_result(
        &mut self,
        rsp: &LoginResponse,
        pairs: &[(String, String)],
    ) -> Result<LoginStep, LoginError> {
        let chap = self.cfg.chap.clone();
        if let (Some(chap), Some((id, ours))) = (chap, self.our_challenge.clone()) {
            let Some(target) = chap.target.as_ref() else {
                return Err(self.protocol("mutual CHAP state without target credentials".into()));
            };
            let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let (Some(n), Some(r)) = (get("CHAP_N"), get("CHAP_R")) else {
                return Err(self.auth_fail(
                    "the target did not answer our CHAP challenge (no CHAP_N/CHAP_R): it cannot prove its identity; \
                     check the target's outgoing (mutual) account"
                        .into(),
                ));
            };
            if n != target.user {
                return Err(self.auth_fail(format!(
                    "the target named itself {n:?} in CHAP_N, but we expect {:?}: check the mutual CHAP user",
                    target.user
                )));
            }
            let got = decode_binary(&r).map_err(|e| {
                self.state = State::Failed;
                LoginError::Chap(e)
            })?;
            let alg = self.chap_alg.unwrap_or(ChapAlgorithm::MD5);
            if got != alg.response(id, &target.secret, &ours) {
                return Err(self.auth_fail(
                    "the target's CHAP response is wrong: it does not know the mutual secret; check the mutual CHAP secret"
                        .into(),
                ));
            }
            self.mutual_ok = true;
        }
        self.state = State::SecurityTransit;
        let rest: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| !is_chap_key(k))
            .cloned()
            .collect();
        self.on_security_transit(rsp, &rest)
    }

    fn on_security_transit(
        &mut self,
        rsp: &LoginResponse,
        pairs: &[(String, String)],
    ) -> Result<LoginStep, LoginError> {
        // Keys a target may declare in the security stage (TargetAlias, TPGT).
        let rest: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| !is_chap_key(k) && k != "AuthMethod")
            .cloned()
            .collect();
        self.negotiator.handle(&rest)?;
        if !rsp.transit {
            // The target wants another round in the security stage; ask to move on.
            self.state = State::SecurityTransit;
            self.queue(Stage::Security, true, Stage::Operational, &[]);
            return Ok(LoginStep::Continue);
        }
        match rsp.nsg {
            Stage::Operational => {
                self.stage = Stage::Operational;
                self.state = State::Operational;
                // Offer in the order the configuration lists the keys.
                let order: Vec<&str> = self.cfg.operational.iter().map(|(k, _)| *k).collect();
                let offer = self.negotiator.offer(&order);
                self.queue(Stage::Operational, true, Stage::FullFeature, &offer);
                Ok(LoginStep::Continue)
            }
            // §6.3: skipping the operational stage is allowed when defaults suffice.
            Stage::FullFeature => self.complete(rsp),
            Stage::Security => {
                Err(self
                    .protocol("transit to the security stage from itself (RFC 7143 §6.3)".into()))
            }
        }
    }

    fn on_operational(
        &mut self,
        rsp: &LoginResponse,
        pairs: &[(String, String)],
    ) -> Result<LoginStep, LoginError> {
        let replies = self.negotiator.handle(pairs)?;
        if rsp.transit {
            if rsp.nsg != Stage::FullFeature {
                return Err(self.protocol(format!(
                    "operational stage transits to {:?}, only the full feature phase may follow (RFC 7143 §6.3)",
                    rsp.nsg
                )));
            }
            return self.complete(rsp);
        }
        let done = !self.negotiator.awaiting_answers();
        self.queue(Stage::Operational, done, Stage::FullFeature, &replies);
        Ok(LoginStep::Continue)
    }

    fn complete(&mut self, rsp: &LoginResponse) -> Result<LoginStep, LoginError> {
        if rsp.tsih == 0 {
            return Err(self.protocol("final Login Response has TSIH 0 (RFC 7143 §11.13.6)".into()));
        }
        if self.cfg.chap.as_ref().is_some_and(|c| c.target.is_some()) && !self.mutual_ok {
            return Err(self.auth_fail("the target skipped mutual CHAP authentication".into()));
        }
        self.state = State::Done;
        Ok(LoginStep::Complete(Box::new(LoginOutcome {
            params: self.negotiator.params(),
            tsih: rsp.tsih,
            isid: self.cfg.isid,
            cid: self.cfg.cid,
            cmd_sn: self.cfg.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            exp_cmd_sn: rsp.exp_cmd_sn,
            max_cmd_sn: rsp.max_cmd_sn,
            chap: self.chap_alg,
            mutual: self.mutual_ok,
        })))
    }
}

#[cfg(test)]
mod tests;
