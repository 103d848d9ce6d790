#![no_main]
//! Fuzz target `initiator_login`: see `oxiscsi_proto::fuzzing::initiator_login` for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| oxiscsi_proto::fuzzing::initiator_login(data));
