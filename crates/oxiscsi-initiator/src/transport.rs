//! TCP connect and the login phase over a socket, following redirects. Every read has
//! the login deadline.

use std::time::Instant;

use bytes::BytesMut;
use oxiscsi_proto::login::{
    InitiatorLogin, LoginConfig, LoginError, LoginOutcome, LoginStep, SessionType,
};
use oxiscsi_proto::pdu::{Framer, Isid};
use oxiscsi_proto::serial::SerialNumber;
use oxiscsi_proto::session::Portal;
use oxiscsi_proto::Digest;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{SessionConfig, SourceBind};
use crate::error::Error;
use crate::time::{run_until, OneShot, Timer};

/// A logged-in connection: the socket, what login agreed, and bytes already read past
/// the final Login Response.
pub(crate) struct LoggedIn {
    pub stream: TcpStream,
    pub outcome: LoginOutcome,
    pub leftover: BytesMut,
    pub portal: String,
    pub login_pdus: u64,
}

pub(crate) async fn connect(
    portal: &str,
    bind: &SourceBind,
    deadline: Instant,
) -> Result<TcpStream, Error> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let secs = remaining.as_secs().max(1);
    let fut = async {
        if bind.is_unbound() {
            TcpStream::connect(portal.to_string()).await
        } else {
            connect_bound(portal, bind).await
        }
    };
    let stream = match crate::time::timeout_at(deadline, fut).await? {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::AddrNotAvailable || bind_failed(&e) => {
            return Err(Error::Bind {
                portal: portal.into(),
                what: describe_bind(bind),
                source: e,
            })
        }
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(Error::Connect {
                portal: portal.into(),
                source,
            })
        }
        Err(_) => {
            return Err(Error::ConnectTimeout {
                portal: portal.into(),
                secs,
            })
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Errors from `bind`/`SO_BINDTODEVICE` are tagged so they read as binding failures.
fn bind_failed(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|i| i.to_string().starts_with("bind "))
}

fn describe_bind(b: &SourceBind) -> String {
    match (&b.address, &b.device) {
        (Some(a), Some(d)) => format!("address {a} on {d}"),
        (Some(a), None) => format!("address {a}"),
        (None, Some(d)) => format!("interface {d}"),
        (None, None) => "nothing".into(),
    }
}

/// Connect from a given source address and/or interface (open-iscsi iface binding):
/// try each resolved address of the portal in the source address's family.
async fn connect_bound(portal: &str, bind: &SourceBind) -> std::io::Result<TcpStream> {
    let tag =
        |what: &str, e: std::io::Error| std::io::Error::new(e.kind(), format!("bind {what}: {e}"));
    let mut last = None;
    for addr in tokio::net::lookup_host(portal).await? {
        if let Some(src) = bind.address {
            if src.is_ipv4() != addr.is_ipv4() {
                continue;
            }
        }
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(dev) = &bind.device {
            sock.bind_device(Some(dev.as_bytes()))
                .map_err(|e| tag(&format!("to interface {dev}"), e))?;
        }
        if let Some(src) = bind.address {
            sock.bind(std::net::SocketAddr::new(src, 0))
                .map_err(|e| tag(&format!("to {src}"), e))?;
        }
        match sock.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("bind: no address of {portal} in the source address's family"),
        )
    }))
}

/// Log in at `portal`, following up to `max_redirects` redirects.
pub(crate) async fn login(
    cfg: &SessionConfig,
    session_type: SessionType,
    isid: Isid,
) -> Result<LoggedIn, Error> {
    let mut portal = cfg.portal.clone();
    let target_label = if session_type == SessionType::Discovery {
        "discovery".to_string()
    } else {
        cfg.target.clone()
    };
    let mut hops = 0;
    loop {
        let deadline = Instant::now() + cfg.login_timeout;
        let mut stream = connect(&portal, &cfg.bind, deadline).await?;
        let lc = login_config(cfg, session_type, isid);
        match login_on(&mut stream, lc).await {
            Ok(LoginResult::Done(outcome, leftover, login_pdus)) => {
                return Ok(LoggedIn {
                    stream,
                    outcome: *outcome,
                    leftover,
                    portal,
                    login_pdus,
                });
            }
            Ok(LoginResult::Redirect(addr, permanent)) => {
                hops += 1;
                let Some(p) = Portal::parse(&addr) else {
                    return Err(Error::Login {
                        target: target_label,
                        portal,
                        source: LoginError::Protocol(format!(
                            "redirect to an unparsable TargetAddress {addr:?}"
                        )),
                    });
                };
                let next = p.socket_addr_string();
                tracing::info!(from = %portal, to = %next, permanent, "login redirected");
                if hops > cfg.max_redirects {
                    return Err(Error::TooManyRedirects {
                        target: target_label,
                        hops: cfg.max_redirects,
                        last: next,
                    });
                }
                portal = next;
            }
            Err(LoginFail::Login(source)) => {
                return Err(Error::Login {
                    target: target_label,
                    portal,
                    source,
                })
            }
            Err(LoginFail::Io(e)) => {
                return Err(Error::Login {
                    target: target_label,
                    portal,
                    source: LoginError::Protocol(format!("connection failed during login: {e}")),
                })
            }
        }
    }
}

fn login_config(cfg: &SessionConfig, session_type: SessionType, isid: Isid) -> LoginConfig {
    let mut rng = StdRng::from_entropy();
    let operational = match session_type {
        SessionType::Normal => cfg.operational(),
        SessionType::Discovery => LoginConfig::discovery_operational(
            cfg.max_recv_data_segment_length,
            cfg.header_digest.key_value(),
            cfg.data_digest.key_value(),
        ),
    };
    LoginConfig {
        initiator_name: cfg.initiator_name.clone(),
        initiator_alias: cfg.initiator_alias.clone(),
        target_name: (session_type == SessionType::Normal).then(|| cfg.target.clone()),
        session_type,
        isid,
        tsih: 0,
        cid: 0,
        itt: rng.next_u32() & 0x7fff_ffff,
        cmd_sn: SerialNumber(rng.next_u32()),
        exp_stat_sn: SerialNumber(0),
        chap: cfg.chap.clone(),
        operational,
        timeout: cfg.login_timeout,
    }
}

enum LoginResult {
    /// What login agreed, bytes read past it, and how many PDUs it took both ways.
    Done(Box<LoginOutcome>, BytesMut, u64),
    Redirect(String, bool),
}

enum LoginFail {
    Login(LoginError),
    Io(std::io::Error),
}

async fn login_on(stream: &mut TcpStream, lc: LoginConfig) -> Result<LoginResult, LoginFail> {
    let mut login = InitiatorLogin::new(lc, Instant::now(), Box::new(StdRng::from_entropy()))
        .map_err(LoginFail::Login)?;
    for w in login.warnings() {
        tracing::warn!("{w}");
    }
    let framer = Framer::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut pdus = 0u64;
    let mut timer = Timer::new().map_err(LoginFail::Io)?;
    loop {
        while let Some(pdu) = login.poll_transmit() {
            pdus += 1;
            let enc = Framer::encode(&pdu, Digest::None, Digest::None);
            let deadline = login.poll_timeout();
            let sent = run_until(&mut timer, deadline, stream.write_all(&enc.to_vec()))
                .await
                .map_err(LoginFail::Io)?;
            match sent {
                Ok(r) => r.map_err(LoginFail::Io)?,
                Err(_) => {
                    return Err(LoginFail::Login(
                        login
                            .handle_timeout(Instant::now())
                            .err()
                            .unwrap_or(LoginError::Timeout(Default::default())),
                    ))
                }
            }
        }
        match framer.decode(&mut buf) {
            Ok(Some(pdu)) => {
                pdus += 1;
                match login.handle_pdu(pdu).map_err(LoginFail::Login)? {
                    LoginStep::Continue => continue,
                    LoginStep::Complete(o) => return Ok(LoginResult::Done(o, buf, pdus)),
                    LoginStep::Redirect { address, permanent } => {
                        return Ok(LoginResult::Redirect(address, permanent))
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                return Err(LoginFail::Login(LoginError::Protocol(format!(
                    "bad PDU during login: {e}"
                ))));
            }
        }
        let deadline = login.poll_timeout();
        let read = run_until(&mut timer, deadline, stream.read_buf(&mut buf))
            .await
            .map_err(LoginFail::Io)?;
        match read {
            Ok(Ok(0)) => {
                return Err(LoginFail::Login(LoginError::Protocol(
                    "the target closed the connection during login (see the target's log)".into(),
                )))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(LoginFail::Io(e)),
            Err(_) => {
                let e = login
                    .handle_timeout(Instant::now())
                    .err()
                    .unwrap_or(LoginError::Timeout(Default::default()));
                return Err(LoginFail::Login(e));
            }
        }
    }
}

/// A fresh random ISID (type 0x80, RFC 7143 §10.1.1).
pub(crate) fn new_isid() -> Isid {
    Isid::random(&mut StdRng::from_entropy())
}
