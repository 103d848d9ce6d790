//! `oxiscsi inq URL [--page 0xNN]`: standard INQUIRY or a decoded VPD page.

use oxiscsi_scsi::data::*;
use serde_json::json;

use crate::common::{open, CliError, CliResult, CommonOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// VPD page to read: 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2 are decoded, others dumped.
    #[arg(long, value_parser = parse_page)]
    pub page: Option<u8>,
    /// iscsi://[user[%password]@]host[:port]/target-iqn/lun
    pub url: String,
}

fn parse_page(s: &str) -> Result<u8, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u8::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a page number from 0 to 255 (decimal or 0x hex)"))
}

pub async fn run(opts: &CommonOpts, args: Args) -> CliResult {
    let (session, lun, _) = open(&args.url, opts).await?;
    let result = match args.page {
        None => standard(&session, lun, opts.json).await,
        Some(p) => vpd(&session, lun, p, opts.json).await,
    };
    let _ = session.logout().await;
    result
}

fn bad(e: ShortData) -> CliError {
    CliError::from(oxiscsi_initiator::Error::BadData(e.to_string()))
}

async fn standard(session: &oxiscsi_initiator::Session, lun: u16, json: bool) -> CliResult {
    let i = session.inquiry(lun).await?;
    if json {
        let mut v = serde_json::to_value(&i).map_err(|e| CliError::Io(e.to_string()))?;
        v["type_name"] = json!(oxiscsi_scsi::device_type_name(i.device_type));
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| CliError::Io(e.to_string()))?
        );
    } else {
        println!("Peripheral Qualifier: {}", i.peripheral_qualifier);
        println!(
            "Peripheral Device Type: {} (0x{:02x})",
            oxiscsi_scsi::device_type_name(i.device_type),
            i.device_type
        );
        println!("Removable: {}", i.removable);
        println!("Version: 0x{:02x}", i.version);
        println!("Response Data Format: {}", i.response_data_format);
        println!("TPGS: {}", i.tpgs);
        println!("Vendor Identification: {}", i.vendor);
        println!("Product Identification: {}", i.product);
        println!("Product Revision Level: {}", i.revision);
    }
    Ok(())
}

async fn vpd(session: &oxiscsi_initiator::Session, lun: u16, page: u8, json: bool) -> CliResult {
    let data = session.inquiry_vpd(lun, page).await?;
    let out = match page {
        0x00 => {
            let pages = parse_supported_pages(&data).map_err(bad)?;
            if !json {
                println!("Supported VPD pages:");
                for p in &pages {
                    println!("  0x{p:02x} {}", vpd_name(*p));
                }
                return Ok(());
            }
            json!({ "page": page, "supported_pages": pages })
        }
        0x80 => {
            let s = parse_unit_serial(&data).map_err(bad)?;
            if !json {
                println!("Unit Serial Number: {s}");
                return Ok(());
            }
            json!({ "page": page, "unit_serial_number": s })
        }
        0x83 => {
            let ds = parse_device_identification(&data).map_err(bad)?;
            if !json {
                println!("Device Identification:");
                for d in &ds {
                    println!(
                        "  {} ({}): {}",
                        d.type_name(),
                        d.association_name(),
                        d.value_string()
                    );
                }
                return Ok(());
            }
            let list: Vec<_> = ds
                .iter()
                .map(|d| {
                    json!({ "type": d.type_name(), "association": d.association_name(),
                            "code_set": d.code_set, "value": d.value_string() })
                })
                .collect();
            json!({ "page": page, "designators": list })
        }
        0xb0 => {
            let l = parse_block_limits(&data).map_err(bad)?;
            if !json {
                println!("Block Limits:");
                println!(
                    "  Maximum compare and write length: {}",
                    l.max_compare_and_write_length
                );
                println!(
                    "  Optimal transfer length granularity: {}",
                    l.optimal_transfer_length_granularity
                );
                println!("  Maximum transfer length: {}", l.maximum_transfer_length);
                println!("  Optimal transfer length: {}", l.optimal_transfer_length);
                println!("  Maximum prefetch length: {}", l.maximum_prefetch_length);
                println!("  Maximum unmap LBA count: {}", l.maximum_unmap_lba_count);
                println!(
                    "  Maximum unmap block descriptor count: {}",
                    l.maximum_unmap_block_descriptor_count
                );
                println!(
                    "  Optimal unmap granularity: {}",
                    l.optimal_unmap_granularity
                );
                println!(
                    "  Unmap granularity alignment: {:?}",
                    l.unmap_granularity_alignment
                );
                println!(
                    "  Maximum write same length: {}",
                    l.maximum_write_same_length
                );
                return Ok(());
            }
            let mut v = serde_json::to_value(&l).map_err(|e| CliError::Io(e.to_string()))?;
            v["page"] = json!(page);
            v
        }
        0xb1 => {
            let c = parse_block_device_characteristics(&data).map_err(bad)?;
            if !json {
                let rate = match c.medium_rotation_rate {
                    0 => "not reported".to_string(),
                    1 => "non-rotating medium".to_string(),
                    r => format!("{r} rpm"),
                };
                println!("Block Device Characteristics:");
                println!("  Medium rotation rate: {rate}");
                println!("  Nominal form factor: {}", c.nominal_form_factor);
                return Ok(());
            }
            let mut v = serde_json::to_value(&c).map_err(|e| CliError::Io(e.to_string()))?;
            v["page"] = json!(page);
            v
        }
        0xb2 => {
            let p = parse_logical_block_provisioning(&data).map_err(bad)?;
            if !json {
                println!("Logical Block Provisioning:");
                println!("  UNMAP supported (LBPU): {}", p.lbpu);
                println!("  WRITE SAME(16) unmap (LBPWS): {}", p.lbpws);
                println!("  WRITE SAME(10) unmap (LBPWS10): {}", p.lbpws10);
                println!("  Reads zeroes after unmap (LBPRZ): {}", p.lbprz);
                println!("  Provisioning type: {}", p.provisioning_type);
                return Ok(());
            }
            let mut v = serde_json::to_value(&p).map_err(|e| CliError::Io(e.to_string()))?;
            v["page"] = json!(page);
            v
        }
        _ => {
            let hex: Vec<String> = data.iter().map(|b| format!("{b:02x}")).collect();
            if !json {
                println!("VPD page 0x{page:02x} ({} bytes):", data.len());
                for chunk in hex.chunks(16) {
                    println!("  {}", chunk.join(" "));
                }
                return Ok(());
            }
            json!({ "page": page, "hex": hex.join("") })
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| CliError::Io(e.to_string()))?
    );
    Ok(())
}

fn vpd_name(p: u8) -> &'static str {
    match p {
        0x00 => "Supported VPD pages",
        0x80 => "Unit Serial Number",
        0x83 => "Device Identification",
        0x86 => "Extended INQUIRY Data",
        0xb0 => "Block Limits",
        0xb1 => "Block Device Characteristics",
        0xb2 => "Logical Block Provisioning",
        _ => "",
    }
}
