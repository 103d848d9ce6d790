//! The full feature phase (RFC 7143 §4, §7, §11) of an initiator connection at
//! ErrorRecoveryLevel 0, plus SendTargets parsing (§13.3, Appendix C).
//!
//! Modules: [`window`] (CmdSN window), [`task`] (task table entries, Data-Out plans,
//! Data-In reassembly), [`tags`] (the table keyed by our own task tags), [`timers`] (the deadline table), [`error`] (connection- and
//! task-scope errors), [`initiator`] (the state machine), [`discovery`].

pub mod discovery;
pub mod error;
pub mod initiator;
pub mod stats;
pub mod tags;
pub mod target;
pub mod task;
pub mod timers;
pub mod window;

pub use discovery::{parse_send_targets, DiscoveredTarget, Portal};
pub use error::{ProtocolError, TaskError};
pub use initiator::{ConnectionConfig, Event, InitiatorConnection, TaskId};
pub use stats::ConnStats;
pub use target::{ScsiOutcome, ScsiTask, TargetConfig, TargetConnection, TargetEvent};
pub use task::{Command, Residual, ScsiResult};
