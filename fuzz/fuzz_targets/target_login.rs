#![no_main]
//! Fuzz target `target_login`: see `oxiscsi_proto::fuzzing::target_login` for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| oxiscsi_proto::fuzzing::target_login(data));
