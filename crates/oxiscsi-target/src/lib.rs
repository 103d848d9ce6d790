//! oxiscsi's user-space iSCSI target.
//!
//! - [`backend`]: where a LU's blocks live (file or block device, memory);
//! - [`lu`]: the SCSI block-device emulation (SPC-4/SBC-3);
//! - [`config`]: targets, LUNs, ACLs and CHAP;
//! - [`server`]: portals, login admission, sessions and the per-connection driver
//!   around the sans-IO cores in `oxiscsi-proto`.

pub mod backend;
pub mod config;
pub mod lu;
pub mod server;
pub mod xcopy;

pub use config::{LunSpec, TargetConfig, TargetSpec};
pub use server::{ReloadReport, Server, ServerHandle};
