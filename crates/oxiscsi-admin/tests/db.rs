//! The DB against records written by open-iscsi 2.1.8's own iscsiadm (fixtures made with
//! `iscsiadm -m node -o new`, `-m discoverydb -o new`, `-m iface -o new`, and an
//! `-o update` of node.startup; Debian's open-iscsi package, no kernel module needed).

use std::path::{Path, PathBuf};

use oxiscsi_admin::db::record::{iface_record, node_record, sendtargets_record, Record};
use oxiscsi_admin::db::{Db, NodeKey};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/open-iscsi-2.1.8")
}

fn fixture(rel: &str) -> String {
    std::fs::read_to_string(fixtures().join(rel)).unwrap()
}

#[test]
fn fixtures_round_trip_byte_for_byte() {
    for rel in [
        "nodes/iqn.2026-11.test:tree/127.0.0.1,3260,1/default",
        "nodes/iqn.2026-11.test:fixture/127.0.0.1,3260",
        "send_targets/127.0.0.1,3260/st_config",
        "ifaces/testif",
    ] {
        let text = fixture(rel);
        let r = Record::parse(&text).unwrap();
        assert_eq!(r.to_string(), text, "{rel}");
    }
}

/// Our new records equal iscsiadm's, key for key and in order.
#[test]
fn new_records_match_open_iscsi() {
    let mut ours = node_record(&[], "iqn.2026-11.test:tree", "127.0.0.1", 3260, 1);
    ours.set("node.startup", "automatic"); // the fixture had this update applied
    let theirs = fixture("nodes/iqn.2026-11.test:tree/127.0.0.1,3260,1/default");
    assert_lines_equal(&ours.to_string(), &theirs);
    let flat = node_record(&[], "iqn.2026-11.test:fixture", "127.0.0.1", 3260, -1);
    assert_lines_equal(
        &flat.to_string(),
        &fixture("nodes/iqn.2026-11.test:fixture/127.0.0.1,3260"),
    );
    assert_lines_equal(
        &sendtargets_record(&[], "127.0.0.1", 3260).to_string(),
        &fixture("send_targets/127.0.0.1,3260/st_config"),
    );
    assert_lines_equal(
        &iface_record("testif").to_string(),
        &fixture("ifaces/testif"),
    );
}

fn assert_lines_equal(ours: &str, theirs: &str) {
    for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
        assert_eq!(a, b, "line {}", i + 1);
    }
    assert_eq!(ours.lines().count(), theirs.lines().count());
}

#[test]
fn the_tree_of_open_iscsi_is_listed_in_both_forms() {
    let db = Db::new(fixtures());
    let nodes = db.nodes().unwrap();
    let keys: Vec<&NodeKey> = nodes.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 2);
    assert!(keys
        .iter()
        .any(|k| k.iqn == "iqn.2026-11.test:tree" && k.tpgt == 1 && k.iface == "default"));
    assert!(keys
        .iter()
        .any(|k| k.iqn == "iqn.2026-11.test:fixture" && k.tpgt == -1));
    for (k, p) in nodes {
        assert_eq!(db.node_path(&k), p);
    }
}

/// 20 concurrent updaters, each setting its own key of one record: none is lost, and
/// the file always parses.
#[test]
fn concurrent_updates_are_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::new(dir.path());
    let key = NodeKey {
        iqn: "iqn.2026-11.test:c".into(),
        address: "10.0.0.1".into(),
        port: 3260,
        tpgt: 1,
        iface: "default".into(),
    };
    let path = db.node_path(&key);
    let new = || node_record(&[], "iqn.2026-11.test:c", "10.0.0.1", 3260, 1);
    db.write(&path, &new()).unwrap();
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let db = db.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                for round in 0..10 {
                    db.update(&path, oxiscsi_admin::db::record::Kind::Node, new, |r| {
                        r.set(&format!("x.test.k{i}"), &round.to_string())
                    })
                    .unwrap();
                    // Reading is always possible and always whole.
                    db.read(&path).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = db.read(&path).unwrap();
    for i in 0..20 {
        assert_eq!(
            r.get(&format!("x.test.k{i}")),
            Some("9"),
            "update of k{i} lost"
        );
    }
    assert_eq!(r.get("node.name"), Some("iqn.2026-11.test:c"));
    // No temp files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_malformed_record_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad");
    std::fs::write(
        &p,
        "# BEGIN RECORD 2.1.8\nnode.name = x\nthis is not a record line\n",
    )
    .unwrap();
    let e = Db::new(dir.path()).read(&p).unwrap_err().to_string();
    assert!(e.contains("bad:line 3"), "{e}");
}

/// `-o show` prints every key in open-iscsi's order with `<empty>`, secrets masked.
#[test]
fn show_matches_iscsiadm() {
    let show = |rel: &str| fixture(&format!("show/{rel}"));
    let node = node_record(&[], "iqn.2026-11.test:two", "10.0.0.2", 3260, 2);
    assert_lines_equal(&node.show(false), &show("node.txt"));
    assert_lines_equal(
        &sendtargets_record(&[], "127.0.0.1", 3260).show(false),
        &show("discoverydb.txt"),
    );
    assert_lines_equal(&iface_record("testif").show(false), &show("iface.txt"));
    // A key set later lands where open-iscsi puts it, and is masked in show.
    let mut r = oxiscsi_admin::db::record::Kind::Node.complete(
        &Record::parse(&fixture(
            "nodes/iqn.2026-11.test:tree/127.0.0.1,3260,1/default",
        ))
        .unwrap(),
    );
    r.set("node.session.auth.password", "secret123");
    let file = r.to_string();
    let lines: Vec<&str> = file.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("node.session.auth.password"))
        .unwrap();
    assert_eq!(lines[i - 1], "node.session.auth.authmethod = None");
    assert!(r
        .show(false)
        .contains("node.session.auth.password = ********"));
    assert!(r
        .show(true)
        .contains("node.session.auth.password = secret123"));
}

#[test]
fn initiator_name_is_generated_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::new(dir.path());
    let a = db.initiator_name().unwrap();
    assert!(a.starts_with("iqn.2026-11.rs.oxiscsi:"), "{a}");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || db.initiator_name().unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), a);
    }
    // An existing file (open-iscsi's) is used as is.
    std::fs::write(
        dir.path().join("initiatorname.iscsi"),
        "## comment\nInitiatorName=iqn.1993-08.org.debian:01:abc\n",
    )
    .unwrap();
    assert_eq!(
        db.initiator_name().unwrap(),
        "iqn.1993-08.org.debian:01:abc"
    );
}
