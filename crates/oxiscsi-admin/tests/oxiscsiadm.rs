//! The `oxiscsiadm` binary: iscsiadm's syntax, outputs (compared with iscsiadm 2.1.8's
//! captured output) and exit codes, on a temp --root; 20 concurrent processes.

use std::path::Path;
use std::process::Command;

fn adm(root: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_oxiscsiadm"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn fixture(rel: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/open-iscsi-2.1.8")
            .join(rel),
    )
    .unwrap()
}

#[test]
fn node_records_like_iscsiadm() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    // Nothing yet: exit 21.
    let (code, _, err) = adm(r, &["-m", "node"]);
    assert_eq!(code, 21, "{err}");
    assert!(err.contains("No records found"));
    let (code, out, _) = adm(
        r,
        &[
            "-m",
            "node",
            "-o",
            "new",
            "-T",
            "iqn.2026-11.test:tree",
            "-p",
            "127.0.0.1:3260,1",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(out, "New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=default] 127.0.0.1,3260,1 iqn.2026-11.test:tree] added\n");
    adm(
        r,
        &[
            "-m",
            "node",
            "-o",
            "new",
            "-T",
            "iqn.2026-11.test:two",
            "-p",
            "10.0.0.2:3260,2",
        ],
    );
    // Listing and -P 1 exactly as iscsiadm printed them for the same records.
    assert_eq!(adm(r, &["-m", "node"]).1, fixture("show/node-list.txt"));
    assert_eq!(
        adm(r, &["-m", "node", "-P", "1"]).1,
        fixture("show/node-list-P1.txt")
    );
    // -o show of a fresh record equals iscsiadm's.
    let (code, out, _) = adm(
        r,
        &[
            "-m",
            "node",
            "-T",
            "iqn.2026-11.test:two",
            "-p",
            "10.0.0.2:3260",
            "-o",
            "show",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(out, fixture("show/node.txt"));
    // The record file equals what iscsiadm wrote after the same update.
    let (code, _, err) = adm(
        r,
        &[
            "-m",
            "node",
            "-T",
            "iqn.2026-11.test:tree",
            "-p",
            "127.0.0.1:3260",
            "-o",
            "update",
            "-n",
            "node.startup",
            "-v",
            "automatic",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let file =
        std::fs::read_to_string(r.join("nodes/iqn.2026-11.test:tree/127.0.0.1,3260,1/default"))
            .unwrap();
    assert_eq!(
        file,
        fixture("nodes/iqn.2026-11.test:tree/127.0.0.1,3260,1/default")
    );
    // Secrets masked unless -S.
    adm(
        r,
        &[
            "-m",
            "node",
            "-T",
            "iqn.2026-11.test:tree",
            "-o",
            "update",
            "-n",
            "node.session.auth.password",
            "-v",
            "secret123",
        ],
    );
    let masked = adm(
        r,
        &["-m", "node", "-T", "iqn.2026-11.test:tree", "-o", "show"],
    )
    .1;
    assert!(masked.contains("node.session.auth.password = ********"));
    assert!(!masked.contains("secret123"));
    assert!(adm(
        r,
        &[
            "-m",
            "node",
            "-T",
            "iqn.2026-11.test:tree",
            "-o",
            "show",
            "-S"
        ]
    )
    .1
    .contains("secret123"));
    // iscsiadm's errors and codes.
    let (code, _, err) = adm(
        r,
        &[
            "-m",
            "node",
            "-T",
            "iqn.2026-11.test:tree",
            "-o",
            "update",
            "-n",
            "no.such.key",
            "-v",
            "1",
        ],
    );
    assert_eq!(code, 7);
    assert!(
        err.contains("Cannot modify no.such.key. Invalid param name."),
        "{err}"
    );
    let (code, _, err) = adm(r, &["-m", "node", "-o", "update", "-n", "node.startup"]);
    assert_eq!(code, 7);
    assert!(err.contains("update requires name and value"));
    assert_eq!(adm(r, &["-m", "node", "-o", "bogus"]).0, 7);
    assert_eq!(adm(r, &["-m", "bogus"]).0, 7);
    assert_eq!(adm(r, &["-m", "node", "--frobnicate"]).0, 7);
    // JSON listing.
    let json = adm(r, &["-m", "node", "--json"]).1;
    assert!(
        json.starts_with('[') && json.contains("\"tpgt\":2"),
        "{json}"
    );
    // Delete, then nothing is left.
    assert_eq!(
        adm(
            r,
            &["-m", "node", "-T", "iqn.2026-11.test:two", "-o", "delete"]
        )
        .0,
        0
    );
    assert_eq!(
        adm(
            r,
            &["-m", "node", "-T", "iqn.2026-11.test:two", "-o", "delete"]
        )
        .0,
        21
    );
    assert!(!r.join("nodes/iqn.2026-11.test:two").exists());
}

#[test]
fn discoverydb_and_iface_like_iscsiadm() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let (code, out, _) = adm(
        r,
        &[
            "-m",
            "discoverydb",
            "-t",
            "st",
            "-p",
            "127.0.0.1:3260",
            "-o",
            "new",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(out, "New discovery record for [127.0.0.1,3260] added.\n");
    assert_eq!(
        adm(
            r,
            &[
                "-m",
                "discoverydb",
                "-t",
                "st",
                "-p",
                "127.0.0.1:3260",
                "-o",
                "show"
            ]
        )
        .1,
        fixture("show/discoverydb.txt")
    );
    assert_eq!(
        std::fs::read_to_string(r.join("send_targets/127.0.0.1,3260/st_config")).unwrap(),
        fixture("send_targets/127.0.0.1,3260/st_config")
    );
    let (code, out, _) = adm(r, &["-m", "iface", "-I", "testif", "-o", "new"]);
    assert_eq!(code, 0);
    assert_eq!(out, "New interface testif added\n");
    assert_eq!(
        adm(r, &["-m", "iface", "-I", "testif", "-o", "show"]).1,
        fixture("show/iface.txt")
    );
    assert_eq!(
        std::fs::read_to_string(r.join("ifaces/testif")).unwrap(),
        fixture("ifaces/testif")
    );
    let (code, _, _) = adm(
        r,
        &[
            "-m",
            "iface",
            "-I",
            "testif",
            "-o",
            "update",
            "-n",
            "iface.ipaddress",
            "-v",
            "10.0.0.5",
        ],
    );
    assert_eq!(code, 0);
    let list = adm(r, &["-m", "iface"]).1;
    assert!(
        list.contains("default tcp,<empty>,<empty>,<empty>,<empty>"),
        "{list}"
    );
    assert!(
        list.contains("testif tcp,<empty>,10.0.0.5,<empty>,<empty>"),
        "{list}"
    );
    assert_eq!(
        adm(r, &["-m", "iface", "-I", "testif", "-o", "delete"]).0,
        0
    );
    assert_eq!(adm(r, &["-m", "iface", "-I", "testif", "-o", "show"]).0, 21);
}

/// 20 oxiscsiadm processes updating the same node record at once: no update is lost
/// and the file is never corrupt (open-iscsi #135, #302).
#[test]
fn twenty_concurrent_processes_lose_nothing() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().to_path_buf();
    adm(
        &r,
        &[
            "-m",
            "node",
            "-o",
            "new",
            "-T",
            "iqn.2026-11.test:c",
            "-p",
            "10.0.0.1:3260,1",
        ],
    );
    adm(
        &r,
        &[
            "-m",
            "discoverydb",
            "-t",
            "st",
            "-p",
            "10.0.0.1",
            "-o",
            "new",
        ],
    );
    // Keys that exist in the schema; each process owns one (node) or one value (disc).
    let keys = [
        "node.session.cmds_max",
        "node.session.queue_depth",
        "node.session.nr_sessions",
        "node.session.initial_login_retry_max",
        "node.session.timeo.replacement_timeout",
        "node.session.err_timeo.abort_timeout",
        "node.session.err_timeo.lu_reset_timeout",
        "node.session.err_timeo.tgt_reset_timeout",
        "node.session.err_timeo.host_reset_timeout",
        "node.session.iscsi.FirstBurstLength",
        "node.session.iscsi.MaxBurstLength",
        "node.session.iscsi.DefaultTime2Retain",
        "node.session.iscsi.DefaultTime2Wait",
        "node.conn[0].timeo.logout_timeout",
        "node.conn[0].timeo.login_timeout",
        "node.conn[0].timeo.auth_timeout",
        "node.conn[0].timeo.noop_out_interval",
        "node.conn[0].timeo.noop_out_timeout",
        "node.conn[0].iscsi.MaxRecvDataSegmentLength",
        "node.conn[0].tcp.window_size",
    ];
    let children: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Command::new(env!("CARGO_BIN_EXE_oxiscsiadm"))
                .arg("--root")
                .arg(&r)
                .args([
                    "-m",
                    "node",
                    "-T",
                    "iqn.2026-11.test:c",
                    "-o",
                    "update",
                    "-n",
                    k,
                    "-v",
                    &(1000 + i).to_string(),
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let show = adm(
        &r,
        &["-m", "node", "-T", "iqn.2026-11.test:c", "-o", "show"],
    )
    .1;
    for (i, k) in keys.iter().enumerate() {
        assert!(
            show.contains(&format!("{k} = {}\n", 1000 + i)),
            "update of {k} lost"
        );
    }
}

#[test]
fn sendtargets_discovery_records_nodes_and_fails_clearly() {
    use oxiscsi_target::config::{Backing, LunSpec, TargetSpec};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (h, portal) = rt.block_on(async {
        let cfg = oxiscsi_target::TargetConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            targets: ["iqn.2026-11.test:d1", "iqn.2026-11.test:d2"]
                .iter()
                .map(|iqn| TargetSpec {
                    iqn: iqn.to_string(),
                    alias: None,
                    luns: vec![LunSpec {
                        lun: 1,
                        backing: Backing::Mem { size: 1 << 20 },
                        read_only: false,
                    }],
                    chap: None,
                    mutual_chap: None,
                    allow: Vec::new(),
                    portal_groups: Vec::new(),
                    redirect: None,
                })
                .collect(),
            ..Default::default()
        };
        let s = oxiscsi_target::Server::bind(cfg).await.unwrap();
        let p = s.local_addrs()[0];
        (s.spawn(), p)
    });
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let p = portal.to_string();
    // iscsid.conf's node.* and discovery.sendtargets.* keys are the defaults of the
    // records discovery creates (as open-iscsi's iscsiadm applies them).
    std::fs::write(
        r.join("iscsid.conf"),
        "# site defaults\nnode.startup = automatic\nnode.session.cmds_max = 64\n\
         discovery.sendtargets.timeo.login_timeout = 7\niscsid.startup = /bin/true\n",
    )
    .unwrap();
    let (code, out, err) = adm(r, &["-m", "discovery", "-t", "st", "-p", &p]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("{p},1 iqn.2026-11.test:d1\n{p},1 iqn.2026-11.test:d2\n")
    );
    // The nodes are in the DB, marked as found by SendTargets at this portal.
    let list = adm(r, &["-m", "node"]).1;
    assert!(
        list.contains("iqn.2026-11.test:d1") && list.contains("iqn.2026-11.test:d2"),
        "{list}"
    );
    let show = adm(
        r,
        &["-m", "node", "-T", "iqn.2026-11.test:d1", "-o", "show"],
    )
    .1;
    assert!(
        show.contains("node.discovery_type = send_targets"),
        "{show}"
    );
    assert!(
        show.contains(&format!("node.discovery_port = {}", portal.port())),
        "{show}"
    );
    assert!(show.contains("node.startup = automatic\n"), "{show}");
    assert!(show.contains("node.session.cmds_max = 64\n"), "{show}");
    let (code, st, _) = adm(
        r,
        &["-m", "discoverydb", "-t", "st", "-p", &p, "-o", "show"],
    );
    assert_eq!(code, 0);
    assert!(
        st.contains("discovery.sendtargets.timeo.login_timeout = 7\n"),
        "{st}"
    );
    // -I IFACE: the discovery session is bound like a login through that iface.
    assert_eq!(adm(r, &["-m", "iface", "-I", "src", "-o", "new"]).0, 0);
    let set_ip = |ip: &str| {
        let a = [
            "-m",
            "iface",
            "-I",
            "src",
            "-o",
            "update",
            "-n",
            "iface.ipaddress",
            "-v",
            ip,
        ];
        assert_eq!(adm(r, &a).0, 0);
    };
    set_ip("127.0.0.1");
    let (code, out, err) = adm(r, &["-m", "discovery", "-t", "st", "-p", &p, "-I", "src"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("iqn.2026-11.test:d1"), "{out}");
    // An address this host does not have: refused by bind(2), named, nothing sent.
    set_ip("192.0.2.1");
    let (code, _, err) = adm(r, &["-m", "discovery", "-t", "st", "-p", &p, "-I", "src"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("192.0.2.1") && err.contains("iface"), "{err}");
    let (code, _, err) = adm(
        r,
        &["-m", "discovery", "-t", "st", "-p", &p, "-I", "nosuch"],
    );
    assert_eq!(code, 21, "{err}");
    assert!(err.contains("iface nosuch does not exist"), "{err}");
    // A broken iscsid.conf is named with its line; no record is touched.
    std::fs::write(r.join("iscsid.conf"), "node.startup = manual\nbroken\n").unwrap();
    let (code, _, err) = adm(
        r,
        &[
            "-m",
            "node",
            "-o",
            "new",
            "-T",
            "iqn.2026-11.test:x",
            "-p",
            "10.0.0.9",
        ],
    );
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("iscsid.conf:2"), "{err}");
    assert!(err.contains("fix or remove that line"), "{err}");
    assert_eq!(adm(r, &["-m", "node", "-T", "iqn.2026-11.test:x"]).0, 21);
    std::fs::remove_file(r.join("iscsid.conf")).unwrap();
    // Nothing listens: exit 4 with the portal named.
    rt.block_on(h.shutdown());
    let (code, _, err) = adm(r, &["-m", "discovery", "-t", "st", "-p", &p]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&p), "{err}");
}

#[test]
fn import_takes_an_open_iscsi_tree_and_refuses_a_broken_one() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().join("db");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/open-iscsi-2.1.8");
    let (code, out, err) = adm(&r, &["--import", src.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 4 record(s)"), "{out}");
    let list = adm(&r, &["-m", "node"]).1;
    assert!(
        list.contains("127.0.0.1:3260,1 iqn.2026-11.test:tree"),
        "{list}"
    );
    assert!(
        list.contains("127.0.0.1:3260,-1 iqn.2026-11.test:fixture"),
        "{list}"
    );
    assert_eq!(adm(&r, &["-m", "iface", "-I", "testif", "-o", "show"]).0, 0);
    // A tree with one malformed record: nothing is imported, the file and line named.
    let bad = d.path().join("bad");
    std::fs::create_dir_all(bad.join("nodes/iqn.2026-11.test:x")).unwrap();
    std::fs::write(
        bad.join("nodes/iqn.2026-11.test:x/1.2.3.4,3260"),
        "# BEGIN RECORD 2.1.8\nnode.name = iqn.2026-11.test:x\ngarbage\n",
    )
    .unwrap();
    let r2 = d.path().join("db2");
    let (code, _, err) = adm(&r2, &["--import", bad.to_str().unwrap()]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("1.2.3.4,3260:line 3"), "{err}");
    assert!(!r2.join("nodes").exists());
}
