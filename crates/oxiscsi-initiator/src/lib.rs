//! oxiscsi-initiator: a user-space iSCSI initiator on tokio.
//!
//! [`Session::connect`] logs in (following redirects) and spawns a driver task that
//! owns the socket and the sans-IO [`oxiscsi_proto::session::InitiatorConnection`]. The
//! [`Session`] handle is cheap to clone; many commands may be in flight at once up to
//! the queue depth and the target's command window. [`discover`] runs a SendTargets
//! discovery session. [`Poller`] is the same session driven by the thread that owns
//! it, without a task or a runtime after login (libiscsi's event-loop shape).

mod config;
mod discovery;
mod driver;
mod error;
mod limits;
pub mod ops;
// epoll and timerfd, as the session's deadlines (`time`) use on Linux.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod poller;
mod queue;
mod rx;
mod session;
mod sock;
pub mod time;
mod transport;
mod tx;
mod url;

pub use config::{default_initiator_name, DigestChoice, SessionConfig, SourceBind};
pub use discovery::{discover, discover_with};
pub use error::Error;
pub use limits::raise_fd_limit;
pub use oxiscsi_proto as proto;
pub use oxiscsi_scsi as scsi;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub use poller::Poller;
pub use queue::{Completion, Queue, Rejected};
pub use session::{Pending, Session, SessionInfo};
pub use url::{IscsiUrl, UrlError};

/// A LUN number as used in URLs and the API (single-level addressing).
pub type LunNumber = u16;
