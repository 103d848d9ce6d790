//! Our initiator against our target, over real TCP on loopback: login variants, data
//! integrity, ACLs, errors, graceful stop.

use std::time::Duration;

use bytes::Bytes;
use oxiscsi_initiator::proto::login::{ChapAlgorithm, ChapConfig, ChapCredentials};
use oxiscsi_initiator::{discover, DigestChoice, Error, Session, SessionConfig};
use oxiscsi_target::config::{Backing, LunSpec, TargetSpec};
use oxiscsi_target::{Server, ServerHandle, TargetConfig};
use rand::{Rng, RngCore, SeedableRng};

const IQN: &str = "iqn.2026-11.rs.oxiscsi:test";

fn creds(u: &str, s: &str) -> ChapCredentials {
    ChapCredentials {
        user: u.into(),
        secret: s.as_bytes().to_vec(),
    }
}

fn spec(luns: Vec<LunSpec>) -> TargetSpec {
    TargetSpec {
        iqn: IQN.into(),
        alias: None,
        luns,
        chap: None,
        mutual_chap: None,
        allow: Vec::new(),
        portal_groups: Vec::new(),
        redirect: None,
    }
}

fn mem_lun(lun: u16, mib: u64) -> LunSpec {
    LunSpec {
        lun,
        backing: Backing::Mem { size: mib << 20 },
        read_only: false,
    }
}

async fn start(targets: Vec<TargetSpec>) -> (ServerHandle, String) {
    let cfg = TargetConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        targets,
        ..TargetConfig::default()
    };
    let s = Server::bind(cfg).await.unwrap();
    let addr = s.local_addrs()[0].to_string();
    (s.spawn(), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qd32_mixed_sizes_bit_exact_with_digests() {
    let (h, portal) = start(vec![spec(vec![mem_lun(1, 64)])]).await;
    for digests in [false, true] {
        let mut cfg = SessionConfig::new(portal.clone(), IQN);
        if digests {
            cfg.header_digest = DigestChoice::Crc32c;
            cfg.data_digest = DigestChoice::Crc32c;
        }
        let s = Session::connect(cfg).await.unwrap();
        assert_eq!(
            s.info().params.header_digest != oxiscsi_initiator::proto::digest::Digest::None,
            digests
        );
        let total_blocks = 64u64 * 2048;
        let mut model = vec![0u8; (total_blocks * 512) as usize];
        let mut rng = rand::rngs::StdRng::seed_from_u64(if digests { 2 } else { 1 });
        let mut pending = Vec::new();
        let mut lba = 0u64;
        // 16 MiB of writes from one block to 1 MiB, 32 in flight, non-overlapping.
        while lba < 32768 {
            let blocks = [1u64, 8, 64, 255, 2048][rng.gen_range(0..5)].min(32768 - lba);
            let mut d = vec![0u8; (blocks * 512) as usize];
            rng.fill_bytes(&mut d);
            model[(lba * 512) as usize..((lba + blocks) * 512) as usize].copy_from_slice(&d);
            let s2 = s.clone();
            pending.push(tokio::spawn(async move {
                s2.write(1, lba, Bytes::from(d)).await
            }));
            if pending.len() == 32 {
                pending.remove(0).await.unwrap().unwrap();
            }
            lba += blocks;
        }
        for p in pending {
            p.await.unwrap().unwrap();
        }
        s.flush(1).await.unwrap();
        let mut got = Vec::new();
        for i in 0..16u64 {
            got.extend_from_slice(&s.read(1, i * 2048, 2048).await.unwrap());
        }
        assert!(
            got[..] == model[..16 << 20],
            "read back differs (digests {digests})"
        );
        s.logout().await.unwrap();
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chap_all_algorithms_one_way_and_mutual_and_wrong_secret() {
    let mut t = spec(vec![mem_lun(1, 1)]);
    t.chap = Some(creds("alice", "alicesecret12"));
    t.mutual_chap = Some(creds("tgt", "targetsecret12"));
    let (h, portal) = start(vec![t]).await;
    for alg in ChapConfig::DEFAULT_ALGORITHMS {
        for mutual in [false, true] {
            let mut cfg = SessionConfig::new(portal.clone(), IQN);
            cfg.chap = Some(ChapConfig {
                initiator: creds("alice", "alicesecret12"),
                target: mutual.then(|| creds("tgt", "targetsecret12")),
                algorithms: vec![alg],
            });
            let s = Session::connect(cfg)
                .await
                .unwrap_or_else(|e| panic!("{alg:?} mutual={mutual}: {e}"));
            assert_eq!(s.info().chap, Some(alg));
            assert_eq!(s.info().mutual_chap, mutual);
            s.inquiry(1).await.unwrap();
            s.logout().await.unwrap();
        }
    }
    let mut cfg = SessionConfig::new(portal.clone(), IQN);
    cfg.chap = Some(ChapConfig {
        initiator: creds("alice", "wrongsecret12"),
        target: None,
        algorithms: vec![ChapAlgorithm::MD5],
    });
    let e = Session::connect(cfg).await.unwrap_err();
    assert!(e.is_login(), "{e}");
    assert!(
        e.to_string().contains("authentication failure (0x0201)"),
        "{e}"
    );
    // No CHAP at all.
    let e = Session::connect(SessionConfig::new(portal.clone(), IQN))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("0x0201"), "{e}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_hides_and_refuses_and_unknown_target_is_not_found() {
    let mut secret = spec(vec![mem_lun(1, 1)]);
    secret.iqn = "iqn.2026-11.rs.oxiscsi:secret".into();
    secret.allow = vec!["iqn.2026-11.rs.oxiscsi:only-me".into()];
    let (h, portal) = start(vec![spec(vec![mem_lun(1, 1)]), secret]).await;
    let found = discover(&portal).await.unwrap();
    let names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec![IQN], "ACL'd target must not be listed");
    assert_eq!(found[0].portals.len(), 1);
    let e = Session::connect(SessionConfig::new(
        portal.clone(),
        "iqn.2026-11.rs.oxiscsi:secret",
    ))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("0x0202"), "{e}");
    let mut cfg = SessionConfig::new(portal.clone(), "iqn.2026-11.rs.oxiscsi:secret");
    cfg.initiator_name = "iqn.2026-11.rs.oxiscsi:only-me".into();
    Session::connect(cfg).await.unwrap().logout().await.unwrap();
    let e = Session::connect(SessionConfig::new(
        portal.clone(),
        "iqn.2026-11.rs.oxiscsi:nope",
    ))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("0x0203"), "{e}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scsi_errors_unmap_and_luns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun2.img");
    let (h, portal) = start(vec![spec(vec![
        mem_lun(1, 1),
        LunSpec {
            lun: 2,
            backing: Backing::File {
                path: path.clone(),
                size: Some(4 << 20),
            },
            read_only: false,
        },
        LunSpec {
            lun: 3,
            backing: Backing::Mem { size: 1 << 20 },
            read_only: true,
        },
    ])])
    .await;
    let s = Session::connect(SessionConfig::new(portal, IQN))
        .await
        .unwrap();
    assert_eq!(s.report_luns().await.unwrap(), vec![1, 2, 3]);
    let cap = s.read_capacity(2).await.unwrap();
    assert_eq!(cap.blocks(), 8192);
    // Past the end.
    let e = s.read(1, 2047, 2).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("LOGICAL BLOCK ADDRESS OUT OF RANGE (0x21/0x00)"),
        "{e}"
    );
    // Write-protected LUN.
    let e = s
        .write(3, 0, Bytes::from(vec![1u8; 512]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("DATA PROTECT"), "{e}");
    // UNMAP punches a hole in the file: the range reads zeros, the file stays its size.
    s.write(2, 0, Bytes::from(vec![0xabu8; 1 << 20]))
        .await
        .unwrap();
    s.unmap(2, &[(256, 512)]).await.unwrap();
    let d = s.read(2, 0, 2048).await.unwrap();
    assert!(d[..256 * 512].iter().all(|&b| b == 0xab));
    assert!(d[256 * 512..768 * 512].iter().all(|&b| b == 0));
    assert!(d[768 * 512..].iter().all(|&b| b == 0xab));
    s.flush(2).await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20);
    // A LUN that does not exist.
    let e = s.read_capacity(9).await.unwrap_err();
    assert!(e.to_string().contains("0x25/0x00"), "{e}");
    // VPD pages the issue names.
    for page in [0x00u8, 0x80, 0x83, 0xb0, 0xb1, 0xb2] {
        let v = s.inquiry_vpd(1, page).await.unwrap();
        assert_eq!(v[1], page);
    }
    s.logout().await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_ids_are_stable_across_restarts() {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (h, portal) = start(vec![spec(vec![mem_lun(1, 1)])]).await;
        let s = Session::connect(SessionConfig::new(portal, IQN))
            .await
            .unwrap();
        ids.push((
            s.inquiry_vpd(1, 0x80).await.unwrap(),
            s.inquiry_vpd(1, 0x83).await.unwrap(),
        ));
        s.logout().await.unwrap();
        h.shutdown().await;
    }
    assert_eq!(ids[0], ids[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_asks_sessions_to_log_out_and_loses_no_acknowledged_write() {
    let (h, portal) = start(vec![spec(vec![mem_lun(1, 8)])]).await;
    let s = Session::connect(SessionConfig::new(portal.clone(), IQN))
        .await
        .unwrap();
    // Writers keep going until the session ends; each acknowledged write is recorded.
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10_000u64 {
                let lba = w * 1024 + (i % 128) * 8;
                let d = Bytes::from(vec![(i % 251) as u8 + 1; 4096]);
                match s.write(1, lba, d).await {
                    Ok(()) => acked.push((lba, (i % 251) as u8 + 1)),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = std::time::Instant::now();
    h.shutdown().await;
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        t0.elapsed()
    );
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(!acked.is_empty());
    let reason = s.closed_reason().unwrap_or_default();
    assert!(
        reason.contains("logged out"),
        "session ended with: {reason}"
    );
    // The data is in the RAM LUN of the stopped server; what counts here is that every
    // write the initiator saw acknowledged was answered before the logout completed.
    let e = s.read(1, 0, 1).await.unwrap_err();
    assert!(matches!(e, Error::Closed(_)), "{e}");
}

/// An EXTENDED COPY parameter list: one identification target descriptor per NAA, one
/// block-to-block segment from descriptor `src` to `dst`.
fn xcopy_params(
    naas: &[&[u8]],
    src: u16,
    dst: u16,
    blocks: u16,
    src_lba: u64,
    dst_lba: u64,
) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = 1;
    p[2..4].copy_from_slice(&((32 * naas.len()) as u16).to_be_bytes());
    p[8..12].copy_from_slice(&28u32.to_be_bytes());
    for naa in naas {
        let mut d = vec![0u8; 32];
        d[0] = 0xe4;
        d[4] = 0x01;
        d[5] = 0x03;
        d[7] = naa.len() as u8;
        d[8..8 + naa.len()].copy_from_slice(naa);
        d[30] = 0x02; // block size 512
        p.extend_from_slice(&d);
    }
    let mut s = vec![0u8; 28];
    s[0] = 0x02;
    s[3] = 24;
    s[4..6].copy_from_slice(&src.to_be_bytes());
    s[6..8].copy_from_slice(&dst.to_be_bytes());
    s[10..12].copy_from_slice(&blocks.to_be_bytes());
    s[12..20].copy_from_slice(&src_lba.to_be_bytes());
    s[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    p.extend_from_slice(&s);
    p
}

fn xcopy_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_works_within_a_target_and_cannot_reach_another() {
    // Target A with LUNs 1 and 2; target B (another tenant) with LUN 1.
    let mut b = spec(vec![mem_lun(1, 1)]);
    b.iqn = "iqn.2026-11.rs.oxiscsi:tenant-b".into();
    let (h, portal) = start(vec![spec(vec![mem_lun(1, 1), mem_lun(2, 1)]), b]).await;
    let sa = Session::connect(SessionConfig::new(portal.clone(), IQN))
        .await
        .unwrap();
    let sb = Session::connect(SessionConfig::new(
        portal.clone(),
        "iqn.2026-11.rs.oxiscsi:tenant-b",
    ))
    .await
    .unwrap();
    let naa = |v: Bytes| v[8..16].to_vec();
    let a1 = naa(sa.inquiry_vpd(1, 0x83).await.unwrap());
    let a2 = naa(sa.inquiry_vpd(2, 0x83).await.unwrap());
    let b1 = naa(sb.inquiry_vpd(1, 0x83).await.unwrap());
    assert_ne!(a1, b1);
    sa.write(1, 0, Bytes::from(vec![0x5au8; 8 * 512]))
        .await
        .unwrap();
    sb.write(1, 0, Bytes::from(vec![0xb0u8; 8 * 512]))
        .await
        .unwrap();
    // Within target A: LUN 1 -> LUN 2.
    let p = xcopy_params(&[&a1, &a2], 0, 1, 8, 0, 100);
    let r = sa
        .execute(1, xcopy_cdb(p.len()), Bytes::from(p), 0)
        .await
        .unwrap();
    assert_eq!(r.status, oxiscsi_initiator::proto::pdu::ScsiStatus::GOOD);
    assert!(sa.read(2, 100, 8).await.unwrap().iter().all(|&x| x == 0x5a));
    // Reading target B's LU from target A's session: not reachable, B untouched.
    let p = xcopy_params(&[&b1, &a2], 0, 1, 8, 0, 200);
    let r = sa
        .execute(1, xcopy_cdb(p.len()), Bytes::from(p), 0)
        .await
        .unwrap();
    assert_eq!(
        r.status,
        oxiscsi_initiator::proto::pdu::ScsiStatus::CHECK_CONDITION
    );
    let sense = oxiscsi_initiator::scsi::Sense::parse(&r.sense).unwrap();
    assert_eq!((sense.key.0, sense.asc, sense.ascq), (0x0a, 0x0d, 0x02));
    assert!(sa.read(2, 200, 8).await.unwrap().iter().all(|&x| x == 0));
    // Writing into target B from A: refused too.
    let p = xcopy_params(&[&a1, &b1], 0, 1, 8, 0, 0);
    let r = sa
        .execute(1, xcopy_cdb(p.len()), Bytes::from(p), 0)
        .await
        .unwrap();
    assert_eq!(
        r.status,
        oxiscsi_initiator::proto::pdu::ScsiStatus::CHECK_CONDITION
    );
    assert!(sb.read(1, 0, 8).await.unwrap().iter().all(|&x| x == 0xb0));
    sa.logout().await.unwrap();
    sb.logout().await.unwrap();
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_graceful_stop_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = LunSpec {
        lun: 1,
        backing: Backing::File {
            path: dir.path().join("lun.img"),
            size: Some(8 << 20),
        },
        read_only: false,
    };
    let (h, portal) = start(vec![spec(vec![file.clone()])]).await;
    let s = Session::connect(SessionConfig::new(portal.clone(), IQN))
        .await
        .unwrap();
    // 32 writers, each owning its own blocks, recording what was acknowledged.
    let mut writers = Vec::new();
    for w in 0..32u64 {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            let mut last = None;
            for i in 1..=10_000u64 {
                let v = (i % 250) as u8 + 1;
                match s.write(1, w * 8, Bytes::from(vec![v; 4096])).await {
                    Ok(()) => last = Some(v),
                    Err(_) => break,
                }
            }
            (w, last)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.shutdown().await; // what SIGTERM does
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.unwrap());
    }
    assert!(s.closed_reason().unwrap_or_default().contains("logged out"));
    // A new target process on the same file: every acknowledged write is there.
    let (h2, portal2) = start(vec![spec(vec![file])]).await;
    let s2 = Session::connect(SessionConfig::new(portal2, IQN))
        .await
        .unwrap();
    let mut checked = 0;
    for (w, last) in acked {
        let Some(v) = last else { continue };
        let d = s2.read(1, w * 8, 8).await.unwrap();
        // The last acknowledged value, or one written after it whose ack was lost.
        assert!(d.iter().all(|&b| b == d[0]), "writer {w}: torn 4 KiB block");
        assert!(
            d[0] == v || d[0] == v % 250 + 1,
            "writer {w}: acked {v}, found {}",
            d[0]
        );
        checked += 1;
    }
    assert!(checked > 0);
    s2.logout().await.unwrap();
    h2.shutdown().await;
}
