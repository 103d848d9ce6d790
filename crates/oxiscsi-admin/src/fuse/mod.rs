//! A FUSE server of our own on /dev/fuse (no libfuse, no fuser): the kernel protocol
//! ([`abi`]) and the device ([`dev`]). oxiscsid's session workers serve each LUN as a
//! FUSE file with it, reading each request straight into the buffer that its SCSI
//! command then sends, in the same thread that drives the session's socket.

pub mod abi;
pub mod dev;
