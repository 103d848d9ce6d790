//! open-iscsi's management model in user space (issue 4): the persistent DB of node,
//! discovery and iface records in open-iscsi's on-disk layout and record format, so
//! `oxiscsiadm` and `oxiscsid` can share a tree with open-iscsi's own `iscsiadm`.
//!
//! - [`db::record`]: one record file: `# BEGIN RECORD 2.1.8`, `key = value` lines in
//!   open-iscsi's order, `# END RECORD`; parse errors name the line.
//! - [`db`]: the tree (`nodes/`, `send_targets/`, `ifaces/`), atomic writes and locked
//!   read-modify-write so concurrent updaters never lose an update.

pub mod adm;
pub mod daemon;
pub mod db;
pub mod fuse;
pub mod ipc;
