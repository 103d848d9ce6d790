//! Errors of the full feature phase, kept apart by scope (STYLE §9): a
//! [`ProtocolError`] ends the connection (and at ErrorRecoveryLevel 0 the session);
//! a [`TaskError`] ends one task.

use std::time::Duration;

use crate::pdu::codec::FrameError;
use crate::pdu::{AsyncEvent, Opcode, RejectReason};
use crate::serial::SerialNumber;

/// The target broke the protocol, or the connection is otherwise unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Decode(#[from] FrameError),
    #[error("{0}")]
    Malformed(#[from] crate::pdu::DecodeError),
    #[error("target sent a {opcode} for ITT {itt:#010x}, which names no task of ours (RFC 7143 §11.2.1.8)")]
    UnknownItt { opcode: Opcode, itt: u32 },
    #[error("target's {opcode} carries StatSN {got} where {expected} was expected: status was lost (RFC 7143 §4.2.2.2)")]
    StatSnGap {
        opcode: Opcode,
        expected: SerialNumber,
        got: SerialNumber,
    },
    #[error("Data-In for ITT {itt:#010x} has DataSN {got} where {expected} was expected (RFC 7143 §11.7.5)")]
    DataSnGap { itt: u32, expected: u32, got: u32 },
    #[error("{opcode} for ITT {itt:#010x}: {what} (RFC 7143 {rule})")]
    BadTransfer {
        opcode: Opcode,
        itt: u32,
        what: String,
        rule: &'static str,
    },
    #[error("target sent a {opcode} in the full feature phase where it is not allowed: {what} (RFC 7143 {rule})")]
    Unexpected {
        opcode: Opcode,
        what: &'static str,
        rule: &'static str,
    },
    #[error("no NOP-In answered our ping within {0:?}: the target or the path is dead (RFC 7143 §11.18)")]
    NopTimeout(Duration),
    #[error("no Logout Response within {0:?} (RFC 7143 §11.14)")]
    LogoutTimeout(Duration),
    #[error("task management (ABORT TASK for ITT {itt:#010x}) got no response within {timeout:?}")]
    AbortTimeout { itt: u32, timeout: Duration },
    #[error("target announced: {event} (Async Message, RFC 7143 §11.9)")]
    TargetDropped { event: AsyncEvent },
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("target rejected our {opcode} with reason {reason:?}: {reason} (RFC 7143 §11.17)")]
    Rejected {
        opcode: Opcode,
        reason: RejectReason,
    },
}

/// Why one task did not complete with a SCSI status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("aborted by task management")]
    Aborted,
    #[error("no response within {0:?}; the task was aborted")]
    Timeout(Duration),
    #[error("target rejected the command: {0} (RFC 7143 §11.17)")]
    Rejected(RejectReason),
    #[error("target reported an iSCSI target failure for the command (service response 0x01, RFC 7143 §11.4.3)")]
    TargetFailure,
    #[error("connection lost before the command completed: {0}")]
    ConnectionLost(String),
    #[error("the session is logging out or logged out; command not sent")]
    LoggingOut,
    #[error("command too large: {0}")]
    TooLarge(String),
}
