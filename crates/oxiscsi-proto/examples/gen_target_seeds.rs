//! Write seed inputs for the `target_connection` and `target_login` fuzz targets:
//! realistic initiator conversations (a flag byte, then encoded PDUs). Run from the
//! repository root: `cargo run -p oxiscsi-proto --example gen_target_seeds`.

use std::path::Path;

use bytes::Bytes;
use oxiscsi_proto::pdu::*;
use oxiscsi_proto::text::encode_pairs;
use oxiscsi_proto::{Digest, SerialNumber};

fn wire(pdus: &[Pdu]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in pdus {
        v.extend(Framer::encode(p, Digest::None, Digest::None).to_vec());
    }
    v
}

fn cmd(itt: u32, sn: u32, read: bool, len: u32, imm: &'static [u8], final_: bool) -> Pdu {
    let mut cdb = vec![0u8; 10];
    cdb[0] = if read { 0x28 } else { 0x2a };
    cdb[8] = (len / 512) as u8;
    Pdu::ScsiCommand(ScsiCommand {
        immediate: false,
        final_,
        read,
        write: !read,
        attr: TaskAttr::Simple,
        lun: Lun::from_number(1),
        itt,
        expected_data_transfer_length: len,
        cmd_sn: SerialNumber(sn),
        exp_stat_sn: SerialNumber(1),
        cdb: cdb.into(),
        bidi_read_length: None,
        data: Bytes::from_static(imm),
    })
}

fn dout(itt: u32, ttt: u32, sn: u32, off: u32, len: usize, final_: bool) -> Pdu {
    Pdu::DataOut(DataOut {
        final_,
        lun: Lun::from_number(1),
        itt,
        ttt,
        exp_stat_sn: SerialNumber(1),
        data_sn: sn,
        buffer_offset: off,
        data: Bytes::from(vec![0x11; len]),
    })
}

fn main() -> std::io::Result<()> {
    let base = u32::MAX - 2;
    let conv: Vec<(u8, Vec<Pdu>)> = vec![
        (
            0,
            vec![
                cmd(1, base, true, 4096, b"", true),
                cmd(2, base.wrapping_add(1), true, 512, b"", true),
            ],
        ),
        (2, vec![cmd(3, base, false, 1024, &[7u8; 1024], true)]),
        (
            0,
            vec![
                cmd(4, base, false, 4096, b"", false),
                dout(4, 0xffff_ffff, 0, 0, 4096, true),
            ],
        ),
        (
            1,
            vec![
                cmd(5, base, false, 16384, b"", true),
                dout(5, 1, 0, 0, 8192, false),
                dout(5, 1, 1, 8192, 8192, true),
            ],
        ),
        (
            3,
            vec![
                Pdu::NopOut(NopOut {
                    immediate: true,
                    lun: Lun(0),
                    itt: 9,
                    ttt: 0xffff_ffff,
                    cmd_sn: SerialNumber(base),
                    exp_stat_sn: SerialNumber(1),
                    data: Bytes::from_static(b"ping"),
                }),
                Pdu::TaskMgmtRequest(TaskMgmtRequest {
                    immediate: true,
                    function: TmfFunction::LOGICAL_UNIT_RESET,
                    lun: Lun::from_number(1),
                    itt: 10,
                    referenced_task_tag: 0xffff_ffff,
                    cmd_sn: SerialNumber(base),
                    exp_stat_sn: SerialNumber(1),
                    ref_cmd_sn: SerialNumber(0),
                    exp_data_sn: 0,
                }),
                Pdu::TextRequest(TextRequest {
                    immediate: true,
                    final_: true,
                    continue_: false,
                    lun: Lun(0),
                    itt: 11,
                    ttt: 0xffff_ffff,
                    cmd_sn: SerialNumber(base),
                    exp_stat_sn: SerialNumber(1),
                    data: Bytes::from(encode_pairs(&[("SendTargets", "All")])),
                }),
                Pdu::LogoutRequest(LogoutRequest {
                    immediate: true,
                    reason: LogoutReason::CLOSE_SESSION,
                    itt: 12,
                    cid: 0,
                    cmd_sn: SerialNumber(base),
                    exp_stat_sn: SerialNumber(1),
                }),
            ],
        ),
    ];
    let dir = Path::new("fuzz/corpus/target_connection");
    std::fs::create_dir_all(dir)?;
    for (i, (flag, pdus)) in conv.iter().enumerate() {
        let mut v = vec![*flag];
        v.extend(wire(pdus));
        std::fs::write(dir.join(format!("seed-{i}")), v)?;
    }
    let dir = Path::new("fuzz/corpus/target_login");
    std::fs::create_dir_all(dir)?;
    let login = |csg: Stage, nsg: Stage, transit: bool, keys: &[(&str, &str)]| {
        Pdu::LoginRequest(LoginRequest {
            transit,
            continue_: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: Isid([0x80, 0, 0, 0, 0, 1]),
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: SerialNumber(1),
            exp_stat_sn: SerialNumber(0),
            data: Bytes::from(encode_pairs(keys)),
        })
    };
    let first = [
        ("InitiatorName", "iqn.2026-11.fuzz:i"),
        ("SessionType", "Normal"),
        ("TargetName", "iqn.2026-11.fuzz:t"),
    ];
    let mut none = first.to_vec();
    none.push(("AuthMethod", "None"));
    let seeds: Vec<(u8, Vec<Pdu>)> = vec![
        (
            0,
            vec![
                login(Stage::Security, Stage::Operational, true, &none),
                login(
                    Stage::Operational,
                    Stage::FullFeature,
                    true,
                    &[
                        ("HeaderDigest", "CRC32C,None"),
                        ("MaxRecvDataSegmentLength", "65536"),
                        ("InitialR2T", "No"),
                        ("ImmediateData", "Yes"),
                        ("MaxBurstLength", "262144"),
                    ],
                ),
            ],
        ),
        (
            1,
            vec![
                login(Stage::Security, Stage::Security, false, &{
                    let mut v = first.to_vec();
                    v.push(("AuthMethod", "CHAP,None"));
                    v
                }),
                login(
                    Stage::Security,
                    Stage::Security,
                    false,
                    &[("CHAP_A", "5,6,7,8")],
                ),
                login(
                    Stage::Security,
                    Stage::Operational,
                    true,
                    &[
                        ("CHAP_N", "u"),
                        ("CHAP_R", "0x00112233445566778899aabbccddeeff"),
                        ("CHAP_I", "7"),
                        ("CHAP_C", "0x0102030405060708"),
                    ],
                ),
            ],
        ),
        (
            0,
            vec![login(
                Stage::Security,
                Stage::FullFeature,
                true,
                &[
                    ("InitiatorName", "iqn.2026-11.fuzz:i"),
                    ("SessionType", "Discovery"),
                    ("AuthMethod", "None"),
                ],
            )],
        ),
    ];
    for (i, (flag, pdus)) in seeds.iter().enumerate() {
        let mut v = vec![*flag];
        v.extend(wire(pdus));
        std::fs::write(dir.join(format!("seed-{i}")), v)?;
    }
    Ok(())
}
