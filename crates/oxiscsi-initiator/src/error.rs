//! The initiator library's error: one enum whose messages say what happened and what
//! to do.

use oxiscsi_proto::login::LoginError;
use oxiscsi_proto::pdu::ScsiStatus;
use oxiscsi_proto::session::{ProtocolError, TaskError};
use oxiscsi_scsi::Sense;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "cannot connect to {portal}: {source}; check the address and that the target is running"
    )]
    Connect {
        portal: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {portal}: no answer within {secs} s; check the address, routes and firewalls")]
    ConnectTimeout { portal: String, secs: u64 },
    #[error("cannot bind the connection to {portal} to {what}: {source}; check the iface settings (iface.ipaddress must be an address of this host, iface.net_ifacename an existing interface)")]
    Bind {
        portal: String,
        what: String,
        source: std::io::Error,
    },
    #[error("login to {target} at {portal} failed: {source}")]
    Login {
        target: String,
        portal: String,
        source: LoginError,
    },
    #[error("login to {target} redirected more than {hops} times; last address {last}")]
    TooManyRedirects {
        target: String,
        hops: u32,
        last: String,
    },
    #[error("connection to {portal} failed: {source}")]
    Protocol {
        portal: String,
        source: ProtocolError,
    },
    #[error("{0}")]
    Task(#[from] TaskError),
    /// The command ended with a SCSI status other than GOOD.
    #[error("SCSI command failed with {}", describe_scsi(*status, sense.as_ref()))]
    Scsi {
        status: ScsiStatus,
        sense: Option<Sense>,
    },
    /// A [`crate::Queue`] or [`crate::Poller`] submission found every command slot of the session in use.
    #[error("all {depth} command slots of the session are in use: wait for a completion (Queue::next, Poller::service) before submitting more, or raise the session's queue depth")]
    QueueFull { depth: usize },
    #[error("session closed: {0}")]
    Closed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad data from the target: {0}")]
    BadData(String),
}

fn describe_scsi(status: ScsiStatus, sense: Option<&Sense>) -> String {
    match sense {
        Some(s) => format!("{status}: {s}"),
        None => format!("{status}"),
    }
}

impl Error {
    /// True for login and authentication failures.
    pub fn is_login(&self) -> bool {
        matches!(self, Error::Login { .. } | Error::TooManyRedirects { .. })
    }

    /// True for failures to reach the target or of the connection.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::ConnectTimeout { .. }
                | Error::Bind { .. }
                | Error::Protocol { .. }
                | Error::Closed(_)
                | Error::Task(TaskError::ConnectionLost(_))
        )
    }

    /// The sense data of a failed SCSI command.
    pub fn sense(&self) -> Option<&Sense> {
        match self {
            Error::Scsi { sense, .. } => sense.as_ref(),
            _ => None,
        }
    }
}
