//! Capability lookup and the CNode invocations, with their error paths.

use keel_abi::error::Error as E;
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::object::{CNodeCapData, ObjectType};

use super::*;

/// A 16-slot CNode in a fresh root slot; returns the slot.
fn small_cnode(w: &mut World) -> u64 {
    w.make(ObjectType::CapTable, 4)
}

#[test]
fn target_slot_depth_errors() {
    let mut w = World::new();
    // Depth out of 1..=64: RangeError(1, 64).
    for depth in [0, 65, u64::MAX] {
        let r = w.root(S_CNODE, L::CNodeDelete, &[40, depth], &[]);
        assert_eq!(
            (r.label, r.mrs.clone()),
            (err(E::RangeError), vec![1, 64]),
            "depth {depth}"
        );
    }
    // The root resolves 56 guard bits + 8 radix bits: 32 bits cannot even cover the
    // guard (seL4 checks the guard first: GuardMismatch).
    let r = w.root(S_CNODE, L::CNodeDelete, &[40, 32], &[]);
    assert_eq!(r.label, err(E::FailedLookup));
    assert_eq!(r.mrs, vec![0, 4, 32, 0, 56]);
    // A cptr with guard bits set: GuardMismatch (bits left 64, the CNode's guard 0, size 56).
    let r = w.root(S_CNODE, L::CNodeDelete, &[1 << 60 | 40, 64], &[]);
    assert_eq!(r.mrs, vec![0, 4, 64, 0, 56]);
    assert_eq!(r.info.length(), 5);
}

#[test]
fn two_level_lookup_errors() {
    let mut w = World::new();
    let a = small_cnode(&mut w);
    let b = small_cnode(&mut w);
    let e = w.endpoint();
    // A[3] = B, A[2] = endpoint (via Copy invoked on A; source in the root CNode).
    w.root_ok(a, L::CNodeCopy, &[3, 4, b, 64, 15], &[S_CNODE]);
    w.root_ok(a, L::CNodeCopy, &[2, 4, e, 64, 15], &[S_CNODE]);
    // B[7] = endpoint copy, addressed through A: 0x37 at depth 8.
    w.root_ok(a, L::CNodeCopy, &[0x37, 8, e, 64, 15], &[S_CNODE]);
    let b_ptr = w.addr(b);
    assert!(matches!(w.cap_at(b_ptr + 7 * 32), Cap::Endpoint { .. }));
    // Index 0x25 at depth 8 stops at the endpoint in A[2] with 4 bits left:
    // DepthMismatch(bits left 4, bits found 0).
    let r = w.root(a, L::CNodeDelete, &[0x25, 8], &[]);
    assert_eq!((r.label, r.mrs), (err(E::FailedLookup), vec![0, 3, 4, 0]));
    // The same through an empty slot.
    let r = w.root(a, L::CNodeDelete, &[0x55, 8], &[]);
    assert_eq!(r.mrs, vec![0, 3, 4, 0]);
    // Depth 6: A takes 4, B would need 4 of the 2 left: DepthMismatch(2, 4).
    let r = w.root(a, L::CNodeDelete, &[0xd, 6], &[]);
    assert_eq!(r.mrs, vec![0, 3, 2, 4]);
    // Depth 3 < A's 4 bits.
    let r = w.root(a, L::CNodeDelete, &[1, 3], &[]);
    assert_eq!(r.mrs, vec![0, 3, 3, 4]);
    // A guarded copy of A (guard 5 of 3 bits): 7 bits per level.
    let g = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeMint,
        &[g, 64, a, 64, 15, CNodeCapData::new(5, 3).0],
        &[S_CNODE],
    );
    assert!(matches!(
        w.cap(g),
        Cap::CNode {
            guard: 5,
            guard_size: 3,
            radix: 4,
            ..
        }
    ));
    let r = w.root(g, L::CNodeDelete, &[0x4 << 4 | 3, 7], &[]);
    assert_eq!(r.mrs, vec![0, 4, 7, 5, 3], "guard 4 instead of 5");
    // Depth 2 cannot hold the 3 guard bits: GuardMismatch, as seL4 checks the guard first.
    let r = w.root(g, L::CNodeDelete, &[1, 2], &[]);
    assert_eq!(r.mrs, vec![0, 4, 2, 5, 3]);
    // The right guard: deleting the endpoint copy in A[2] through the guarded cap.
    w.root_ok(g, L::CNodeDelete, &[0x5 << 4 | 2, 7], &[]);
    assert_eq!(w.cap_at(w.addr(a) + 2 * 32), Cap::Null);
}

#[test]
fn invalid_root_and_source_flag() {
    let mut w = World::new();
    let e = w.endpoint();
    let d = w.alloc_slot();
    // Source root is an endpoint: FailedLookup, source, InvalidRoot.
    let r = w.root(S_CNODE, L::CNodeCopy, &[d, 64, e, 64, 15], &[e]);
    assert_eq!((r.label, r.mrs), (err(E::FailedLookup), vec![1, 1]));
    // Source depth 0: RangeError.
    let r = w.root(S_CNODE, L::CNodeCopy, &[d, 64, e, 0, 15], &[S_CNODE]);
    assert_eq!((r.label, r.mrs), (err(E::RangeError), vec![1, 64]));
    // Empty source: FailedLookup, source, MissingCapability with the source depth.
    let empty = w.alloc_slot();
    let r = w.root(S_CNODE, L::CNodeCopy, &[d, 64, empty, 64, 15], &[S_CNODE]);
    assert_eq!((r.label, r.mrs), (err(E::FailedLookup), vec![1, 2, 64]));
    // Destination lookup failures have the flag clear.
    let r = w.root(S_CNODE, L::CNodeCopy, &[1 << 63, 64, e, 64, 15], &[S_CNODE]);
    assert_eq!((r.label, r.mrs[0]), (err(E::FailedLookup), 0));
    // Missing extra capability / short message: TruncatedMessage.
    let r = w.root(S_CNODE, L::CNodeCopy, &[d, 64, e, 64, 15], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(S_CNODE, L::CNodeCopy, &[d, 64, e, 64], &[S_CNODE]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(S_CNODE, L::CNodeMint, &[d, 64, e, 64, 15], &[S_CNODE]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(S_CNODE, L::CNodeDelete, &[d], &[]);
    assert_eq!(r.label, err(E::TruncatedMessage));
    // A non-CNode label on a CNode.
    let r = w.root(S_CNODE, L::TcbSuspend, &[d, 64], &[]);
    assert_eq!(r.label, err(E::IllegalOperation));
    assert!(w.cap(d).is_null());
}

#[test]
fn syscall_lookup_failures_are_cap_faults() {
    let mut w = World::new();
    let handler_ep = w.endpoint();
    let th = w.thread_with(50, true, handler_ep);
    w.root_ok(th.slot, L::TcbResume, &[], &[]);
    // The root waits for faults.
    w.recv(ROOT_TCB, handler_ep);
    assert!(matches!(
        w.state(ROOT_TCB),
        ThreadState::BlockedOnReceive { .. }
    ));
    assert_eq!(w.k.current(), th.tcb);
    // The thread sends to a cptr with guard bits set.
    w.send(th.tcb, 1 << 62 | 5, 0, &[], &[]);
    assert_eq!(w.state(th.tcb), ThreadState::BlockedOnReply);
    let m = w.received(ROOT_TCB);
    assert_eq!(m.label, crate::fault::label::CAP_FAULT);
    // IP is the syscall instruction; address; not in receive; GuardMismatch(64, 0, 56).
    assert_eq!(m.mrs, vec![SYSCALL_IP, 1 << 62 | 5, 0, 4, 64, 0, 56]);
    // The reply resumes the thread, which redoes the system call.
    w.load(ROOT_TCB, 0, 0, &[], &[]);
    w.syscall(ROOT_TCB, keel_abi::syscall::REPLY);
    assert_eq!(w.state(th.tcb), ThreadState::Restart);
    w.make_current(th.tcb);
    assert_eq!(w.tcb(th.tcb).context.rip, SYSCALL_IP);
    // Receiving on an empty slot: a cap fault in the receive phase (MissingCapability).
    w.recv(ROOT_TCB, handler_ep);
    w.k.tcb_mut(th.tcb).context.rdi = 200;
    w.syscall(th.tcb, keel_abi::syscall::RECV);
    let m = w.received(ROOT_TCB);
    assert_eq!(m.mrs, vec![SYSCALL_IP, 200, 1, 2, 0]);
}

#[test]
fn invalid_root_stops_a_thread_without_handler() {
    let mut w = World::new();
    let c = small_cnode(&mut w);
    let th = w.thread(50);
    // Give the thread the small CNode as its CSpace, then revoke it away.
    w.root_ok(
        th.slot,
        L::TcbSetSpace,
        &[0, CNodeCapData::new(0, 60).0, 0],
        &[c, S_VSPACE],
    );
    assert!(matches!(
        w.cap_at(tcb::slot(th.tcb, tcb::SLOT_CSPACE)),
        Cap::CNode { guard_size: 60, .. }
    ));
    w.root_ok(S_CNODE, L::CNodeRevoke, &[c, 64], &[]);
    assert!(w.cap_at(tcb::slot(th.tcb, tcb::SLOT_CSPACE)).is_null());
    w.root_ok(th.slot, L::TcbResume, &[], &[]);
    w.root_ok(th.slot, L::TcbSetPriority, &[200], &[S_TCB]);
    assert_eq!(w.k.current(), th.tcb);
    w.send(th.tcb, 1, 0, &[], &[]);
    assert_eq!(w.state(th.tcb), ThreadState::Inactive);
    assert_eq!(w.k.current(), ROOT_TCB);
    let out = String::from_utf8(w.k.hw.console.clone()).unwrap();
    assert!(out.contains("unhandled Capability"), "{out}");
    assert!(out.contains("InvalidRoot"), "{out}");
}

#[test]
fn copy_mint_rights_and_badges() {
    let mut w = World::new();
    let e = w.endpoint();
    // Copy with rights masked to write only.
    let d = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[d, 64, e, 64, Rights::WRITE.0 as u64],
        &[S_CNODE],
    );
    assert!(matches!(
        w.cap(d),
        Cap::Endpoint {
            badge: 0,
            rights: Rights::WRITE,
            ..
        }
    ));
    // Copy into an occupied slot.
    let r = w.root(S_CNODE, L::CNodeCopy, &[d, 64, e, 64, 15], &[S_CNODE]);
    assert_eq!((r.label, r.info.length()), (err(E::DeleteFirst), 0));
    // Mint a badge.
    let b = w.mint(e, Rights::ALL, 0x55);
    assert!(matches!(w.cap(b), Cap::Endpoint { badge: 0x55, .. }));
    assert!(cspace::is_parent_of(&w.k.hw, slot(e), slot(b)));
    // Minting from a badged capability is refused.
    let d2 = w.alloc_slot();
    let r = w.root(
        S_CNODE,
        L::CNodeMint,
        &[d2, 64, b, 64, 15, 0x66],
        &[S_CNODE],
    );
    assert_eq!(r.label, err(E::IllegalOperation));
    // Copying a badged capability keeps the badge; the copy is not revocable.
    w.root_ok(S_CNODE, L::CNodeCopy, &[d2, 64, b, 64, 15], &[S_CNODE]);
    assert!(matches!(w.cap(d2), Cap::Endpoint { badge: 0x55, .. }));
    assert!(cspace::is_parent_of(&w.k.hw, slot(b), slot(d2)));
    assert!(!cspace::revocable(&w.k.hw, slot(d2)));
    // Notification rights never include grant.
    let n = w.notification();
    let nb = w.mint(n, Rights::ALL, 1);
    assert!(matches!(
        w.cap(nb),
        Cap::Notification {
            badge: 1,
            rights: Rights(3),
            ..
        }
    ));
    // CNode guard too large for the radix (8 + 57 > 64).
    let r = w.root(
        S_CNODE,
        L::CNodeMint,
        &[
            w.next_free(),
            64,
            S_CNODE,
            64,
            15,
            CNodeCapData::new(0, 57).0,
        ],
        &[S_CNODE],
    );
    assert_eq!(r.label, err(E::IllegalOperation));
    // Reply and Zombie-free copies: copying IRQControl yields nothing (seL4 deriveCap).
    let r = w.root(
        S_CNODE,
        L::CNodeCopy,
        &[w.next_free(), 64, S_IRQ_CONTROL, 64, 15],
        &[S_CNODE],
    );
    assert_eq!(r.label, err(E::IllegalOperation));
}

#[test]
fn move_and_mutate() {
    let mut w = World::new();
    let e = w.endpoint();
    let b = w.mint(e, Rights::ALL, 7);
    let c = w.alloc_slot();
    w.root_ok(S_CNODE, L::CNodeCopy, &[c, 64, b, 64, 15], &[S_CNODE]);
    // Move the badged cap: the copy stays its child.
    let m = w.alloc_slot();
    w.root_ok(S_CNODE, L::CNodeMove, &[m, 64, b, 64], &[S_CNODE]);
    assert!(w.cap(b).is_null());
    assert!(matches!(w.cap(m), Cap::Endpoint { badge: 7, .. }));
    assert!(cspace::is_parent_of(&w.k.hw, slot(m), slot(c)));
    assert!(cspace::is_parent_of(&w.k.hw, slot(e), slot(m)));
    // Move into itself / into a full slot.
    let r = w.root(S_CNODE, L::CNodeMove, &[m, 64, m, 64], &[S_CNODE]);
    assert_eq!(r.label, err(E::DeleteFirst));
    // Move from an empty slot.
    let r = w.root(
        S_CNODE,
        L::CNodeMove,
        &[w.next_free(), 64, b, 64],
        &[S_CNODE],
    );
    assert_eq!((r.label, r.mrs), (err(E::FailedLookup), vec![1, 2, 64]));
    // Mutate cannot touch endpoint badges (seL4 updateCapData with preserve).
    let r = w.root(
        S_CNODE,
        L::CNodeMutate,
        &[w.next_free(), 64, e, 64, 9],
        &[S_CNODE],
    );
    assert_eq!(r.label, err(E::IllegalOperation));
    assert!(matches!(w.cap(e), Cap::Endpoint { badge: 0, .. }));
    // Mutate sets a CNode's guard.
    let cn = small_cnode(&mut w);
    let cm = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeMutate,
        &[cm, 64, cn, 64, CNodeCapData::new(3, 2).0],
        &[S_CNODE],
    );
    assert!(matches!(
        w.cap(cm),
        Cap::CNode {
            radix: 4,
            guard: 3,
            guard_size: 2,
            ..
        }
    ));
    assert!(w.cap(cn).is_null());
    // Mutate of a non-badgeable cap just moves it.
    let t = w.make(ObjectType::Tcb, 0);
    let tm = w.alloc_slot();
    w.root_ok(S_CNODE, L::CNodeMutate, &[tm, 64, t, 64, 1234], &[S_CNODE]);
    assert!(matches!(w.cap(tm), Cap::Tcb { .. }));
}

#[test]
fn rotate() {
    let mut w = World::new();
    let (a, b) = (small_cnode(&mut w), small_cnode(&mut w));
    let (pa, pb) = (w.addr(a), w.addr(b));
    let dest = w.alloc_slot();
    // seL4 order: dest index/depth, dest data (for the pivot's cap), pivot index/depth,
    // pivot data (for the source's cap), source index/depth. Pivot a → dest, source b → a.
    w.root_ok(
        S_CNODE,
        L::CNodeRotate,
        &[
            dest,
            64,
            CNodeCapData::new(1, 1).0,
            a,
            64,
            CNodeCapData::new(0, 2).0,
            b,
            64,
        ],
        &[S_CNODE, S_CNODE],
    );
    assert!(matches!(w.cap(dest), Cap::CNode { ptr, guard: 1, guard_size: 1, .. } if ptr == pa));
    assert!(matches!(w.cap(a), Cap::CNode { ptr, guard: 0, guard_size: 2, .. } if ptr == pb));
    assert!(w.cap(b).is_null());
    // Source == destination: a swap of dest and a.
    w.root_ok(
        S_CNODE,
        L::CNodeRotate,
        &[dest, 64, 0, a, 64, 0, dest, 64],
        &[S_CNODE, S_CNODE],
    );
    assert!(matches!(w.cap(dest), Cap::CNode { ptr, .. } if ptr == pb));
    assert!(matches!(w.cap(a), Cap::CNode { ptr, .. } if ptr == pa));
    // Pivot equal to the source or destination.
    let r = w.root(
        S_CNODE,
        L::CNodeRotate,
        &[b, 64, 0, a, 64, 0, a, 64],
        &[S_CNODE, S_CNODE],
    );
    assert_eq!(r.label, err(E::IllegalOperation));
    let r = w.root(
        S_CNODE,
        L::CNodeRotate,
        &[b, 64, 0, b, 64, 0, dest, 64],
        &[S_CNODE, S_CNODE],
    );
    assert_eq!(r.label, err(E::IllegalOperation));
    // Occupied destination.
    let r = w.root(
        S_CNODE,
        L::CNodeRotate,
        &[S_TCB, 64, 0, a, 64, 0, dest, 64],
        &[S_CNODE, S_CNODE],
    );
    assert_eq!(r.label, err(E::DeleteFirst));
    // Empty source (flag 1) and empty pivot (flag 0), each with its depth.
    let e1 = w.alloc_slot();
    let r = w.root(
        S_CNODE,
        L::CNodeRotate,
        &[b, 64, 0, a, 64, 0, e1, 64],
        &[S_CNODE, S_CNODE],
    );
    assert_eq!((r.label, r.mrs), (err(E::FailedLookup), vec![1, 2, 64]));
    let r = w.root(
        S_CNODE,
        L::CNodeRotate,
        &[b, 64, 0, e1, 64, 0, a, 64],
        &[S_CNODE, S_CNODE],
    );
    assert_eq!((r.label, r.mrs), (err(E::FailedLookup), vec![0, 2, 64]));
    // Pivot root invalid: seL4's lookupPivotSlot reports it as a source lookup.
    let ep = w.endpoint();
    let r = w.root(
        S_CNODE,
        L::CNodeRotate,
        &[b, 64, 0, a, 64, 0, dest, 64],
        &[ep, S_CNODE],
    );
    assert_eq!((r.label, r.mrs), (err(E::FailedLookup), vec![1, 1]));
    // Endpoints cannot be rotated (their badge data cannot change).
    let r = w.root(
        S_CNODE,
        L::CNodeRotate,
        &[b, 64, 0, a, 64, 0, ep, 64],
        &[S_CNODE, S_CNODE],
    );
    assert_eq!(r.label, err(E::IllegalOperation));
    // Too few arguments or extra caps.
    let r = w.root(
        S_CNODE,
        L::CNodeRotate,
        &[b, 64, 0, a, 64, 0, dest],
        &[S_CNODE, S_CNODE],
    );
    assert_eq!(r.label, err(E::TruncatedMessage));
    let r = w.root(
        S_CNODE,
        L::CNodeRotate,
        &[b, 64, 0, a, 64, 0, dest, 64],
        &[S_CNODE],
    );
    assert_eq!(r.label, err(E::TruncatedMessage));
}

#[test]
fn delete_and_revoke() {
    let mut w = World::new();
    let e = w.endpoint();
    let p = w.addr(e);
    let b1 = w.mint(e, Rights::ALL, 1);
    let b2 = w.mint(e, Rights::ALL, 2);
    let c1 = w.alloc_slot();
    w.root_ok(S_CNODE, L::CNodeCopy, &[c1, 64, b1, 64, 15], &[S_CNODE]);
    // Revoking b1 deletes only its copy.
    w.root_ok(S_CNODE, L::CNodeRevoke, &[b1, 64], &[]);
    assert!(w.cap(c1).is_null());
    assert!(!w.cap(b1).is_null() && !w.cap(b2).is_null());
    // Deleting a non-final cap leaves the endpoint alive.
    w.root_ok(S_CNODE, L::CNodeDelete, &[b1, 64], &[]);
    assert!(w.k.hw.exists::<crate::object::endpoint::Endpoint>(p));
    // Deleting an empty slot is fine.
    w.root_ok(S_CNODE, L::CNodeDelete, &[b1, 64], &[]);
    // Revoking the original deletes every badged child; deleting it destroys the object.
    w.root_ok(S_CNODE, L::CNodeRevoke, &[e, 64], &[]);
    assert!(w.cap(b2).is_null());
    w.root_ok(S_CNODE, L::CNodeDelete, &[e, 64], &[]);
    assert!(!w.k.hw.mem.has::<crate::object::endpoint::Endpoint>(p));
}

#[test]
fn deleting_a_cnode_deletes_its_contents() {
    let mut w = World::new();
    let a = small_cnode(&mut w);
    let b = small_cnode(&mut w);
    let e = w.endpoint();
    let ep = w.addr(e);
    // A[1] = B (its only cap), A[2] = the endpoint, B[4] = a TCB (its only cap).
    w.root_ok(a, L::CNodeMove, &[1, 4, b, 64], &[S_CNODE]);
    w.root_ok(a, L::CNodeMove, &[2, 4, e, 64], &[S_CNODE]);
    let t = w.make(ObjectType::Tcb, 0);
    let tp = w.addr(t);
    w.root_ok(a, L::CNodeMove, &[0x14, 8, t, 64], &[S_CNODE]);
    w.root_ok(S_CNODE, L::CNodeDelete, &[a, 64], &[]);
    assert!(!w.k.hw.mem.has::<crate::object::endpoint::Endpoint>(ep));
    assert!(!w.k.hw.exists::<Tcb>(tcb::record(tp)));
    // The untyped has no children left: all of its memory is free again.
    let r = w.retype(
        S_UNTYPED,
        ObjectType::Untyped,
        UNTYPED_BITS as u64,
        w.next_free(),
        1,
    );
    assert_eq!(r.label, 0, "{r:?}");
}

#[test]
fn revoking_the_untyped_breaks_cnode_cycles() {
    let mut w = World::new();
    let a = small_cnode(&mut w);
    let b = small_cnode(&mut w);
    let e = w.endpoint();
    let ep = w.addr(e);
    let t = w.make(ObjectType::Tcb, 0);
    let tp = w.addr(t);
    // A[1] = B, A[2] = endpoint, B[3] = a copy of A, B[4] = TCB: a cycle.
    w.root_ok(a, L::CNodeMove, &[1, 4, b, 64], &[S_CNODE]);
    w.root_ok(a, L::CNodeMove, &[2, 4, e, 64], &[S_CNODE]);
    w.root_ok(a, L::CNodeCopy, &[0x13, 8, a, 64, 15], &[S_CNODE]);
    w.root_ok(a, L::CNodeMove, &[0x14, 8, t, 64], &[S_CNODE]);
    // Deleting the root's cap to A is not final: nothing dies.
    w.root_ok(S_CNODE, L::CNodeDelete, &[a, 64], &[]);
    assert!(w.k.hw.mem.has::<crate::object::endpoint::Endpoint>(ep));
    assert!(w.k.hw.exists::<Tcb>(tcb::record(tp)));
    // Revoking the untyped reclaims the whole cycle.
    w.root_ok(S_CNODE, L::CNodeRevoke, &[S_UNTYPED, 64], &[]);
    assert!(!w.k.hw.mem.has::<crate::object::endpoint::Endpoint>(ep));
    assert!(!w.k.hw.exists::<Tcb>(tcb::record(tp)));
    assert!(!cspace::has_children(&w.k.hw, slot(S_UNTYPED)));
    let r = w.retype(
        S_UNTYPED,
        ObjectType::Untyped,
        UNTYPED_BITS as u64,
        w.next_free(),
        1,
    );
    assert_eq!(r.label, 0, "{r:?}");
}

#[test]
fn cancel_badged_sends() {
    let mut w = World::new();
    let e = w.endpoint();
    let b1 = w.mint(e, Rights::ALL, 1);
    let b2 = w.mint(e, Rights::ALL, 2);
    let t1 = w.running_thread(10);
    let t2 = w.running_thread(10);
    let t3 = w.running_thread(10);
    for (t, s) in [(t1, b1), (t2, b2), (t3, b1)] {
        w.send(t.tcb, s, 0, &[], &[]);
        assert!(matches!(w.state(t.tcb), ThreadState::BlockedOnSend { .. }));
    }
    // Without every right: IllegalOperation.
    let weak = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[
            weak,
            64,
            b1,
            64,
            Rights::WRITE.0 as u64 | Rights::READ.0 as u64,
        ],
        &[S_CNODE],
    );
    let r = w.root(S_CNODE, L::CNodeCancelBadgedSends, &[weak, 64], &[]);
    assert_eq!(r.label, err(E::IllegalOperation));
    // Not an endpoint.
    let r = w.root(S_CNODE, L::CNodeCancelBadgedSends, &[S_TCB, 64], &[]);
    assert_eq!(r.label, err(E::IllegalOperation));
    // An unbadged cap cancels nothing.
    w.root_ok(S_CNODE, L::CNodeCancelBadgedSends, &[e, 64], &[]);
    assert_eq!(w.queue(Queue::Endpoint(w.addr(e))).len(), 3);
    w.root_ok(S_CNODE, L::CNodeCancelBadgedSends, &[b1, 64], &[]);
    assert_eq!(w.queue(Queue::Endpoint(w.addr(e))), vec![t2.tcb]);
    assert_eq!(w.state(t1.tcb), ThreadState::Restart);
    assert_eq!(w.state(t3.tcb), ThreadState::Restart);
}

#[test]
fn save_caller() {
    let mut w = World::new();
    let e = w.endpoint();
    let client = w.running_thread(10);
    // The root waits; the client calls.
    w.recv(ROOT_TCB, e);
    w.call(client.tcb, e, 42, &[1, 2], &[]);
    assert_eq!(w.state(client.tcb), ThreadState::BlockedOnReply);
    assert_eq!(w.k.current(), ROOT_TCB);
    assert_eq!(w.received(ROOT_TCB).mrs, vec![1, 2]);
    // Save the reply capability; the destination must be empty.
    let r = w.root(S_CNODE, L::CNodeSaveCaller, &[S_TCB, 64], &[]);
    assert_eq!(r.label, err(E::DeleteFirst));
    let s = w.alloc_slot();
    w.root_ok(S_CNODE, L::CNodeSaveCaller, &[s, 64], &[]);
    assert!(matches!(w.cap(s), Cap::Reply { tcb, master: false, .. } if tcb == client.tcb));
    assert!(w.cap_at(tcb::slot(ROOT_TCB, tcb::SLOT_CALLER)).is_null());
    // Saving again with no caller succeeds and does nothing.
    let s2 = w.alloc_slot();
    w.root_ok(S_CNODE, L::CNodeSaveCaller, &[s2, 64], &[]);
    assert!(w.cap(s2).is_null());
    // Replying through the saved cap (Send on it) wakes the client and consumes it.
    w.send(ROOT_TCB, s, 7, &[99], &[]);
    assert!(w.cap(s).is_null());
    assert_eq!(w.state(client.tcb), ThreadState::Running);
    let m = w.received(client.tcb);
    assert_eq!((m.label, m.mrs), (7, vec![99]));
}

#[test]
fn revoke_stops_at_preemption_points_and_the_redone_call_continues() {
    let mut w = World::new();
    let ut = w.make(ObjectType::Untyped, 16);
    let first = w.next_free();
    for _ in 0..20 {
        w.alloc_slot();
    }
    let r = w.retype(ut, ObjectType::Endpoint, 0, first, 20);
    assert_eq!(r.label, 0, "{r:?}");
    let live = |w: &World| (first..first + 20).filter(|&s| !w.cap(s).is_null()).count();
    // An interrupt is pending: each attempt deletes one interval's worth, sends no
    // reply and leaves the thread to redo its SYSCALL.
    w.k.hw.pending_interrupt = true;
    let interval = crate::kernel::PREEMPTION_INTERVAL as usize;
    let mut expected = 20;
    while expected > interval {
        w.load(ROOT_TCB, S_CNODE, L::CNodeRevoke as u64, &[ut, 64], &[]);
        let info_before = w.tcb(ROOT_TCB).context.rsi;
        w.syscall(ROOT_TCB, syscall::CALL);
        expected -= interval;
        assert_eq!(live(&w), expected);
        let c = w.tcb(ROOT_TCB).context;
        assert_eq!(c.rip, SYSCALL_IP, "RIP back on the SYSCALL instruction");
        assert_eq!(c.rsi, info_before, "no reply was written");
        assert_eq!(w.state(ROOT_TCB), ThreadState::Running);
        assert!(!w.k.preempted);
    }
    // No interrupt: the redone call finishes the revoke and replies.
    w.k.hw.pending_interrupt = false;
    w.root_ok(S_CNODE, L::CNodeRevoke, &[ut, 64], &[]);
    assert_eq!(live(&w), 0);
    // The untyped is whole again.
    let r = w.retype(ut, ObjectType::Endpoint, 0, first, 20);
    assert_eq!(r.label, 0, "{r:?}");
}

#[test]
fn cancel_badged_sends_stops_at_preemption_points() {
    let mut w = World::new();
    let e = w.endpoint();
    let badged = w.mint(e, Rights::ALL, 1);
    let senders: Vec<Thread> = (0..20).map(|_| w.running_thread(10)).collect();
    for t in &senders {
        w.send(t.tcb, badged, 0, &[], &[]);
    }
    assert_eq!(w.queue(Queue::Endpoint(w.addr(e))).len(), 20);
    w.k.hw.pending_interrupt = true;
    let interval = crate::kernel::PREEMPTION_INTERVAL as usize;
    let mut waiting = 20;
    while waiting > interval {
        w.load(
            ROOT_TCB,
            S_CNODE,
            L::CNodeCancelBadgedSends as u64,
            &[badged, 64],
            &[],
        );
        w.syscall(ROOT_TCB, syscall::CALL);
        waiting -= interval;
        assert_eq!(w.queue(Queue::Endpoint(w.addr(e))).len(), waiting);
        assert_eq!(w.tcb(ROOT_TCB).context.rip, SYSCALL_IP, "redone");
    }
    w.k.hw.pending_interrupt = false;
    w.root_ok(S_CNODE, L::CNodeCancelBadgedSends, &[badged, 64], &[]);
    assert!(w.queue(Queue::Endpoint(w.addr(e))).is_empty());
    for t in &senders {
        assert!(w.state(t.tcb).is_runnable());
    }
}

/// Retypes `count` endpoints from root slot `ut` into the CNode in root slot `cnode`
/// (radix `radix`) from slot `offset` on, in batches the fan-out limit allows.
fn fill_with_endpoints(w: &mut World, ut: u64, cnode: u64, offset: u64, count: u64) {
    let mut done = 0;
    while done < count {
        let n = (count - done).min(256);
        w.root_ok(
            ut,
            L::UntypedRetype,
            &[ObjectType::Endpoint as u64, 0, cnode, 64, offset + done, n],
            &[S_CNODE],
        );
        done += n;
    }
}

/// The endpoints (object addresses) held in a CNode's slots.
fn endpoints_in(w: &World, cnode_ptr: u64, slots: u64) -> Vec<u64> {
    (0..slots)
        .filter_map(|i| match w.cap_at(cnode_ptr + i * cspace::SLOT_BYTES) {
            Cap::Endpoint { ptr, .. } => Some(ptr),
            _ => None,
        })
        .collect()
}

/// Redoes the root thread's Call of `label` on root CNode slot `target` while an
/// interrupt is pending, until the call returns (then `done` must hold); checks that each stopped attempt
/// sent no reply and left the thread to redo its SYSCALL. Returns the attempts.
fn redo_until_done(w: &mut World, label: L, target: u64, done: impl Fn(&World) -> bool) -> usize {
    w.k.hw.pending_interrupt = true;
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 100_000, "no progress");
        w.load(ROOT_TCB, S_CNODE, label as u64, &[target, 64], &[]);
        let info_before = w.tcb(ROOT_TCB).context.rsi;
        w.syscall(ROOT_TCB, syscall::CALL);
        assert!(!w.k.preempted);
        assert_eq!(w.state(ROOT_TCB), ThreadState::Running);
        let c = w.tcb(ROOT_TCB).context;
        if c.rip == SYSCALL_IP + 2 {
            assert_eq!(w.received(ROOT_TCB).label, 0, "the finishing call succeeds");
            assert!(done(w), "the call returned before it finished");
            break;
        }
        assert_eq!(c.rip, SYSCALL_IP, "RIP back on the SYSCALL instruction");
        assert_eq!(c.rsi, info_before, "no reply was written");
    }
    w.k.hw.pending_interrupt = false;
    attempts
}

#[test]
fn big_cnode_deletion_stops_at_preemption_points_and_the_redone_call_continues() {
    use crate::object::endpoint::Endpoint;
    let mut w = World::new();
    let ut = w.make(ObjectType::Untyped, 20);
    let big = w.alloc_slot();
    let r = w.retype(ut, ObjectType::CapTable, 10, big, 1);
    assert_eq!(r.label, 0, "{r:?}");
    let inner = w.alloc_slot();
    let r = w.retype(ut, ObjectType::CapTable, 6, inner, 1);
    assert_eq!(r.label, 0, "{r:?}");
    let t = w.alloc_slot();
    let r = w.retype(ut, ObjectType::Tcb, 0, t, 1);
    assert_eq!(r.label, 0, "{r:?}");
    let tcb_ptr = w.addr(t);
    // 600 endpoints in the big CNode, 64 in the inner one, which goes into the big one
    // at slot 1000 along with the TCB at 700.
    fill_with_endpoints(&mut w, ut, big, 0, 600);
    fill_with_endpoints(&mut w, ut, inner, 0, 64);
    let (big_ptr, inner_ptr) = (w.addr(big), w.addr(inner));
    let mut eps = endpoints_in(&w, big_ptr, 1024);
    eps.extend(endpoints_in(&w, inner_ptr, 64));
    assert_eq!(eps.len(), 664);
    w.root_ok(big, L::CNodeMove, &[1000, 10, inner, 64], &[S_CNODE]);
    w.root_ok(big, L::CNodeMove, &[700, 10, t, 64], &[S_CNODE]);

    let attempts = redo_until_done(&mut w, L::CNodeDelete, big, |w| w.cap(big).is_null());
    // Each attempt did at most one interval of work.
    assert!(
        attempts > 664 / crate::kernel::PREEMPTION_INTERVAL as usize,
        "{attempts}"
    );
    for ep in eps {
        assert!(!w.k.hw.mem.has::<Endpoint>(ep), "endpoint {ep:#x} survived");
    }
    assert!(!w.k.hw.exists::<Tcb>(tcb::record(tcb_ptr)));
    // All memory is back: the untyped has no children and is whole again.
    assert!(!cspace::has_children(&w.k.hw, slot(ut)));
    let again = w.alloc_slot();
    let r = w.retype(ut, ObjectType::Untyped, 20, again, 1);
    assert_eq!(r.label, 0, "{r:?}");
}

#[test]
fn a_stopped_deletion_keeps_its_progress_in_the_zombie() {
    let mut w = World::new();
    let ut = w.make(ObjectType::Untyped, 20);
    let big = w.alloc_slot();
    let r = w.retype(ut, ObjectType::CapTable, 12, big, 1);
    assert_eq!(r.label, 0, "{r:?}");
    // Two endpoints far apart: the scan between them is long but is work too.
    w.root_ok(
        ut,
        L::UntypedRetype,
        &[ObjectType::Endpoint as u64, 0, big, 64, 0, 1],
        &[S_CNODE],
    );
    w.root_ok(
        ut,
        L::UntypedRetype,
        &[ObjectType::Endpoint as u64, 0, big, 64, 4000, 1],
        &[S_CNODE],
    );
    w.k.hw.pending_interrupt = true;
    w.load(ROOT_TCB, S_CNODE, L::CNodeDelete as u64, &[big, 64], &[]);
    w.syscall(ROOT_TCB, syscall::CALL);
    let Cap::Zombie { scan, .. } = w.cap(big) else {
        panic!("not a zombie: {:?}", w.cap(big));
    };
    assert!(scan > 0 && scan < 4000, "scan {scan}");
    // Each redone call resumes from the recorded position, which only moves forward.
    let mut last = scan;
    let mut attempts = 1;
    while let Cap::Zombie { scan, .. } = w.cap(big) {
        assert!(scan >= last, "scan went back from {last} to {scan}");
        last = scan;
        attempts += 1;
        assert!(attempts < 1000, "no progress");
        w.load(ROOT_TCB, S_CNODE, L::CNodeDelete as u64, &[big, 64], &[]);
        w.syscall(ROOT_TCB, syscall::CALL);
    }
    assert!(last > 4000 - 64, "{last}");
    // 4096 slots of scanning at one unit per 64, plus two deletions, in 8-unit steps.
    assert!(attempts >= 8, "{attempts}");
    w.k.hw.pending_interrupt = false;
    assert!(w.cap(big).is_null());
    assert!(!cspace::has_children(&w.k.hw, slot(ut)));
}

#[test]
fn revoking_an_untyped_holding_big_cnode_cycles_stops_and_continues() {
    use crate::object::endpoint::Endpoint;
    let mut w = World::new();
    let ut = w.make(ObjectType::Untyped, 20);
    let big = w.alloc_slot();
    let r = w.retype(ut, ObjectType::CapTable, 10, big, 1);
    assert_eq!(r.label, 0, "{r:?}");
    let inner = w.alloc_slot();
    let r = w.retype(ut, ObjectType::CapTable, 8, inner, 1);
    assert_eq!(r.label, 0, "{r:?}");
    fill_with_endpoints(&mut w, ut, big, 3, 500);
    fill_with_endpoints(&mut w, ut, inner, 0, 200);
    let mut eps = endpoints_in(&w, w.addr(big), 1024);
    eps.extend(endpoints_in(&w, w.addr(inner), 256));
    // inner[250] = big, big[1000] = inner: a cycle nothing else reaches.
    w.root_ok(inner, L::CNodeCopy, &[250, 8, big, 64, 15], &[S_CNODE]);
    w.root_ok(big, L::CNodeMove, &[1000, 10, inner, 64], &[S_CNODE]);
    w.root_ok(S_CNODE, L::CNodeDelete, &[big, 64], &[]);
    for &ep in &eps {
        assert!(w.k.hw.mem.has::<Endpoint>(ep));
    }
    let attempts = redo_until_done(&mut w, L::CNodeRevoke, ut, |w| {
        !cspace::has_children(&w.k.hw, slot(ut))
    });
    assert!(
        attempts > 700 / crate::kernel::PREEMPTION_INTERVAL as usize,
        "{attempts}"
    );
    for ep in eps {
        assert!(!w.k.hw.mem.has::<Endpoint>(ep), "endpoint {ep:#x} survived");
    }
    let again = w.alloc_slot();
    let r = w.retype(ut, ObjectType::Untyped, 20, again, 1);
    assert_eq!(r.label, 0, "{r:?}");
}
