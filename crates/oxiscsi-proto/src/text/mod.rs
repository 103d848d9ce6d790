//! Text key=value data (RFC 7143 §6.1, §6.2) and the negotiation rules of §13.
//!
//! - [`pairs`]: parsing and encoding of NUL-delimited `key=value` data, and reassembly
//!   of text that spans several PDUs (C bit, §6.2);
//! - [`keys`]: every key of §13 with its type, range, default and phase;
//! - [`negotiate`]: the result functions (list, min/max, AND/OR, declarative) and a
//!   [`Negotiator`] that either side of a connection drives.

pub mod keys;
pub mod negotiate;
pub mod pairs;

pub use keys::{KeyDef, KeyKind, KEYS};
pub use negotiate::{NegotiationError, Negotiator, OperationalParams, Role};
pub use pairs::{encode_pairs, parse_pairs, TextAssembler, TextError};
