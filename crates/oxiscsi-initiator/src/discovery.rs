//! SendTargets discovery (RFC 7143 §13.3, Appendix C).

use oxiscsi_proto::login::SessionType;
use oxiscsi_proto::session::{parse_send_targets, DiscoveredTarget};

use crate::config::SessionConfig;
use crate::error::Error;
use crate::session::Session;

/// Discover all targets at `portal` with default settings.
pub async fn discover(portal: &str) -> Result<Vec<DiscoveredTarget>, Error> {
    discover_with(SessionConfig::new(portal, "discovery"), None).await
}

/// Discover with the given settings (initiator name, CHAP, digests, timeouts);
/// `target` asks about one target only (`SendTargets=<iqn>`).
pub async fn discover_with(
    cfg: SessionConfig,
    target: Option<&str>,
) -> Result<Vec<DiscoveredTarget>, Error> {
    let session = Session::open(cfg, SessionType::Discovery).await?;
    let what = target.unwrap_or("All").to_string();
    let result = session.text(vec![("SendTargets".into(), what)]).await;
    let _ = session.logout().await;
    let pairs = result?;
    let (targets, skipped) = parse_send_targets(&pairs);
    for s in skipped {
        tracing::warn!(entry = %s, "SendTargets entry skipped: not a valid TargetAddress after a TargetName");
    }
    Ok(targets)
}
