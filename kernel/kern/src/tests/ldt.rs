//! The LDT object: descriptor checks, attaching to address spaces, detaching on deletion.

use keel_abi::error::Error as E;
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::object::ObjectType as T;

use crate::object::ldt::{check_descriptor, stored_descriptor};

use super::*;

/// 32-bit flat code, DPL 3 (type 0xa: execute/read).
const CODE32: u64 = 0x00cf_fa00_0000_ffff;
/// 16-bit data (B = 0), DPL 3, writable, base 0, limit 0xffff.
const DATA16: u64 = 0x0000_f200_0000_ffff;
/// 64-bit code, DPL 3.
const CODE64: u64 = 0x00af_fa00_0000_ffff;

#[test]
fn descriptor_rules() {
    // Allowed: empty, 16/32-bit code and data, 64-bit code, expand-down data,
    // execute-only code, not-present code/data with DPL 3.
    for ok in [
        0,
        CODE32,
        DATA16,
        CODE64,
        0x00cf_f200_0000_ffff, // 32-bit data
        0x0000_f600_0000_0fff, // 16-bit expand-down data
        0x00cf_f800_0000_ffff, // execute-only code
        DATA16 & !(1 << 47),   // not present
        0x000f_fb00_0000_ffff, // 16-bit code, accessed
    ] {
        assert!(check_descriptor(ok), "{ok:#x} refused");
    }
    for bad in [
        CODE32 & !(3 << 45),                // DPL 0
        DATA16 & !(1 << 45),                // DPL 2
        0x00cf_fe00_0000_ffff,              // conforming code
        0x00ef_fa00_0000_ffff,              // L = D = 1 (reserved)
        0x0000_e900_0000_0067,              // available 64-bit TSS, DPL 3
        0x0000_e200_0000_0fff,              // LDT descriptor, DPL 3
        0x0000_ec00_0008_1000,              // call gate, DPL 3
        0x0000_ee00_0008_1000,              // interrupt gate
        0x0000_ef00_0008_1000,              // trap gate
        0x0000_6c00_0008_1000 & !(1 << 47), // not-present call gate
        1,                                  // non-zero system descriptor
    ] {
        assert!(!check_descriptor(bad), "{bad:#x} accepted");
    }
    assert_eq!(stored_descriptor(DATA16), DATA16 | (1 << 40));
    assert_eq!(stored_descriptor(0), 0);
}

#[test]
fn set_entries_checks_every_descriptor_and_writes_none_on_error() {
    let mut w = World::new();
    let ldt = w.make(T::KeelX86Ldt, 0);
    assert!(matches!(w.cap(ldt), Cap::Ldt { .. }));
    let base = w.addr(ldt);
    w.root_ok(ldt, L::X86LdtSetEntries, &[1, 2, CODE32, DATA16], &[]);
    assert_eq!(w.k.hw.read(base + 8), CODE32 | (1 << 40));
    assert_eq!(w.k.hw.read(base + 16), DATA16 | (1 << 40));
    // The third descriptor is a call gate: InvalidArgument 2 + 2, nothing written.
    let r = w.root(
        ldt,
        L::X86LdtSetEntries,
        &[3, 3, CODE32, DATA16, 0x0000_ec00_0008_1000],
        &[],
    );
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![4]));
    assert_eq!(w.k.hw.read(base + 24), 0);
    // Ranges and lengths.
    let r = w.root(ldt, L::X86LdtSetEntries, &[512, 1, 0], &[]);
    assert_eq!((r.label, r.mrs), (err(E::RangeError), vec![0, 511]));
    let r = w.root(ldt, L::X86LdtSetEntries, &[510, 3, 0, 0, 0], &[]);
    assert_eq!((r.label, r.mrs), (err(E::RangeError), vec![1, 2]));
    let r = w.root(ldt, L::X86LdtSetEntries, &[0, 0], &[]);
    assert_eq!(r.label, err(E::RangeError));
    let r = w.root(ldt, L::X86LdtSetEntries, &[0, 3, 0], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    // Descriptors beyond the CPU registers come from the IPC buffer: 30 entries.
    let mut mrs = vec![100, 30];
    mrs.extend((0..30).map(|i| if i == 29 { CODE32 } else { DATA16 }));
    w.root_ok(ldt, L::X86LdtSetEntries, &mrs, &[]);
    assert_eq!(w.k.hw.read(base + 8 * 129), CODE32 | (1 << 40));
    // Every one, on both sides of the eagerly read registers (Args::EAGER).
    for i in 0..29 {
        assert_eq!(w.k.hw.read(base + 8 * (100 + i)), DATA16 | (1 << 40), "{i}");
    }
    mrs[31] = CODE32 & !(3 << 45);
    let r = w.root(ldt, L::X86LdtSetEntries, &mrs, &[]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![31]));
    // Wrong invocation on an LDT; LDT label on another object.
    let r = w.root(ldt, L::X86PageUnmap, &[], &[]);
    assert_eq!(r.label, err(E::IllegalOperation));
}

#[test]
fn attach_detach_and_deletion() {
    let mut w = World::new();
    let ldt = w.make(T::KeelX86Ldt, 0);
    let base = w.addr(ldt);
    w.root_ok(S_VSPACE, L::X86VSpaceSetLdt, &[], &[ldt]);
    assert_eq!(w.k.ldt_of_asid(ROOT_ASID), base);
    assert_eq!(w.k.hw.ldt_changes.last(), Some(&(ROOT_PML4, base)));
    // Not an LDT: InvalidCapability 1. A PML4 without an ASID: InvalidCapability 0.
    let ep = w.endpoint();
    let r = w.root(S_VSPACE, L::X86VSpaceSetLdt, &[], &[ep]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![1]));
    let pml4 = w.make(T::X64Pml4, 0);
    let r = w.root(pml4, L::X86VSpaceSetLdt, &[], &[ldt]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![0]));
    // Detach with no capability.
    w.root_ok(S_VSPACE, L::X86VSpaceSetLdt, &[], &[]);
    assert_eq!(w.k.ldt_of_asid(ROOT_ASID), 0);
    assert_eq!(w.k.hw.ldt_changes.last(), Some(&(ROOT_PML4, 0)));
    // One LDT shared by two address spaces; deleting a copy keeps it, deleting the
    // last capability detaches it from both.
    w.root_ok(S_ASID_POOL, L::X86AsidPoolAssign, &[], &[pml4]);
    let Cap::Pml4 {
        asid: Some(asid2), ..
    } = w.cap(pml4)
    else {
        panic!("no ASID")
    };
    let pml4_base = w.addr(pml4);
    let copy = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[copy, 64, ldt, 64, Rights::ALL.0 as u64],
        &[S_CNODE],
    );
    w.root_ok(S_VSPACE, L::X86VSpaceSetLdt, &[], &[copy]);
    w.root_ok(pml4, L::X86VSpaceSetLdt, &[], &[ldt]);
    assert_eq!(w.k.ldt_of_asid(asid2), base);
    w.root_ok(S_CNODE, L::CNodeDelete, &[copy, 64], &[]);
    assert_eq!(w.k.ldt_of_asid(ROOT_ASID), base);
    w.root_ok(S_CNODE, L::CNodeDelete, &[ldt, 64], &[]);
    assert_eq!((w.k.ldt_of_asid(ROOT_ASID), w.k.ldt_of_asid(asid2)), (0, 0));
    let last_two = &w.k.hw.ldt_changes[w.k.hw.ldt_changes.len() - 2..];
    assert!(last_two.contains(&(ROOT_PML4, 0)) && last_two.contains(&(pml4_base, 0)));
    // Deleting an address space detaches its LDT.
    let ldt2 = w.make(T::KeelX86Ldt, 0);
    w.root_ok(pml4, L::X86VSpaceSetLdt, &[], &[ldt2]);
    w.root_ok(S_CNODE, L::CNodeDelete, &[pml4, 64], &[]);
    assert_eq!(w.k.ldt_of_asid(asid2), 0);
    assert_eq!(w.k.hw.ldt_changes.last(), Some(&(pml4_base, 0)));
}

/// At most `MAX_LDT_ATTACHMENTS` address spaces carry an LDT: one more is
/// NotEnoughMemory with MR0 = 0 (no room left); re-attaching to one of them still works,
/// and a detach makes room.
#[test]
fn attachment_table_full_is_not_enough_memory() {
    let mut w = World::new();
    let ldt = w.make(T::KeelX86Ldt, 0);
    let spaces: Vec<u64> = (0..=crate::object::ldt::MAX_LDT_ATTACHMENTS)
        .map(|_| {
            let pml4 = w.make(T::X64Pml4, 0);
            w.root_ok(S_ASID_POOL, L::X86AsidPoolAssign, &[], &[pml4]);
            pml4
        })
        .collect();
    let (last, full) = spaces.split_last().unwrap();
    for &pml4 in full {
        w.root_ok(pml4, L::X86VSpaceSetLdt, &[], &[ldt]);
    }
    let r = w.root(*last, L::X86VSpaceSetLdt, &[], &[ldt]);
    assert_eq!((r.label, r.mrs), (err(E::NotEnoughMemory), vec![0]));
    w.root_ok(full[3], L::X86VSpaceSetLdt, &[], &[ldt]);
    w.root_ok(full[3], L::X86VSpaceSetLdt, &[], &[]);
    w.root_ok(*last, L::X86VSpaceSetLdt, &[], &[ldt]);
}
