//! `oxiscsi readcap URL`: READ CAPACITY.

use serde::Serialize;

use crate::common::{human_size, open, CliError, CliResult, CommonOpts};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// iscsi://[user[%password]@]host[:port]/target-iqn/lun
    pub url: String,
}

#[derive(Serialize)]
struct Out {
    lun: u16,
    block_size: u32,
    blocks: u64,
    last_lba: u64,
    size_bytes: u64,
    thin_provisioned: bool,
    zeroes_after_unmap: bool,
    physical_block_exponent: u8,
    protection: bool,
}

pub async fn run(opts: &CommonOpts, args: Args) -> CliResult {
    let (session, lun, _) = open(&args.url, opts).await?;
    let cap = session.read_capacity(lun).await;
    let _ = session.logout().await;
    let c = cap?;
    let out = Out {
        lun,
        block_size: c.block_size,
        blocks: c.blocks(),
        last_lba: c.last_lba,
        size_bytes: c.bytes(),
        thin_provisioned: c.lbpme,
        zeroes_after_unmap: c.lbprz,
        physical_block_exponent: c.lbppbe,
        protection: c.protection,
    };
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| CliError::Io(e.to_string()))?
        );
    } else {
        println!("Block size: {}", out.block_size);
        println!("Blocks: {}", out.blocks);
        println!("Last LBA: {}", out.last_lba);
        println!(
            "Size: {} bytes ({})",
            out.size_bytes,
            human_size(out.size_bytes)
        );
        println!("Thin provisioning (LBPME): {}", out.thin_provisioned);
        println!(
            "Reads zeroes after unmap (LBPRZ): {}",
            out.zeroes_after_unmap
        );
        println!(
            "Logical blocks per physical block exponent: {}",
            out.physical_block_exponent
        );
    }
    Ok(())
}
