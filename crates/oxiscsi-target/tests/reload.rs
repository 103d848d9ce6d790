//! Reload (what SIGHUP does), portal groups and maintenance redirects, over TCP with our
//! initiator.

use std::time::Duration;

use bytes::Bytes;
use oxiscsi_initiator::{discover, Session, SessionConfig};
use oxiscsi_target::config::{Backing, LunSpec, PortalGroup, Redirect, TargetSpec};
use oxiscsi_target::{Server, TargetConfig};

fn target(iqn: &str, luns: &[u16]) -> TargetSpec {
    TargetSpec {
        iqn: iqn.into(),
        alias: None,
        luns: luns
            .iter()
            .map(|&n| LunSpec {
                lun: n,
                backing: Backing::Mem { size: 1 << 20 },
                read_only: false,
            })
            .collect(),
        chap: None,
        mutual_chap: None,
        allow: Vec::new(),
        portal_groups: Vec::new(),
        redirect: None,
    }
}

fn cfg(targets: Vec<TargetSpec>) -> TargetConfig {
    TargetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        targets,
        ..TargetConfig::default()
    }
}

const A: &str = "iqn.2026-11.rs.oxiscsi:a";
const B: &str = "iqn.2026-11.rs.oxiscsi:b";
const C: &str = "iqn.2026-11.rs.oxiscsi:c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_changes_without_touching_other_sessions() {
    let base = cfg(vec![target(A, &[1]), target(B, &[1])]);
    let s = Server::bind(base.clone()).await.unwrap();
    let portal = s.local_addrs()[0].to_string();
    let h = s.spawn();
    let sa = Session::connect(SessionConfig::new(portal.clone(), A))
        .await
        .unwrap();
    let sb = Session::connect(SessionConfig::new(portal.clone(), B))
        .await
        .unwrap();
    sa.write(1, 0, Bytes::from(vec![7u8; 512])).await.unwrap();
    sb.write(1, 0, Bytes::from(vec![8u8; 512])).await.unwrap();

    // A bad new configuration (a file LUN that does not exist, no size) changes nothing.
    let mut bad = base.clone();
    bad.targets[0].luns.push(LunSpec {
        lun: 2,
        backing: Backing::File {
            path: "/nonexistent/oxiscsi/lun.img".into(),
            size: None,
        },
        read_only: false,
    });
    bad.targets.push(target(C, &[1]));
    let e = h.reload(bad).unwrap_err();
    assert!(e.contains("LUN 2"), "{e}");
    assert_eq!(sa.report_luns().await.unwrap(), vec![1]);
    assert!(Session::connect(SessionConfig::new(portal.clone(), C))
        .await
        .is_err());

    // Remove B, add C, give A a second LUN.
    let mut new = cfg(vec![target(A, &[1, 2]), target(C, &[5])]);
    new.listen = base.listen.clone();
    let r = h.reload(new).unwrap();
    assert_eq!(r.added, vec![C.to_string()]);
    assert_eq!(r.removed, vec![B.to_string()]);
    assert_eq!(r.changed, vec![A.to_string()]);
    assert_eq!(r.sessions_ended, 1);
    // A's session goes on, with its data, and sees the new LUN (after the REPORTED LUNS
    // DATA HAS CHANGED unit attention, which the initiator retries).
    assert!(sa.read(1, 0, 1).await.unwrap().iter().all(|&b| b == 7));
    assert_eq!(sa.report_luns().await.unwrap(), vec![1, 2]);
    sa.write(2, 0, Bytes::from(vec![9u8; 512])).await.unwrap();
    // B's session was asked to log out and did; B is gone from discovery; C works.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sb.closed_reason()
            .unwrap_or_default()
            .contains("logged out"),
        "{:?}",
        sb.closed_reason()
    );
    assert!(sb.read(1, 0, 1).await.is_err());
    let names: Vec<String> = discover(&portal)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec![A.to_string(), C.to_string()]);
    let sc = Session::connect(SessionConfig::new(portal.clone(), C))
        .await
        .unwrap();
    assert_eq!(sc.report_luns().await.unwrap(), vec![5]);
    // An ACL that no longer admits A's initiator ends that session.
    let mut acl = cfg(vec![target(A, &[1, 2]), target(C, &[5])]);
    acl.listen = base.listen.clone();
    acl.targets[0].allow = vec!["iqn.2026-11.rs.oxiscsi:someone-else".into()];
    let r = h.reload(acl).unwrap();
    assert_eq!(r.sessions_ended, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sa.read(1, 0, 1).await.is_err());
    assert!(sc.read(5, 0, 1).await.is_ok(), "C was not touched");
    sc.logout().await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resized_lun_reports_capacity_data_has_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grow.img");
    let file = |size: u64| LunSpec {
        lun: 1,
        backing: Backing::File {
            path: path.clone(),
            size: Some(size),
        },
        read_only: false,
    };
    let mut t = target(A, &[]);
    t.luns = vec![file(1 << 20)];
    let base = cfg(vec![t.clone()]);
    let s = Server::bind(base.clone()).await.unwrap();
    let portal = s.local_addrs()[0].to_string();
    let h = s.spawn();
    let sa = Session::connect(SessionConfig::new(portal.clone(), A))
        .await
        .unwrap();
    assert_eq!(sa.read_capacity(1).await.unwrap().blocks(), 2048);
    sa.write(1, 0, Bytes::from(vec![4u8; 512])).await.unwrap();
    // Grow the file to 2 MiB through a reload.
    let mut grown = base.clone();
    grown.targets[0].luns = vec![file(2 << 20)];
    h.reload(grown).unwrap();
    // The raw command sees the unit attention first...
    let cdb = [0x25u8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let r = sa.execute(1, cdb.to_vec(), Bytes::new(), 8).await.unwrap();
    let sense = oxiscsi_initiator::scsi::Sense::parse(&r.sense).unwrap();
    assert_eq!((sense.key.0, sense.asc, sense.ascq), (6, 0x2a, 0x09));
    // ... then the new size, same data.
    assert_eq!(sa.read_capacity(1).await.unwrap().blocks(), 4096);
    assert!(sa.read(1, 0, 1).await.unwrap().iter().all(|&b| b == 4));
    sa.logout().await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_groups_and_maintenance_redirect() {
    // Server Y serves A normally.
    let y = Server::bind(cfg(vec![target(A, &[1])])).await.unwrap();
    let y_portal = y.local_addrs()[0].to_string();
    let hy = y.spawn();
    // Server X: A in maintenance (redirect to Y); B only on portal group 2.
    let mut a = target(A, &[1]);
    a.redirect = Some(Redirect {
        address: y_portal.clone(),
        permanent: false,
    });
    let mut b = target(B, &[1]);
    b.portal_groups = vec![2];
    let mut xc = cfg(vec![a, b]);
    xc.portal_groups = vec![
        PortalGroup {
            tag: 2,
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            redirect: None,
        },
        // Group 3 is in maintenance: everything arriving there goes to Y.
        PortalGroup {
            tag: 3,
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            redirect: Some(Redirect {
                address: y_portal.clone(),
                permanent: true,
            }),
        },
    ];
    let x = Server::bind(xc).await.unwrap();
    let addrs = x.local_addrs();
    let (g1, g2, g3) = (
        addrs[0].to_string(),
        addrs[1].to_string(),
        addrs[2].to_string(),
    );
    let hx = x.spawn();
    // The login to A at X ends up at Y.
    let s = Session::connect(SessionConfig::new(g1.clone(), A))
        .await
        .unwrap();
    assert_eq!(s.info().portal, y_portal);
    s.logout().await.unwrap();
    // B: not through group 1, yes through group 2, which discovery names with tag 2.
    let e = Session::connect(SessionConfig::new(g1.clone(), B))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("0x0203"), "{e}");
    let s = Session::connect(SessionConfig::new(g2.clone(), B))
        .await
        .unwrap();
    assert_eq!(s.info().params.target_portal_group_tag, Some(2));
    s.logout().await.unwrap();
    let found = discover(&g1).await.unwrap();
    let b_entry = found.iter().find(|t| t.name == B).expect("B listed");
    assert_eq!(b_entry.portals.len(), 1);
    assert_eq!(b_entry.portals[0].tpgt, 2);
    assert!(
        found.iter().all(|t| t.name != A),
        "a target in maintenance is not advertised"
    );
    // A login to B through group 3 (in maintenance) is redirected to Y, which does not
    // serve B: the error names Y's portal.
    let e = Session::connect(SessionConfig::new(g3.clone(), B))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&y_portal), "{e}");
    hx.shutdown().await;
    hy.shutdown().await;
}
