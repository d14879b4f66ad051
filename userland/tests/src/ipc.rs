//! IPC: send/receive in both orders, Call/Reply and ReplyRecv, badges, NBSend and
//! NBRecv, capability transfer with and without grant, unwrapping, deleting an endpoint
//! a thread is blocked on, a notification a thread waits on, a queued sender and a
//! caller whose reply is saved, CancelBadgedSends, SaveCaller, notifications.

use keel_abi::fault::{FaultType, cap_fault};
use keel_abi::object::cap_tag;
use keel_sys::cap::{Cap, Endpoint, Notification, Reply, init};
use keel_sys::{CapRights, Message, Received};

use crate::harness::{
    DEPTH, Env, FAULT_BADGE, OrFail, Suite, TestResult, add_shared, recv_timeout, set_shared,
    shared, wait_signal, wait_until,
};
use crate::{CHILD_PRIORITY, ensure, fail};

/// Runs the IPC tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("ipc_send_first_then_recv_long_message", || send_first(env));
    suite.run("ipc_recv_first_then_send", || recv_first(env));
    suite.run("ipc_call_reply_and_reply_recv", || call_reply(env));
    suite.run("ipc_badge_reaches_receiver", || badge(env));
    suite.run("ipc_nb_send_to_nobody_is_dropped", || nb_send(env));
    suite.run("ipc_nb_recv_with_nothing_returns", || nb_recv(env));
    suite.run("ipc_grant_transfers_capability", || transfer(env, true));
    suite.run("ipc_without_grant_drops_capability", || {
        transfer(env, false)
    });
    suite.run("ipc_badged_cap_to_receiving_endpoint_is_unwrapped", || {
        unwrap(env)
    });
    suite.run("ipc_deleting_endpoint_restarts_blocked_receiver", || {
        delete_blocked(env)
    });
    suite.run("ipc_deleting_notification_restarts_blocked_waiter", || {
        delete_waited_notification(env)
    });
    suite.run("ipc_deleting_queued_sender_takes_it_off_the_queue", || {
        delete_queued_sender(env)
    });
    suite.run("ipc_deleting_caller_deletes_its_saved_reply", || {
        delete_caller_with_saved_reply(env)
    });
    suite.run("ipc_deleting_server_leaves_its_caller_waiting", || {
        delete_server_with_caller(env)
    });
    suite.run("ipc_cancel_badged_sends", || cancel_badged(env));
    suite.run("ipc_save_caller_then_reply", || save_caller(env));
    suite.run("ipc_reply_recv_wakes_caller_and_queued_sender", || {
        reply_recv_two_wakeups(env)
    });
    suite.run("notification_wait_blocks_until_signal", || {
        notification_wait(env)
    });
    suite.run("notification_poll_with_nothing_is_zero", || {
        notification_poll(env)
    });
}

const LABEL: u64 = 0x4b;

fn ep_at(i: usize) -> Cap<Endpoint> {
    Cap::from_cptr(shared(i))
}

/// Sends a 10-word message on the endpoint in word 10 (caps from words 11.., count in
/// the argument), then sets word 0.
fn sender(caps: u64) {
    let mut m = Message::new(LABEL).words(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    for i in 0..caps as usize {
        m.push_cap(shared(11 + i));
    }
    ep_at(10).send(&m);
    set_shared(0, 1);
}

fn send_first(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    set_shared(10, ep.cptr());
    let t = env.spawn(sender, 0, CHILD_PRIORITY)?;
    let got = recv_timeout(ep);
    let words = got.map(|r| r.words::<10>());
    let sent = wait_until(|| shared(0) == 1);
    env.destroy(t)?;
    let Some(r) = got else {
        fail!("nothing received")
    };
    ensure!(
        r.label() == LABEL && r.length() == 10,
        "label {} length {}",
        r.label(),
        r.length()
    );
    ensure!(
        words == Some([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        "words {words:?}"
    );
    ensure!(sent, "sender did not continue after the receive");
    Ok(())
}

/// Receives on the endpoint in word 10; stores label, word 9 and badge in 1, 2, 3.
fn receiver(_: u64) {
    let r = ep_at(10).recv();
    set_shared(2, r.mr(9));
    set_shared(3, r.badge);
    set_shared(1, r.label());
}

fn recv_first(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    set_shared(10, ep.cptr());
    let r = env.spawn(receiver, 0, CHILD_PRIORITY)?;
    let s = env.spawn(sender, 0, CHILD_PRIORITY - 10)?;
    let ok = wait_until(|| shared(1) != 0 && shared(0) == 1);
    env.destroy(r)?;
    env.destroy(s)?;
    ensure!(
        ok,
        "message not delivered (label {}, sender done {})",
        shared(1),
        shared(0)
    );
    ensure!(
        shared(1) == LABEL && shared(2) == 10,
        "label {} word 9 {}",
        shared(1),
        shared(2)
    );
    Ok(())
}

/// Serves the endpoint in word 10: replies with each word doubled, counting requests.
fn server(_: u64) {
    let ep = ep_at(10);
    let mut r = ep.recv();
    loop {
        add_shared(5, 1);
        let n = r.length();
        let mut m = Message::new(r.label() + 1);
        for i in 0..n {
            m.push_word(r.mr(i) * 2);
        }
        r = ep.reply_recv(&m);
    }
}

/// Calls the endpoint in word 10 ten times with growing messages; word 0 = calls that
/// got the right answer, word 1 = done.
fn client(_: u64) {
    let ep = ep_at(10);
    for round in 1..=10u64 {
        set_shared(6, round);
        let words: [u64; 8] = core::array::from_fn(|i| round * 100 + i as u64);
        let n = (round as usize % 8) + 1;
        let r = ep.call(&Message::new(round).words(&words[..n]));
        let good =
            r.label() == round + 1 && r.length() == n && (0..n).all(|i| r.mr(i) == words[i] * 2);
        if good {
            add_shared(0, 1);
        }
    }
    set_shared(1, 1);
}

fn call_reply(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    set_shared(10, ep.cptr());
    let s = env.spawn(server, 0, CHILD_PRIORITY)?;
    let c = env.spawn(client, 0, CHILD_PRIORITY - 10)?;
    let done = wait_until(|| shared(1) == 1);
    env.destroy(c)?;
    env.destroy(s)?;
    ensure!(
        done,
        "client did not finish: {} good replies, in call {}, server saw {} requests",
        shared(0),
        shared(6),
        shared(5)
    );
    ensure!(shared(0) == 10, "{} of 10 replies right", shared(0));
    ensure!(shared(5) == 10, "server saw {} requests", shared(5));
    Ok(())
}

fn badge(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let badged = env.mint(ep, CapRights::ALL, 0xbad9e)?;
    set_shared(10, badged.cptr());
    let t = env.spawn(sender, 0, CHILD_PRIORITY)?;
    let got = recv_timeout(ep);
    env.destroy(t)?;
    let Some(r) = got else {
        fail!("nothing received")
    };
    ensure!(r.badge == 0xbad9e, "badge {:#x}", r.badge);
    Ok(())
}

fn nb_send(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    ep.nb_send(&Message::new(LABEL).word(1));
    ensure!(
        ep.nb_recv().is_none(),
        "a dropped NBSend was received later"
    );
    Ok(())
}

fn nb_recv(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let r = ep.nb_recv_raw();
    ensure!(
        r.badge == 0 && r.label() == 0,
        "NBRecv on an empty endpoint returned {r:?}"
    );
    Ok(())
}

fn transfer(env: &mut Env, grant: bool) -> TestResult {
    let ep = env.endpoint()?;
    let rights = if grant {
        CapRights::ALL
    } else {
        CapRights::READ_WRITE
    };
    let send_cap = env.mint(ep, rights, 0)?;
    let n = env.notification()?;
    let n_badged = env.mint(n, CapRights::ALL, 0x4)?;
    set_shared(10, send_cap.cptr());
    set_shared(11, n_badged.cptr());
    let slot = env.slot()?;
    keel_sys::ipc::set_receive_slot(init::CNODE, slot, DEPTH);
    let t = env.spawn(sender, 1, CHILD_PRIORITY)?;
    let got = recv_timeout(ep);
    env.destroy(t)?;
    keel_sys::ipc::set_receive_slot(init::CNODE, 0, 0);
    let Some(r) = got else {
        fail!("nothing received")
    };
    let is_ntfn = env.has_tag(slot, cap_tag::NOTIFICATION);
    let empty = env.is_empty(slot);
    if grant {
        ensure!(
            r.extra_caps() == 1 && r.caps_unwrapped() == 0,
            "extra caps {} unwrapped {}",
            r.extra_caps(),
            r.caps_unwrapped()
        );
        ensure!(is_ntfn, "receive slot does not hold a notification");
        Cap::<Notification>::from_cptr(slot).signal();
        let bits = n.poll();
        ensure!(
            bits == 0x4,
            "signal through the transferred cap gave {bits:#x}"
        );
    } else {
        ensure!(
            r.extra_caps() == 0,
            "{} caps delivered without grant",
            r.extra_caps()
        );
        ensure!(empty, "receive slot filled without grant");
        ensure!(r.length() == 10, "message words lost ({})", r.length());
    }
    Ok(())
}

fn unwrap(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let badged = env.mint(ep, CapRights::ALL, 0x77)?;
    set_shared(10, ep.cptr());
    set_shared(11, badged.cptr());
    let slot = env.slot()?;
    keel_sys::ipc::set_receive_slot(init::CNODE, slot, DEPTH);
    let t = env.spawn(sender, 1, CHILD_PRIORITY)?;
    let got = recv_timeout(ep);
    let badge0 = got.map(|r| r.unwrapped_badge(0));
    env.destroy(t)?;
    keel_sys::ipc::set_receive_slot(init::CNODE, 0, 0);
    let Some(r) = got else {
        fail!("nothing received")
    };
    ensure!(
        r.extra_caps() == 1 && r.caps_unwrapped() == 1,
        "extra {} unwrapped {:#b}",
        r.extra_caps(),
        r.caps_unwrapped()
    );
    ensure!(badge0 == Some(0x77), "unwrapped badge {badge0:x?}");
    ensure!(
        env.is_empty(slot),
        "an unwrapped cap also filled the receive slot"
    );
    Ok(())
}

fn delete_blocked(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let copy = env.mint(ep, CapRights::ALL, 0)?;
    set_shared(10, copy.cptr());
    let t = env.spawn(receiver, 0, CHILD_PRIORITY)?;
    // The receiver is blocked on the endpoint; delete every capability to it.
    init::CNODE
        .delete(copy.cptr(), DEPTH)
        .or_fail("delete copy")?;
    init::CNODE
        .delete(ep.cptr(), DEPTH)
        .or_fail("delete endpoint")?;
    // Its Recv restarts on an empty slot: a capability fault in the receive phase.
    let got = recv_timeout(env.fault_ep);
    env.destroy(t)?;
    ensure!(
        shared(1) == 0,
        "the receiver got a message from a deleted endpoint"
    );
    expect_receive_cap_fault(got, copy.cptr())
}

/// `got` (from the suite's fault endpoint) is a capability fault of a test thread, in
/// the receive phase, on `cptr`.
fn expect_receive_cap_fault(got: Option<Received>, cptr: u64) -> TestResult {
    let Some(r) = got else {
        fail!("no fault from the restarted receiver")
    };
    ensure!(
        r.badge == FAULT_BADGE && r.label() == FaultType::CapFault as u64,
        "fault badge {:#x} label {}",
        r.badge,
        r.label()
    );
    let w = r.words::<4>();
    ensure!(
        w[cap_fault::ADDR] == cptr && w[cap_fault::IN_RECV_PHASE] == 1,
        "fault address {:#x}, receive phase {}",
        w[cap_fault::ADDR],
        w[cap_fault::IN_RECV_PHASE]
    );
    Ok(())
}

/// A thread waiting on a notification whose every capability is deleted: its Wait
/// restarts on the empty slot and faults (capability fault, receive phase); it never
/// wakes with bits.
fn delete_waited_notification(env: &mut Env) -> TestResult {
    let n = env.notification()?;
    let copy = env.mint(n, CapRights::ALL, 0)?;
    set_shared(10, copy.cptr());
    let t = env.spawn(ntfn_waiter, 0, CHILD_PRIORITY)?;
    let blocked = shared(1) == 1 && shared(0) == 0;
    init::CNODE
        .delete(copy.cptr(), DEPTH)
        .or_fail("delete copy")?;
    init::CNODE
        .delete(n.cptr(), DEPTH)
        .or_fail("delete notification")?;
    let got = recv_timeout(env.fault_ep);
    env.destroy(t)?;
    ensure!(blocked, "the waiter did not block on the notification");
    ensure!(
        shared(0) == 0,
        "the waiter woke from a deleted notification with bits {:#x}",
        shared(0)
    );
    expect_receive_cap_fault(got, copy.cptr())
}

/// Sends once on the endpoint capability `cptr`, with `cptr` as the message.
fn send_once(cptr: u64) {
    Cap::<Endpoint>::from_cptr(cptr).send(&Message::new(LABEL).word(cptr));
}

/// Two senders queued on an endpoint; the first is deleted while blocked: the receiver
/// gets the second's message and then nothing (no message from the deleted thread, no
/// corrupted queue), and the endpoint still works.
fn delete_queued_sender(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let b1 = env.mint(ep, CapRights::ALL, 1)?;
    let b2 = env.mint(ep, CapRights::ALL, 2)?;
    let s1 = env.spawn(send_once, b1.cptr(), CHILD_PRIORITY)?;
    let s2 = env.spawn(send_once, b2.cptr(), CHILD_PRIORITY)?;
    env.destroy(s1)?;
    let first = recv_timeout(ep).map(|m| (m.badge, m.mr(0)));
    let then = ep.nb_recv().map(|m| m.badge);
    let s3 = env.spawn(send_once, b1.cptr(), CHILD_PRIORITY)?;
    let after = recv_timeout(ep).map(|m| m.badge);
    env.destroy(s2)?;
    env.destroy(s3)?;
    ensure!(
        first == Some((2, b2.cptr())),
        "first message {first:?}, expected badge 2 from the second sender"
    );
    ensure!(then.is_none(), "a message with badge {then:?} after it");
    ensure!(
        after == Some(1),
        "a new sender on the same endpoint: {after:?}"
    );
    Ok(())
}

/// A server saved a caller's reply capability; the caller is deleted before the
/// reply: the saved reply capability goes with it, and the server's reply through the
/// emptied slot is nothing (no fault, no kernel error).
fn delete_caller_with_saved_reply(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let slot = env.slot()?;
    set_shared(10, ep.cptr());
    set_shared(11, slot);
    let go = env.notification()?;
    set_shared(12, go.cptr());
    let s = env.spawn(saving_server, 0, CHILD_PRIORITY)?;
    let c = env.spawn(caller, 0, CHILD_PRIORITY)?;
    let saved = wait_until(|| shared(3) != 0);
    let was_reply = env.has_tag(slot, cap_tag::REPLY);
    env.destroy(c)?;
    let emptied = env.is_empty(slot);
    go.signal();
    let server_done = wait_until(|| shared(4) != 0);
    let fault = env.fault_ep.nb_recv().map(|r| r.label());
    env.destroy(s)?;
    ensure!(saved && shared(3) == 2, "SaveCaller failed");
    ensure!(was_reply, "the saved slot does not hold a reply capability");
    ensure!(
        emptied,
        "the reply capability outlived the caller it would answer"
    );
    ensure!(server_done, "the server did not get past its reply");
    ensure!(fault.is_none(), "a fault (label {fault:?}) from the reply");
    ensure!(shared(0) == 0, "the deleted caller got an answer");
    Ok(())
}

/// Receives one message on the endpoint in word 10, stores its word 0 in word 1 and
/// never answers (it waits on the notification in word 12, which nobody signals).
fn holding_server(_: u64) {
    let r = ep_at(10).recv();
    set_shared(1, r.mr(0));
    loop {
        Cap::<Notification>::from_cptr(shared(12)).wait();
    }
}

/// A server that received a Call is deleted before it answers: its reply capability
/// goes with it, and the caller stays waiting for a reply that cannot come (as in
/// seL4): no answer, no fault, not back on the endpoint's queue. It can still be
/// deleted, and the endpoint serves a new pair.
fn delete_server_with_caller(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let never = env.notification()?;
    set_shared(10, ep.cptr());
    set_shared(12, never.cptr());
    let s = env.spawn(holding_server, 0, CHILD_PRIORITY)?;
    let c = env.spawn(caller, 0, CHILD_PRIORITY)?;
    let received = wait_until(|| shared(1) != 0);
    env.destroy(s)?;
    crate::harness::pause(20_000_000);
    let answered = shared(0);
    let fault = env.fault_ep.nb_recv().map(|r| r.label());
    let queued = ep.nb_recv().map(|r| r.badge);
    env.destroy(c)?;
    // A new server and client on the same endpoint.
    let s2 = env.spawn(server, 0, CHILD_PRIORITY)?;
    let c2 = env.spawn(client, 0, CHILD_PRIORITY)?;
    let served = wait_until(|| shared(1) != 0 && shared(5) >= 10);
    let good = shared(0);
    env.destroy(c2)?;
    env.destroy(s2)?;
    ensure!(received && shared(1) != 0, "the server got no call");
    ensure!(
        answered == 0,
        "the caller got answer {answered} from a deleted server"
    );
    ensure!(
        fault.is_none(),
        "a fault (label {fault:?}) after the server's deletion"
    );
    ensure!(
        queued.is_none(),
        "the caller is queued on the endpoint again"
    );
    ensure!(
        served && good == 10,
        "the endpoint served {good} of 10 calls afterwards"
    );
    Ok(())
}

/// Sends on the endpoint capability `cptr`, forever.
fn repeat_sender(cptr: u64) {
    let ep = Cap::<Endpoint>::from_cptr(cptr);
    loop {
        ep.send(&Message::new(LABEL).word(cptr));
    }
}

fn cancel_badged(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let b1 = env.mint(ep, CapRights::ALL, 1)?;
    let b2 = env.mint(ep, CapRights::ALL, 2)?;
    let s1 = env.spawn(repeat_sender, b1.cptr(), CHILD_PRIORITY)?;
    let s2 = env.spawn(repeat_sender, b2.cptr(), CHILD_PRIORITY)?;
    // Queue: s1 (badge 1), s2 (badge 2). Cancel badge 1: s1 restarts its Send and
    // queues again behind s2.
    let r = init::CNODE.cancel_badged_sends(b1.cptr(), DEPTH);
    let first = recv_timeout(ep).map(|m| m.badge);
    let second = recv_timeout(ep).map(|m| m.badge);
    let unbadged = init::CNODE.cancel_badged_sends(ep.cptr(), DEPTH);
    env.destroy(s1)?;
    env.destroy(s2)?;
    r.or_fail("cancel badged sends")?;
    ensure!(
        first == Some(2) && second == Some(1),
        "received badges {first:?} then {second:?}, expected 2 then 1"
    );
    unbadged.or_fail("cancel with an unbadged cap (no-op)")
}

/// Receives a Call on the endpoint in word 10, saves the reply capability in the slot
/// in word 11, and replies through the saved capability when the notification in
/// word 12 is signalled.
fn saving_server(_: u64) {
    let r = ep_at(10).recv();
    let saved = shared(11);
    let result = init::CNODE.save_caller(saved, DEPTH);
    set_shared(3, result.is_ok() as u64 + 1);
    set_shared(1, r.mr(0));
    Cap::<Notification>::from_cptr(shared(12)).wait();
    Cap::<Reply>::from_cptr(saved).send(&Message::new(0).word(r.mr(0) + 1));
    set_shared(4, 1);
}

/// Calls the endpoint in word 10 with 41; stores the answer in word 0.
fn caller(_: u64) {
    let r = ep_at(10).call(&Message::new(LABEL).word(41));
    set_shared(0, r.mr(0));
}

fn save_caller(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let slot = env.slot()?;
    set_shared(10, ep.cptr());
    set_shared(11, slot);
    let go = env.notification()?;
    set_shared(12, go.cptr());
    let s = env.spawn(saving_server, 0, CHILD_PRIORITY)?;
    let c = env.spawn(caller, 0, CHILD_PRIORITY)?;
    let saved = wait_until(|| shared(3) != 0);
    let is_reply = env.has_tag(slot, cap_tag::REPLY);
    go.signal();
    let answered = wait_until(|| shared(0) != 0);
    env.destroy(c)?;
    env.destroy(s)?;
    ensure!(saved && shared(3) == 2, "SaveCaller failed");
    ensure!(is_reply, "saved slot does not hold a reply capability");
    ensure!(answered && shared(0) == 42, "caller got {}", shared(0));
    ensure!(env.is_empty(slot), "the reply capability outlived its use");
    Ok(())
}

/// Waits on the notification in word 10; stores the bits in word 0.
fn ntfn_waiter(_: u64) {
    let n = Cap::<Notification>::from_cptr(shared(10));
    set_shared(1, 1);
    let bits = n.wait();
    set_shared(0, bits);
}

fn notification_wait(env: &mut Env) -> TestResult {
    let n = env.notification()?;
    let a = env.mint(n, CapRights::ALL, 0b001)?;
    let b = env.mint(n, CapRights::ALL, 0b100)?;
    set_shared(10, n.cptr());
    let t = env.spawn(ntfn_waiter, 0, CHILD_PRIORITY)?;
    let blocked = shared(1) == 1 && shared(0) == 0;
    a.signal();
    let woke = wait_until(|| shared(0) != 0);
    let bits = shared(0);
    env.destroy(t)?;
    ensure!(blocked, "waiter did not block");
    ensure!(woke && bits == 0b001, "waiter got {bits:#b}");
    // Without a waiter, signals accumulate (OR) until polled.
    a.signal();
    b.signal();
    let acc = wait_signal(n);
    ensure!(acc == 0b101, "accumulated {acc:#b}");
    Ok(())
}

fn notification_poll(env: &mut Env) -> TestResult {
    let n = env.notification()?;
    ensure!(n.poll() == 0, "fresh notification polled non-zero");
    let ro = env.mint(n, CapRights::READ, 0)?;
    ensure!(ro.poll() == 0, "poll through a read-only cap");
    n.signal();
    let bits = ro.poll();
    ensure!(bits == 0, "unbadged signal set bits {bits:#x}");
    Ok(())
}

/// Shared words of [`reply_recv_two_wakeups`]: 10 the endpoint; 1 the caller's reply
/// came back, 2 the sender's Send returned, 3 the server's receive got the sender's
/// message (its label).
const TWO_WAKEUPS_CALL: u64 = 0x31;
const TWO_WAKEUPS_SEND: u64 = 0x32;

fn two_wakeups_caller(_: u64) {
    let r = ep_at(10).call(&Message::new(TWO_WAKEUPS_CALL));
    set_shared(1, 1 + r.label());
}

fn two_wakeups_sender(_: u64) {
    ep_at(10).send(&Message::new(TWO_WAKEUPS_SEND));
    set_shared(2, 1);
}

fn two_wakeups_server(_: u64) {
    let r = ep_at(10).recv();
    if r.label() != TWO_WAKEUPS_CALL {
        set_shared(3, 0xbad);
        return;
    }
    // Reply to the caller and receive the queued Send in one system call: both the
    // caller (reply half) and the sender (receive half) become runnable on this CPU.
    let r = ep_at(10).reply_recv(&Message::new(7));
    set_shared(3, r.label());
}

/// ReplyRecv whose reply wakes a caller and whose receive takes a plain Send that was
/// queued, all on one CPU: the kernel must run both woken threads (neither may be lost
/// between the scheduler's "switch to" decision for the first and the second wakeup).
fn reply_recv_two_wakeups(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    set_shared(10, ep.cptr());
    // The caller and then the sender block on the endpoint (no receiver yet); the
    // server then receives the Call first. All run on this CPU above our priority.
    let caller = env.spawn(two_wakeups_caller, 0, CHILD_PRIORITY)?;
    let sender = env.spawn(two_wakeups_sender, 0, CHILD_PRIORITY)?;
    let server = env.spawn(two_wakeups_server, 0, CHILD_PRIORITY)?;
    let done = wait_until(|| shared(1) != 0 && shared(2) != 0 && shared(3) != 0);
    let (replied, sent, served) = (shared(1), shared(2), shared(3));
    env.destroy(server)?;
    env.destroy(sender)?;
    env.destroy(caller)?;
    ensure!(
        served == TWO_WAKEUPS_SEND,
        "the server's ReplyRecv received label {served:#x}, expected the Send ({TWO_WAKEUPS_SEND:#x})"
    );
    ensure!(
        done && replied == 1 + 7 && sent == 1,
        "after one ReplyRecv woke both: caller {} (reply label {}), sender {}: a woken thread was lost",
        if replied != 0 { "ran" } else { "never ran" },
        replied.saturating_sub(1),
        if sent != 0 { "ran" } else { "never ran" }
    );
    Ok(())
}
