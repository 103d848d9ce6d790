use super::*;
use proptest::prelude::*;

fn any_cdb() -> impl Strategy<Value = Cdb> {
    prop_oneof![
        Just(Cdb::TestUnitReady),
        (any::<bool>(), any::<u8>(), any::<u16>()).prop_map(|(evpd, page, alloc)| Cdb::Inquiry {
            evpd,
            page,
            alloc
        }),
        (any::<bool>(), 0u8..4, 0u8..0x40, any::<u8>(), any::<u8>()).prop_map(
            |(dbd, pc, page, subpage, alloc)| Cdb::ModeSense6 {
                dbd,
                pc,
                page,
                subpage,
                alloc
            }
        ),
        (
            any::<bool>(),
            any::<bool>(),
            0u8..4,
            0u8..0x40,
            any::<u8>(),
            any::<u16>()
        )
            .prop_map(|(llbaa, dbd, pc, page, subpage, alloc)| Cdb::ModeSense10 {
                llbaa,
                dbd,
                pc,
                page,
                subpage,
                alloc
            }),
        Just(Cdb::ReadCapacity10),
        any::<u32>().prop_map(|alloc| Cdb::ReadCapacity16 { alloc }),
        (any::<u32>(), any::<u16>(), any::<bool>(), any::<bool>()).prop_map(
            |(lba, blocks, fua, dpo)| Cdb::Read10 {
                lba,
                blocks,
                fua,
                dpo
            }
        ),
        (any::<u64>(), any::<u32>(), any::<bool>(), any::<bool>()).prop_map(
            |(lba, blocks, fua, dpo)| Cdb::Read16 {
                lba,
                blocks,
                fua,
                dpo
            }
        ),
        (any::<u32>(), any::<u16>(), any::<bool>(), any::<bool>()).prop_map(
            |(lba, blocks, fua, dpo)| Cdb::Write10 {
                lba,
                blocks,
                fua,
                dpo
            }
        ),
        (any::<u64>(), any::<u32>(), any::<bool>(), any::<bool>()).prop_map(
            |(lba, blocks, fua, dpo)| Cdb::Write16 {
                lba,
                blocks,
                fua,
                dpo
            }
        ),
        (any::<u32>(), any::<u16>(), any::<bool>())
            .prop_map(|(lba, blocks, immed)| Cdb::SynchronizeCache10 { lba, blocks, immed }),
        (any::<u64>(), any::<u32>(), any::<bool>())
            .prop_map(|(lba, blocks, immed)| Cdb::SynchronizeCache16 { lba, blocks, immed }),
        (any::<bool>(), any::<u16>())
            .prop_map(|(anchor, param_len)| Cdb::Unmap { anchor, param_len }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(lba, blocks, unmap, anchor, ndob)| Cdb::WriteSame16 {
                lba,
                blocks,
                unmap,
                anchor,
                ndob
            }),
        (any::<u8>(), any::<u32>()).prop_map(|(select_report, alloc)| Cdb::ReportLuns {
            select_report,
            alloc
        }),
    ]
}

proptest! {
    #[test]
    fn round_trip(c in any_cdb()) {
        prop_assert_eq!(Cdb::parse(&c.to_bytes()).unwrap(), c);
    }

    #[test]
    fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..20)) {
        let _ = Cdb::parse(&b);
    }
}

#[test]
fn read_write_pick_size() {
    assert!(matches!(Cdb::read(0, 8), Cdb::Read10 { .. }));
    assert!(matches!(Cdb::read(1 << 32, 8), Cdb::Read16 { .. }));
    assert!(matches!(Cdb::read(0, 70000), Cdb::Read16 { .. }));
    assert!(matches!(
        Cdb::write(u64::from(u32::MAX), 2, false),
        Cdb::Write16 { .. }
    ));
    assert_eq!(
        Cdb::read(0x01020304, 2).to_bytes(),
        vec![0x28, 0, 1, 2, 3, 4, 0, 0, 2, 0]
    );
}

#[test]
fn short_cdb_errors() {
    assert_eq!(
        Cdb::parse(&[0x28, 0, 0]),
        Err(CdbError::Short {
            name: "READ(10)",
            need: 10,
            got: 3
        })
    );
    assert_eq!(Cdb::parse(&[]), Err(CdbError::Empty));
}

#[test]
fn unmap_list() {
    let v = unmap_parameter_list(&[(5, 10)]);
    assert_eq!(v.len(), 24);
    assert_eq!(&v[0..4], &[0, 22, 0, 16]);
    assert_eq!(v[15], 5);
    assert_eq!(v[19], 10);
}
