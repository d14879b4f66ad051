//! Paging structures and frames, ASID pools, I/O ports and IRQ handlers.

use keel_abi::error::Error as E;
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::object::ObjectType as T;

use crate::object::irq::IrqState;
use crate::object::vspace::translate_user;

use super::*;

const VA: u64 = 0x1000_0000;
const RW: u64 = 3;

/// PDPT, PD and PT for `VA` in the root's address space; returns their slots.
fn tables(w: &mut World) -> (u64, u64, u64) {
    let pdpt = w.make(T::X86Pdpt, 0);
    let pd = w.make(T::X86PageDirectory, 0);
    let pt = w.make(T::X86PageTable, 0);
    w.root_ok(pdpt, L::X86PdptMap, &[VA, 0], &[S_VSPACE]);
    w.root_ok(pd, L::X86PageDirectoryMap, &[VA, 0], &[S_VSPACE]);
    w.root_ok(pt, L::X86PageTableMap, &[VA, 0], &[S_VSPACE]);
    (pdpt, pd, pt)
}

#[test]
fn map_tables_and_frames() {
    let mut w = World::new();
    let f = w.make(T::X86Page4K, 0);
    let base = w.addr(f);
    // Without tables: FailedLookup, with the bits the missing level would resolve.
    let r = w.root(f, L::X86PageMap, &[VA, RW, 0], &[S_VSPACE]);
    assert_eq!((r.label, r.mrs), (err(E::FailedLookup), vec![0, 2, 39]));
    let pdpt = w.make(T::X86Pdpt, 0);
    w.root_ok(pdpt, L::X86PdptMap, &[VA, 0], &[S_VSPACE]);
    assert!(
        matches!(w.cap(pdpt), Cap::Pdpt { mapping: Some(m), .. } if m.asid == ROOT_ASID && m.vaddr == 0)
    );
    let r = w.root(f, L::X86PageMap, &[VA, RW, 0], &[S_VSPACE]);
    assert_eq!(r.mrs, vec![0, 2, 30]);
    // A mapped table cap cannot be mapped again; another table there is DeleteFirst.
    let r = w.root(pdpt, L::X86PdptMap, &[VA, 0], &[S_VSPACE]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![0]));
    let pdpt2 = w.make(T::X86Pdpt, 0);
    let r = w.root(pdpt2, L::X86PdptMap, &[VA, 0], &[S_VSPACE]);
    assert_eq!(r.label, err(E::DeleteFirst));
    let pd = w.make(T::X86PageDirectory, 0);
    w.root_ok(pd, L::X86PageDirectoryMap, &[VA, 0], &[S_VSPACE]);
    let pt = w.make(T::X86PageTable, 0);
    w.root_ok(pt, L::X86PageTableMap, &[VA, 0], &[S_VSPACE]);
    // Map read-write, translate, unmap.
    w.root_ok(f, L::X86PageMap, &[VA, RW, 0], &[S_VSPACE]);
    assert_eq!(
        translate_user(&w.k.hw, ROOT_PML4, VA + 0x123),
        Some(base + 0x123)
    );
    // A first mapping needs no TLB flush (no TLB holds a not-present entry).
    assert!(!w.k.hw.page_flushes.contains(&(ROOT_ASID, VA)));
    let pt_base = w.addr(pt);
    assert_eq!(
        w.k.hw.read(pt_base + 8 * ((VA >> 12) & 511)) & 7,
        7,
        "present, writable, user"
    );
    // Mapping it again at the same place is a remap (allowed); elsewhere is not.
    w.root_ok(
        f,
        L::X86PageMap,
        &[VA, Rights::READ.0 as u64, 0],
        &[S_VSPACE],
    );
    // The remap changed a present entry: flushed.
    assert!(w.k.hw.page_flushes.contains(&(ROOT_ASID, VA)));
    assert_eq!(
        w.k.hw.read(pt_base + 8 * ((VA >> 12) & 511)) & 7,
        5,
        "read-only now"
    );
    let r = w.root(f, L::X86PageMap, &[VA + 0x1000, RW, 0], &[S_VSPACE]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![0]));
    // Another frame over a present entry.
    let g = w.make(T::X86Page4K, 0);
    let r = w.root(g, L::X86PageMap, &[VA, RW, 0], &[S_VSPACE]);
    assert_eq!(r.label, err(E::DeleteFirst));
    // Alignment, user range, rights.
    let r = w.root(g, L::X86PageMap, &[VA + 0x10, RW, 0], &[S_VSPACE]);
    assert_eq!(r.label, err(E::AlignmentError));
    let r = w.root(
        g,
        L::X86PageMap,
        &[keel_abi::object::USER_TOP, RW, 0],
        &[S_VSPACE],
    );
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![0]));
    let r = w.root(g, L::X86PageMap, &[VA + 0x1000, 0, 0], &[S_VSPACE]);
    assert_eq!(r.label, err(E::InvalidArgument));
    // A read-only copy maps read-only even when asked for write.
    let ro = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[ro, 64, g, 64, Rights::READ.0 as u64],
        &[S_CNODE],
    );
    w.root_ok(ro, L::X86PageMap, &[VA + 0x1000, RW, 0], &[S_VSPACE]);
    assert_eq!(
        w.k.hw.read(pt_base + 8 * (((VA + 0x1000) >> 12) & 511)) & 2,
        0
    );
    // GetAddress.
    let r = w.root_ok(g, L::X86PageGetAddress, &[], &[]);
    assert_eq!(r.mrs, vec![w.addr(g)]);
    // Unmap and delete clear exactly their entries.
    w.root_ok(f, L::X86PageUnmap, &[], &[]);
    assert_eq!(translate_user(&w.k.hw, ROOT_PML4, VA), None);
    assert!(matches!(w.cap(f), Cap::Frame { mapping: None, .. }));
    w.root_ok(S_CNODE, L::CNodeDelete, &[ro, 64], &[]);
    assert_eq!(translate_user(&w.k.hw, ROOT_PML4, VA + 0x1000), None);
    // Remap elsewhere after the unmap.
    w.root_ok(f, L::X86PageMap, &[VA + 0x5000, RW, 0], &[S_VSPACE]);
    assert_eq!(translate_user(&w.k.hw, ROOT_PML4, VA + 0x5000), Some(base));
    // A page table with copies cannot be unmapped; deleting it unmaps everything below.
    let ptc = w.alloc_slot();
    w.root_ok(S_CNODE, L::CNodeCopy, &[ptc, 64, pt, 64, 15], &[S_CNODE]);
    let r = w.root(pt, L::X86PageTableUnmap, &[], &[]);
    assert_eq!(r.label, err(E::RevokeFirst));
    w.root_ok(S_CNODE, L::CNodeDelete, &[ptc, 64], &[]);
    w.k.hw.space_flushes.clear();
    w.root_ok(S_CNODE, L::CNodeDelete, &[pt, 64], &[]);
    assert_eq!(translate_user(&w.k.hw, ROOT_PML4, VA + 0x5000), None);
    assert_eq!(w.k.hw.space_flushes, vec![ROOT_ASID]);
    let _ = (pd, pdpt);
}

#[test]
fn large_and_huge_pages() {
    let mut w = World::new();
    let (_, pd, pt) = tables(&mut w);
    let large = w.make(T::X86LargePage, 0);
    let lb = w.addr(large);
    // Over the PD entry holding the page table: DeleteFirst.
    let r = w.root(large, L::X86PageMap, &[VA, RW, 0], &[S_VSPACE]);
    assert_eq!(r.label, err(E::DeleteFirst));
    w.root_ok(large, L::X86PageMap, &[VA + (2 << 20), RW, 0], &[S_VSPACE]);
    assert_eq!(
        translate_user(&w.k.hw, ROOT_PML4, VA + (2 << 20) + 0x12345),
        Some(lb + 0x12345)
    );
    // A page table cannot go where the large page is.
    let pt2 = w.make(T::X86PageTable, 0);
    let r = w.root(pt2, L::X86PageTableMap, &[VA + (2 << 20), 0], &[S_VSPACE]);
    assert_eq!(r.label, err(E::DeleteFirst));
    // A 1 GiB page in the PDPT at 1 GiB.
    let s = w.alloc_slot();
    assert_eq!(w.retype(S_HUGE_UNTYPED, T::X64HugePage, 0, s, 1).label, 0);
    w.root_ok(s, L::X86PageMap, &[1 << 30, RW, 0], &[S_VSPACE]);
    assert_eq!(
        translate_user(&w.k.hw, ROOT_PML4, (1 << 30) + 0x1234_5678),
        Some(HUGE_UNTYPED_BASE + 0x1234_5678)
    );
    let _ = (pd, pt);
}

#[test]
fn asid_pools() {
    let mut w = World::new();
    // A fresh PML4 has no ASID: it cannot be mapped into.
    let pml4 = w.make(T::X64Pml4, 0);
    let f = w.make(T::X86Page4K, 0);
    let r = w.root(f, L::X86PageMap, &[VA, RW, 0], &[pml4]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![1]));
    // Assign from the root's pool: the next free ASID (1 is the root's).
    w.root_ok(S_ASID_POOL, L::X86AsidPoolAssign, &[], &[pml4]);
    assert!(matches!(w.cap(pml4), Cap::Pml4 { asid: Some(2), .. }));
    let r = w.root(S_ASID_POOL, L::X86AsidPoolAssign, &[], &[pml4]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![1]));
    // MakePool needs an untyped of exactly 4 KiB without children.
    let big = w.make(T::Untyped, 13);
    let d = w.alloc_slot();
    let r = w.root(
        S_ASID_CONTROL,
        L::X86AsidControlMakePool,
        &[d, 64],
        &[big, S_CNODE],
    );
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![1]));
    let mut pools = Vec::new();
    for i in 1..8u64 {
        let u = w.make(T::Untyped, 12);
        let p = w.alloc_slot();
        w.root_ok(
            S_ASID_CONTROL,
            L::X86AsidControlMakePool,
            &[p, 64],
            &[u, S_CNODE],
        );
        assert!(matches!(w.cap(p), Cap::AsidPool { asid_base, .. } if asid_base as u64 == 512 * i));
        pools.push((u, p));
    }
    // All eight pools exist.
    let u = w.make(T::Untyped, 12);
    let r = w.root(
        S_ASID_CONTROL,
        L::X86AsidControlMakePool,
        &[d, 64],
        &[u, S_CNODE],
    );
    assert_eq!(r.label, err(E::DeleteFirst));
    // seL4 looks for a free pool first: an unsuitable untyped is DeleteFirst too.
    let r = w.root(
        S_ASID_CONTROL,
        L::X86AsidControlMakePool,
        &[d, 64],
        &[big, S_CNODE],
    );
    assert_eq!(r.label, err(E::DeleteFirst));
    // An address space from pool 1.
    let p2 = w.make(T::X64Pml4, 0);
    w.root_ok(pools[0].1, L::X86AsidPoolAssign, &[], &[p2]);
    assert!(matches!(
        w.cap(p2),
        Cap::Pml4 {
            asid: Some(512),
            ..
        }
    ));
    assert_eq!(w.k.vspace_of_asid(512), Some(w.addr(p2)));
    // Deleting the pool (revoking its untyped) invalidates its address spaces.
    w.root_ok(S_CNODE, L::CNodeRevoke, &[pools[0].0, 64], &[]);
    assert_eq!(w.k.vspace_of_asid(512), None);
    assert!(w.k.hw.space_flushes.contains(&512));
    // The freed pool slot can be made again.
    w.root_ok(
        S_ASID_CONTROL,
        L::X86AsidControlMakePool,
        &[d, 64],
        &[u, S_CNODE],
    );
    // Deleting a PML4 frees its ASID.
    w.root_ok(S_CNODE, L::CNodeDelete, &[pml4, 64], &[]);
    assert_eq!(w.k.vspace_of_asid(2), None);
}

/// Table and frame Map decode as seL4's decodeX86PageTableInvocation,
/// decodeX64PageDirectoryInvocation, decodeX64PDPTInvocation and
/// decodeX86FrameInvocation do: the order of their checks and their codes.
#[test]
fn paging_checks_in_sel4_order() {
    let mut w = World::new();
    const TOP: u64 = keel_abi::object::USER_TOP; // 0x7fff_ffff_f000
    // Tables at an address between seL4_UserTop and 2^47: rounded down to the region
    // they cover, so they go in the last user PML4 entry.
    let pdpt = w.make(T::X86Pdpt, 0);
    let pd = w.make(T::X86PageDirectory, 0);
    let pt = w.make(T::X86PageTable, 0);
    w.root_ok(pdpt, L::X86PdptMap, &[TOP + 0x800, 0], &[S_VSPACE]);
    w.root_ok(pd, L::X86PageDirectoryMap, &[TOP + 0xfff, 0], &[S_VSPACE]);
    w.root_ok(pt, L::X86PageTableMap, &[(1 << 47) - 1, 0], &[S_VSPACE]);
    assert!(
        matches!(w.cap(pt), Cap::PageTable { mapping: Some(m), .. } if m.vaddr == 0x7fff_ffe0_0000)
    );
    assert!(
        matches!(w.cap(pdpt), Cap::Pdpt { mapping: Some(m), .. } if m.vaddr == 0x7f80_0000_0000)
    );
    assert_eq!(w.k.hw.read(ROOT_PML4 + 8 * 255) & !0xfff, w.addr(pdpt));
    // 2^47 and above (the kernel half, non-canonical addresses): InvalidArgument 0,
    // for every kind of table; nothing is written.
    let kernel_half: Vec<u64> = (256..512).map(|i| w.k.hw.read(ROOT_PML4 + 8 * i)).collect();
    for (kind, label) in [
        (T::X86PageTable, L::X86PageTableMap),
        (T::X86PageDirectory, L::X86PageDirectoryMap),
        (T::X86Pdpt, L::X86PdptMap),
    ] {
        let table = w.make(kind, 0);
        for vaddr in [
            1 << 47,
            (1 << 47) + (2 << 20),
            0xffff_8000_0000_0000,
            u64::MAX,
        ] {
            let r = w.root(table, label, &[vaddr, 0], &[S_VSPACE]);
            assert_eq!(
                (r.label, r.mrs),
                (err(E::InvalidArgument), vec![0]),
                "{label:?} {vaddr:#x}"
            );
        }
    }
    let after: Vec<u64> = (256..512).map(|i| w.k.hw.read(ROOT_PML4 + 8 * i)).collect();
    assert_eq!(kernel_half, after);
    // A mapped table without the VSpace capability (or the second word): Truncated
    // before "already mapped".
    let r = w.root(pt, L::X86PageTableMap, &[VA, 0], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(pdpt, L::X86PdptMap, &[VA], &[S_VSPACE]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(pdpt, L::X86PdptMap, &[VA, 0], &[S_VSPACE]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![0]));
    // Frames: the range (the end may reach 2^47 - 1) before the alignment.
    let f = w.make(T::X86Page4K, 0);
    let r = w.root(f, L::X86PageMap, &[TOP + 0x10, RW, 0], &[S_VSPACE]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![0]));
    let r = w.root(f, L::X86PageMap, &[TOP - 0xfff, RW, 0], &[S_VSPACE]);
    assert_eq!(r.label, err(E::AlignmentError));
    let r = w.root(f, L::X86PageMap, &[TOP, RW, 0], &[S_VSPACE]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![0]));
    w.root_ok(f, L::X86PageMap, &[TOP - 0x1000, RW, 0], &[S_VSPACE]);
    // A mapped frame in another address space: InvalidCapability 1 (at the same or
    // another address); in its own at another address: InvalidArgument 0.
    let other = w.make(T::X64Pml4, 0);
    w.root_ok(S_ASID_POOL, L::X86AsidPoolAssign, &[], &[other]);
    for vaddr in [TOP - 0x1000, VA] {
        let r = w.root(f, L::X86PageMap, &[vaddr, RW, 0], &[other]);
        assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![1]));
    }
    let r = w.root(f, L::X86PageMap, &[TOP - 0x2000, RW, 0], &[S_VSPACE]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![0]));
    // A stale ASID: the PML4's pool is deleted. FailedLookup, not the source, with
    // the lookup fault InvalidRoot; after the range, before the alignment.
    let u = w.make(T::Untyped, 12);
    let pool = w.alloc_slot();
    w.root_ok(
        S_ASID_CONTROL,
        L::X86AsidControlMakePool,
        &[pool, 64],
        &[u, S_CNODE],
    );
    let stale = w.make(T::X64Pml4, 0);
    w.root_ok(pool, L::X86AsidPoolAssign, &[], &[stale]);
    w.root_ok(S_CNODE, L::CNodeRevoke, &[u, 64], &[]);
    assert!(matches!(
        w.cap(stale),
        Cap::Pml4 {
            asid: Some(512),
            ..
        }
    ));
    let g = w.make(T::X86Page4K, 0);
    let new_pt = w.make(T::X86PageTable, 0);
    for (cap, label, mrs) in [
        (g, L::X86PageMap, vec![VA, RW, 0]),
        (g, L::X86PageMap, vec![VA + 1, RW, 0]),
        (new_pt, L::X86PageTableMap, vec![VA, 0]),
    ] {
        let r = w.root(cap, label, &mrs, &[stale]);
        assert_eq!(
            (r.label, r.mrs),
            (err(E::FailedLookup), vec![0, 1]),
            "{label:?}"
        );
    }
    let r = w.root(g, L::X86PageMap, &[TOP, RW, 0], &[stale]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![0]));
    let r = w.root(new_pt, L::X86PageTableMap, &[1 << 47, 0], &[stale]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![0]));
    // The pool is made again and its first ASID given to another PML4: the stale
    // capability's ASID names that one now, InvalidCapability 1.
    w.root_ok(
        S_ASID_CONTROL,
        L::X86AsidControlMakePool,
        &[pool, 64],
        &[u, S_CNODE],
    );
    let fresh = w.make(T::X64Pml4, 0);
    w.root_ok(pool, L::X86AsidPoolAssign, &[], &[fresh]);
    assert!(matches!(
        w.cap(fresh),
        Cap::Pml4 {
            asid: Some(512),
            ..
        }
    ));
    for (cap, label, mrs) in [
        (g, L::X86PageMap, vec![VA + 1, RW, 0]),
        (new_pt, L::X86PageTableMap, vec![VA, 0]),
    ] {
        let r = w.root(cap, label, &mrs, &[stale]);
        assert_eq!(
            (r.label, r.mrs),
            (err(E::InvalidCapability), vec![1]),
            "{label:?}"
        );
    }
    let _ = pd;
}

#[test]
fn io_ports() {
    let mut w = World::new();
    let p = w.alloc_slot();
    let r = w.root(
        S_IO_PORT_CONTROL,
        L::X86IoPortControlIssue,
        &[0x64, 0x60, p, 64],
        &[S_CNODE],
    );
    assert_ne!(r.label, 0);
    w.root_ok(
        S_IO_PORT_CONTROL,
        L::X86IoPortControlIssue,
        &[0x60, 0x64, p, 64],
        &[S_CNODE],
    );
    assert_eq!(
        w.cap(p),
        Cap::IoPort {
            first: 0x60,
            last: 0x64
        }
    );
    w.k.hw.port_value = 0xab;
    let r = w.root_ok(p, L::X86IoPortIn8, &[0x60], &[]);
    assert_eq!(r.mrs, vec![0xab]);
    w.root_ok(p, L::X86IoPortOut16, &[0x63, 0xbeef], &[]);
    assert_eq!(
        w.k.hw.ports,
        vec![
            PortOp::In {
                port: 0x60,
                size: 1
            },
            PortOp::Out {
                port: 0x63,
                size: 2,
                value: 0xbeef
            }
        ]
    );
    // Outside the range (also by width): refused, and no port is touched.
    for (label, port) in [
        (L::X86IoPortIn8, 0x5f),
        (L::X86IoPortIn16, 0x64),
        (L::X86IoPortIn32, 0x62),
        (L::X86IoPortOut8, 0x65),
    ] {
        let r = w.root(p, label, &[port, 0], &[]);
        assert_eq!(r.label, err(E::IllegalOperation), "{label:?} {port:#x}");
    }
    assert_eq!(w.k.hw.ports.len(), 2);
    // At the top of the port space: the port number is its low 16 bits (seL4), and an
    // access running past 0xffff is outside every range (the sum does not wrap).
    let top = w.alloc_slot();
    w.root_ok(
        S_IO_PORT_CONTROL,
        L::X86IoPortControlIssue,
        &[0xfff0, 0xffff, top, 64],
        &[S_CNODE],
    );
    for (label, port) in [
        (L::X86IoPortIn16, u64::MAX),
        (L::X86IoPortIn32, u64::MAX - 2),
        (L::X86IoPortOut16, u64::MAX),
        (L::X86IoPortOut32, 0xfffd),
        (L::X86IoPortIn8, 0x1_0000),
    ] {
        let r = w.root(top, label, &[port, 0], &[]);
        assert_eq!(r.label, err(E::IllegalOperation), "{label:?} {port:#x}");
    }
    assert_eq!(w.k.hw.ports.len(), 2);
    w.root_ok(top, L::X86IoPortIn8, &[u64::MAX], &[]);
    w.root_ok(top, L::X86IoPortIn32, &[0xfffc], &[]);
    assert_eq!(
        w.k.hw.ports[2..],
        [
            PortOp::In {
                port: 0xffff,
                size: 1
            },
            PortOp::In {
                port: 0xfffc,
                size: 4
            }
        ]
    );
    // Copies of IOPortControl are not allowed (seL4).
    let r = w.root(
        S_CNODE,
        L::CNodeCopy,
        &[w.next_free(), 64, S_IO_PORT_CONTROL, 64, 15],
        &[S_CNODE],
    );
    assert_eq!(r.label, err(E::IllegalOperation));
    let r = w.root(p, L::X86IoPortIn8, &[], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
}

/// IOPortControl Issue as seL4 decodes it: TruncatedMessage first (also for a missing
/// root), then the ports' low 16 bits (no RangeError), InvalidArgument 1 if the last
/// is below the first, RevokeFirst for an issued port, then the destination.
#[test]
fn io_port_issue_checks_in_sel4_order() {
    let mut w = World::new();
    let issue = |w: &mut World, mrs: &[u64], caps: &[u64]| {
        w.root(S_IO_PORT_CONTROL, L::X86IoPortControlIssue, mrs, caps)
    };
    let p = w.alloc_slot();
    let r = issue(&mut w, &[0x60, 0x1_0000, p], &[S_CNODE]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = issue(&mut w, &[0x60, 0x1_0000, p, 64], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    // 0x1_0000 is port 0, below the first: InvalidArgument 1.
    let r = issue(&mut w, &[0x60, 0x1_0000, p, 64], &[S_CNODE]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidArgument), vec![1]));
    // Ports above 0xffff are their low 16 bits.
    w.root_ok(
        S_IO_PORT_CONTROL,
        L::X86IoPortControlIssue,
        &[0x1_0060, u64::MAX - 0xff9b, p, 64],
        &[S_CNODE],
    );
    assert_eq!(
        w.cap(p),
        Cap::IoPort {
            first: 0x60,
            last: 0x64
        }
    );
    // An issued port is RevokeFirst before the destination is looked at.
    let r = issue(&mut w, &[0x64, 0x64, p, 64], &[S_CNODE]);
    assert_eq!(r.label, err(E::RevokeFirst));
    let r = issue(&mut w, &[0x65, 0x65, p, 64], &[S_CNODE]);
    assert_eq!(r.label, err(E::DeleteFirst));
}

/// IRQControl GetIOAPIC and GetMSI as seL4 decodes them: TruncatedMessage (< 7 words
/// or no root), the IRQ (MR6), whether it is free, the destination, and only then the
/// route: no I/O APIC IllegalOperation, the I/O APIC and pin, level and polarity 0 or
/// 1 (RangeError (0, 1)); for MSIs the PCI bus, device and function.
#[test]
fn irq_control_routes_check_in_sel4_order() {
    let mut w = World::new();
    w.k.io_apics = 0;
    let h = w.alloc_slot();
    let io_apic = |w: &mut World, mrs: [u64; 7], caps: &[u64]| {
        w.root(S_IRQ_CONTROL, L::X86IrqIssueIrqHandlerIoApic, &mrs, caps)
    };
    let r = w.root(
        S_IRQ_CONTROL,
        L::X86IrqIssueIrqHandlerIoApic,
        &[h, 64, 0, 3, 0, 0],
        &[S_CNODE],
    );
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = io_apic(&mut w, [h, 64, 0, 3, 0, 0, 20], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    // Bad I/O APIC, pin, level and polarity all lose to the IRQ, its state and the
    // destination.
    let r = io_apic(&mut w, [h, 64, 9, 99, 2, 2, 108], &[S_CNODE]);
    assert_eq!((r.label, r.mrs), (err(E::RangeError), vec![0, 107]));
    w.root_ok(
        S_IRQ_CONTROL,
        L::IrqIssueIrqHandler,
        &[8, h, 64],
        &[S_CNODE],
    );
    let h2 = w.alloc_slot();
    let r = io_apic(&mut w, [h2, 64, 9, 99, 2, 2, 8], &[S_CNODE]);
    assert_eq!(r.label, err(E::RevokeFirst));
    let r = io_apic(&mut w, [h, 64, 9, 99, 2, 2, 20], &[S_CNODE]);
    assert_eq!(r.label, err(E::DeleteFirst));
    // No I/O APIC at all: IllegalOperation.
    let r = io_apic(&mut w, [h2, 64, 0, 3, 0, 0, 20], &[S_CNODE]);
    assert_eq!(r.label, err(E::IllegalOperation));
    w.k.io_apics = 1;
    for (mrs, range) in [
        ([h2, 64, 1, 99, 2, 2, 20], vec![0, 0]),
        ([h2, 64, 0, 24, 2, 2, 20], vec![0, 23]),
        ([h2, 64, 0, 3, 2, 0, 20], vec![0, 1]),
        ([h2, 64, 0, 3, 1, 2, 20], vec![0, 1]),
    ] {
        let r = io_apic(&mut w, mrs, &[S_CNODE]);
        assert_eq!((r.label, r.mrs), (err(E::RangeError), range), "{mrs:?}");
    }
    assert_eq!(
        w.k.irqs[20],
        IrqState::Inactive,
        "a refused Get changes nothing"
    );
    w.root_ok(
        S_IRQ_CONTROL,
        L::X86IrqIssueIrqHandlerIoApic,
        &[h2, 64, 0, 3, 1, 1, 20],
        &[S_CNODE],
    );
    assert!(matches!(
        w.k.irqs[20],
        IrqState::Signal {
            route: crate::object::irq::IrqRoute::IoApic {
                ioapic: 0,
                pin: 3,
                level: true,
                active_low: true
            },
            ..
        }
    ));
    // GetMSI: the PCI address after the destination, bus, then device, then function.
    let h3 = w.alloc_slot();
    let msi = |w: &mut World, mrs: [u64; 7], caps: &[u64]| {
        w.root(S_IRQ_CONTROL, L::X86IrqIssueIrqHandlerMsi, &mrs, caps)
    };
    let r = msi(&mut w, [h2, 64, 256, 32, 8, 0, 21], &[S_CNODE]);
    assert_eq!(r.label, err(E::DeleteFirst));
    for (mrs, range) in [
        ([h3, 64, 256, 32, 8, 0, 21], vec![0, 255]),
        ([h3, 64, 255, 32, 8, 0, 21], vec![0, 31]),
        ([h3, 64, 255, 31, 8, 0, 21], vec![0, 7]),
    ] {
        let r = msi(&mut w, mrs, &[S_CNODE]);
        assert_eq!((r.label, r.mrs), (err(E::RangeError), range), "{mrs:?}");
    }
    let r = msi(&mut w, [h3, 64, 255, 31, 7, u64::MAX, 21], &[S_CNODE]);
    assert_eq!(r.label, 0);
    assert_eq!(w.cap(h3), Cap::IrqHandler { irq: 21 });
}

#[test]
fn irq_handlers_deliver_to_notifications() {
    let mut w = World::new();
    let h = w.alloc_slot();
    let r = w.root(
        S_IRQ_CONTROL,
        L::IrqIssueIrqHandler,
        &[108, h, 64],
        &[S_CNODE],
    );
    assert_eq!((r.label, r.mrs), (err(E::RangeError), vec![0, 107]));
    w.root_ok(
        S_IRQ_CONTROL,
        L::IrqIssueIrqHandler,
        &[8, h, 64],
        &[S_CNODE],
    );
    assert_eq!(w.cap(h), Cap::IrqHandler { irq: 8 });
    let h2 = w.alloc_slot();
    let r = w.root(
        S_IRQ_CONTROL,
        L::IrqIssueIrqHandler,
        &[8, h2, 64],
        &[S_CNODE],
    );
    assert_eq!(r.label, err(E::RevokeFirst));
    // Bind a badged notification; the IRQ is unmasked.
    let n = w.notification();
    let nb = w.mint(n, Rights::ALL, 0x100);
    // seL4's codes: no capability is TruncatedMessage; one that is not a notification,
    // or has no write right, is InvalidCapability 0.
    let r = w.root(h, L::IrqSetIrqHandler, &[], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(h, L::IrqSetIrqHandler, &[], &[S_TCB]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![0]));
    let read_only = w.mint(n, Rights::READ, 0x100);
    let r = w.root(h, L::IrqSetIrqHandler, &[], &[read_only]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![0]));
    w.root_ok(h, L::IrqSetIrqHandler, &[], &[nb]);
    assert_eq!(w.k.hw.irqs.last(), Some(&(8, true)));
    // A thread waits; the interrupt masks the line and signals.
    let t = w.running_thread(150);
    w.recv(t.tcb, n);
    assert_eq!(w.k.current(), ROOT_TCB);
    w.k.handle_irq(8);
    w.k.schedule();
    assert_eq!(w.k.hw.irqs.last(), Some(&(8, false)));
    assert_eq!(w.k.current(), t.tcb, "the woken handler thread preempts");
    assert_eq!(w.tcb(t.tcb).context.rdi, 0x100);
    // Ack unmasks.
    w.make_current(ROOT_TCB);
    w.root_ok(h, L::IrqAckIrq, &[], &[]);
    assert_eq!(w.k.hw.irqs.last(), Some(&(8, true)));
    // Clear: interrupts are no longer delivered.
    w.root_ok(h, L::IrqClearIrqHandler, &[], &[]);
    w.k.handle_irq(8);
    assert!(
        !w.k.hw
            .get::<crate::object::endpoint::Notification>(w.addr(n))
            .active()
    );
    // Deleting the handler frees the IRQ for a new handler.
    w.root_ok(S_CNODE, L::CNodeDelete, &[h, 64], &[]);
    assert_eq!(w.k.irqs[8], IrqState::Inactive);
    w.root_ok(
        S_IRQ_CONTROL,
        L::IrqIssueIrqHandler,
        &[8, h2, 64],
        &[S_CNODE],
    );
    // Deleting the notification stops delivery without touching freed memory.
    w.root_ok(h2, L::IrqSetIrqHandler, &[], &[n]);
    w.root_ok(S_CNODE, L::CNodeRevoke, &[n, 64], &[]);
    w.root_ok(S_CNODE, L::CNodeDelete, &[n, 64], &[]);
    w.k.handle_irq(8);
}

#[test]
fn unmapping_a_page_table_clears_it() {
    let mut w = World::new();
    let pdpt = w.make(T::X86Pdpt, 0);
    w.root_ok(pdpt, L::X86PdptMap, &[VA, 0], &[S_VSPACE]);
    let pd = w.make(T::X86PageDirectory, 0);
    w.root_ok(pd, L::X86PageDirectoryMap, &[VA, 0], &[S_VSPACE]);
    let pt = w.make(T::X86PageTable, 0);
    w.root_ok(pt, L::X86PageTableMap, &[VA, 0], &[S_VSPACE]);
    let f = w.make(T::X86Page4K, 0);
    w.root_ok(f, L::X86PageMap, &[VA, RW, 0], &[S_VSPACE]);
    let pt_base = w.addr(pt);
    assert_ne!(w.k.hw.read(pt_base + 8 * ((VA >> 12) & 511)), 0);
    // Unmap the table: its entries go, so mapping it elsewhere maps nothing old.
    w.root_ok(pt, L::X86PageTableUnmap, &[], &[]);
    for i in 0..512 {
        assert_eq!(
            w.k.hw.read(pt_base + 8 * i),
            0,
            "entry {i} survived the unmap"
        );
    }
    assert_eq!(translate_user(&w.k.hw, ROOT_PML4, VA), None);
}

/// X86PageMap and X86PageUnmap called the usual way take their own routes
/// (`Kernel::map_frame_call`, the Unmap arm beside it); an extra capability the
/// invocation ignores sends the same calls down the general path. The two must agree on
/// every outcome: reply, capability words, page-table entries, TLB flushes, thread
/// state; through every error of Map, and the fault of a failed lookup.
#[test]
fn frame_routes_match_the_general_path() {
    /// Reply label and words, frame capability, two page-table entries, message info,
    /// TLB page flushes, whether the caller can run.
    type Outcome = (u64, Vec<u64>, [u64; 2], [u64; 2], u64, usize, bool);
    fn run(general: bool) -> Vec<Outcome> {
        let mut w = World::new();
        let (_, _, pt) = tables(&mut w);
        let pt_base = w.addr(pt);
        let f = w.make(T::X86Page4K, 0);
        let g = w.make(T::X86Page4K, 0);
        let large = w.make(T::X86LargePage, 0);
        let unassigned = w.make(T::X64Pml4, 0);
        let ro = w.alloc_slot();
        w.root_ok(
            S_CNODE,
            L::CNodeCopy,
            &[ro, 64, g, 64, Rights::READ.0 as u64],
            &[S_CNODE],
        );
        let read = Rights::READ.0 as u64;
        let calls: [(u64, L, Vec<u64>, u64); 18] = [
            (f, L::X86PageMap, vec![VA, RW, 0], S_VSPACE),
            (f, L::X86PageMap, vec![VA, read, 0], S_VSPACE),
            (f, L::X86PageMap, vec![VA + 0x1000, RW, 0], S_VSPACE),
            (g, L::X86PageMap, vec![VA, RW, 0], S_VSPACE),
            (g, L::X86PageMap, vec![VA + 0x10, RW, 0], S_VSPACE),
            (
                g,
                L::X86PageMap,
                vec![keel_abi::object::USER_TOP, RW, 0],
                S_VSPACE,
            ),
            (g, L::X86PageMap, vec![VA + 0x1000, 0, 0], S_VSPACE),
            (g, L::X86PageMap, vec![VA + 0x1000, RW, 0], unassigned),
            (g, L::X86PageMap, vec![VA + 0x1000, RW, 0], S_CNODE),
            (g, L::X86PageMap, vec![VA + 0x1000, RW, 0], w.alloc_slot()),
            (g, L::X86PageMap, vec![1 << 40, RW, 0], S_VSPACE),
            (g, L::X86PageMap, vec![VA + 0x1000, RW, 0, 77], S_VSPACE),
            (
                ro,
                L::X86PageMap,
                vec![VA + 0x2000, RW, 1 << 8 | 1],
                S_VSPACE,
            ),
            (large, L::X86PageMap, vec![VA, RW, 0], S_VSPACE),
            (f, L::X86PageUnmap, vec![], 0),
            (f, L::X86PageUnmap, vec![], 0),
            (g, L::X86PageMap, vec![VA, RW, 2], S_VSPACE),
            // A failed lookup of the address space: a capability fault.
            (f, L::X86PageMap, vec![VA, RW, 0], 1 << 63),
        ];
        let mut outcomes = Vec::new();
        for (frame, label, mrs, vspace) in calls {
            let mut caps = Vec::new();
            if label == L::X86PageMap {
                caps.push(vspace);
            }
            if general {
                caps.push(S_CNODE);
            }
            w.k.hw.page_flushes.clear();
            let r = w.call(ROOT_TCB, frame, label as u64, &mrs, &caps);
            let entry = |w: &World, va: u64| w.k.hw.read(pt_base + 8 * ((va >> 12) & 511));
            let runnable = w.state(ROOT_TCB).is_runnable();
            // A reply's message info; a faulted thread keeps its own (whose extra
            // capability count differs between the two runs).
            let mut info = w.k.tcb(ROOT_TCB).context.rsi;
            if !runnable {
                info &= !(3 << 7);
            }
            outcomes.push((
                r.label,
                r.mrs,
                w.cap(frame).encode(),
                [entry(&w, VA), entry(&w, VA + 0x2000)],
                info,
                w.k.hw.page_flushes.len(),
                runnable,
            ));
        }
        outcomes
    }
    let route = run(false);
    assert_eq!(route, run(true));
    // The script reached the outcomes it is meant to cover.
    assert_eq!(route[0].0, 0);
    assert!(route[3..11].iter().all(|o| o.0 != 0));
    assert!(!route[17].6, "the failed lookup did not fault");
}

/// seL4_X86_VMAttributes are the entry's PWT, PCD and PAT bits: WriteBack 0,
/// WriteThrough 1 (PWT), CacheDisabled 2 (PCD), Uncacheable 3 (PWT and PCD),
/// WriteCombining 4 (PAT: bit 7 of a 4 KiB page's entry, bit 12 of a large page's,
/// where bit 7 is PS). A write-combining large page translates and unmaps like any
/// other (bit 12 is not part of its address).
#[test]
fn memory_types_follow_the_attribute_bits() {
    const PWT: u64 = 1 << 3;
    const PCD: u64 = 1 << 4;
    const TYPE_BITS: u64 = PWT | PCD | (1 << 7);
    let mut w = World::new();
    let (_, pd, pt) = tables(&mut w);
    let pt_base = w.addr(pt);
    let pd_base = w.addr(pd);
    for (i, (attributes, bits)) in [(0, 0), (1, PWT), (2, PCD), (3, PWT | PCD), (4, 1 << 7)]
        .into_iter()
        .enumerate()
    {
        let f = w.make(T::X86Page4K, 0);
        let va = VA + 0x1000 * i as u64;
        w.root_ok(f, L::X86PageMap, &[va, RW, attributes], &[S_VSPACE]);
        let e = w.k.hw.read(pt_base + 8 * ((va >> 12) & 511));
        assert_eq!(e & TYPE_BITS, bits, "attributes {attributes}: entry {e:#x}");
        assert_eq!(e & 0x000f_ffff_ffff_f000, w.addr(f));
    }
    let large = w.make(T::X86LargePage, 0);
    let base = w.addr(large);
    let va = VA + (2 << 20);
    w.root_ok(large, L::X86PageMap, &[va, RW, 4], &[S_VSPACE]);
    let slot = pd_base + 8 * ((va >> 21) & 511);
    let e = w.k.hw.read(slot);
    assert_eq!(e & (1 << 12), 1 << 12, "PAT bit of a large page: {e:#x}");
    assert_eq!(e & (PWT | PCD), 0);
    assert_ne!(e & (1 << 7), 0, "PS");
    assert_eq!(
        translate_user(&w.k.hw, ROOT_PML4, va + 0x1234),
        Some(base + 0x1234)
    );
    w.root_ok(large, L::X86PageUnmap, &[], &[]);
    assert_eq!(w.k.hw.read(slot), 0, "the unmap left the entry");
    assert_eq!(translate_user(&w.k.hw, ROOT_PML4, va), None);
}
