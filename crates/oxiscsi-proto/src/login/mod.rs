//! The login phase (RFC 7143 §6, §11.12, §11.13), CHAP (§12.1.3) and login errors.

pub mod chap;
pub mod initiator;
pub mod target;

use std::time::Duration;

pub use chap::{ChapAlgorithm, ChapConfig, ChapCredentials, ChapError};
pub use initiator::{InitiatorLogin, LoginConfig, LoginOutcome, LoginStep, SessionType};
pub use target::{
    Admission, Directory, TargetChap, TargetLogin, TargetLoginConfig, TargetLoginError,
    TargetLoginOutcome, TargetLoginStep,
};

use crate::pdu::LoginStatus;
use crate::text::{NegotiationError, TextError};

/// Why a login did not reach the full feature phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The target answered with a non-success status (§11.13.5).
    #[error("{status}: {}", status.advice())]
    Status { status: LoginStatus },
    #[error("no login response within {0:?}: the target is not answering (RFC 7143 §6; raise the login timeout if it is just slow)")]
    Timeout(Duration),
    #[error("{0}")]
    Negotiation(#[from] NegotiationError),
    #[error("CHAP: {0}")]
    Chap(#[from] ChapError),
    #[error("{0}")]
    Text(#[from] TextError),
    /// The target broke a login rule; the string names the rule and section.
    #[error("target violated the login protocol: {0}")]
    Protocol(String),
    /// Authentication of the target (mutual CHAP) failed, or it picked something we did
    /// not offer.
    #[error("authentication failure: {0}")]
    Auth(String),
}

impl LoginError {
    /// True when retrying with the same settings cannot help (bad credentials, unknown
    /// target), as opposed to a timeout or a busy target.
    pub fn is_permanent(&self) -> bool {
        match self {
            LoginError::Status { status } => status.class == 2,
            LoginError::Timeout(_) => false,
            _ => true,
        }
    }

    /// True for authentication and authorization failures.
    pub fn is_auth(&self) -> bool {
        match self {
            LoginError::Status { status } => {
                *status == LoginStatus::AUTHENTICATION_FAILURE
                    || *status == LoginStatus::AUTHORIZATION_FAILURE
            }
            LoginError::Auth(_) | LoginError::Chap(_) => true,
            _ => false,
        }
    }
}
