//! Untyped Retype: every object type and size, alignment, limits, errors, accounting and
//! reuse after Revoke.

use keel_abi::error::Error as E;
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::object::ObjectType as T;

use super::*;

fn free_index(w: &World, s: u64) -> u64 {
    match w.cap(s) {
        Cap::Untyped { free_index, .. } => free_index,
        c => panic!("not an untyped: {c:?}"),
    }
}

/// A fresh untyped of 2^bits bytes carved from the main untyped; returns its slot.
fn sub_untyped(w: &mut World, bits: u64) -> u64 {
    w.make(T::Untyped, bits)
}

#[test]
fn retype_every_type_with_alignment() {
    let mut w = World::new();
    let u = sub_untyped(&mut w, 23);
    let Cap::Untyped { base, .. } = w.cap(u) else {
        unreachable!()
    };
    let mut free = 0u64;
    let kinds: [(T, u64, u32); 11] = [
        (T::Endpoint, 0, 4),
        (T::Tcb, 0, keel_abi::object::TCB_BITS),
        (T::Notification, 0, 5),
        (T::CapTable, 3, 8),
        (T::Untyped, 9, 9),
        (T::X86Pdpt, 0, 12),
        (T::X64Pml4, 0, 12),
        (T::X86Page4K, 0, 12),
        (T::X86LargePage, 0, 21),
        (T::X86PageTable, 0, 12),
        (T::X86PageDirectory, 0, 12),
    ];
    for (kind, size, bits) in kinds {
        let s = w.alloc_slot();
        let r = w.retype(u, kind, size, s, 1);
        assert_eq!(r.label, 0, "{kind:?}: {r:?}");
        let start = free.next_multiple_of(1 << bits);
        let (addr, bytes) = w.cap(s).object().unwrap();
        assert_eq!((addr, bytes), (base + start, 1 << bits), "{kind:?}");
        free = start + (1 << bits);
        assert_eq!(free_index(&w, u), free, "{kind:?}");
        let ok = match (kind, w.cap(s)) {
            (
                T::Endpoint,
                Cap::Endpoint {
                    badge: 0,
                    rights: Rights::ALL,
                    ..
                },
            ) => true,
            (
                T::Notification,
                Cap::Notification {
                    badge: 0,
                    rights: Rights::ALL,
                    ..
                },
            ) => true,
            (T::Tcb, Cap::Tcb { ptr }) => {
                let r = w.tcb(ptr);
                r.state == ThreadState::Inactive
                    && r.context.rflags == tcb::USER_RFLAGS_SET
                    && matches!(
                        w.cap_at(tcb::slot(ptr, tcb::SLOT_REPLY)),
                        Cap::Reply { master: true, .. }
                    )
            }
            (
                T::CapTable,
                Cap::CNode {
                    radix: 3,
                    guard_size: 0,
                    ..
                },
            ) => true,
            (
                T::Untyped,
                Cap::Untyped {
                    size_bits: 9,
                    free_index: 0,
                    device: false,
                    ..
                },
            ) => true,
            (T::X86Pdpt, Cap::Pdpt { mapping: None, .. }) => true,
            (T::X64Pml4, Cap::Pml4 { asid: None, base }) => {
                // The kernel half is shared; the user half is empty.
                [256u64, 300, 511]
                    .iter()
                    .all(|i| w.k.hw.read(base + 8 * i) == w.k.hw.read(KERNEL_PML4 + 8 * i))
                    && w.k.hw.read(base) == 0
            }
            (
                T::X86Page4K,
                Cap::Frame {
                    size: FrameSize::Small,
                    device: false,
                    mapping: None,
                    ..
                },
            ) => true,
            (
                T::X86LargePage,
                Cap::Frame {
                    size: FrameSize::Large,
                    ..
                },
            ) => true,
            (T::X86PageTable, Cap::PageTable { mapping: None, .. }) => true,
            (T::X86PageDirectory, Cap::PageDirectory { mapping: None, .. }) => true,
            _ => false,
        };
        assert!(ok, "{kind:?} made {:?}", w.cap(s));
    }
    // A 1 GiB page needs the 1 GiB untyped.
    let s = w.alloc_slot();
    let r = w.retype(S_HUGE_UNTYPED, T::X64HugePage, 0, s, 1);
    assert_eq!(r.label, 0);
    assert_eq!(w.cap(s), frame(HUGE_UNTYPED_BASE, FrameSize::Huge));
    // Several at once land in consecutive slots, in address order.
    let d = w.next_free();
    for _ in 0..4 {
        w.alloc_slot();
    }
    assert_eq!(w.retype(u, T::Endpoint, 0, d, 4).label, 0);
    let addrs: Vec<u64> = (d..d + 4).map(|s| w.addr(s)).collect();
    assert_eq!(
        addrs,
        (0..4).map(|i| base + free + 16 * i).collect::<Vec<_>>()
    );
}

#[test]
fn retype_argument_errors() {
    let mut w = World::new();
    let d = w.alloc_slot();
    let check = |w: &mut World, mrs: &[u64], caps: &[u64], code: E, details: &[u64]| {
        let r = w.root(S_UNTYPED, L::UntypedRetype, mrs, caps);
        assert_eq!(
            (r.label, r.mrs.as_slice()),
            (code as u64, details),
            "{mrs:?}"
        );
    };
    let t = |kind: u64, size: u64| [kind, size, 0, 0, d, 1];
    check(&mut w, &t(13, 0), &[S_CNODE], E::InvalidArgument, &[0]);
    check(&mut w, &t(0, 3), &[S_CNODE], E::InvalidArgument, &[1]);
    check(&mut w, &t(0, 48), &[S_CNODE], E::RangeError, &[0, 47]);
    check(&mut w, &t(4, 0), &[S_CNODE], E::InvalidArgument, &[1]);
    check(&mut w, &t(4, 43), &[S_CNODE], E::RangeError, &[0, 47]);
    check(&mut w, &t(2, 64), &[S_CNODE], E::RangeError, &[0, 47]);
    check(
        &mut w,
        &[2, 0, 0, 0, d, 0],
        &[S_CNODE],
        E::RangeError,
        &[1, 256],
    );
    check(
        &mut w,
        &[2, 0, 0, 0, d, 257],
        &[S_CNODE],
        E::RangeError,
        &[1, 256],
    );
    check(
        &mut w,
        &[2, 0, 0, 0, 256, 1],
        &[S_CNODE],
        E::RangeError,
        &[0, 255],
    );
    check(
        &mut w,
        &[2, 0, 0, 0, 250, 10],
        &[S_CNODE],
        E::RangeError,
        &[1, 6],
    );
    // The destination "CNode" is an endpoint: FailedLookup, not source, MissingCapability
    // with the node depth.
    let e = w.endpoint();
    check(
        &mut w,
        &[2, 0, e, 64, 0, 1],
        &[S_CNODE],
        E::FailedLookup,
        &[0, 2, 64],
    );
    check(
        &mut w,
        &[2, 0, e, 32, 0, 1],
        &[S_CNODE],
        E::FailedLookup,
        &[0, 4, 32, 0, 56],
    );
    check(
        &mut w,
        &[2, 0, 0, 0, S_TCB, 1],
        &[S_CNODE],
        E::DeleteFirst,
        &[],
    );
    check(
        &mut w,
        &[2, 0, 0, 0, d],
        &[S_CNODE],
        E::TruncatedMessage,
        &[],
    );
    check(&mut w, &[2, 0, 0, 0, d, 1], &[], E::TruncatedMessage, &[]);
    let r = w.root(S_UNTYPED, L::CNodeCopy, &[2, 0, 0, 0, d, 1], &[S_CNODE]);
    assert_eq!(r.label, err(E::IllegalOperation));
    // None of this changed anything.
    assert!(w.cap(d).is_null());
    assert_eq!(free_index(&w, S_UNTYPED), w.addr(e) - UNTYPED_BASE + 16);
}

#[test]
fn fan_out_limit_and_nested_destination() {
    let mut w = World::new();
    let cn = w.make(T::CapTable, 9);
    let ptr = w.addr(cn);
    // 256 endpoints into the 512-slot CNode found at root slot `cn` (depth 64).
    let r = w.root(
        S_UNTYPED,
        L::UntypedRetype,
        &[T::Endpoint as u64, 0, cn, 64, 0, 256],
        &[S_CNODE],
    );
    assert_eq!(r.label, 0, "{r:?}");
    assert!((0..256).all(|i| matches!(w.cap_at(ptr + 32 * i), Cap::Endpoint { .. })));
    let r = w.root(
        S_UNTYPED,
        L::UntypedRetype,
        &[T::Endpoint as u64, 0, cn, 64, 256, 257],
        &[S_CNODE],
    );
    assert_eq!((r.label, r.mrs), (err(E::RangeError), vec![1, 256]));
    // The window must be empty.
    let r = w.root(
        S_UNTYPED,
        L::UntypedRetype,
        &[T::Endpoint as u64, 0, cn, 64, 255, 2],
        &[S_CNODE],
    );
    assert_eq!(r.label, err(E::DeleteFirst));
    let r = w.root(
        S_UNTYPED,
        L::UntypedRetype,
        &[T::Endpoint as u64, 0, cn, 64, 256, 256],
        &[S_CNODE],
    );
    assert_eq!(r.label, 0);
}

#[test]
fn not_enough_memory_reports_free_bytes() {
    let mut w = World::new();
    let u = sub_untyped(&mut w, 16);
    let s = w.alloc_slot();
    assert_eq!(w.retype(u, T::Endpoint, 0, s, 1).label, 0);
    let d = w.alloc_slot();
    // 16 pages need 64 KiB; 65520 bytes are free.
    let r = w.retype(u, T::X86Page4K, 0, d, 16);
    assert_eq!((r.label, r.mrs), (err(E::NotEnoughMemory), vec![65520]));
    // An object larger than the untyped.
    let r = w.retype(u, T::X86LargePage, 0, d, 1);
    assert_eq!((r.label, r.mrs), (err(E::NotEnoughMemory), vec![65520]));
    // 15 pages fit (aligned up past the endpoint); then nothing is left.
    let n = w.next_free();
    for _ in 0..15 {
        w.alloc_slot();
    }
    assert_eq!(w.retype(u, T::X86Page4K, 0, n, 15).label, 0);
    assert_eq!(free_index(&w, u), 1 << 16);
    let r = w.retype(u, T::Endpoint, 0, d, 1);
    assert_eq!((r.label, r.mrs), (err(E::NotEnoughMemory), vec![0]));
}

#[test]
fn copies_of_untyped_and_revoke_first() {
    let mut w = World::new();
    let u = sub_untyped(&mut w, 16);
    let s = w.alloc_slot();
    assert_eq!(w.retype(u, T::Endpoint, 0, s, 1).label, 0);
    // An untyped with children cannot be copied.
    let c = w.alloc_slot();
    let r = w.root(S_CNODE, L::CNodeCopy, &[c, 64, u, 64, 15], &[S_CNODE]);
    assert_eq!(r.label, err(E::RevokeFirst));
    w.root_ok(S_CNODE, L::CNodeRevoke, &[u, 64], &[]);
    // Without children it can; the original is then full, so the two never hand out
    // the same memory.
    w.root_ok(S_CNODE, L::CNodeCopy, &[c, 64, u, 64, 15], &[S_CNODE]);
    let d = w.alloc_slot();
    let r = w.retype(u, T::Endpoint, 0, d, 1);
    assert_eq!((r.label, r.mrs), (err(E::NotEnoughMemory), vec![0]));
    assert_eq!(w.retype(c, T::Endpoint, 0, d, 1).label, 0);
    // Revoking the original takes the copy and its objects; then it is whole again.
    w.root_ok(S_CNODE, L::CNodeRevoke, &[u, 64], &[]);
    assert!(w.cap(c).is_null() && w.cap(d).is_null());
    let n = w.next_free();
    for _ in 0..16 {
        w.alloc_slot();
    }
    assert_eq!(w.retype(u, T::X86Page4K, 0, n, 16).label, 0);
}

#[test]
fn device_untyped_makes_only_frames_and_untypeds() {
    let mut w = World::new();
    let d = w.alloc_slot();
    for kind in [
        T::Tcb,
        T::Endpoint,
        T::Notification,
        T::CapTable,
        T::X64Pml4,
        T::X86PageTable,
    ] {
        let size = if kind == T::CapTable { 2 } else { 0 };
        let r = w.retype(S_DEVICE_UNTYPED, kind, size, d, 1);
        assert_eq!(
            (r.label, r.mrs),
            (err(E::InvalidArgument), vec![1]),
            "{kind:?}"
        );
    }
    // Device memory is not zeroed.
    w.k.hw.write(DEVICE_BASE + 8, 0xfeed);
    assert_eq!(w.retype(S_DEVICE_UNTYPED, T::X86Page4K, 0, d, 1).label, 0);
    assert!(matches!(
        w.cap(d),
        Cap::Frame {
            device: true,
            base: DEVICE_BASE,
            ..
        }
    ));
    assert_eq!(w.k.hw.read(DEVICE_BASE + 8), 0xfeed);
    let u = w.alloc_slot();
    assert_eq!(w.retype(S_DEVICE_UNTYPED, T::Untyped, 12, u, 1).label, 0);
    assert!(matches!(
        w.cap(u),
        Cap::Untyped {
            device: true,
            size_bits: 12,
            ..
        }
    ));
    let r = w.retype(u, T::Endpoint, 0, w.next_free(), 1);
    assert_eq!(r.label, err(E::InvalidArgument));
    // A device frame cannot be an IPC buffer.
    let th = w.thread(10);
    let r = w.root(th.slot, L::TcbSetIpcBuffer, &[0x1000], &[d]);
    assert_eq!(r.label, err(E::IllegalOperation));
}

#[test]
fn objects_are_zeroed_when_memory_is_reused() {
    let mut w = World::new();
    let u = sub_untyped(&mut w, 12);
    let f = w.alloc_slot();
    assert_eq!(w.retype(u, T::X86Page4K, 0, f, 1).label, 0);
    let base = w.addr(f);
    w.k.hw.write(base + 0x100, 0x1234);
    w.root_ok(S_CNODE, L::CNodeRevoke, &[u, 64], &[]);
    // A CNode on the same memory starts empty.
    let c = w.alloc_slot();
    assert_eq!(w.retype(u, T::CapTable, 7, c, 1).label, 0);
    assert_eq!(w.addr(c), base);
    assert_eq!(w.k.hw.read(base + 0x100), 0);
}

#[test]
fn retype_revoke_a_thousand_times() {
    let mut w = World::new();
    w.check = false;
    let u = sub_untyped(&mut w, 16);
    let cn = w.make(T::CapTable, 6);
    let cn_ptr = w.addr(cn);
    let Cap::Untyped { base, .. } = w.cap(u) else {
        unreachable!()
    };
    for round in 0..1000u64 {
        // Alternate object kinds; each round uses the whole 64 KiB exactly.
        let (kind, size, count) = match round % 4 {
            0 => (T::X86Page4K, 0, 16),
            1 => (T::Tcb, 0, 1 << (16 - keel_abi::object::TCB_BITS)),
            2 => (T::CapTable, 6, 32),
            _ => (T::Endpoint, 0, 32),
        };
        let (kind, size, count, left) = if kind == T::Endpoint {
            (kind, size, count, (1 << 16) - 32 * 16)
        } else {
            (kind, size, count, 0)
        };
        let r = w.root(
            u,
            L::UntypedRetype,
            &[kind as u64, size, cn, 64, 0, count],
            &[S_CNODE],
        );
        assert_eq!(r.label, 0, "round {round}: {r:?}");
        assert_eq!(free_index(&w, u), (1 << 16) - left, "round {round}");
        assert_eq!(
            w.cap_at(cn_ptr).object().unwrap().0,
            base,
            "round {round}: memory reused from the start"
        );
        // Exactly the rest is free.
        let r = w.root(
            u,
            L::UntypedRetype,
            &[T::X86Page4K as u64, 0, cn, 64, count, 16],
            &[S_CNODE],
        );
        assert_eq!(
            (r.label, r.mrs[0]),
            (err(E::NotEnoughMemory), left),
            "round {round}"
        );
        if round % 100 == 0 {
            w.check_invariants();
        }
        w.root_ok(S_CNODE, L::CNodeRevoke, &[u, 64], &[]);
        assert!(!cspace::has_children(&w.k.hw, slot(u)));
        if kind == T::Tcb {
            assert!((0..count).all(|i| {
                !w.k.hw
                    .exists::<Tcb>(tcb::record(base + (i << keel_abi::object::TCB_BITS)))
            }));
        }
    }
    w.check_invariants();
}

/// The root thread retypes from `u` while an interrupt is pending, redoing the call
/// until it returns; each stopped attempt sends no reply, leaves the thread to redo its
/// SYSCALL and lowers the free index (the reset's progress). Returns the attempts.
fn retype_redone(w: &mut World, u: u64, mrs: &[u64]) -> usize {
    w.k.hw.pending_interrupt = true;
    let mut attempts = 0;
    let mut last = free_index(w, u);
    loop {
        attempts += 1;
        assert!(attempts < 100_000, "no progress");
        w.load(ROOT_TCB, u, L::UntypedRetype as u64, mrs, &[S_CNODE]);
        let info_before = w.tcb(ROOT_TCB).context.rsi;
        w.syscall(ROOT_TCB, syscall::CALL);
        assert!(!w.k.preempted);
        let c = w.tcb(ROOT_TCB).context;
        if c.rip == SYSCALL_IP + 2 {
            assert_eq!(w.received(ROOT_TCB).label, 0, "the finishing call succeeds");
            break;
        }
        assert_eq!(c.rip, SYSCALL_IP, "RIP back on the SYSCALL instruction");
        assert_eq!(c.rsi, info_before, "no reply was written");
        let now = free_index(w, u);
        assert!(
            now < last,
            "the reset made no progress ({last:#x} -> {now:#x})"
        );
        last = now;
    }
    w.k.hw.pending_interrupt = false;
    attempts
}

#[test]
fn reset_zeroing_stops_at_preemption_points_and_the_redone_retype_continues() {
    let mut w = World::new();
    let u = sub_untyped(&mut w, 22);
    let f = w.alloc_slot();
    w.alloc_slot();
    assert_eq!(w.retype(u, T::X86LargePage, 0, f, 2).label, 0);
    let Cap::Untyped { base, .. } = w.cap(u) else {
        unreachable!()
    };
    // Dirty both 2 MiB frames, then delete them.
    let dirty: Vec<u64> = (0..64).map(|i| base + i * 0x1_0000 + 8 * i).collect();
    for &a in &dirty {
        w.k.hw.write(a, 0xdead_beef);
    }
    w.root_ok(S_CNODE, L::CNodeRevoke, &[u, 64], &[]);
    assert_eq!(free_index(&w, u), 4 << 20, "deleting leaves the watermark");
    // Retyping again resets the untyped: 4 MiB zeroed 4 KiB at a time, a preemption
    // point after each chunk, so many attempts.
    let attempts = retype_redone(&mut w, u, &[T::X86LargePage as u64, 0, 0, 0, f, 2]);
    let chunks = (4 << 20) >> crate::object::untyped::RESET_CHUNK_BITS;
    assert!(
        attempts >= chunks / crate::kernel::PREEMPTION_INTERVAL as usize,
        "{attempts} attempts"
    );
    assert_eq!(free_index(&w, u), 4 << 20);
    assert_eq!(w.addr(f), base);
    for &a in &dirty {
        assert_eq!(w.k.hw.read(a), 0, "{a:#x} not zeroed");
    }
}

#[test]
fn an_untyped_of_unknown_contents_is_zeroed_by_its_first_retype() {
    let mut w = World::new();
    let u = sub_untyped(&mut w, 16);
    let Cap::Untyped { base, .. } = w.cap(u) else {
        unreachable!()
    };
    // As the root task's untypeds start: all used, contents unknown.
    cspace::set_cap(
        &mut w.k.hw,
        slot(u),
        Cap::Untyped {
            base,
            size_bits: 16,
            free_index: 1 << 16,
            device: false,
        },
    );
    for i in 0..16 {
        w.k.hw.write(base + i * 0x1000 + 0x808, 7);
    }
    let f = w.alloc_slot();
    assert_eq!(w.retype(u, T::X86Page4K, 0, f, 1).label, 0);
    let cn = w.alloc_slot();
    assert_eq!(w.retype(u, T::CapTable, 6, cn, 1).label, 0);
    for i in 0..16 {
        assert_eq!(w.k.hw.read(base + i * 0x1000 + 0x808), 0);
    }
    // The frame and the CNode: 4 KiB + 2 KiB used.
    assert_eq!(free_index(&w, u), 0x1800);
}

#[test]
fn retyping_a_huge_frame_does_not_zero_it_again() {
    // Memory above the free index is zero, so a 1 GiB frame costs no zeroing; deleting
    // it and retyping resets (zeroes) only what was used.
    let mut w = World::new();
    w.check = false; // tens of thousands of attempts
    let f = w.alloc_slot();
    assert_eq!(w.retype(S_HUGE_UNTYPED, T::X64HugePage, 0, f, 1).label, 0);
    let base = w.addr(f);
    w.k.hw.write(base + (512 << 20), 5);
    w.root_ok(S_CNODE, L::CNodeDelete, &[f, 64], &[]);
    let attempts = retype_redone(
        &mut w,
        S_HUGE_UNTYPED,
        &[T::X86Page4K as u64, 0, 0, 0, f, 1],
    );
    assert!(attempts > 1000, "{attempts}");
    assert_eq!(w.k.hw.read(base + (512 << 20)), 0);
    w.check_invariants();
    assert_eq!(free_index(&w, S_HUGE_UNTYPED), 0x1000);
}
