//! The invariant checker (`Kernel::check_invariants`) finds what it should: each test
//! breaks one invariant by hand in a consistent world.

use keel_abi::object::ObjectType;

use super::*;

fn violation(w: &World) -> &'static str {
    match w.k.check_invariants(&[(ROOT_CNODE, 256)]) {
        Ok(()) => "none",
        Err(v) => v.what,
    }
}

#[test]
fn a_consistent_world_passes() {
    let mut w = World::new();
    let e = w.endpoint();
    let _ = w.mint(e, Rights::ALL, 5);
    let t = w.running_thread(10);
    w.send(t.tcb, e, 0, &[], &[]);
    assert_eq!(violation(&w), "none");
}

#[test]
fn broken_derivation_links_are_found() {
    let mut w = World::new();
    let e = w.endpoint();
    let copy = w.mint(e, Rights::ALL, 0);
    // The copy's prev link names the wrong slot.
    w.k.hw.write(slot(copy) + 16, slot(S_CNODE));
    assert_ne!(violation(&w), "none");
}

#[test]
fn a_child_above_the_watermark_is_found() {
    let mut w = World::new();
    let _ = w.endpoint();
    let Cap::Untyped {
        base,
        size_bits,
        device,
        ..
    } = w.cap(S_UNTYPED)
    else {
        unreachable!()
    };
    cspace::set_cap(
        &mut w.k.hw,
        slot(S_UNTYPED),
        Cap::Untyped {
            base,
            size_bits,
            free_index: 0,
            device,
        },
    );
    assert_eq!(violation(&w), "untyped child above the free index");
}

#[test]
fn overlapping_objects_are_found() {
    let mut w = World::new();
    let a = w.make(ObjectType::X86Page4K, 0);
    let frame = w.cap(a);
    let b = w.alloc_slot();
    // A second, unrelated capability to a CNode on the frame's memory.
    cspace::insert_root(
        &mut w.k.hw,
        0,
        slot(b),
        Cap::CNode {
            ptr: frame.object().unwrap().0,
            radix: 1,
            guard_size: 0,
            guard: 0,
        },
        false,
    );
    assert_eq!(violation(&w), "objects overlap");
}

#[test]
fn queue_and_state_mismatches_are_found() {
    let mut w = World::new();
    let e = w.endpoint();
    let t = w.running_thread(10);
    w.send(t.tcb, e, 0, &[], &[]);
    // Blocked in the queue, but its state says runnable.
    w.k.tcb_mut(t.tcb).state = ThreadState::Running;
    assert_eq!(violation(&w), "thread in a wait queue in another state");
    let mut w = World::new();
    let t = w.running_thread(10);
    // Marked queued on a priority whose queue does not hold it.
    let other = w.running_thread(10);
    let _ = other;
    w.k.tcb_mut(t.tcb).priority = 11;
    assert_ne!(violation(&w), "none");
}

#[test]
fn stray_reply_capabilities_are_found() {
    // A receiver waiting with a caller capability in its caller slot: a second reply
    // capability to a client that waits for another server's reply.
    let mut w = World::new();
    let e = w.endpoint();
    let e2 = w.endpoint();
    let server = w.running_thread(10);
    let server2 = w.running_thread(10);
    let client = w.running_thread(10);
    w.recv(server.tcb, e);
    w.recv(server2.tcb, e2);
    w.call(client.tcb, e2, 1, &[], &[]);
    assert_eq!(violation(&w), "none");
    cspace::insert_leaf(
        &mut w.k.hw,
        tcb::slot(client.tcb, tcb::SLOT_REPLY),
        tcb::slot(server.tcb, tcb::SLOT_CALLER),
        crate::object::cap::raw::reply(client.tcb, true),
        0,
    );
    assert_eq!(
        violation(&w),
        "caller capability held by a thread waiting to receive"
    );
    // A thread that no longer waits for the reply (Inactive) with a reply capability
    // to it.
    let mut w = World::new();
    let e = w.endpoint();
    let server = w.running_thread(10);
    let client = w.running_thread(10);
    w.recv(server.tcb, e);
    w.call(client.tcb, e, 1, &[], &[]);
    assert_eq!(violation(&w), "none");
    w.k.tcb_mut(client.tcb).state = ThreadState::Inactive;
    assert_eq!(
        violation(&w),
        "reply capability to a thread not waiting for a reply"
    );
}

/// seL4's derivation tree is a list in which a capability's descendants are the run of
/// capabilities right after it that it is a parent of. A badged endpoint minted from the
/// original after an older one with the same badge (minted from an unbadged copy, and
/// copied) is a parent of that older one's copy by the capabilities alone, but not its
/// ancestor: the unbadged copy and the older first-badged one lie between them. seL4
/// has the same state, and its revoke stops there too; the checker must accept it.
#[test]
fn a_later_badged_sibling_is_not_the_parent_of_an_older_copy() {
    let mut w = World::new();
    let e = w.endpoint();
    let unbadged = w.mint(e, Rights::ALL, 0);
    let b1 = w.mint(unbadged, Rights::ALL, 7);
    let b1_copy = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[b1_copy, 64, b1, 64, Rights::ALL.0 as u64],
        &[S_CNODE],
    );
    let b2 = w.mint(e, Rights::ALL, 7);
    // List order: e, b2, unbadged, b1, b1_copy (each insert goes right after its
    // parent).
    assert_eq!(violation(&w), "none");
    // Revoking b2 leaves the older ones alone, as seL4's revoke does.
    w.root_ok(S_CNODE, L::CNodeRevoke, &[b2, 64], &[]);
    for s in [unbadged, b1, b1_copy] {
        assert!(!w.cap(s).is_null());
    }
    assert_eq!(violation(&w), "none");
}
