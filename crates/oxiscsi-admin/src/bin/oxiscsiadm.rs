//! `oxiscsiadm`: iscsiadm's syntax, output formats and exit codes over open-iscsi's
//! record DB and oxiscsid's control socket (`--root DIR` or `OXISCSI_ROOT`; default DB
//! /etc/oxiscsi, socket /run/oxiscsi/oxiscsid.sock).

use std::io::Write;
use std::process::ExitCode;

use oxiscsi_admin::adm;
use oxiscsi_admin::daemon::Paths;
use oxiscsi_admin::db::Db;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = adm::parse(&argv).and_then(|a| {
        let root = a
            .root
            .clone()
            .or_else(|| std::env::var_os("OXISCSI_ROOT").map(Into::into));
        let paths = Paths::new(root);
        adm::run(&a, &Db::new(&paths.db), &paths.socket())
    });
    match result {
        Ok(out) => {
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(f) if f.code == adm::exit::OK => {
            println!("{}", f.message);
            ExitCode::SUCCESS
        }
        Err(f) => {
            let _ = std::io::stdout().flush();
            eprintln!("oxiscsiadm: {}", f.message);
            ExitCode::from(u8::try_from(f.code).unwrap_or(1))
        }
    }
}
