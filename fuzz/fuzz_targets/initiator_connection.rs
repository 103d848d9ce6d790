#![no_main]
//! Fuzz target `initiator_connection`: see `oxiscsi_proto::fuzzing::initiator_connection` for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| oxiscsi_proto::fuzzing::initiator_connection(data));
