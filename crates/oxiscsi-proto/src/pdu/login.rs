//! Login Request (RFC 7143 §11.12) and Login Response (§11.13).

use bytes::Bytes;

use super::{be16, be32, put16, put32, DecodeError};
use crate::pdu::codes::{LoginStatus, Opcode};
use crate::serial::SerialNumber;

/// Login stage (§11.12.3): CSG and NSG values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    fn from_bits(v: u8, op: Opcode, field: &'static str) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Stage::Security),
            1 => Ok(Stage::Operational),
            3 => Ok(Stage::FullFeature),
            _ => Err(DecodeError::malformed(op, field, "§11.12.3")),
        }
    }
}

/// The 6-byte Initiator Session ID (§11.12.5), kept as raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Isid(pub [u8; 6]);

impl Isid {
    /// A random-qualifier ISID (type 0x80, §10.1.1): `80` then OUI-less random bytes.
    pub fn random(rng: &mut impl rand::RngCore) -> Isid {
        let mut b = [0u8; 6];
        rng.fill_bytes(&mut b[1..]);
        b[0] = 0x80;
        Isid(b)
    }
}

impl std::fmt::Debug for Isid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Isid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Login Request (§11.12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub continue_: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: Isid,
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: SerialNumber,
    pub exp_stat_sn: SerialNumber,
    pub data: Bytes,
}

fn stages(b: &[u8; 48], op: Opcode) -> Result<(bool, bool, Stage, Stage), DecodeError> {
    let transit = b[1] & 0x80 != 0;
    let cont = b[1] & 0x40 != 0;
    // §11.12.2: "If the T bit is set to 1, the C bit must be set to 0."
    if transit && cont {
        return Err(DecodeError::malformed(
            op,
            "both the T (transit) and C (continue) bits are set",
            "§11.12.2",
        ));
    }
    let csg = Stage::from_bits((b[1] >> 2) & 3, op, "reserved value 2 in CSG")?;
    let nsg = if transit {
        Stage::from_bits(b[1] & 3, op, "reserved value 2 in NSG")?
    } else {
        // NSG is reserved when T is 0 (§11.12.3).
        csg
    };
    Ok((transit, cont, csg, nsg))
}

fn put_stages(b: &mut [u8; 48], t: bool, c: bool, csg: Stage, nsg: Stage) {
    b[1] = u8::from(t) << 7 | u8::from(c) << 6 | (csg as u8) << 2 | if t { nsg as u8 } else { 0 };
}

impl LoginRequest {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        let (transit, continue_, csg, nsg) = stages(b, Opcode::LOGIN_REQUEST)?;
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b[8..14]);
        Ok(LoginRequest {
            transit,
            continue_,
            csg,
            nsg,
            version_max: b[2],
            version_min: b[3],
            isid: Isid(isid),
            tsih: be16(b, 14),
            itt: be32(b, 16),
            cid: be16(b, 20),
            cmd_sn: SerialNumber(be32(b, 24)),
            exp_stat_sn: SerialNumber(be32(b, 28)),
            data,
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        put_stages(b, self.transit, self.continue_, self.csg, self.nsg);
        b[2] = self.version_max;
        b[3] = self.version_min;
        b[8..14].copy_from_slice(&self.isid.0);
        put16(b, 14, self.tsih);
        put32(b, 16, self.itt);
        put16(b, 20, self.cid);
        put32(b, 24, self.cmd_sn.0);
        put32(b, 28, self.exp_stat_sn.0);
    }
}

/// Login Response (§11.13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: Isid,
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
    pub status: LoginStatus,
    pub data: Bytes,
}

impl LoginResponse {
    pub(super) fn decode(b: &[u8; 48], data: Bytes) -> Result<Self, DecodeError> {
        let (transit, continue_, csg, nsg) = stages(b, Opcode::LOGIN_RESPONSE)?;
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b[8..14]);
        Ok(LoginResponse {
            transit,
            continue_,
            csg,
            nsg,
            version_max: b[2],
            version_active: b[3],
            isid: Isid(isid),
            tsih: be16(b, 14),
            itt: be32(b, 16),
            stat_sn: SerialNumber(be32(b, 24)),
            exp_cmd_sn: SerialNumber(be32(b, 28)),
            max_cmd_sn: SerialNumber(be32(b, 32)),
            status: LoginStatus::new(b[36], b[37]),
            data,
        })
    }
    pub(super) fn encode_bhs(&self, b: &mut [u8; 48]) {
        put_stages(b, self.transit, self.continue_, self.csg, self.nsg);
        b[2] = self.version_max;
        b[3] = self.version_active;
        b[8..14].copy_from_slice(&self.isid.0);
        put16(b, 14, self.tsih);
        put32(b, 16, self.itt);
        put32(b, 24, self.stat_sn.0);
        put32(b, 28, self.exp_cmd_sn.0);
        put32(b, 32, self.max_cmd_sn.0);
        b[36] = self.status.class;
        b[37] = self.status.detail;
    }
}
