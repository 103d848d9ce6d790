#![no_main]
//! Fuzz target `text`: see `oxiscsi_proto::fuzzing::text` for the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| oxiscsi_proto::fuzzing::text(data));
