//! Finalising endpoints, notifications and ASID pools with preemption points: a
//! deletion stopped by a pending interrupt leaves a Zombie (or, for an ASID pool, a
//! partly cleared pool), the redone call continues, and the end state is the one the
//! unpreempted deletion leaves.

use keel_abi::syscall;

use super::*;
use crate::object::endpoint::{Endpoint, Notification};

/// Waiters the tests block (the root CNode has room for them without IPC buffers).
const WAITERS: usize = 200;

/// A world with an endpoint (or notification) in a fresh slot and `WAITERS` threads of
/// priority 10 blocked on it: with `senders`, alternately Send and Call, otherwise Recv
/// (Wait on a notification). Returns the world, the object's slot and the threads.
fn blocked_world(kind: ObjectType, senders: bool) -> (World, u64, Vec<Thread>) {
    blocked_world_with(senders, |w| w.make(kind, 0))
}

/// [`blocked_world`], with the object made (and prepared) by `make`, which returns its
/// slot.
fn blocked_world_with(
    senders: bool,
    make: impl FnOnce(&mut World) -> u64,
) -> (World, u64, Vec<Thread>) {
    let mut w = World::new();
    // Checking the invariants after each of the ~1000 set-up calls costs seconds.
    w.check = false;
    let obj = make(&mut w);
    let threads: Vec<Thread> = (0..WAITERS)
        .map(|_| {
            let t = w.thread_with(10, false, 0);
            w.root_ok(t.slot, L::TcbResume, &[], &[]);
            t
        })
        .collect();
    for (i, t) in threads.iter().enumerate() {
        if !senders {
            w.recv(t.tcb, obj);
        } else if i % 2 == 0 {
            w.send(t.tcb, obj, 5, &[i as u64], &[]);
        } else {
            w.load(t.tcb, obj, 5, &[i as u64], &[]);
            w.syscall(t.tcb, syscall::CALL);
        }
    }
    w.make_current(ROOT_TCB);
    for t in &threads {
        assert!(!w.state(t.tcb).is_runnable(), "{:?}", w.state(t.tcb));
    }
    w.check = true;
    w.check_invariants();
    (w, obj, threads)
}

/// Each thread's state and saved RIP, and the ready queue of their priority: what a
/// deletion leaves behind.
fn outcome(w: &World, threads: &[Thread]) -> (Vec<(ThreadState, u64)>, Vec<u64>) {
    let states = threads
        .iter()
        .map(|t| (w.state(t.tcb), w.tcb(t.tcb).context.rip))
        .collect();
    (states, w.ready(0, 10))
}

/// Deletes root slot `target` with an interrupt pending at every preemption point,
/// redoing the call until it completes; after each stopped attempt the slot holds a
/// Zombie of `kind` and `queue` is shorter (the invariants are checked after every
/// call by `World::syscall`). Returns the attempts.
fn delete_preempted(w: &mut World, target: u64, kind: ZombieKind, queue: Queue) -> usize {
    w.k.hw.pending_interrupt = true;
    let mut left = w.queue(queue).len();
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= WAITERS, "no progress");
        w.load(ROOT_TCB, S_CNODE, L::CNodeDelete as u64, &[target, 64], &[]);
        w.syscall(ROOT_TCB, syscall::CALL);
        let c = w.tcb(ROOT_TCB).context;
        if c.rip == SYSCALL_IP + 2 {
            assert_eq!(w.received(ROOT_TCB).label, 0, "the finishing call succeeds");
            break;
        }
        assert_eq!(c.rip, SYSCALL_IP, "a stopped attempt redoes the SYSCALL");
        match w.cap(target) {
            Cap::Zombie { kind: k, .. } => assert_eq!(k, kind),
            other => panic!("not a Zombie: {other:?}"),
        }
        let now = w.queue(queue).len();
        assert!(now < left, "no waiter restarted ({now} left)");
        left = now;
    }
    w.k.hw.pending_interrupt = false;
    assert!(w.cap(target).is_null());
    attempts
}

#[test]
fn deleting_an_endpoint_with_many_senders_is_preemptible_and_ends_as_unpreempted() {
    let (mut plain, e, threads) = blocked_world(ObjectType::Endpoint, true);
    let ptr = plain.addr(e);
    plain.root_ok(S_CNODE, L::CNodeDelete, &[e, 64], &[]);
    let expected = outcome(&plain, &threads);
    assert!(
        expected.0.iter().all(|&(s, _)| s == ThreadState::Restart),
        "every sender restarts its Send or Call"
    );
    assert_eq!(expected.1.len(), WAITERS);

    let (mut w, e2, threads2) = blocked_world(ObjectType::Endpoint, true);
    assert_eq!((e2, w.addr(e2)), (e, ptr));
    let attempts = delete_preempted(&mut w, e, ZombieKind::Endpoint, Queue::Endpoint(ptr));
    let interval = crate::kernel::PREEMPTION_INTERVAL as usize;
    assert_eq!(attempts, WAITERS.div_ceil(interval));
    assert_eq!(outcome(&w, &threads2), expected);
    assert!(!w.k.hw.exists::<Endpoint>(ptr));
}

#[test]
fn deleting_an_endpoint_with_many_receivers_is_preemptible_and_ends_as_unpreempted() {
    let (mut plain, e, threads) = blocked_world(ObjectType::Endpoint, false);
    plain.root_ok(S_CNODE, L::CNodeDelete, &[e, 64], &[]);
    let expected = outcome(&plain, &threads);
    let (mut w, _, threads) = blocked_world(ObjectType::Endpoint, false);
    let ptr = w.addr(e);
    delete_preempted(&mut w, e, ZombieKind::Endpoint, Queue::Endpoint(ptr));
    assert_eq!(outcome(&w, &threads), expected);
}

#[test]
fn revoking_the_untyped_of_an_endpoint_with_many_senders_is_preemptible() {
    // The endpoint comes from its own untyped, whose Revoke deletes it: the redone
    // Revoke meets the endpoint's Zombie (a child of the untyped) and continues.
    let setup = || {
        let mut ut = 0;
        let (w, e, threads) = blocked_world_with(true, |w| {
            ut = w.make(ObjectType::Untyped, 12);
            let e = w.alloc_slot();
            let r = w.retype(ut, ObjectType::Endpoint, 0, e, 1);
            assert_eq!(r.label, 0, "{r:?}");
            e
        });
        (w, ut, e, threads)
    };
    let (mut plain, ut, e, threads) = setup();
    plain.root_ok(S_CNODE, L::CNodeRevoke, &[ut, 64], &[]);
    let expected = outcome(&plain, &threads);
    assert!(plain.cap(e).is_null());

    let (mut w, ut, e, threads) = setup();
    let ptr = w.addr(e);
    w.k.hw.pending_interrupt = true;
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= WAITERS, "no progress");
        w.load(ROOT_TCB, S_CNODE, L::CNodeRevoke as u64, &[ut, 64], &[]);
        w.syscall(ROOT_TCB, syscall::CALL);
        if w.tcb(ROOT_TCB).context.rip == SYSCALL_IP + 2 {
            break;
        }
        // Stopped inside the endpoint's finalisation, or (last) after it, at Revoke's
        // own preemption point.
        match w.cap(e) {
            Cap::Zombie {
                kind: ZombieKind::Endpoint,
                ..
            } => assert!(cspace::is_parent_of(&w.k.hw, slot(ut), slot(e))),
            Cap::Null => {}
            other => panic!("{other:?}"),
        }
    }
    w.k.hw.pending_interrupt = false;
    assert!(attempts > 1);
    assert_eq!(outcome(&w, &threads), expected);
    assert!(w.cap(e).is_null() && !w.k.hw.exists::<Endpoint>(ptr));
    // The untyped is whole again.
    let r = w.retype(ut, ObjectType::Untyped, 12, e, 1);
    assert_eq!(r.label, 0, "{r:?}");
}

#[test]
fn no_thread_joins_an_endpoint_being_finalised() {
    let (mut w, e, _) = blocked_world(ObjectType::Endpoint, true);
    let ptr = w.addr(e);
    w.k.hw.pending_interrupt = true;
    w.load(ROOT_TCB, S_CNODE, L::CNodeDelete as u64, &[e, 64], &[]);
    w.syscall(ROOT_TCB, syscall::CALL);
    assert!(matches!(
        w.cap(e),
        Cap::Zombie {
            kind: ZombieKind::Endpoint,
            ..
        }
    ));
    let left = w.queue(Queue::Endpoint(ptr));
    w.k.hw.pending_interrupt = false;
    // The Zombie cannot be sent to, received on, invoked or copied.
    // Send and Call invoke it as a kernel object (an error), Recv faults (and, without
    // a fault handler, the thread stops).
    let late = w.running_thread(10);
    w.send(late.tcb, e, 5, &[1], &[]);
    assert_eq!(w.state(late.tcb), ThreadState::Running);
    w.load(late.tcb, e, 5, &[1], &[]);
    w.syscall(late.tcb, syscall::CALL);
    assert_eq!(w.state(late.tcb), ThreadState::Running);
    assert_eq!(
        w.received(late.tcb).label,
        err(keel_abi::error::Error::InvalidCapability)
    );
    w.recv(late.tcb, e);
    assert_eq!(w.state(late.tcb), ThreadState::Inactive);
    assert_eq!(w.queue(Queue::Endpoint(ptr)), left);
    let copy = w.alloc_slot();
    let r = w.root(S_CNODE, L::CNodeCopy, &[copy, 64, e, 64, 15], &[S_CNODE]);
    assert_ne!(r.label, 0);
    assert!(w.cap(copy).is_null());
    // The redone deletion finishes.
    w.root_ok(S_CNODE, L::CNodeDelete, &[e, 64], &[]);
    assert!(!w.k.hw.exists::<Endpoint>(ptr));
    assert!(w.cap(e).is_null());
}

#[test]
fn deleting_a_notification_with_many_waiters_is_preemptible_and_ends_as_unpreempted() {
    let setup = || {
        // An IRQ handler signals the notification. (A bound notification has no
        // waiters but its thread: the kernel's own unbinding is checked apart.)
        blocked_world_with(false, |w| {
            let n = w.make(ObjectType::Notification, 0);
            let handler = w.alloc_slot();
            w.root_ok(
                S_IRQ_CONTROL,
                L::IrqIssueIrqHandler,
                &[5, handler, 64],
                &[S_CNODE],
            );
            w.root_ok(handler, L::IrqSetIrqHandler, &[], &[n]);
            n
        })
    };
    let (mut plain, n, threads) = setup();
    plain.root_ok(S_CNODE, L::CNodeDelete, &[n, 64], &[]);
    let expected = outcome(&plain, &threads);
    assert!(
        expected.0.iter().all(|&(s, _)| s == ThreadState::Restart),
        "{:?}",
        expected.0
    );

    let (mut w, _, threads) = setup();
    let ptr = w.addr(n);
    delete_preempted(
        &mut w,
        n,
        ZombieKind::Notification,
        Queue::Notification(ptr),
    );
    assert_eq!(outcome(&w, &threads), expected);
    assert!(!w.k.hw.exists::<Notification>(ptr));
    // The IRQ handler no longer names the freed notification.
    assert!(w.k.irqs.iter().all(|s| !matches!(
        s,
        crate::object::irq::IrqState::Signal { notification, .. } if *notification == ptr
    )));
}

#[test]
fn an_endpoint_inside_a_deleted_cnode_is_finalised_preemptibly() {
    // The endpoint's last capability sits in a CNode whose deletion empties it: the
    // endpoint's Zombie stays in the CNode's slot, and the redone deletion resumes
    // there.
    let (mut w, e, threads) = blocked_world(ObjectType::Endpoint, true);
    let ptr = w.addr(e);
    let cnode = w.make(ObjectType::CapTable, 2);
    w.root_ok(cnode, L::CNodeMove, &[3, 2, e, 64], &[S_CNODE]);
    assert!(w.cap(e).is_null());
    w.k.hw.pending_interrupt = true;
    let mut attempts = 0;
    let mut zombie_seen = false;
    while !w.cap(cnode).is_null() {
        attempts += 1;
        assert!(attempts <= WAITERS, "no progress");
        w.load(ROOT_TCB, S_CNODE, L::CNodeDelete as u64, &[cnode, 64], &[]);
        w.syscall(ROOT_TCB, syscall::CALL);
        if let Cap::Zombie {
            ptr: cnode_ptr,
            kind: ZombieKind::CNode { .. },
            ..
        } = w.cap(cnode)
        {
            zombie_seen |= matches!(
                w.cap_at(cnode_ptr + 3 * cspace::SLOT_BYTES),
                Cap::Zombie {
                    kind: ZombieKind::Endpoint,
                    ..
                }
            );
        }
    }
    w.k.hw.pending_interrupt = false;
    assert!(
        zombie_seen,
        "the endpoint stopped as a Zombie inside the CNode"
    );
    assert!(attempts > 2, "{attempts}");
    assert!(!w.k.hw.exists::<Endpoint>(ptr));
    for t in &threads {
        assert_eq!(w.state(t.tcb), ThreadState::Restart);
    }
}

#[test]
fn cancel_badged_sends_and_a_preempted_deletion_agree() {
    // CancelBadgedSends stopped half-way, then the endpoint deleted with preemption:
    // every sender ends restarted, each exactly once in the ready queue.
    let (mut w, e, threads) = blocked_world(ObjectType::Endpoint, true);
    let ptr = w.addr(e);
    // The senders used the unbadged capability: a badged one cancels none of them.
    let badged = w.mint(e, Rights::ALL, 9);
    w.k.hw.pending_interrupt = true;
    w.load(
        ROOT_TCB,
        S_CNODE,
        L::CNodeCancelBadgedSends as u64,
        &[badged, 64],
        &[],
    );
    w.syscall(ROOT_TCB, syscall::CALL);
    assert_eq!(w.queue(Queue::Endpoint(ptr)).len(), WAITERS);
    w.k.hw.pending_interrupt = false;
    w.root_ok(S_CNODE, L::CNodeDelete, &[badged, 64], &[]);
    delete_preempted(&mut w, e, ZombieKind::Endpoint, Queue::Endpoint(ptr));
    let (states, ready) = outcome(&w, &threads);
    assert!(states.iter().all(|&(s, _)| s == ThreadState::Restart));
    let tcbs: Vec<u64> = threads.iter().map(|t| t.tcb).collect();
    assert_eq!(ready, tcbs, "restarted in queue order, once each");
}

#[test]
fn deleting_an_asid_pool_is_preemptible() {
    let mut w = World::new();
    let ut = w.make(ObjectType::Untyped, 12);
    let pool = w.alloc_slot();
    w.root_ok(
        S_ASID_CONTROL,
        L::X86AsidControlMakePool,
        &[pool, 64],
        &[ut, S_CNODE],
    );
    let Cap::AsidPool { asid_base, .. } = w.cap(pool) else {
        panic!("{:?}", w.cap(pool));
    };
    let count: usize = 20;
    let mut spaces = Vec::new();
    for _ in 0..count {
        let p = w.make(ObjectType::X64Pml4, 0);
        w.root_ok(pool, L::X86AsidPoolAssign, &[], &[p]);
        spaces.push(p);
    }
    w.k.hw.space_flushes.clear();
    w.k.hw.pending_interrupt = true;
    let mut attempts = 0;
    while !w.cap(pool).is_null() {
        attempts += 1;
        assert!(attempts <= count, "no progress");
        w.load(ROOT_TCB, S_CNODE, L::CNodeDelete as u64, &[pool, 64], &[]);
        w.syscall(ROOT_TCB, syscall::CALL);
    }
    w.k.hw.pending_interrupt = false;
    let interval = crate::kernel::PREEMPTION_INTERVAL as usize;
    assert_eq!(attempts, count.div_ceil(interval));
    // Each address space lost its ASID exactly once, in ASID order.
    let mut flushed = w.k.hw.space_flushes.clone();
    let expected: Vec<u16> = (0..count as u16).map(|i| asid_base + i).collect();
    assert_eq!(flushed, expected);
    flushed.dedup();
    assert_eq!(flushed.len(), count);
    // The PML4s are no longer usable address spaces.
    for p in spaces {
        let Cap::Pml4 {
            base,
            asid: Some(a),
        } = w.cap(p)
        else {
            panic!("{:?}", w.cap(p));
        };
        assert_ne!(w.k.vspace_of_asid(a), Some(base));
    }
}

#[test]
fn deleting_a_bound_notification_unbinds_its_waiting_thread() {
    // Only the bound thread may wait on a bound notification: it is the one waiter.
    let mut w = World::new();
    let n = w.notification();
    let t = w.running_thread(10);
    w.root_ok(t.slot, L::TcbBindNotification, &[], &[n]);
    w.recv(t.tcb, n);
    let ptr = w.addr(n);
    assert_eq!(w.queue(Queue::Notification(ptr)), vec![t.tcb]);
    w.make_current(ROOT_TCB);
    w.root_ok(S_CNODE, L::CNodeDelete, &[n, 64], &[]);
    assert_eq!(w.tcb(t.tcb).bound_notification, 0);
    assert_eq!(w.state(t.tcb), ThreadState::Restart);
    assert!(!w.k.hw.exists::<Notification>(ptr));
}
