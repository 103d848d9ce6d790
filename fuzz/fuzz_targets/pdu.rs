#![no_main]
//! Fuzz target `pdu`: see `oxiscsi_proto::fuzzing::pdu` for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| oxiscsi_proto::fuzzing::pdu(data));
