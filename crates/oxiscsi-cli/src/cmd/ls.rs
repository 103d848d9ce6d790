//! `oxiscsi ls [-s] iscsi://host[:port]`: discovery, and with `-s` every LUN's type and
//! size (as libiscsi's iscsi-ls).

use oxiscsi_initiator::{discover_with, Session};
use serde::Serialize;

use crate::common::{human_size, parse_url, session_config, CliError, CliResult, CommonOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also log in to each target and list its LUNs with type and size.
    #[arg(short = 's', long = "show-luns")]
    pub show_luns: bool,
    /// iscsi://[user[%password]@]host[:port]
    pub url: String,
}

#[derive(Serialize)]
struct LunOut {
    lun: u16,
    device_type: u8,
    type_name: &'static str,
    vendor: String,
    product: String,
    size_bytes: Option<u64>,
    block_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct TargetOut {
    target: String,
    portals: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    luns: Option<Vec<LunOut>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(opts: &CommonOpts, args: Args) -> CliResult {
    let url = parse_url(&args.url)?;
    let cfg = session_config(&url, opts, Some("discovery"))?;
    let targets = discover_with(cfg, url.target.as_deref()).await?;
    let mut out = Vec::new();
    for t in targets {
        let mut entry = TargetOut {
            target: t.name.clone(),
            portals: t.portals.iter().map(|p| p.to_string()).collect(),
            luns: None,
            error: None,
        };
        if args.show_luns {
            // Log in through the portal we were given: targets often advertise addresses
            // (wildcard binds, other networks) that this host cannot reach.
            let cfg = session_config(&url, opts, Some(&t.name))?;
            match list_luns(cfg).await {
                Ok(l) => entry.luns = Some(l),
                Err(e) => entry.error = Some(e.to_string()),
            }
        }
        out.push(entry);
    }
    if opts.json {
        let s = serde_json::to_string_pretty(&out).map_err(|e| CliError::Io(e.to_string()))?;
        println!("{s}");
    } else {
        for t in &out {
            for p in &t.portals {
                println!("Target:{} Portal:{}", t.target, p);
            }
            if t.portals.is_empty() {
                println!("Target:{}", t.target);
            }
            if let Some(e) = &t.error {
                println!("  error: {e}");
            }
            for l in t.luns.iter().flatten() {
                let size = l.size_bytes.map_or_else(|| "-".to_string(), human_size);
                let err = l
                    .error
                    .as_deref()
                    .map(|e| format!("  ({e})"))
                    .unwrap_or_default();
                println!(
                    "Lun:{:<4} Type:{} (Size:{}){}",
                    l.lun, l.type_name, size, err
                );
            }
        }
    }
    if out.iter().any(|t| t.error.is_some()) {
        return Err(CliError::Io(
            "some targets could not be listed (see above)".into(),
        ));
    }
    Ok(())
}

async fn list_luns(
    cfg: oxiscsi_initiator::SessionConfig,
) -> Result<Vec<LunOut>, oxiscsi_initiator::Error> {
    let session = Session::connect(cfg).await?;
    let result = async {
        let mut luns = Vec::new();
        for lun in session.report_luns().await? {
            let inq = session.inquiry(lun).await?;
            let mut l = LunOut {
                lun,
                device_type: inq.device_type,
                type_name: oxiscsi_scsi::device_type_short(inq.device_type),
                vendor: inq.vendor,
                product: inq.product,
                size_bytes: None,
                block_size: None,
                error: None,
            };
            if matches!(inq.device_type, 0x00 | 0x0e) {
                match session.read_capacity(lun).await {
                    Ok(c) => {
                        l.size_bytes = Some(c.bytes());
                        l.block_size = Some(c.block_size);
                    }
                    Err(e) => l.error = Some(e.to_string()),
                }
            } else {
                l.size_bytes = Some(0);
            }
            luns.push(l);
        }
        Ok(luns)
    }
    .await;
    let _ = session.logout().await;
    result
}
