//! `oxiscsi`: libiscsi-style iSCSI tools (ls, inq, readcap, dd, perf) on the oxiscsi
//! initiator. Thin over the libraries: argument parsing, output and exit codes here,
//! everything else in `oxiscsi-initiator`.

// The doc comments on the argument structs are clap's --help text, written for a terminal
// (`host[:port]`, `[::1]`, `<host>`), not rustdoc markdown: escaping them would show in
// --help.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod cmd;
mod common;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::common::{exit_code, CommonOpts};

/// mimalloc instead of glibc malloc: glibc returns large freed buffers (256 KiB read
/// buffers, 1 MiB reassembled reads) to the kernel and page-faults them back on the next
/// I/O; profiling 1 MiB reads showed ~45% of CPU in those faults.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "oxiscsi",
    version,
    about = "User-space iSCSI: tools (discovery, inquiry, capacity, copy, load) and a target",
    after_help = "URLs: iscsi://[user[%password]@]host[:port]/target-iqn/lun  (IPv6 as [::1])\n\
                  Secrets may come from OXISCSI_CHAP_PASSWORD, and for mutual CHAP from\n\
                  OXISCSI_TARGET_CHAP_USER / OXISCSI_TARGET_CHAP_PASSWORD.\n\
                  Exit codes: 0 ok, 1 I/O or short transfer, 2 usage, 3 connection,\n\
                  4 login/authentication, 5 SCSI error."
)]
struct Cli {
    #[command(flatten)]
    common: CommonOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List targets, portals and (with -s) LUNs with type and size.
    Ls(cmd::ls::Args),
    /// Standard INQUIRY, or a VPD page with --page.
    Inq(cmd::inq::Args),
    /// READ CAPACITY: block size, block count and size.
    Readcap(cmd::readcap::Args),
    /// Copy between files, stdin/stdout and LUNs.
    Dd(cmd::dd::Args),
    /// Load generator in the manner of iscsi-perf (reads, or writes with --write).
    Perf(cmd::perf::Args),
    /// Serve a target (foreground): --listen, --iqn, --lun, --chap, --allow ...
    Target(cmd::target::Args),
    /// The main job on an embedded default: in-process target with a RAM LUN, discover,
    /// log in, write, read back, verify, log out.
    Demo(cmd::demo::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                common::EXIT_USAGE
            } else {
                0
            });
        }
    };
    common::init_tracing(cli.common.verbose);
    // The tools run on one thread, like libiscsi's event loop (fewer wake-ups and
    // context switches per I/O), and without tokio's timer: the initiator keeps its
    // deadlines on timerfds (oxiscsi_initiator::time), and a runtime with a timer pays
    // for it on every park, i.e. per I/O at low queue depth. The target serves many
    // connections on all cores and uses tokio's timer (so does the demo, which embeds it).
    let rt = match &cli.command {
        Command::Target(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        Command::Demo(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oxiscsi: cannot start the async runtime: {e}");
            return ExitCode::from(common::EXIT_IO);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Ls(a) => cmd::ls::run(&cli.common, a).await,
            Command::Inq(a) => cmd::inq::run(&cli.common, a).await,
            Command::Readcap(a) => cmd::readcap::run(&cli.common, a).await,
            Command::Dd(a) => cmd::dd::run(&cli.common, a).await,
            Command::Perf(a) => cmd::perf::run(&cli.common, a).await,
            Command::Target(a) => cmd::target::run(&cli.common, a).await,
            Command::Demo(a) => cmd::demo::run(&cli.common, a).await,
        }
    });
    // Do not wait for sessions still logging out in the background.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oxiscsi: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
