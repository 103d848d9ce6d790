#![no_main]
//! Fuzz target `target_connection`: see `oxiscsi_proto::fuzzing::target_connection` for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| oxiscsi_proto::fuzzing::target_connection(data));
