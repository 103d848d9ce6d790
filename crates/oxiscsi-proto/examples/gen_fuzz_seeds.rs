//! Write seed inputs for the fuzz targets: one encoded PDU of every opcode, with and
//! without digests, plus typical login text. Run from the repository root:
//! `cargo run -p oxiscsi-proto --example gen_fuzz_seeds`.

use std::path::Path;

use bytes::Bytes;
use oxiscsi_proto::pdu::*;
use oxiscsi_proto::{Digest, SerialNumber};

fn main() -> std::io::Result<()> {
    let sn = SerialNumber;
    let d = |s: &'static [u8]| Bytes::from_static(s);
    let lun = Lun::from_number(1);
    let pdus = vec![
        Pdu::NopOut(NopOut {
            immediate: true,
            lun,
            itt: 5,
            ttt: RESERVED_TAG,
            cmd_sn: sn(1),
            exp_stat_sn: sn(2),
            data: d(b"ping"),
        }),
        Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: true,
            read: true,
            write: false,
            attr: TaskAttr::Simple,
            lun,
            itt: 6,
            expected_data_transfer_length: 4096,
            cmd_sn: sn(1),
            exp_stat_sn: sn(2),
            cdb: [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0].into(),
            bidi_read_length: None,
            data: Bytes::new(),
        }),
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: TmfFunction::ABORT_TASK,
            lun,
            itt: 7,
            referenced_task_tag: 6,
            cmd_sn: sn(2),
            exp_stat_sn: sn(2),
            ref_cmd_sn: sn(1),
            exp_data_sn: 0,
        }),
        Pdu::LoginRequest(LoginRequest {
            transit: true,
            continue_: false,
            csg: Stage::Security,
            nsg: Stage::Operational,
            version_max: 0,
            version_min: 0,
            isid: Isid([0x80, 1, 2, 3, 4, 5]),
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: sn(1),
            exp_stat_sn: sn(0),
            data: d(
                b"InitiatorName=iqn.x:i\0SessionType=Normal\0TargetName=iqn.x:t\0AuthMethod=None\0",
            ),
        }),
        Pdu::TextRequest(TextRequest {
            immediate: false,
            final_: true,
            continue_: false,
            lun: Lun(0),
            itt: 8,
            ttt: RESERVED_TAG,
            cmd_sn: sn(1),
            exp_stat_sn: sn(1),
            data: d(b"SendTargets=All\0"),
        }),
        Pdu::DataOut(DataOut {
            final_: true,
            lun,
            itt: 9,
            ttt: 3,
            exp_stat_sn: sn(3),
            data_sn: 0,
            buffer_offset: 0,
            data: d(b"0123456789abcdef"),
        }),
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: LogoutReason::CLOSE_SESSION,
            itt: 10,
            cid: 0,
            cmd_sn: sn(4),
            exp_stat_sn: sn(4),
        }),
        Pdu::SnackRequest(SnackRequest {
            snack_type: SnackType::STATUS,
            lun,
            itt: 11,
            ttt: RESERVED_TAG,
            exp_stat_sn: sn(4),
            beg_run: 0,
            run_length: 0,
        }),
        Pdu::NopIn(NopIn {
            lun: Lun(0),
            itt: RESERVED_TAG,
            ttt: 12,
            stat_sn: sn(5),
            exp_cmd_sn: sn(5),
            max_cmd_sn: sn(36),
            data: Bytes::new(),
        }),
        Pdu::ScsiResponse(ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: false,
            overflow: false,
            underflow: true,
            response: ServiceResponse::COMPLETED,
            status: ScsiStatus::CHECK_CONDITION,
            itt: 0x102,
            snack_tag: 0,
            stat_sn: sn(0),
            exp_cmd_sn: sn(5),
            max_cmd_sn: sn(36),
            exp_data_sn: 0,
            bidi_read_residual_count: 0,
            residual_count: 512,
            data: ScsiResponse::sense_segment(&[
                0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0,
            ]),
        }),
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: TmfResponse::COMPLETE,
            itt: 0x103,
            stat_sn: sn(1),
            exp_cmd_sn: sn(5),
            max_cmd_sn: sn(36),
        }),
        Pdu::LoginResponse(LoginResponse {
            transit: true,
            continue_: false,
            csg: Stage::Operational,
            nsg: Stage::FullFeature,
            version_max: 0,
            version_active: 0,
            isid: Isid([0x80, 0, 0, 0, 0, 1]),
            tsih: 7,
            itt: 1,
            stat_sn: sn(1),
            exp_cmd_sn: sn(1),
            max_cmd_sn: sn(32),
            status: LoginStatus::SUCCESS,
            data: d(b"MaxRecvDataSegmentLength=8192\0HeaderDigest=None\0"),
        }),
        Pdu::TextResponse(TextResponse {
            final_: true,
            continue_: false,
            lun: Lun(0),
            itt: 0x104,
            ttt: RESERVED_TAG,
            stat_sn: sn(2),
            exp_cmd_sn: sn(5),
            max_cmd_sn: sn(36),
            data: d(b"TargetName=iqn.x:t\0TargetAddress=127.0.0.1:3260,1\0"),
        }),
        Pdu::DataIn(DataIn {
            final_: true,
            ack: false,
            overflow: false,
            underflow: false,
            status_present: true,
            status: ScsiStatus::GOOD,
            lun,
            itt: 0x100,
            ttt: RESERVED_TAG,
            stat_sn: sn(0),
            exp_cmd_sn: sn(5),
            max_cmd_sn: sn(36),
            data_sn: 0,
            buffer_offset: 0,
            residual_count: 0,
            data: Bytes::from(vec![0xa5; 64]),
        }),
        Pdu::LogoutResponse(LogoutResponse {
            response: LogoutResponseCode::SUCCESS,
            itt: 0x105,
            stat_sn: sn(3),
            exp_cmd_sn: sn(5),
            max_cmd_sn: sn(36),
            time2wait: 2,
            time2retain: 0,
        }),
        Pdu::R2t(R2t {
            lun,
            itt: 0x101,
            ttt: 3,
            stat_sn: sn(1),
            exp_cmd_sn: sn(5),
            max_cmd_sn: sn(36),
            r2t_sn: 0,
            buffer_offset: 8192,
            desired_data_transfer_length: 8192,
        }),
        Pdu::AsyncMessage(AsyncMessage {
            lun: Lun(0),
            stat_sn: sn(1),
            exp_cmd_sn: sn(5),
            max_cmd_sn: sn(36),
            event: AsyncEvent::LOGOUT_REQUEST,
            vcode: 0,
            parameter1: 0,
            parameter2: 0,
            parameter3: 5,
            data: Bytes::new(),
        }),
        Pdu::Reject(Reject {
            reason: RejectReason::PROTOCOL_ERROR,
            stat_sn: sn(1),
            exp_cmd_sn: sn(5),
            max_cmd_sn: sn(36),
            data_sn_or_r2t_sn: 0,
            data: Bytes::from(vec![1u8; 48]),
        }),
    ];
    let root = Path::new("fuzz/corpus");
    for dir in ["pdu", "initiator_connection", "initiator_login", "text"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    for (i, p) in pdus.iter().enumerate() {
        for (tag, hd, dd) in [
            ("plain", Digest::None, Digest::None),
            ("digests", Digest::Crc32c, Digest::Crc32c),
        ] {
            std::fs::write(
                root.join("pdu")
                    .join(format!("{i:02}-{:?}-{tag}", p.opcode())),
                Framer::encode(p, hd, dd).to_vec(),
            )?;
        }
        if !p.opcode().is_initiator() {
            std::fs::write(
                root.join("initiator_connection")
                    .join(format!("{i:02}-{:?}", p.opcode())),
                Framer::encode(p, Digest::None, Digest::None).to_vec(),
            )?;
        }
        if let Pdu::LoginResponse(_) = p {
            let mut v = vec![0u8, 0u8];
            v.extend(Framer::encode(p, Digest::None, Digest::None).to_vec());
            std::fs::write(root.join("initiator_login").join("login-response"), v)?;
        }
    }
    let texts: [&[u8]; 4] = [
        b"HeaderDigest=CRC32C,None\0MaxBurstLength=262144\0InitialR2T=Yes\0",
        b"AuthMethod=CHAP\0CHAP_A=5\0CHAP_I=42\0CHAP_C=0x0102030405060708\0",
        b"X-com.example.Key=1\0OFMarker=No\0ErrorRecoveryLevel=2\0",
        b"TargetName=iqn.2026-11.test:t\0TargetAddress=[::1]:3260,1\0",
    ];
    for (i, t) in texts.iter().enumerate() {
        std::fs::write(root.join("text").join(format!("{i:02}")), t)?;
    }
    println!("seeds written under {}", root.display());
    Ok(())
}
