//! oxiscsi-proto: the iSCSI protocol (RFC 7143) as pure state machines.
//!
//! Nothing here does I/O or reads a clock. Callers feed received bytes and the current
//! `Instant`, and poll for bytes to send, the next deadline and events — the shape of
//! quinn-proto. The same PDU codec, text negotiation and CHAP serve the initiator here
//! and the target that is built on this crate.
//!
//! Layers:
//! - [`pdu`]: PDU formats (§11), framing, digests (§12.1);
//! - [`text`]: key=value text (§6, §13) and the negotiation rules;
//! - [`login`]: the login phase (§6) incl. CHAP (§12.1.3) and status codes (§11.13.5);
//! - [`session`]: the full feature phase of an initiator connection (§4, §7, §11);
//! - [`serial`]: RFC 1982 serial arithmetic.
//!
//! Deliberately not implemented yet (see README, "Not implemented"): ErrorRecoveryLevel 1
//! and 2 (SNACK, connection recovery), multiple connections per session, markers (removed
//! by RFC 7143), SRP/SPKM/KRB5 authentication.

#![forbid(unsafe_code)]

#[macro_use]
mod macros;

pub mod digest;
#[doc(hidden)]
pub mod fuzzing;
pub mod login;
pub mod pdu;
pub mod serial;
pub mod session;
pub mod text;

pub use digest::Digest;
pub use pdu::{Framer, Pdu};
pub use serial::SerialNumber;
