//! One module per tool.

pub mod dd;
pub mod demo;
pub mod inq;
pub mod ls;
pub mod perf;
pub mod readcap;
pub mod target;
