//! Data-in formats: standard INQUIRY, VPD pages 0x00/0x80/0x83/0xB0/0xB1/0xB2, READ
//! CAPACITY(10/16), REPORT LUNS and the MODE SENSE header (SPC-4 §6.6, §7.8; SBC-3
//! §5.16, §6.6). Parsers take whatever the target sent and never index past it.

use serde::Serialize;

/// Data shorter than its format needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {got} bytes, at least {need} needed")]
pub struct ShortData {
    pub what: &'static str,
    pub need: usize,
    pub got: usize,
}

fn need(b: &[u8], what: &'static str, n: usize) -> Result<(), ShortData> {
    if b.len() < n {
        Err(ShortData {
            what,
            need: n,
            got: b.len(),
        })
    } else {
        Ok(())
    }
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    (u64::from(be32(b, o)) << 32) | u64::from(be32(b, o + 4))
}

fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}

/// Standard INQUIRY data (SPC-4 §6.6.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StandardInquiry {
    pub peripheral_qualifier: u8,
    pub device_type: u8,
    pub removable: bool,
    pub version: u8,
    pub response_data_format: u8,
    /// Target port group support (ALUA), 0-3.
    pub tpgs: u8,
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

impl StandardInquiry {
    pub fn parse(b: &[u8]) -> Result<Self, ShortData> {
        need(b, "standard INQUIRY data", 36)?;
        Ok(StandardInquiry {
            peripheral_qualifier: b[0] >> 5,
            device_type: b[0] & 0x1f,
            removable: b[1] & 0x80 != 0,
            version: b[2],
            response_data_format: b[3] & 0x0f,
            tpgs: (b[5] >> 4) & 3,
            vendor: ascii(&b[8..16]),
            product: ascii(&b[16..32]),
            revision: ascii(&b[32..36]),
        })
    }
}

/// A VPD page's header and body.
fn vpd_body<'a>(b: &'a [u8], what: &'static str) -> Result<&'a [u8], ShortData> {
    need(b, what, 4)?;
    let len = usize::from(be16(b, 2));
    Ok(&b[4..(4 + len).min(b.len())])
}

/// VPD 0x00: supported VPD pages.
pub fn parse_supported_pages(b: &[u8]) -> Result<Vec<u8>, ShortData> {
    Ok(vpd_body(b, "Supported VPD pages")?.to_vec())
}

/// VPD 0x80: unit serial number.
pub fn parse_unit_serial(b: &[u8]) -> Result<String, ShortData> {
    Ok(ascii(vpd_body(b, "Unit Serial Number VPD page")?))
}

/// One designation descriptor of VPD 0x83.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Designator {
    pub code_set: u8,
    pub association: u8,
    pub designator_type: u8,
    pub protocol_id: Option<u8>,
    pub value: Vec<u8>,
}

impl Designator {
    pub fn type_name(&self) -> &'static str {
        match self.designator_type {
            0 => "vendor specific",
            1 => "T10 vendor ID",
            2 => "EUI-64",
            3 => "NAA",
            4 => "relative target port",
            5 => "target port group",
            6 => "logical unit group",
            7 => "MD5 logical unit",
            8 => "SCSI name string",
            9 => "protocol specific port",
            _ => "reserved",
        }
    }

    pub fn association_name(&self) -> &'static str {
        match self.association {
            0 => "logical unit",
            1 => "target port",
            2 => "target device",
            _ => "reserved",
        }
    }

    /// The value as text (ASCII/UTF-8 code sets) or hex.
    pub fn value_string(&self) -> String {
        if matches!(self.code_set, 2 | 3) {
            ascii(&self.value)
        } else {
            let hex: String = self.value.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// VPD 0x83: device identification.
pub fn parse_device_identification(b: &[u8]) -> Result<Vec<Designator>, ShortData> {
    let body = vpd_body(b, "Device Identification VPD page")?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 4 <= body.len() {
        let len = usize::from(body[pos + 3]);
        let end = (pos + 4 + len).min(body.len());
        let piv = body[pos + 1] & 0x80 != 0;
        out.push(Designator {
            code_set: body[pos] & 0x0f,
            association: (body[pos + 1] >> 4) & 3,
            designator_type: body[pos + 1] & 0x0f,
            protocol_id: piv.then_some(body[pos] >> 4),
            value: body[pos + 4..end].to_vec(),
        });
        pos += 4 + len;
    }
    Ok(out)
}

/// VPD 0xB0: block limits (SBC-3 §6.6.4).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct BlockLimits {
    pub max_compare_and_write_length: u8,
    pub optimal_transfer_length_granularity: u16,
    pub maximum_transfer_length: u32,
    pub optimal_transfer_length: u32,
    pub maximum_prefetch_length: u32,
    pub maximum_unmap_lba_count: u32,
    pub maximum_unmap_block_descriptor_count: u32,
    pub optimal_unmap_granularity: u32,
    pub unmap_granularity_alignment: Option<u32>,
    pub maximum_write_same_length: u64,
}

pub fn parse_block_limits(b: &[u8]) -> Result<BlockLimits, ShortData> {
    let body = vpd_body(b, "Block Limits VPD page")?;
    need(body, "Block Limits VPD page", 12)?;
    let get32 = |o: usize| {
        if body.len() >= o + 4 {
            be32(body, o)
        } else {
            0
        }
    };
    let ugav = get32(28);
    Ok(BlockLimits {
        max_compare_and_write_length: body[1],
        optimal_transfer_length_granularity: be16(body, 2),
        maximum_transfer_length: be32(body, 4),
        optimal_transfer_length: be32(body, 8),
        maximum_prefetch_length: get32(12),
        maximum_unmap_lba_count: get32(16),
        maximum_unmap_block_descriptor_count: get32(20),
        optimal_unmap_granularity: get32(24),
        unmap_granularity_alignment: (ugav & 0x8000_0000 != 0).then_some(ugav & 0x7fff_ffff),
        maximum_write_same_length: if body.len() >= 40 { be64(body, 32) } else { 0 },
    })
}

/// VPD 0xB1: block device characteristics (SBC-3 §6.6.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDeviceCharacteristics {
    /// 1 = non-rotating (SSD), 0 = not reported, else rpm.
    pub medium_rotation_rate: u16,
    pub nominal_form_factor: u8,
}

pub fn parse_block_device_characteristics(
    b: &[u8],
) -> Result<BlockDeviceCharacteristics, ShortData> {
    let body = vpd_body(b, "Block Device Characteristics VPD page")?;
    need(body, "Block Device Characteristics VPD page", 4)?;
    Ok(BlockDeviceCharacteristics {
        medium_rotation_rate: be16(body, 0),
        nominal_form_factor: body[3] & 0x0f,
    })
}

/// VPD 0xB2: logical block provisioning (SBC-3 §6.6.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogicalBlockProvisioning {
    pub threshold_exponent: u8,
    pub lbpu: bool,
    pub lbpws: bool,
    pub lbpws10: bool,
    pub lbprz: bool,
    pub anc_sup: bool,
    pub provisioning_type: u8,
}

pub fn parse_logical_block_provisioning(b: &[u8]) -> Result<LogicalBlockProvisioning, ShortData> {
    let body = vpd_body(b, "Logical Block Provisioning VPD page")?;
    need(body, "Logical Block Provisioning VPD page", 3)?;
    Ok(LogicalBlockProvisioning {
        threshold_exponent: body[0],
        lbpu: body[1] & 0x80 != 0,
        lbpws: body[1] & 0x40 != 0,
        lbpws10: body[1] & 0x20 != 0,
        lbprz: body[1] & 0x04 != 0,
        anc_sup: body[1] & 0x02 != 0,
        provisioning_type: body[2] & 7,
    })
}

/// Capacity from READ CAPACITY (10 or 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capacity {
    pub last_lba: u64,
    pub block_size: u32,
    pub protection: bool,
    /// Logical blocks per physical block exponent.
    pub lbppbe: u8,
    /// Thin provisioning enabled (LBPME).
    pub lbpme: bool,
    pub lbprz: bool,
}

impl Capacity {
    pub fn blocks(&self) -> u64 {
        self.last_lba.saturating_add(1)
    }

    pub fn bytes(&self) -> u64 {
        self.blocks().saturating_mul(u64::from(self.block_size))
    }

    pub fn parse10(b: &[u8]) -> Result<Capacity, ShortData> {
        need(b, "READ CAPACITY(10) data", 8)?;
        Ok(Capacity {
            last_lba: u64::from(be32(b, 0)),
            block_size: be32(b, 4),
            protection: false,
            lbppbe: 0,
            lbpme: false,
            lbprz: false,
        })
    }

    pub fn parse16(b: &[u8]) -> Result<Capacity, ShortData> {
        need(b, "READ CAPACITY(16) data", 16)?;
        Ok(Capacity {
            last_lba: be64(b, 0),
            block_size: be32(b, 8),
            protection: b[12] & 1 != 0,
            lbppbe: b[13] & 0x0f,
            lbpme: b[14] & 0x80 != 0,
            lbprz: b[14] & 0x40 != 0,
        })
    }
}

/// REPORT LUNS data: the LUN numbers of single-level addresses (SAM-5 §4.7), and the raw
/// 8-byte entries. The second value is the full list length the target has, which may
/// exceed what fits the allocation.
pub fn parse_report_luns(b: &[u8]) -> Result<(Vec<u64>, u32), ShortData> {
    need(b, "REPORT LUNS data", 8)?;
    let list_len = be32(b, 0);
    let avail = ((b.len() - 8) / 8).min(list_len as usize / 8);
    let luns = (0..avail).map(|i| be64(b, 8 + i * 8)).collect();
    Ok((luns, list_len))
}

/// The LUN number of an 8-byte LUN (peripheral or flat addressing), if single-level.
pub fn lun_number(raw: u64) -> Option<u16> {
    if raw & 0x0000_ffff_ffff_ffff != 0 {
        return None;
    }
    let first = (raw >> 48) as u16;
    match first >> 14 {
        0 if first >> 8 == 0 => Some(first & 0xff),
        1 => Some(first & 0x3fff),
        _ => None,
    }
}

/// MODE SENSE parameter header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModeHeader {
    pub mode_data_length: u16,
    pub medium_type: u8,
    pub write_protected: bool,
    pub dpofua: bool,
    pub block_descriptor_length: u16,
    pub header_length: usize,
}

impl ModeHeader {
    pub fn parse6(b: &[u8]) -> Result<ModeHeader, ShortData> {
        need(b, "MODE SENSE(6) header", 4)?;
        Ok(ModeHeader {
            mode_data_length: u16::from(b[0]),
            medium_type: b[1],
            write_protected: b[2] & 0x80 != 0,
            dpofua: b[2] & 0x10 != 0,
            block_descriptor_length: u16::from(b[3]),
            header_length: 4,
        })
    }

    pub fn parse10(b: &[u8]) -> Result<ModeHeader, ShortData> {
        need(b, "MODE SENSE(10) header", 8)?;
        Ok(ModeHeader {
            mode_data_length: be16(b, 0),
            medium_type: b[2],
            write_protected: b[3] & 0x80 != 0,
            dpofua: b[3] & 0x10 != 0,
            block_descriptor_length: be16(b, 6),
            header_length: 8,
        })
    }
}

/// Mode pages after the header and block descriptors: (page, subpage, bytes).
pub fn mode_pages(b: &[u8], h: &ModeHeader) -> Vec<(u8, u8, Vec<u8>)> {
    let total = if h.header_length == 4 {
        usize::from(h.mode_data_length) + 1
    } else {
        usize::from(h.mode_data_length) + 2
    };
    let end = total.min(b.len());
    let mut pos = h.header_length + usize::from(h.block_descriptor_length);
    let mut out = Vec::new();
    while pos + 2 <= end {
        let spf = b[pos] & 0x40 != 0;
        let page = b[pos] & 0x3f;
        let (sub, len, hdr) = if spf {
            if pos + 4 > end {
                break;
            }
            (b[pos + 1], usize::from(be16(b, pos + 2)), 4)
        } else {
            (0, usize::from(b[pos + 1]), 2)
        };
        let stop = (pos + hdr + len).min(end);
        out.push((page, sub, b[pos..stop].to_vec()));
        pos += hdr + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    #[test]
    fn inquiry() {
        let mut b = vec![0u8; 36];
        b[0] = 0x00;
        b[2] = 0x06;
        b[3] = 0x02;
        b[8..16].copy_from_slice(b"IET     ");
        b[16..32].copy_from_slice(b"VIRTUAL-DISK    ");
        b[32..36].copy_from_slice(b"0001");
        let i = StandardInquiry::parse(&b).unwrap();
        assert_eq!(
            (i.vendor.as_str(), i.product.as_str(), i.revision.as_str()),
            ("IET", "VIRTUAL-DISK", "0001")
        );
        assert!(StandardInquiry::parse(&b[..20]).is_err());
    }

    #[test]
    fn vpd_pages() {
        assert_eq!(
            parse_supported_pages(&hex!("00 00 00 03 00 80 83")).unwrap(),
            vec![0, 0x80, 0x83]
        );
        assert_eq!(parse_unit_serial(b"\x00\x80\x00\x04beaf").unwrap(), "beaf");
        let d =
            parse_device_identification(&hex!("00 83 00 0c 01 03 00 08 60 01 40 51 23 45 67 89"))
                .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].type_name(), "NAA");
        assert_eq!(d[0].value_string(), "0x6001405123456789");
        // Truncated descriptor list does not panic.
        assert_eq!(
            parse_device_identification(&hex!("00 83 00 08 01 03 00 08 60")).unwrap()[0].value,
            vec![0x60]
        );
        let mut bl = vec![0u8; 64];
        bl[1] = 0xb0;
        bl[3] = 0x3c;
        bl[8..12].copy_from_slice(&2048u32.to_be_bytes());
        bl[32..36].copy_from_slice(&0x8000_0008u32.to_be_bytes());
        let l = parse_block_limits(&bl).unwrap();
        assert_eq!(l.maximum_transfer_length, 2048);
        assert_eq!(l.unmap_granularity_alignment, Some(8));
        let p = parse_logical_block_provisioning(&hex!("00 b2 00 04 00 e4 02 00")).unwrap();
        assert!(p.lbpu && p.lbpws && p.lbpws10 && p.lbprz);
        assert_eq!(p.provisioning_type, 2);
        let c = parse_block_device_characteristics(&hex!("00 b1 00 3c 00 01 00 03")).unwrap();
        assert_eq!(c.medium_rotation_rate, 1);
    }

    #[test]
    fn capacity() {
        let c = Capacity::parse10(&hex!("00 07 ff ff 00 00 02 00")).unwrap();
        assert_eq!(c.bytes(), 256 << 20);
        let c =
            Capacity::parse16(&hex!("00 00 00 01 00 00 00 00 00 00 10 00 00 03 80 00")).unwrap();
        assert_eq!(c.block_size, 4096);
        assert_eq!(c.lbppbe, 3);
        assert!(c.lbpme);
    }

    #[test]
    fn report_luns() {
        let (l, len) = parse_report_luns(&hex!(
            "00 00 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00"
        ))
        .unwrap();
        assert_eq!(len, 16);
        assert_eq!(
            l.iter().map(|r| lun_number(*r)).collect::<Vec<_>>(),
            vec![Some(0), Some(1)]
        );
        // List length larger than the data: only what is there.
        let (l, len) =
            parse_report_luns(&hex!("00 00 01 00 00 00 00 00 00 02 00 00 00 00 00 00")).unwrap();
        assert_eq!((l.len(), len), (1, 256));
    }

    #[test]
    fn mode_sense() {
        // MODE SENSE(6): header + caching page 0x08 (len 0x12).
        let mut b = vec![0x17, 0, 0x10, 0];
        b.extend_from_slice(&[0x08, 0x12]);
        b.extend_from_slice(&[0x04; 0x12]);
        let h = ModeHeader::parse6(&b).unwrap();
        assert!(h.dpofua && !h.write_protected);
        let pages = mode_pages(&b, &h);
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].0, 8);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = StandardInquiry::parse(&b);
            let _ = parse_device_identification(&b);
            let _ = parse_block_limits(&b);
            let _ = parse_logical_block_provisioning(&b);
            let _ = parse_block_device_characteristics(&b);
            let _ = parse_report_luns(&b);
            let _ = Capacity::parse16(&b);
            if let Ok(h) = ModeHeader::parse6(&b) { let _ = mode_pages(&b, &h); }
            if let Ok(h) = ModeHeader::parse10(&b) { let _ = mode_pages(&b, &h); }
        }
    }
}
