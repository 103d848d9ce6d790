//! SCSI for oxiscsi: CDB builders and parsers (SBC-3, SPC-4), sense data decoded to
//! words, and the data formats of INQUIRY/VPD, READ CAPACITY, REPORT LUNS and MODE
//! SENSE. Shared by the initiator (which builds CDBs and parses data) and the target
//! (which parses CDBs and builds data and sense). No I/O.

#![forbid(unsafe_code)]

pub mod cdb;
pub mod data;
pub mod sense;

pub use cdb::{Cdb, CdbError};
pub use sense::{Sense, SenseKey};

/// Peripheral device type (SPC-4 Table 49), for listings.
pub fn device_type_name(t: u8) -> &'static str {
    match t & 0x1f {
        0x00 => "Direct-access block device (disk)",
        0x01 => "Sequential-access device (tape)",
        0x03 => "Processor",
        0x05 => "CD/DVD",
        0x07 => "Optical memory",
        0x08 => "Media changer",
        0x0c => "Storage array controller",
        0x0d => "Enclosure services",
        0x0e => "Simplified direct-access",
        0x1e => "Well known logical unit",
        0x1f => "Unknown or no device type",
        _ => "Other device type",
    }
}

/// Short name for the device type (as `lsscsi` prints it).
pub fn device_type_short(t: u8) -> &'static str {
    match t & 0x1f {
        0x00 => "disk",
        0x01 => "tape",
        0x03 => "process",
        0x05 => "cd/dvd",
        0x07 => "optical",
        0x08 => "mediumx",
        0x0c => "storage",
        0x0d => "enclosu",
        0x0e => "rbc",
        _ => "other",
    }
}
