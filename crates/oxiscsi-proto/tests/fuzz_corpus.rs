//! Replay every file of the fuzz corpus (`fuzz/corpus/<target>/`) through the same entry
//! points the fuzz targets use, as ordinary tests (after rustls' `test_read_fuzz_corpus`).

use std::path::PathBuf;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        let data = std::fs::read(&path).expect("read corpus file");
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "corpus file {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "no corpus files in {}", dir.display());
}

#[test]
fn pdu_corpus() {
    replay("pdu", oxiscsi_proto::fuzzing::pdu);
}

#[test]
fn text_corpus() {
    replay("text", oxiscsi_proto::fuzzing::text);
}

#[test]
fn initiator_connection_corpus() {
    replay(
        "initiator_connection",
        oxiscsi_proto::fuzzing::initiator_connection,
    );
}

#[test]
fn initiator_login_corpus() {
    replay("initiator_login", oxiscsi_proto::fuzzing::initiator_login);
}

#[test]
fn target_connection_corpus() {
    replay(
        "target_connection",
        oxiscsi_proto::fuzzing::target_connection,
    );
}

#[test]
fn target_login_corpus() {
    replay("target_login", oxiscsi_proto::fuzzing::target_login);
}
