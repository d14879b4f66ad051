//! Endpoint IPC, reply capabilities, capability transfer and notifications.

use keel_abi::invocation::InvocationLabel as L;
use keel_abi::message::MessageInfo;
use keel_abi::object::ObjectType as T;
use keel_abi::syscall::{CALL, NB_RECV, NB_SEND, RECV, REPLY, REPLY_RECV, SEND};

use super::*;

const RECV_SLOT_BASE: u64 = 200;

#[test]
fn send_then_recv_and_recv_then_send() {
    let mut w = World::new();
    let e = w.endpoint();
    let b = w.mint(e, Rights::ALL, 0xb0);
    let a = w.running_thread(100);
    let r = w.running_thread(100);
    // Send first: the sender blocks; the receiver takes the message.
    w.send(a.tcb, b, 9, &[1, 2, 3, 4, 5, 6], &[]);
    assert!(matches!(
        w.state(a.tcb),
        ThreadState::BlockedOnSend { badge: 0xb0, .. }
    ));
    w.recv(r.tcb, e);
    let m = w.received(r.tcb);
    assert_eq!((m.label, m.badge, m.mrs), (9, 0xb0, vec![1, 2, 3, 4, 5, 6]));
    assert_eq!(w.state(a.tcb), ThreadState::Running);
    // Receive first: the receiver blocks; the send completes at once.
    w.recv(r.tcb, e);
    assert!(matches!(
        w.state(r.tcb),
        ThreadState::BlockedOnReceive { .. }
    ));
    w.send(a.tcb, e, 3, &[7], &[]);
    assert_eq!(w.state(a.tcb), ThreadState::Running);
    let m = w.received(r.tcb);
    assert_eq!((m.label, m.badge, m.mrs), (3, 0, vec![7]));
    assert_eq!(w.state(r.tcb), ThreadState::Running);
    // Several senders queue in order.
    let c = w.running_thread(100);
    w.send(a.tcb, e, 1, &[], &[]);
    w.send(c.tcb, b, 2, &[], &[]);
    assert_eq!(w.queue(Queue::Endpoint(w.addr(e))), vec![a.tcb, c.tcb]);
    w.recv(r.tcb, e);
    assert_eq!(w.received(r.tcb).label, 1);
    w.recv(r.tcb, e);
    assert_eq!(
        (w.received(r.tcb).label, w.received(r.tcb).badge),
        (2, 0xb0)
    );
}

#[test]
fn nonblocking_send_and_receive() {
    let mut w = World::new();
    let e = w.endpoint();
    let a = w.running_thread(100);
    // NBSend without a receiver: dropped.
    w.load(a.tcb, e, 1, &[5], &[]);
    w.syscall(a.tcb, NB_SEND);
    assert_eq!(w.state(a.tcb), ThreadState::Running);
    assert!(w.queue(Queue::Endpoint(w.addr(e))).is_empty());
    // NBRecv without a sender: badge 0 and on we go.
    w.k.tcb_mut(a.tcb).context.rdi = e;
    w.syscall(a.tcb, NB_RECV);
    assert_eq!(w.state(a.tcb), ThreadState::Running);
    assert_eq!(w.tcb(a.tcb).context.rdi, 0);
    // NBRecv with a sender waiting.
    let s = w.running_thread(100);
    w.send(s.tcb, e, 4, &[8], &[]);
    w.k.tcb_mut(a.tcb).context.rdi = e;
    w.syscall(a.tcb, NB_RECV);
    assert_eq!(w.received(a.tcb).mrs, vec![8]);
    // NBSend with a receiver waiting.
    w.recv(s.tcb, e);
    w.load(a.tcb, e, 6, &[], &[]);
    w.syscall(a.tcb, NB_SEND);
    assert_eq!(w.received(s.tcb).label, 6);
    assert_eq!(w.state(s.tcb), ThreadState::Running);
}

#[test]
fn call_reply_and_reply_recv() {
    let mut w = World::new();
    let e = w.endpoint();
    let server = w.running_thread(100);
    let c1 = w.running_thread(100);
    let c2 = w.running_thread(100);
    w.recv(server.tcb, e);
    // Call: the server gets the message and a reply cap in its caller slot.
    w.call(c1.tcb, e, 10, &[1], &[]);
    assert_eq!(w.state(c1.tcb), ThreadState::BlockedOnReply);
    assert!(
        matches!(w.cap_at(tcb::slot(server.tcb, tcb::SLOT_CALLER)), Cap::Reply { tcb, .. } if tcb == c1.tcb)
    );
    assert_eq!(w.received(server.tcb).mrs, vec![1]);
    // A second client queues its Call.
    w.call(c2.tcb, e, 20, &[2], &[]);
    assert!(matches!(
        w.state(c2.tcb),
        ThreadState::BlockedOnSend { is_call: true, .. }
    ));
    // ReplyRecv: reply to c1, then receive c2's call at once.
    w.load(server.tcb, e, 11, &[100, 101, 102, 103, 104], &[]);
    w.syscall(server.tcb, REPLY_RECV);
    let m = w.received(c1.tcb);
    assert_eq!(
        (m.label, m.badge, m.mrs),
        (11, 0, vec![100, 101, 102, 103, 104])
    );
    assert_eq!(w.state(c1.tcb), ThreadState::Running);
    assert_eq!(w.received(server.tcb).mrs, vec![2]);
    assert_eq!(w.state(c2.tcb), ThreadState::BlockedOnReply);
    // Reply.
    w.load(server.tcb, 0, 21, &[], &[]);
    w.syscall(server.tcb, REPLY);
    assert_eq!(w.received(c2.tcb).label, 21);
    assert!(w.cap_at(tcb::slot(server.tcb, tcb::SLOT_CALLER)).is_null());
    // Reply with nobody to reply to does nothing.
    w.syscall(server.tcb, REPLY);
    assert_eq!(w.state(server.tcb), ThreadState::Running);
    // A Call through a cap with neither grant nor grant-reply: the caller gets no reply
    // cap and becomes inactive (seL4).
    let weak = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[weak, 64, e, 64, Rights::WRITE.0 as u64],
        &[S_CNODE],
    );
    w.recv(server.tcb, e);
    w.call(c1.tcb, weak, 1, &[], &[]);
    assert_eq!(w.state(c1.tcb), ThreadState::Inactive);
    assert!(w.cap_at(tcb::slot(server.tcb, tcb::SLOT_CALLER)).is_null());
}

#[test]
fn long_messages_and_truncation() {
    let mut w = World::new();
    let e = w.endpoint();
    let a = w.running_thread(100);
    let r = w.running_thread(100);
    let words: Vec<u64> = (0..120).map(|i| 1000 + i).collect();
    w.recv(r.tcb, e);
    w.send(a.tcb, e, 1, &words, &[]);
    let m = w.received(r.tcb);
    assert_eq!(m.mrs, words);
    // A length beyond 120 is clamped.
    w.recv(r.tcb, e);
    w.load(a.tcb, e, 1, &words, &[]);
    w.k.tcb_mut(a.tcb).context.rsi = MessageInfo::new(1, 0, 0, 127).to_word();
    w.syscall(a.tcb, SEND);
    assert_eq!(w.received(r.tcb).info.length(), 120);
    // A receiver without an IPC buffer gets the four register words.
    let nb = w.thread_with(100, false, 0);
    w.root_ok(nb.slot, L::TcbResume, &[], &[]);
    w.recv(nb.tcb, e);
    w.send(a.tcb, e, 1, &words[..10], &[]);
    let c = w.tcb(nb.tcb).context;
    assert_eq!(MessageInfo::from_word(c.rsi).length(), 4);
    assert_eq!([c.r10, c.r8, c.r9, c.r15], [1000, 1001, 1002, 1003]);
    // A sender without one sends at most four.
    w.recv(r.tcb, e);
    w.load(nb.tcb, e, 2, &words[..4], &[]);
    w.k.tcb_mut(nb.tcb).context.rsi = MessageInfo::new(2, 0, 0, 9).to_word();
    w.syscall(nb.tcb, SEND);
    assert_eq!(w.received(r.tcb).mrs, words[..4].to_vec());
}

#[test]
fn capability_transfer_with_and_without_grant() {
    let mut w = World::new();
    let e = w.endpoint();
    let other = w.endpoint();
    let a = w.running_thread(100);
    let r = w.running_thread(100);
    // With grant: the cap arrives in the receive slot as a child of the sender's.
    w.set_receive_slot(r.tcb, S_CNODE, RECV_SLOT_BASE, 64);
    w.recv(r.tcb, e);
    w.send(a.tcb, e, 0, &[5], &[other]);
    let m = w.received(r.tcb);
    assert_eq!((m.info.extra_caps(), m.info.caps_unwrapped()), (1, 0));
    assert_eq!(w.cap(RECV_SLOT_BASE), w.cap(other));
    assert!(cspace::is_parent_of(
        &w.k.hw,
        slot(other),
        slot(RECV_SLOT_BASE)
    ));
    // The receive slot is now full: the next cap is not transferred.
    w.recv(r.tcb, e);
    w.send(a.tcb, e, 0, &[], &[other]);
    assert_eq!(w.received(r.tcb).info.extra_caps(), 0);
    // Without grant on the sender's cap: nothing transferred.
    let nogrant = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[nogrant, 64, e, 64, Rights::WRITE.0 as u64],
        &[S_CNODE],
    );
    w.set_receive_slot(r.tcb, S_CNODE, RECV_SLOT_BASE + 1, 64);
    w.recv(r.tcb, e);
    w.send(a.tcb, nogrant, 0, &[], &[other]);
    assert_eq!(w.received(r.tcb).info.extra_caps(), 0);
    assert!(w.cap(RECV_SLOT_BASE + 1).is_null());
    // Badged caps to the receiving endpoint itself are unwrapped to their badge; a
    // second cap still goes to the slot.
    let b = w.mint(e, Rights::ALL, 0x77);
    w.recv(r.tcb, e);
    w.send(a.tcb, e, 0, &[], &[b, other]);
    let m = w.received(r.tcb);
    assert_eq!((m.info.extra_caps(), m.info.caps_unwrapped()), (2, 1));
    assert_eq!(w.buffer_word(r.tcb, 122), 0x77);
    assert_eq!(w.cap(RECV_SLOT_BASE + 1), w.cap(other));
    // A bad extra cptr in a blocking send is a cap fault (no handler: the thread stops).
    w.send(a.tcb, e, 0, &[], &[1 << 40]);
    assert_eq!(w.state(a.tcb), ThreadState::Inactive);
}

#[test]
fn reply_grant_follows_the_receivers_right() {
    let mut w = World::new();
    let e = w.endpoint();
    let give = w.endpoint();
    let client = w.running_thread(100);
    let server = w.running_thread(100);
    w.set_receive_slot(client.tcb, S_CNODE, RECV_SLOT_BASE, 64);
    // The server receives through a cap without grant; the client calls with grant.
    let srv = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[srv, 64, e, 64, Rights::READ.0 as u64],
        &[S_CNODE],
    );
    w.recv(server.tcb, srv);
    w.call(client.tcb, e, 0, &[], &[]);
    assert!(matches!(
        w.cap_at(tcb::slot(server.tcb, tcb::SLOT_CALLER)),
        Cap::Reply {
            can_grant: false,
            ..
        }
    ));
    w.load(server.tcb, 0, 0, &[], &[give]);
    w.syscall(server.tcb, REPLY);
    assert_eq!(w.received(client.tcb).info.extra_caps(), 0);
    assert!(w.cap(RECV_SLOT_BASE).is_null());
    // The server's cap has grant, the client's only grant-reply: the reply grants.
    let cli = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[
            cli,
            64,
            e,
            64,
            (Rights::WRITE.0 | Rights::GRANT_REPLY.0) as u64,
        ],
        &[S_CNODE],
    );
    w.call(client.tcb, cli, 0, &[], &[]);
    assert!(matches!(
        w.state(client.tcb),
        ThreadState::BlockedOnSend {
            can_grant: false,
            can_grant_reply: true,
            ..
        }
    ));
    w.recv(server.tcb, e);
    assert!(matches!(
        w.cap_at(tcb::slot(server.tcb, tcb::SLOT_CALLER)),
        Cap::Reply {
            can_grant: true,
            ..
        }
    ));
    w.load(server.tcb, 0, 0, &[], &[give]);
    w.syscall(server.tcb, REPLY);
    assert_eq!(w.received(client.tcb).info.extra_caps(), 1);
    assert_eq!(w.cap(RECV_SLOT_BASE), w.cap(give));
}

#[test]
fn endpoint_deletion_restarts_waiters() {
    let mut w = World::new();
    let e = w.endpoint();
    let copy = w.alloc_slot();
    w.root_ok(S_CNODE, L::CNodeCopy, &[copy, 64, e, 64, 15], &[S_CNODE]);
    let s1 = w.running_thread(50);
    let s2 = w.running_thread(50);
    w.send(s1.tcb, e, 0, &[], &[]);
    w.call(s2.tcb, e, 0, &[], &[]);
    // Deleting one of two caps changes nothing.
    w.root_ok(S_CNODE, L::CNodeDelete, &[copy, 64], &[]);
    assert_eq!(w.queue(Queue::Endpoint(w.addr(e))).len(), 2);
    // Deleting the last one restarts both.
    w.root_ok(S_CNODE, L::CNodeDelete, &[e, 64], &[]);
    for t in [s1.tcb, s2.tcb] {
        assert_eq!(w.state(t), ThreadState::Restart);
        assert!(w.tcb(t).queued);
        assert_eq!(w.tcb(t).context.rip, SYSCALL_IP + 2);
    }
    // When scheduled, each re-executes its system call.
    w.load(ROOT_TCB, S_TCB, 0, &[], &[]);
    w.syscall(ROOT_TCB, RECV); // the root blocks on its own TCB cap: a cap fault, it stops.
    assert_eq!(w.state(ROOT_TCB), ThreadState::Inactive);
    assert_eq!(w.k.current(), s1.tcb);
    assert_eq!(w.state(s1.tcb), ThreadState::Running);
    assert_eq!(w.tcb(s1.tcb).context.rip, SYSCALL_IP);
    // A receiver blocked on the endpoint is restarted the same way.
    let e2 = w.endpoint_from_thread(s1.tcb);
    w.recv(s2.tcb, e2);
    assert!(matches!(
        w.state(s2.tcb),
        ThreadState::BlockedOnReceive { .. }
    ));
    w.make_current(s1.tcb);
    let r = w.invoke(s1.tcb, S_CNODE, L::CNodeDelete, &[e2, 64], &[]);
    assert_eq!(r.label, 0);
    assert_eq!(w.state(s2.tcb), ThreadState::Restart);
}

impl World {
    /// Thread `t` (sharing the root CSpace) retypes an endpoint into a fresh slot.
    fn endpoint_from_thread(&mut self, t: u64) -> u64 {
        let s = self.alloc_slot();
        let r = self.invoke(
            t,
            S_UNTYPED,
            L::UntypedRetype,
            &[T::Endpoint as u64, 0, 0, 0, s, 1],
            &[S_CNODE],
        );
        assert_eq!(r.label, 0);
        s
    }
}

#[test]
fn notifications_signal_wait_poll() {
    let mut w = World::new();
    let n = w.notification();
    let b1 = w.mint(n, Rights::ALL, 1);
    let b4 = w.mint(n, Rights::ALL, 4);
    let t = w.running_thread(100);
    // Poll with nothing pending.
    w.k.tcb_mut(t.tcb).context.rdi = n;
    w.syscall(t.tcb, NB_RECV);
    assert_eq!(w.tcb(t.tcb).context.rdi, 0);
    // Two signals OR their badges; a wait takes both and clears.
    w.send(ROOT_TCB, b1, 0, &[], &[]);
    w.send(ROOT_TCB, b4, 0, &[], &[]);
    w.recv(t.tcb, n);
    assert_eq!(
        (w.state(t.tcb), w.tcb(t.tcb).context.rdi),
        (ThreadState::Running, 5)
    );
    w.k.tcb_mut(t.tcb).context.rdi = n;
    w.syscall(t.tcb, NB_RECV);
    assert_eq!(w.tcb(t.tcb).context.rdi, 0);
    // A waiter is woken by the next signal with its badge.
    w.recv(t.tcb, n);
    assert_eq!(
        w.state(t.tcb),
        ThreadState::BlockedOnNotification {
            notification: w.addr(n)
        }
    );
    w.send(ROOT_TCB, b4, 0, &[], &[]);
    assert_eq!(
        (w.state(t.tcb), w.tcb(t.tcb).context.rdi),
        (ThreadState::Running, 4)
    );
    // NBSend signals too; signalling needs the write right, waiting the read right.
    w.load(ROOT_TCB, b1, 0, &[], &[]);
    w.syscall(ROOT_TCB, NB_SEND);
    let ro = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[ro, 64, b4, 64, Rights::READ.0 as u64],
        &[S_CNODE],
    );
    w.recv(t.tcb, ro);
    assert_eq!(w.tcb(t.tcb).context.rdi, 1);
    // Deleting the notification restarts its waiters.
    w.recv(t.tcb, n);
    w.root_ok(S_CNODE, L::CNodeRevoke, &[n, 64], &[]);
    w.root_ok(S_CNODE, L::CNodeDelete, &[n, 64], &[]);
    assert_eq!(w.state(t.tcb), ThreadState::Restart);
}

#[test]
fn bound_notification_wakes_endpoint_receiver() {
    let mut w = World::new();
    let e = w.endpoint();
    let n = w.notification();
    let nb = w.mint(n, Rights::ALL, 0x10);
    let t = w.running_thread(100);
    let other = w.running_thread(100);
    w.root_ok(t.slot, L::TcbBindNotification, &[], &[n]);
    assert_eq!(w.tcb(t.tcb).bound_notification, w.addr(n));
    // Binding twice, or a notification bound elsewhere, is refused.
    let r = w.root(t.slot, L::TcbBindNotification, &[], &[n]);
    assert_eq!(r.label, err(keel_abi::error::Error::IllegalOperation));
    let r = w.root(other.slot, L::TcbBindNotification, &[], &[n]);
    assert_eq!(r.label, err(keel_abi::error::Error::IllegalOperation));
    // Only the bound thread may wait on it.
    w.recv(other.tcb, n);
    assert_eq!(
        w.state(other.tcb),
        ThreadState::Inactive,
        "cap fault, no handler"
    );
    // The bound thread waits on the endpoint; a signal wakes it with the badge.
    w.recv(t.tcb, e);
    w.send(ROOT_TCB, nb, 0, &[], &[]);
    assert_eq!(
        (w.state(t.tcb), w.tcb(t.tcb).context.rdi),
        (ThreadState::Running, 0x10)
    );
    assert!(w.queue(Queue::Endpoint(w.addr(e))).is_empty());
    // A pending signal is delivered when it next receives on the endpoint.
    w.send(ROOT_TCB, nb, 0, &[], &[]);
    w.recv(t.tcb, e);
    assert_eq!(
        (w.state(t.tcb), w.tcb(t.tcb).context.rdi),
        (ThreadState::Running, 0x10)
    );
    // The bound thread may also wait on the notification itself.
    w.recv(t.tcb, n);
    w.send(ROOT_TCB, n, 0, &[], &[]);
    assert_eq!(w.state(t.tcb), ThreadState::Running);
    // Binding a notification that is already active to a thread blocked on an
    // endpoint: later signals accumulate (seL4) instead of waking it with one badge.
    w.root_ok(t.slot, L::TcbUnbindNotification, &[], &[]);
    let r = w.root(t.slot, L::TcbUnbindNotification, &[], &[]);
    assert_eq!(r.label, err(keel_abi::error::Error::IllegalOperation));
    w.recv(t.tcb, e);
    w.send(ROOT_TCB, nb, 0, &[], &[]);
    w.root_ok(t.slot, L::TcbBindNotification, &[], &[n]);
    let b2 = w.mint(n, Rights::ALL, 0x2);
    w.send(ROOT_TCB, b2, 0, &[], &[]);
    assert!(matches!(
        w.state(t.tcb),
        ThreadState::BlockedOnReceive { .. }
    ));
    assert_eq!(
        w.k.hw
            .get::<crate::object::endpoint::Notification>(w.addr(n))
            .pending,
        0x12
    );
}

#[test]
fn missing_rights_are_invalid_capability_or_cap_faults() {
    let mut w = World::new();
    let handler = w.endpoint();
    let e = w.endpoint();
    let t = w.thread_with(100, true, handler);
    w.root_ok(t.slot, L::TcbResume, &[], &[]);
    let ro = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[ro, 64, e, 64, Rights::READ.0 as u64],
        &[S_CNODE],
    );
    let wo = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[wo, 64, e, 64, Rights::WRITE.0 as u64],
        &[S_CNODE],
    );
    // Sending needs the write right: a Call through a read-only cap gets an
    // InvalidCapability reply (seL4 decodeInvocation); a Send is dropped.
    w.load(t.tcb, ro, 0, &[], &[]);
    w.syscall(t.tcb, CALL);
    assert_eq!(w.state(t.tcb), ThreadState::Running);
    let info = keel_abi::message::MessageInfo::from_word(w.tcb(t.tcb).context.rsi);
    assert_eq!(
        info.label(),
        keel_abi::error::Error::InvalidCapability as u64
    );
    // So does one with a label no object has (the capability is looked at first).
    for label in [999, u64::from(u32::MAX)] {
        let r = w.call(t.tcb, ro, label, &[], &[]);
        assert_eq!(
            (r.label, r.mrs),
            (err(keel_abi::error::Error::InvalidCapability), vec![0]),
            "{label}"
        );
    }
    let r = w.call(ROOT_TCB, S_CNODE, 999, &[], &[]);
    assert_eq!(
        r.label,
        err(keel_abi::error::Error::IllegalOperation),
        "a CNode with label 999"
    );
    w.load(t.tcb, ro, 0, &[], &[]);
    w.syscall(t.tcb, SEND);
    assert_eq!(w.state(t.tcb), ThreadState::Running);
    // Receiving needs the read right: a capability fault.
    w.recv(ROOT_TCB, handler);
    w.load(t.tcb, wo, 0, &[], &[]);
    w.syscall(t.tcb, RECV);
    let m = w.received(ROOT_TCB);
    assert_eq!(m.label, crate::fault::label::CAP_FAULT);
    assert_eq!(m.mrs, vec![SYSCALL_IP, wo, 1, 2, 0]);
    w.load(ROOT_TCB, 0, 0, &[], &[]);
    w.syscall(ROOT_TCB, REPLY);
    // Switched to directly (same priority): it redoes the system call.
    assert_eq!(w.k.current(), t.tcb);
    assert_eq!(w.state(t.tcb), ThreadState::Running);
    assert_eq!(w.tcb(t.tcb).context.rip, SYSCALL_IP);
    // NBSend through a read-only cap fails silently.
    w.load(t.tcb, ro, 0, &[], &[]);
    w.syscall(t.tcb, NB_SEND);
    assert_eq!(w.state(t.tcb), ThreadState::Running);
}

/// A client/server exchange, compared step by step with the general path
/// (`faults::compare_routes`); every Call and ReplyRecv qualifies for the fastpath.
#[test]
fn fastpath_matches_the_general_path() {
    let taken = super::faults::compare_routes(1, |b| {
        let w = &mut b.w;
        w.root_ok(S_TCB, L::TcbSetPriority, &[50], &[S_TCB]);
        let e = w.endpoint();
        let badged = w.mint(e, Rights::ALL, 0x5eed);
        let server = w.running_thread(100);
        let client = w.running_thread(100);
        w.recv(server.tcb, e);
        for round in 0..4u64 {
            // Rounds 0-2 in registers; round 3 sends ten words and replies with nine.
            let (call, reply): (&[u64], &[u64]) = if round < 3 {
                (&[round, 2, 3], &[9, round])
            } else {
                (
                    &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                    &[9, 8, 7, 6, 5, 4, 3, 2, 1],
                )
            };
            b.w.load(client.tcb, badged, 7 + round, call, &[]);
            // What lies in a message register beyond the length is not part of the
            // message: the receiver keeps its own value there.
            b.w.k.tcb_mut(client.tcb).context.r15 = 0xc11e47 + round;
            b.syscall(client.tcb, CALL);
            b.w.load(server.tcb, e, 40 + round, reply, &[]);
            b.w.k.tcb_mut(server.tcb).context.r9 = 0x5e4e4 + round;
            b.w.k.tcb_mut(server.tcb).context.r15 = 0x5e4e5 + round;
            b.syscall(server.tcb, REPLY_RECV);
        }
    });
    assert_eq!(
        taken, [true; 8],
        "every Call and ReplyRecv of this exchange qualifies for the fastpath"
    );
}

#[test]
fn fastpath_declines_what_it_cannot_do() {
    let mut w = World::new();
    w.root_ok(S_TCB, L::TcbSetPriority, &[50], &[S_TCB]);
    let e = w.endpoint();
    let server = w.running_thread(100);
    let client = w.running_thread(100);
    // Nobody receiving: the general path queues the caller.
    w.load(client.tcb, e, 1, &[], &[]);
    assert!(!w.fast_syscall(client.tcb, CALL));
    assert!(matches!(
        w.state(client.tcb),
        ThreadState::BlockedOnSend { .. }
    ));
    w.recv(server.tcb, e);
    // Lower-priority receivers go the general path.
    let low = w.running_thread(90);
    let c2 = w.running_thread(100);
    w.recv(low.tcb, e);
    w.load(c2.tcb, e, 1, &[1, 2], &[]);
    assert!(!w.fast_syscall(c2.tcb, CALL), "lower priority");
    assert_eq!(
        w.state(low.tcb),
        ThreadState::Running,
        "the general path delivered it"
    );
    // So does a long message to a thread without an IPC buffer (truncated to the
    // registers there).
    let bufferless = w.thread_with(120, false, 0);
    w.root_ok(bufferless.slot, L::TcbResume, &[], &[]);
    let c3 = w.running_thread(100);
    w.recv(bufferless.tcb, e);
    w.load(c3.tcb, e, 1, &[1, 2, 3, 4, 5], &[]);
    assert!(
        !w.fast_syscall(c3.tcb, CALL),
        "five words, no receive buffer"
    );
    assert_eq!(w.received(bufferless.tcb).mrs, [1, 2, 3, 4]);
    // And capabilities travel on the general path only.
    let c4 = w.running_thread(100);
    w.recv(bufferless.tcb, e);
    w.load(c4.tcb, e, 1, &[], &[e]);
    assert!(!w.fast_syscall(c4.tcb, CALL), "an extra capability");
}

#[test]
fn fastpath_lookup_memo_follows_the_cspace_root() {
    let mut w = World::new();
    w.root_ok(S_TCB, L::TcbSetPriority, &[50], &[S_TCB]);
    let e1 = w.endpoint();
    let e2 = w.endpoint();
    let s1 = w.running_thread(100);
    let s2 = w.running_thread(100);
    let client = w.running_thread(100);
    w.recv(s1.tcb, e1);
    w.recv(s2.tcb, e2);
    // A Call and its reply on the fastpath: the client's lookup of `e1` is memoised.
    w.load(client.tcb, e1, 1, &[11], &[]);
    assert!(w.fast_syscall(client.tcb, CALL));
    assert_eq!(w.received(s1.tcb).mrs, [11]);
    w.load(s1.tcb, e1, 2, &[], &[]);
    assert!(w.fast_syscall(s1.tcb, REPLY_RECV));
    assert_eq!(w.state(client.tcb), ThreadState::Running);
    assert_eq!(w.tcb(client.tcb).lookup_cache.cptr, e1);
    // The client moves to a new one-level CNode (guard size 56 + radix 8) whose slot
    // with the same index holds `e2`: the same pointer now names another slot.
    let cnode = w.make(ObjectType::CapTable, 8);
    w.root_ok(
        cnode,
        L::CNodeCopy,
        &[e1, 8, e2, 64, Rights::ALL.0 as u64],
        &[S_CNODE],
    );
    w.root_ok(
        client.slot,
        L::TcbConfigure,
        &[0, 56, 0, 0],
        &[cnode, S_VSPACE, cnode],
    );
    w.load(client.tcb, e1, 3, &[22], &[]);
    assert!(w.fast_syscall(client.tcb, CALL), "still a one-level CSpace");
    assert_eq!(w.received(s2.tcb).mrs, [22], "the call reached e2's server");
    assert!(matches!(
        w.state(s1.tcb),
        ThreadState::BlockedOnReceive { .. }
    ));
    // The slot's capability changes under an unchanged root: read afresh each time.
    w.load(s2.tcb, e2, 4, &[], &[]);
    assert!(w.fast_syscall(s2.tcb, REPLY_RECV));
    w.root_ok(cnode, L::CNodeDelete, &[e1, 8], &[]);
    w.load(client.tcb, e1, 5, &[33], &[]);
    assert!(!w.fast_syscall(client.tcb, CALL), "the slot is empty now");
    assert!(matches!(
        w.state(s2.tcb),
        ThreadState::BlockedOnReceive { .. }
    ));
}

/// What a Send (or Signal) to a higher-priority waiter leaves behind: each thread's
/// state, registers and ready-queue links, the ready queues at both priorities, the
/// object's queue and the current thread.
type SendShot = (
    Vec<(ThreadState, [u64; 6], bool, u64, u64)>,
    Vec<u64>,
    Vec<u64>,
    Vec<u64>,
    u64,
);

/// Rounds of: the high-priority receiver waits on an endpoint (or a notification),
/// then a lower-priority thread, with another ready at its priority, sends to it.
fn send_exchange(fast: bool, notification: bool) -> (Vec<SendShot>, usize) {
    let mut w = World::new();
    w.root_ok(S_TCB, L::TcbSetPriority, &[50], &[S_TCB]);
    let object = if notification {
        w.notification()
    } else {
        w.endpoint()
    };
    let badged = w.mint(object, Rights::ALL, 0x5eed);
    let receiver = w.running_thread(150);
    let sender = w.running_thread(100);
    let other = w.running_thread(100);
    let threads = [receiver.tcb, sender.tcb, other.tcb];
    let queue = if notification {
        crate::object::endpoint::Queue::Notification(w.addr(object))
    } else {
        crate::object::endpoint::Queue::Endpoint(w.addr(object))
    };
    let mut shots = Vec::new();
    let mut taken = 0;
    for round in 0..3u64 {
        w.k.tcb_mut(receiver.tcb).context.r9 = 0x4ec + round;
        w.recv(receiver.tcb, object);
        w.load(sender.tcb, badged, 3 + round, &[round, 7], &[]);
        w.k.tcb_mut(sender.tcb).context.r15 = 0x5e4d + round;
        if fast {
            taken += w.fast_syscall(sender.tcb, SEND) as usize;
        } else {
            w.syscall(sender.tcb, SEND);
        }
        let per_thread = threads
            .iter()
            .map(|t| {
                let r = w.tcb(*t);
                let c = &r.context;
                (
                    r.state,
                    [c.rdi, c.rsi, c.r10, c.r8, c.r9, c.r15],
                    r.queued,
                    r.ready_prev,
                    r.ready_next,
                )
            })
            .collect();
        shots.push((
            per_thread,
            w.ready(0, 100),
            w.ready(0, 150),
            w.queue(queue),
            w.k.current(),
        ));
    }
    (shots, taken)
}

#[test]
fn send_fastpath_matches_the_general_path() {
    for notification in [false, true] {
        let (fast, taken) = send_exchange(true, notification);
        let (slow, _) = send_exchange(false, notification);
        assert_eq!(
            taken, 3,
            "every Send qualifies (notification: {notification})"
        );
        assert_eq!(fast, slow, "notification: {notification}");
        let (threads, ..) = &fast[2];
        assert_eq!(threads[0].0, ThreadState::Running, "the receiver runs");
    }
}

#[test]
fn send_fastpath_declines_an_equal_or_lower_priority_waiter() {
    let mut w = World::new();
    w.root_ok(S_TCB, L::TcbSetPriority, &[50], &[S_TCB]);
    let e = w.endpoint();
    let receiver = w.running_thread(100);
    let sender = w.running_thread(100);
    w.recv(receiver.tcb, e);
    w.load(sender.tcb, e, 1, &[5], &[]);
    assert!(
        !w.fast_syscall(sender.tcb, SEND),
        "equal priority: the general path"
    );
    assert_eq!(w.state(receiver.tcb), ThreadState::Running);
    assert_eq!(w.received(receiver.tcb).mrs, [5]);
    // Nobody waiting: the general path queues the sender.
    w.load(sender.tcb, e, 1, &[], &[]);
    assert!(!w.fast_syscall(sender.tcb, SEND));
    assert!(matches!(
        w.state(sender.tcb),
        ThreadState::BlockedOnSend { .. }
    ));
}

// ---- The IPC fastpath against the general path, case by case (review): each
// script runs with the fastpaths on and off (`faults::compare_routes`), and every step
// must end the same.

use super::faults::{Both, compare_routes};

/// A server of priority `sp` waiting on a fresh endpoint and a client of priority
/// `cp`; the client's capability to the endpoint has `rights` and badge 0xb0. The root
/// runs at 50. Returns (server, client, client's cptr, endpoint).
fn call_pair(b: &mut Both, sp: u8, cp: u8, rights: Rights) -> (Thread, Thread, u64, u64) {
    let w = &mut b.w;
    w.root_ok(S_TCB, L::TcbSetPriority, &[50], &[S_TCB]);
    let e = w.endpoint();
    let c = w.mint(e, rights, 0xb0);
    let server = w.running_thread(sp);
    let client = w.running_thread(cp);
    w.recv(server.tcb, e);
    (server, client, c, e)
}

#[test]
fn call_fastpath_by_rights_length_and_info_bits_matches_the_general_path() {
    let rw = Rights::READ.0 | Rights::WRITE.0;
    // (rights, message length, extra info bits, whether the fastpath takes the Call)
    let cases: [(u8, usize, u64, bool); 9] = [
        (Rights::ALL.0, 4, 0, true),
        (Rights::ALL.0, 5, 0, true),
        (Rights::ALL.0, 120, 0, true),
        (Rights::WRITE.0 | Rights::GRANT_REPLY.0, 7, 0, true),
        (Rights::WRITE.0 | Rights::GRANT.0, 2, 0, true),
        (rw, 2, 0, false),
        (Rights::READ.0 | Rights::GRANT.0, 2, 0, false),
        // Caps-unwrapped bits set by the sender; a length beyond the maximum.
        (Rights::ALL.0, 2, 3 << 9, false),
        (Rights::ALL.0, 0, 127, false),
    ];
    for (rights, len, bits, fast) in cases {
        let taken = compare_routes(1, |b| {
            let (server, client, c, _) = call_pair(b, 100, 100, Rights(rights));
            let words: Vec<u64> = (1..=len as u64).collect();
            b.w.load(client.tcb, c, 3, &words, &[]);
            b.w.k.tcb_mut(client.tcb).context.rsi |= bits;
            b.syscall(client.tcb, CALL);
            if fast {
                assert_eq!(b.w.received(server.tcb).mrs, words);
            }
        });
        assert_eq!(
            taken[0], fast,
            "rights {rights:#x} length {len} bits {bits:#x}"
        );
    }
}

#[test]
fn reply_recv_fastpath_edge_cases_match_the_general_path() {
    // 0: a long reply; 1: the receive capability without read; 2: a sender queued on
    // the endpoint; 3: the caller moved to another CPU while it waits; 4: the caller
    // suspended; 5: a bound notification signalled meanwhile; 6: a reply to a caller
    // below a ready thread.
    let expected = [true, false, false, false, false, false, false];
    for (case, fast) in expected.into_iter().enumerate() {
        let taken = compare_routes(2, |b| {
            let (server, client, c, e) = call_pair(b, 100, 100, Rights::ALL);
            let mut recv_cap = e;
            match case {
                1 => recv_cap = b.w.mint(e, Rights::WRITE, 0),
                5 => {
                    let n = b.w.notification();
                    b.w.root_ok(server.slot, L::TcbBindNotification, &[], &[n]);
                    b.w.load(client.tcb, c, 3, &[1], &[]);
                    b.syscall(client.tcb, CALL);
                    b.w.make_current(ROOT_TCB);
                    b.w.send(ROOT_TCB, n, 0, &[], &[]);
                    b.w.make_current(server.tcb);
                }
                _ => {}
            }
            if case != 5 {
                b.w.load(client.tcb, c, 3, &[1], &[]);
                b.syscall(client.tcb, CALL);
            }
            match case {
                2 => {
                    let other = b.w.running_thread(100);
                    b.w.send(other.tcb, c, 9, &[9], &[]);
                    b.w.make_current(server.tcb);
                }
                3 => {
                    b.w.make_current(ROOT_TCB);
                    b.w.root_ok(client.slot, L::TcbSetAffinity, &[1], &[]);
                    b.w.make_current(server.tcb);
                }
                4 => {
                    b.w.make_current(ROOT_TCB);
                    b.w.root_ok(client.slot, L::TcbSuspend, &[], &[]);
                    b.w.make_current(server.tcb);
                }
                6 => {
                    b.w.running_thread(110);
                    b.w.make_current(server.tcb);
                }
                _ => {}
            }
            b.shot();
            let words: Vec<u64> = if case == 0 {
                (1..=30).collect()
            } else {
                vec![7]
            };
            b.w.load(server.tcb, recv_cap, 4, &words, &[]);
            b.syscall(server.tcb, REPLY_RECV);
        });
        assert_eq!(taken.last(), Some(&fast), "case {case}");
    }
}

/// A Call on a notification (a Signal) or on a reply capability (a Reply) does not
/// block the caller, so it gets seL4's empty success reply: label 0, no words, badge
/// 0 (handleInvocation's replyFromKernel_success_empty), not its own message back.
#[test]
fn call_on_a_notification_or_a_reply_gets_an_empty_reply() {
    let mut w = World::new();
    let n = w.notification();
    let badged = w.mint(n, Rights::ALL, 0x44);
    let t = w.running_thread(100);
    let m = w.call(t.tcb, badged, 33, &[7, 8], &[]);
    assert_eq!(w.state(t.tcb), ThreadState::Running);
    assert_eq!((m.label, m.badge, m.mrs.len()), (0, 0, 0), "{m:?}");
    w.recv(t.tcb, n);
    assert_eq!(w.tcb(t.tcb).context.rdi, 0x44, "the Call signalled");
    // A server saves its caller's reply capability and Calls it.
    let e = w.endpoint();
    let server = w.running_thread(100);
    let client = w.running_thread(100);
    w.recv(server.tcb, e);
    w.call(client.tcb, e, 10, &[1], &[]);
    let saved = w.alloc_slot();
    let r = w.call(
        server.tcb,
        S_CNODE,
        L::CNodeSaveCaller as u64,
        &[saved, 64],
        &[],
    );
    assert_eq!(r.label, 0, "SaveCaller: {r:?}");
    let m = w.call(server.tcb, saved, 5, &[9], &[]);
    assert_eq!(w.state(server.tcb), ThreadState::Running);
    assert_eq!((m.label, m.badge, m.mrs.len()), (0, 0, 0), "{m:?}");
    let answer = w.received(client.tcb);
    assert_eq!((answer.label, answer.mrs), (5, vec![9]));
    assert_eq!(w.state(client.tcb), ThreadState::Running);
}
