//! oxiscsid's control protocol, version 1: JSON over a Unix stream socket.
//!
//! open-iscsi's iscsiadm talks to iscsid in C structs (`iscsiadm_req_t`), so an
//! iscsiadm of one version cannot drive an iscsid of another, and nothing but iscsiadm
//! can drive it at all. Here every request and answer is one line of JSON, versioned,
//! so any program can drive the daemon without parsing text.
//!
//! ```text
//! socket   RUNDIR/oxiscsid.sock (mode 0600: root, or the daemon's user)
//! request  {"version":1,"op":"login","target":"iqn...","address":"10.0.0.1","port":3260,"tpgt":1,"iface":"default"}\n
//! answer   {"version":1,"ok":true,"result":...}\n
//!          {"version":1,"ok":false,"code":15,"error":"session exists ..."}\n
//! ```
//!
//! Requests on one connection are answered in order; a client may send several. A
//! request line is at most [`MAX_LINE`] bytes and must arrive within
//! [`REQUEST_DEADLINE`] of the previous answer, else the daemon closes the connection.
//! `code` is iscsiadm's exit code for the failure (open-iscsi's `iscsi_err.h`), so a CLI
//! can exit with it. Unknown fields are ignored; a daemon answers a request with a
//! higher `version` with code 7 and its own version in the message.
//!
//! Operations (`op`):
//! - `hello` -> `{"daemon":"oxiscsid","version":"0.1.0","protocol":1,"pid":N}`
//! - `login` {target, address, port, tpgt, iface} -> `{"sids":[..]}`: log in to the
//!   node record (read by the daemon from its DB), `node.session.nr_sessions` sessions;
//!   code 15 when they all exist already.
//! - `logout` {sid, force?} -> `{}`: flush, detach the LUN devices, log out; refused
//!   (code 28, busy) while a device is open or mounted unless `force`; code 2 when no
//!   session has that sid.
//! - `sessions` -> `[Session]`; `session` {sid} -> `Session`.
//! - `stats` {sid} -> [`Stats`]; `rescan` {sid} -> `Session` (LUNs added/removed,
//!   partition tables re-read; each LUN lists its `partitions`).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub const PROTOCOL_VERSION: u32 = 1;
/// The longest request or answer line accepted.
pub const MAX_LINE: usize = 1 << 20;
/// How long the daemon waits for the next request line on a connection.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// A node record's identity (its place in the DB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    pub target: String,
    pub address: String,
    pub port: u16,
    pub tpgt: i32,
    pub iface: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello,
    Login(NodeRef),
    Logout {
        sid: u32,
        #[serde(default)]
        force: bool,
    },
    Sessions,
    Session {
        sid: u32,
    },
    Stats {
        sid: u32,
    },
    Rescan {
        sid: u32,
    },
}

/// A request line: the version and the operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// An answer line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub daemon: String,
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResult {
    pub sids: Vec<u32>,
}

/// The iface a session runs over.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IfaceView {
    pub name: String,
    pub transport: String,
    pub initiator_name: String,
    pub ipaddress: String,
    pub hwaddress: String,
    pub netdev: String,
}

/// What login agreed (RFC 7143 §13 keys, as `iscsiadm -m session -P 2` shows them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Negotiated {
    pub header_digest: String,
    pub data_digest: String,
    pub max_recv_data_segment_length: u32,
    pub max_xmit_data_segment_length: u32,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
}

/// One LUN of a session and where it appears on the host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LunView {
    pub lun: u16,
    pub peripheral_type: u8,
    pub vendor: String,
    pub product: String,
    pub block_size: u32,
    pub blocks: u64,
    /// The FUSE file serving the LUN (empty when not attached).
    pub file: String,
    /// The loop device (`/dev/loopN`), empty when none is attached.
    pub device: String,
    /// The stable link (`RUNDIR/by-path/ip-...-lun-N`).
    pub by_path: String,
    /// The device's partitions (`/dev/loopNpM`), each also linked as `<by_path>-partM`.
    #[serde(default)]
    pub partitions: Vec<String>,
    /// "running", or why the LUN has no device.
    pub state: String,
}

/// One session held by the daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionView {
    pub sid: u32,
    pub node: Option<NodeRef>,
    pub target: String,
    /// Where the session runs now (after redirects).
    pub current_portal: String,
    pub isid: String,
    pub tsih: u16,
    pub iface: IfaceView,
    /// open-iscsi's words: "LOGGED IN" or "FAILED".
    pub connection_state: String,
    /// "LOGGED_IN" or "FAILED".
    pub session_state: String,
    /// Why the session failed, if it has.
    pub failure: Option<String>,
    /// Seconds since the epoch of login and (if any) of the failure.
    pub logged_in_at: u64,
    pub failed_at: Option<u64>,
    pub negotiated: Negotiated,
    pub luns: Vec<LunView>,
    /// The node's timeouts as read at login (seconds), for `-P 2`.
    pub timeouts: Vec<(String, String)>,
}

/// `iscsiadm -m session -s` counters ("iSCSI SNMP").
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub txdata_octets: u64,
    pub rxdata_octets: u64,
    pub noptx_pdus: u64,
    pub scsicmd_pdus: u64,
    pub tmfcmd_pdus: u64,
    pub login_pdus: u64,
    pub text_pdus: u64,
    pub dataout_pdus: u64,
    pub logout_pdus: u64,
    pub snack_pdus: u64,
    pub noprx_pdus: u64,
    pub scsirsp_pdus: u64,
    pub tmfrsp_pdus: u64,
    pub textrsp_pdus: u64,
    pub datain_pdus: u64,
    pub logoutrsp_pdus: u64,
    pub r2t_pdus: u64,
    pub async_pdus: u64,
    pub rjt_pdus: u64,
    pub digest_err: u64,
    pub timeout_err: u64,
}

/// A failed call: iscsiadm's exit code and the daemon's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub code: i32,
    pub message: String,
}

/// iscsiadm's "can not connect to iscsid" (ISCSI_ERR_ISCSID_NOTCONN).
pub const CODE_NOT_CONNECTED: i32 = 20;

/// A client of the control socket. Every call has a deadline.
pub struct Client {
    stream: BufReader<UnixStream>,
}

impl Client {
    /// Connect to the daemon's socket.
    pub async fn connect(path: &Path) -> Result<Client, CallError> {
        let not_conn = |e: std::io::Error| CallError {
            code: CODE_NOT_CONNECTED,
            message: format!(
                "can not connect to oxiscsid at {}: {e}; start it with `oxiscsid` (same --root)",
                path.display()
            ),
        };
        let s = tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(path))
            .await
            .map_err(|_| not_conn(std::io::ErrorKind::TimedOut.into()))?
            .map_err(not_conn)?;
        Ok(Client {
            stream: BufReader::new(s),
        })
    }

    /// Send one request and wait for its answer, at most `deadline`.
    pub async fn call(
        &mut self,
        request: Request,
        deadline: Duration,
    ) -> Result<serde_json::Value, CallError> {
        let lost = |what: String| CallError {
            code: CODE_NOT_CONNECTED,
            message: format!("lost the connection to oxiscsid: {what}"),
        };
        let mut line = serde_json::to_string(&Envelope {
            version: PROTOCOL_VERSION,
            request,
        })
        .map_err(|e| lost(e.to_string()))?;
        line.push('\n');
        let io = async {
            self.stream.get_mut().write_all(line.as_bytes()).await?;
            let mut answer = String::new();
            let n = (&mut self.stream)
                .take(MAX_LINE as u64)
                .read_line(&mut answer)
                .await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection",
                ));
            }
            Ok(answer)
        };
        let answer = match tokio::time::timeout(deadline, io).await {
            Err(_) => {
                return Err(CallError {
                    code: 8,
                    message: format!("oxiscsid did not answer within {} s", deadline.as_secs()),
                })
            }
            Ok(Err(e)) => return Err(lost(e.to_string())),
            Ok(Ok(a)) => a,
        };
        let a: Answer =
            serde_json::from_str(&answer).map_err(|e| lost(format!("unreadable answer ({e})")))?;
        if a.ok {
            Ok(a.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(CallError {
                code: a.code.unwrap_or(1),
                message: a.error.unwrap_or_else(|| "failed".into()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_flat_json_with_a_version() {
        let e = Envelope {
            version: 1,
            request: Request::Logout {
                sid: 3,
                force: false,
            },
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s, r#"{"version":1,"op":"logout","sid":3,"force":false}"#);
        let back: Envelope =
            serde_json::from_str(r#"{"op":"logout","sid":3,"version":1,"extra":true}"#).unwrap();
        assert!(matches!(
            back.request,
            Request::Logout {
                sid: 3,
                force: false
            }
        ));
        let login: Envelope = serde_json::from_str(
            r#"{"version":1,"op":"login","target":"iqn.x:y","address":"::1","port":3260,"tpgt":1,"iface":"default"}"#,
        )
        .unwrap();
        assert!(matches!(
            login.request,
            Request::Login(NodeRef { port: 3260, .. })
        ));
    }
}
