//! Fault delivery to a fault endpoint and the handler's replies.

use keel_abi::fault::{unknown_syscall as us, user_exception as ue, vm_fault as vm};
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::syscall::{REPLY, REPLY_RECV};

use crate::fault::label;

use super::*;

/// A handler endpoint (badged 0xfa), a thread whose fault endpoint it is, and the root
/// waiting on it. The thread is current.
fn setup() -> (World, Thread, u64) {
    let mut w = World::new();
    let (th, e) = setup_in(&mut w);
    (w, th, e)
}

/// [`setup`] in a given world: a faulter whose fault endpoint is a badged copy of `e`,
/// the root waiting on `e`.
fn setup_in(w: &mut World) -> (Thread, u64) {
    let e = w.endpoint();
    let h = w.mint(e, Rights::ALL, 0xfa);
    let th = w.thread_with(100, true, h);
    w.root_ok(th.slot, L::TcbResume, &[], &[]);
    w.recv(ROOT_TCB, e);
    w.make_current(th.tcb);
    (th, e)
}

fn reply(w: &mut World, label: u64, mrs: &[u64]) {
    w.load(ROOT_TCB, 0, label, mrs, &[]);
    w.syscall(ROOT_TCB, REPLY);
}

#[test]
fn unknown_syscall_message_and_replies() {
    let (mut w, th, e) = setup();
    {
        let c = &mut w.k.tcb_mut(th.tcb).context;
        (c.rax, c.rbx, c.rsi, c.rdi, c.rbp) = (1, 2, 5, 6, 7);
        (c.r8, c.r9, c.r10, c.r12, c.r13, c.r14, c.r15) = (8, 9, 10, 12, 13, 14, 15);
        c.rsp = 0x7ff0_0000;
    }
    w.syscall(th.tcb, 42);
    assert_eq!(w.state(th.tcb), ThreadState::BlockedOnReply);
    let m = w.received(ROOT_TCB);
    assert_eq!(
        (m.label, m.badge, m.mrs.len()),
        (label::UNKNOWN_SYSCALL, 0xfa, us::LENGTH)
    );
    let c = w.tcb(th.tcb).context;
    assert_eq!(m.mrs[us::RAX], 1);
    assert_eq!(m.mrs[us::RBX], 2);
    assert_eq!(
        m.mrs[us::RCX],
        SYSCALL_IP + 2,
        "RCX holds the return address"
    );
    assert_eq!(m.mrs[us::RDX], 42);
    assert_eq!(m.mrs[us::R10], 10);
    assert_eq!(m.mrs[us::R15], 15);
    assert_eq!(m.mrs[us::FAULT_IP], SYSCALL_IP);
    assert_eq!(m.mrs[us::SP], 0x7ff0_0000);
    assert_eq!(m.mrs[us::FLAGS], c.rflags);
    assert_eq!(m.mrs[us::SYSCALL], 42);
    // A full reply with label 0 sets the registers; FaultIP + 2 continues after it.
    let mut regs = m.mrs[..18].to_vec();
    regs[us::RAX] = 77;
    regs[us::FAULT_IP] = SYSCALL_IP + 2;
    regs[us::FLAGS] = u64::MAX;
    reply(&mut w, 0, &regs);
    assert_eq!(w.state(th.tcb), ThreadState::Running);
    let c = w.tcb(th.tcb).context;
    assert_eq!((c.rax, c.rip), (77, SYSCALL_IP + 2));
    assert_eq!(c.rflags, keel_abi::fault::sanitise_rflags(u64::MAX));
    // A short reply keeps FaultIP: the system call runs again (seL4 restarts at FaultIP).
    w.recv(ROOT_TCB, e);
    w.syscall(th.tcb, keel_abi::syscall::DEBUG_PUT_CHAR - 8); // -17: DebugRun, absent
    let m = w.received(ROOT_TCB);
    assert_eq!(
        (m.label, m.mrs[us::SYSCALL]),
        (label::UNKNOWN_SYSCALL, (-17i64) as u64)
    );
    reply(&mut w, 0, &[5]);
    let c = w.tcb(th.tcb).context;
    assert_eq!((c.rax, c.rip), (5, SYSCALL_IP));
    // A reply with a non-zero label leaves the thread inactive.
    w.recv(ROOT_TCB, e);
    w.syscall(th.tcb, 1000);
    reply(&mut w, 1, &[]);
    assert_eq!(w.state(th.tcb), ThreadState::Inactive);
    assert_eq!(w.tcb(th.tcb).fault, crate::object::tcb::Fault::None);
}

#[test]
fn user_exception_message_and_reply() {
    let (mut w, th, _) = setup();
    w.k.tcb_mut(th.tcb).context.rip = 0x50_1234;
    w.k.handle_user_exception(13, 0x18, 0);
    w.k.schedule();
    let m = w.received(ROOT_TCB);
    assert_eq!((m.label, m.mrs.len()), (label::USER_EXCEPTION, ue::LENGTH));
    let c = w.tcb(th.tcb).context;
    assert_eq!(m.mrs, vec![0x50_1234, c.rsp, c.rflags, 13, 0x18]);
    assert_eq!(w.k.current(), ROOT_TCB);
    // Resume at another address with another stack.
    reply(&mut w, 0, &[0x50_2000, 0x7000_0000, 0x1]);
    let c = w.tcb(th.tcb).context;
    assert_eq!((c.rip, c.rsp, c.rflags), (0x50_2000, 0x7000_0000, 0x203));
    assert_eq!(w.state(th.tcb), ThreadState::Running);
    w.check_invariants();
}

#[test]
fn vm_fault_message_and_restart() {
    let (mut w, th, _) = setup();
    w.k.tcb_mut(th.tcb).context.rip = 0x50_4000;
    // An instruction fetch from an unmapped page (error code: user | instruction).
    w.k.handle_user_exception(14, 0x14, 0xdead_b000);
    w.k.schedule();
    let m = w.received(ROOT_TCB);
    assert_eq!(m.label, label::VM_FAULT);
    assert_eq!(m.mrs.len(), vm::LENGTH);
    assert_eq!(
        m.mrs,
        vec![0x50_4000, 0xdead_b000, vm::INSTRUCTION_FAULT, 0x14]
    );
    // Any reply resumes; the faulting instruction runs again (no syscall adjustment).
    reply(&mut w, 3, &[]);
    assert_eq!(w.state(th.tcb), ThreadState::Running);
    assert_eq!(w.tcb(th.tcb).context.rip, 0x50_4000);
}

#[test]
fn fault_queues_until_the_handler_receives() {
    let mut w = World::new();
    let e = w.endpoint();
    let th = w.thread_with(100, true, e);
    w.root_ok(th.slot, L::TcbResume, &[], &[]);
    w.make_current(th.tcb);
    w.k.handle_user_exception(14, 0x6, 0x1000);
    w.k.schedule();
    assert!(matches!(w.state(th.tcb), ThreadState::BlockedOnSend { .. }));
    w.recv(ROOT_TCB, e);
    let m = w.received(ROOT_TCB);
    assert_eq!(
        (m.label, m.mrs[1], m.mrs[2]),
        (label::VM_FAULT, 0x1000, vm::DATA_FAULT)
    );
    assert_eq!(w.state(th.tcb), ThreadState::BlockedOnReply);
    // The handler's ordinary Recv deleted nothing; it can save the reply cap and reply later.
    let s = w.alloc_slot();
    w.root_ok(S_CNODE, L::CNodeSaveCaller, &[s, 64], &[]);
    w.send(ROOT_TCB, s, 0, &[], &[]);
    assert!(w.state(th.tcb).is_runnable());
}

#[test]
fn no_handler_stops_the_thread() {
    let mut w = World::new();
    let e = w.endpoint();
    // No handler at all.
    let a = w.running_thread(100);
    w.make_current(a.tcb);
    w.k.handle_user_exception(6, 0, 0);
    w.k.schedule();
    assert_eq!(w.state(a.tcb), ThreadState::Inactive);
    let out = String::from_utf8(w.k.hw.console.clone()).unwrap();
    assert!(out.contains("unhandled UserException"), "{out}");
    // A handler cap without grant or grant-reply does not count.
    let weak = w.alloc_slot();
    w.root_ok(
        S_CNODE,
        L::CNodeCopy,
        &[weak, 64, e, 64, Rights::WRITE.0 as u64],
        &[S_CNODE],
    );
    let b = w.thread_with(100, true, weak);
    w.root_ok(b.slot, L::TcbResume, &[], &[]);
    w.syscall(b.tcb, 99);
    assert_eq!(w.state(b.tcb), ThreadState::Inactive);
    assert!(w.queue(Queue::Endpoint(w.addr(e))).is_empty());
    // Suspended while waiting for the handler's reply: the fault is dropped.
    let c = w.thread_with(100, true, e);
    w.root_ok(c.slot, L::TcbResume, &[], &[]);
    w.syscall(c.tcb, 99);
    w.root_ok(c.slot, L::TcbSuspend, &[], &[]);
    assert_eq!(w.state(c.tcb), ThreadState::Inactive);
    assert!(w.queue(Queue::Endpoint(w.addr(e))).is_empty());
}

/// Rounds of fault, handler's ReplyRecv, resumed thread, compared step by step with
/// the general path (`compare_routes`); every delivery and reply qualifies for the
/// fast route.
#[test]
fn fault_fast_route_matches_the_general_path() {
    let taken = compare_routes(1, |b| {
        let (th, e) = setup_in(&mut b.w);
        b.w.set_buffer_word(ROOT_TCB, 8 * 5, 0x0b0f);
        // (vector, error code, address; the reply's label and words): #UD resumed
        // after the instruction with a new stack and flags, #GP with a short reply, a
        // page fault (any reply resumes it), #UD again.
        let rounds: [(u64, u64, u64, u64, &[u64]); 4] = [
            (6, 0, 0, 0, &[0x50_1002, 0x7000_0000, 0x1]),
            (13, 0x18, 0, 0, &[0x50_1008]),
            (14, 0x6, 0xdead_b000, 5, &[]),
            (6, 0, 0, 0, &[0x50_1002, 0x7000_0100, 0x2]),
        ];
        for (round, (vector, code, address, label, reply)) in rounds.into_iter().enumerate() {
            {
                let c = &mut b.w.k.tcb_mut(th.tcb).context;
                c.rip = 0x50_1000 + round as u64;
                (c.r10, c.r8, c.r9, c.r15) = (10, 8, 9, 15);
            }
            b.fault(th.tcb, vector, code, address);
            assert_eq!(b.w.k.current(), ROOT_TCB, "the handler runs");
            b.w.load(ROOT_TCB, e, label, reply, &[]);
            b.w.k.tcb_mut(ROOT_TCB).context.r15 = 0x5e4e5;
            b.syscall(ROOT_TCB, REPLY_RECV);
            assert_eq!(b.w.k.current(), th.tcb, "the faulter resumed");
        }
    });
    assert_eq!(
        taken, [true; 8],
        "every delivery and reply qualifies for the fast route"
    );
}

#[test]
fn fault_fast_route_declines_what_it_cannot_do() {
    // The handler does not wait yet: the fault queues on the general path.
    let mut w = World::new();
    let e = w.endpoint();
    let th = w.thread_with(100, true, e);
    w.root_ok(th.slot, L::TcbResume, &[], &[]);
    w.make_current(th.tcb);
    let here = w.k.hw.cpu;
    assert!(w.k.faultpath_exception(6, 0, 0, here).is_none());
    assert_eq!(w.state(th.tcb), ThreadState::Running, "nothing changed");
    // Debug faults take the general path.
    let (mut w, th, _) = setup();
    assert!(w.k.faultpath_exception(3, 0, 0, here).is_none());
    assert_eq!(w.state(th.tcb), ThreadState::Running);
    // A reply with a label other than 0 stops a thread after a user exception: the
    // general path.
    assert!(w.k.faultpath_exception(6, 0, 0, here).is_some());
    w.k.schedule();
    w.load(ROOT_TCB, w.tcb(th.tcb).fault_handler, 1, &[], &[]);
    assert!(!w.fast_syscall(ROOT_TCB, REPLY_RECV));
    assert_eq!(w.state(th.tcb), ThreadState::Inactive);
}

/// A #UD delivered to a handler without an IPC buffer (its fifth word, the error code,
/// is dropped; the info word still says 5 words), with the fast route or without;
/// returns both threads' states and contexts, and whether the fast route took it.
fn bufferless_handler_delivery(
    fast: bool,
) -> (Vec<ThreadState>, Vec<crate::object::tcb::UserContext>, bool) {
    let mut w = World::new();
    w.root_ok(S_TCB, L::TcbSetPriority, &[50], &[S_TCB]);
    let e = w.endpoint();
    let h = w.mint(e, Rights::ALL, 0xfa);
    let handler = w.thread_with(120, false, 0);
    w.root_ok(handler.slot, L::TcbResume, &[], &[]);
    let th = w.thread_with(100, true, h);
    w.root_ok(th.slot, L::TcbResume, &[], &[]);
    w.recv(handler.tcb, e);
    w.make_current(th.tcb);
    let here = w.k.hw.cpu;
    let took = fast && w.k.faultpath_exception(6, 0, 0, here).is_some();
    if !took {
        w.k.handle_user_exception(6, 0, 0);
    }
    w.k.schedule();
    w.check_invariants();
    assert_eq!(w.k.current(), handler.tcb);
    let threads = [handler.tcb, th.tcb];
    (
        threads.iter().map(|t| w.state(*t)).collect(),
        threads.iter().map(|t| w.tcb(*t).context).collect(),
        took,
    )
}

#[test]
fn fault_fast_route_to_a_bufferless_handler_matches_the_general_path() {
    let (fast_states, fast_contexts, took) = bufferless_handler_delivery(true);
    let (states, contexts, _) = bufferless_handler_delivery(false);
    assert!(took, "the fast route delivered it");
    assert_eq!(fast_states, states);
    assert_eq!(fast_contexts, contexts);
    let info = keel_abi::message::MessageInfo::from_word(contexts[0].rsi);
    assert_eq!((info.label(), info.length()), (label::USER_EXCEPTION, 5));
}

#[test]
fn fault_fast_route_leaves_a_busier_cpu_to_the_scheduler() {
    // A ready thread above the handler's priority: the general path decides.
    let mut w = World::new();
    w.root_ok(S_TCB, L::TcbSetPriority, &[50], &[S_TCB]);
    let e = w.endpoint();
    let h = w.mint(e, Rights::ALL, 0xfa);
    let handler = w.running_thread(110);
    let th = w.thread_with(100, true, h);
    w.root_ok(th.slot, L::TcbResume, &[], &[]);
    w.recv(handler.tcb, e);
    let busy = w.running_thread(120);
    w.make_current(th.tcb);
    let here = w.k.hw.cpu;
    assert!(w.k.faultpath_exception(6, 0, 0, here).is_none());
    assert_eq!(w.state(th.tcb), ThreadState::Running, "nothing changed");
    // The general path delivers it; the busier thread runs first.
    w.k.handle_user_exception(6, 0, 0);
    w.k.schedule();
    assert_eq!(w.state(th.tcb), ThreadState::BlockedOnReply);
    assert_eq!(w.k.current(), busy.tcb);
}

// ---- The fault fast route against the general path, case by case (review of
// faultpath.rs): each script runs twice, with the fast routes on and off, and every
// step's outcome must be the same; the script's steps report whether a fast route took
// them, for the expectations on what it accepts and declines.

/// A World for one run of a comparison script: `fast` says whether the fast routes
/// are on; `taken` records, step by step, whether a fast route took the step.
pub(super) struct Both {
    pub(super) w: World,
    taken: Vec<bool>,
    shots: Vec<String>,
}

impl Both {
    fn new(cpus: usize, fast: bool) -> Self {
        let mut w = World::with_cpus(cpus);
        w.k.set_fastpath(fast);
        Both {
            w,
            taken: Vec::new(),
            shots: Vec::new(),
        }
    }

    /// Exception `vector` by `t` (made current): the fast route if it takes it, else
    /// the general path; then the scheduler, the invariants and a snapshot.
    fn fault(&mut self, t: u64, vector: u64, code: u64, address: u64) {
        self.w.make_current(t);
        let here = self.w.k.hw.cpu;
        let took = match self.w.k.faultpath_exception(vector, code, address, here) {
            Some(next) => {
                assert_eq!(self.w.k.current(), next.get());
                true
            }
            None => {
                self.w.k.handle_user_exception(vector, code, address);
                false
            }
        };
        self.w.k.schedule();
        self.w.check_invariants();
        self.taken.push(took);
        self.shot();
    }

    /// System call `number` by `t` with the fastpaths' glue (`World::fast_syscall`).
    pub(super) fn syscall(&mut self, t: u64, number: i64) {
        let took = self.w.fast_syscall(t, number);
        self.taken.push(took);
        self.shot();
    }

    /// Records everything a route could change: every thread's block but its lookup
    /// memo (the fastpath fills it; it is a cache), every slot's capability, each
    /// CPU's current thread and pending decision, the IPIs and the console.
    pub(super) fn shot(&mut self) {
        let w = &self.w;
        let mut s = String::new();
        for t in w.all_threads() {
            let mut r = w.tcb(t).clone();
            r.lookup_cache = Default::default();
            s += &format!("{t:#x}: {r:?}\n");
            for i in 0..6 {
                s += &format!("  slot {i}: {:?}\n", w.cap_at(tcb::slot(t, i)));
            }
            s += &format!(
                "  buffer: {:?}\n",
                (0..12).map(|i| w.mr(t, i)).collect::<Vec<_>>()
            );
        }
        for a in w.all_slots() {
            s += &format!("{a:#x} {:?}\n", w.cap_at(a));
        }
        for (i, c) in w.k.cpus.iter().enumerate() {
            s += &format!("cpu {i}: {:#x} {:?}\n", c.current, c.action());
        }
        s += &format!("ipis {:?}\n", w.k.hw.ipis);
        s += &String::from_utf8_lossy(&w.k.hw.console);
        self.shots.push(s);
    }
}

/// Runs `script` with the fast routes and without; every step must end the same.
/// Returns which steps the fast routes took.
pub(super) fn compare_routes(cpus: usize, script: impl Fn(&mut Both)) -> Vec<bool> {
    let mut fast = Both::new(cpus, true);
    script(&mut fast);
    let mut slow = Both::new(cpus, false);
    script(&mut slow);
    assert!(slow.taken.iter().all(|t| !t), "the fast routes were off");
    assert_eq!(fast.shots.len(), slow.shots.len());
    for (i, (f, s)) in fast.shots.iter().zip(&slow.shots).enumerate() {
        if f != s {
            let diff: Vec<_> = f
                .lines()
                .zip(s.lines())
                .filter(|(a, b)| a != b)
                .take(6)
                .collect();
            panic!("step {i} differs (fast, general): {diff:#?}");
        }
    }
    fast.taken
}

/// A handler of priority `handler_prio` waiting on a fresh endpoint `e`, a faulter of
/// priority `prio` whose fault endpoint is a copy of `e` with `rights` and badge 0xfa.
/// The root runs at 50. Returns (handler, faulter, fault endpoint cptr, e).
fn fault_pair(
    w: &mut World,
    handler_prio: u8,
    prio: u8,
    rights: Rights,
) -> (Thread, Thread, u64, u64) {
    w.root_ok(S_TCB, L::TcbSetPriority, &[50], &[S_TCB]);
    let e = w.endpoint();
    let h = w.mint(e, rights, 0xfa);
    let handler = w.thread(handler_prio);
    w.root_ok(handler.slot, L::TcbResume, &[], &[]);
    let th = w.thread_with(prio, true, h);
    w.root_ok(th.slot, L::TcbResume, &[], &[]);
    w.recv(handler.tcb, e);
    (handler, th, h, e)
}

/// The handler's ReplyRecv on `e` with `label` and the words `mrs`.
fn reply_recv(b: &mut Both, handler: u64, e: u64, label: u64, mrs: &[u64]) {
    b.w.load(handler, e, label, mrs, &[]);
    b.syscall(handler, REPLY_RECV);
}

#[test]
fn fault_fast_route_by_priority_matches_the_general_path() {
    // (handler's priority, faulter's, another ready thread's; whether the delivery
    // and the reply qualify): the handler or faulter below the ready thread declines,
    // equal or above is switched to directly (the scheduler would choose it too).
    let cases: [(u8, u8, u8, bool, bool); 6] = [
        (120, 100, 90, true, true),
        (100, 120, 90, true, true),
        (110, 110, 110, true, true),
        (100, 120, 110, false, true),
        (120, 100, 110, true, false),
        (100, 100, 110, false, false),
    ];
    for (hp, fp, other, deliver, resume) in cases {
        let taken = compare_routes(1, |b| {
            let (handler, th, _, e) = fault_pair(&mut b.w, hp, fp, Rights::ALL);
            b.w.running_thread(other);
            b.w.k.tcb_mut(th.tcb).context.rip = 0x50_1000;
            b.fault(th.tcb, 6, 0, 0);
            if b.w.state(handler.tcb).is_runnable() {
                b.w.make_current(handler.tcb);
                reply_recv(b, handler.tcb, e, 0, &[0x50_1002]);
                b.w.make_current(th.tcb);
                b.shot();
            }
        });
        assert_eq!(taken, vec![deliver, resume], "{hp} {fp} {other}");
    }
}

#[test]
fn fault_fast_route_leaves_a_handler_of_another_cpu_to_the_general_path() {
    let taken = compare_routes(2, |b| {
        let (handler, th, _, _) = fault_pair(&mut b.w, 120, 100, Rights::ALL);
        // The handler moves to CPU 1 while it waits.
        b.w.root_ok(handler.slot, L::TcbSetAffinity, &[1], &[]);
        b.fault(th.tcb, 13, 0, 0);
        assert!(b.w.state(handler.tcb).is_runnable());
        assert_eq!(b.w.k.cpus[0].current, ROOT_TCB);
    });
    assert_eq!(taken, vec![false]);
}

#[test]
fn fault_fast_route_checks_the_fault_endpoint_rights() {
    // Write with grant or grant-reply qualifies (seL4's sendFaultIPC); without write,
    // or with write alone, the fault stops the thread on the general path.
    let w_ = Rights::WRITE;
    let cases = [
        (Rights(w_.0 | Rights::GRANT.0), true),
        (Rights(w_.0 | Rights::GRANT_REPLY.0), true),
        (Rights(Rights::READ.0 | Rights::WRITE.0), false),
        (
            Rights(Rights::READ.0 | Rights::GRANT.0 | Rights::GRANT_REPLY.0),
            false,
        ),
        (w_, false),
    ];
    for (rights, delivered) in cases {
        let taken = compare_routes(1, |b| {
            let (handler, th, _, e) = fault_pair(&mut b.w, 120, 100, rights);
            b.fault(th.tcb, 14, 0x6, 0xdead_b000);
            if delivered {
                assert_eq!(b.w.received(handler.tcb).badge, 0xfa);
                reply_recv(b, handler.tcb, e, 0, &[]);
            } else {
                assert_eq!(b.w.state(th.tcb), ThreadState::Inactive);
            }
        });
        let expected = if delivered {
            vec![true, true]
        } else {
            vec![false]
        };
        assert_eq!(taken, expected, "{rights:?}");
    }
}

#[test]
fn fault_reply_after_the_faulter_is_gone_matches_the_general_path() {
    // Delivered on the fast route; then the faulter is suspended, or deleted, or its
    // fault endpoint capability is deleted, while the handler holds the reply.
    for what in 0..3 {
        let taken = compare_routes(1, |b| {
            let (handler, th, h, e) = fault_pair(&mut b.w, 120, 100, Rights::ALL);
            b.fault(th.tcb, 6, 0, 0);
            b.w.make_current(ROOT_TCB);
            match what {
                0 => {
                    b.w.root_ok(th.slot, L::TcbSuspend, &[], &[]);
                }
                1 => {
                    b.w.root_ok(S_CNODE, L::CNodeDelete, &[th.slot, 64], &[]);
                }
                _ => {
                    b.w.root_ok(S_CNODE, L::CNodeDelete, &[h, 64], &[]);
                }
            }
            b.shot();
            b.w.make_current(handler.tcb);
            reply_recv(b, handler.tcb, e, 0, &[0x50_2000, 0x7000_0000, 0]);
            assert!(matches!(
                b.w.state(handler.tcb),
                ThreadState::BlockedOnReceive { .. }
            ));
            assert!(
                b.w.cap_at(tcb::slot(handler.tcb, tcb::SLOT_CALLER))
                    .is_null()
            );
        });
        // The reply to a deleted fault endpoint's thread still resumes it.
        let expected = [vec![true, false], vec![true, false], vec![true, true]];
        assert_eq!(taken, expected[what], "case {what}");
    }
}

#[test]
fn fault_reply_with_hostile_registers_matches_the_general_path() {
    // RIP in the kernel half or non-canonical, RSP non-canonical, RFLAGS with IOPL, TF,
    // NT, RF, VM, AC and every reserved bit: the same (sanitised) outcome on both routes.
    let replies: [&[u64]; 5] = [
        &[0xffff_8000_0000_0000, 0x7000_0000, u64::MAX],
        &[0x8000_0000_0000_0000, 0x8000_0000_0000_0000, 0x7_7100],
        &[
            0x0000_8000_0000_0000,
            0,
            1 << 17 | 1 << 18 | 1 << 14 | 3 << 12,
        ],
        &[0x50_2000, u64::MAX, 1 << 8],
        &[0x50_2000, 0x7000_0000, 0x2, 1, 2, 3, 4, 5, 6, 7, 8],
    ];
    for reply in replies {
        let taken = compare_routes(1, |b| {
            let (handler, th, _, e) = fault_pair(&mut b.w, 120, 100, Rights::ALL);
            b.fault(th.tcb, 13, 0, 0);
            reply_recv(b, handler.tcb, e, 0, reply);
            let c = b.w.tcb(th.tcb).context;
            assert_eq!(c.rflags & !0xfff, 0, "{:#x}", c.rflags);
            assert_eq!(c.rflags & (1 << 8), 0, "TF");
            assert_eq!(c.rflags & (1 << 9), 1 << 9, "IF");
        });
        assert_eq!(taken, vec![true, true]);
    }
}

#[test]
fn fault_reply_with_capabilities_or_a_label_matches_the_general_path() {
    // Extra capabilities, caps-unwrapped bits, a label: the fast route declines or
    // ends as the general path (the capabilities are not transferred on a reply to a
    // fault; a label other than 0 stops a thread after a user exception, and resumes
    // it after a page fault).
    for (vector, label, caps, unwrapped) in [
        (6, 0, true, 0),
        (6, 0, false, 5),
        (6, 7, false, 0),
        (14, 7, false, 0),
        (14, 0, true, 0),
        (14, 0, false, 1),
    ] {
        compare_routes(1, |b| {
            let (handler, th, _, e) = fault_pair(&mut b.w, 120, 100, Rights::ALL);
            b.fault(th.tcb, vector, 0x4, 0x1000);
            let caps: &[u64] = if caps { &[S_CNODE] } else { &[] };
            b.w.load(handler.tcb, e, label, &[0x50_2000], caps);
            b.w.k.tcb_mut(handler.tcb).context.rsi |= unwrapped << 7;
            b.syscall(handler.tcb, REPLY_RECV);
        });
    }
}

#[test]
fn fault_in_a_restartable_sequence_matches_the_general_path() {
    // The faulter registered an rseq area: the fault switches it out (fix-up pending),
    // so the reply that resumes it takes the general path, which runs the fix-up.
    let taken = compare_routes(1, |b| {
        let (handler, th, _, e) = fault_pair(&mut b.w, 120, 100, Rights::ALL);
        let buffer = b.w.tcb(th.tcb).ipc_buffer;
        b.w.root_ok(th.slot, L::TcbSetRseq, &[buffer + 0x800], &[]);
        b.fault(th.tcb, 14, 0x6, 0x1000);
        assert!(b.w.tcb(th.tcb).rseq_pending);
        reply_recv(b, handler.tcb, e, 0, &[]);
        b.w.k.rseq_resume(b.w.k.current());
        b.shot();
    });
    assert_eq!(taken, vec![true, false]);
}

#[test]
fn fault_reply_by_a_handler_with_an_active_notification_matches_the_general_path() {
    let taken = compare_routes(1, |b| {
        let (handler, th, _, e) = fault_pair(&mut b.w, 120, 100, Rights::ALL);
        let n = b.w.notification();
        b.w.root_ok(handler.slot, L::TcbBindNotification, &[], &[n]);
        b.fault(th.tcb, 6, 0, 0);
        // Signalled while the handler runs: its ReplyRecv returns at once with it.
        b.w.make_current(ROOT_TCB);
        b.w.send(ROOT_TCB, n, 0, &[], &[]);
        b.w.make_current(handler.tcb);
        reply_recv(b, handler.tcb, e, 0, &[0x50_2000]);
    });
    assert_eq!(taken, vec![true, false]);
}

#[test]
fn faults_without_a_waiting_handler_match_the_general_path() {
    let taken = compare_routes(1, |b| {
        // A page fault with no fault endpoint at all: the thread stops.
        b.w.root_ok(S_TCB, L::TcbSetPriority, &[50], &[S_TCB]);
        let lone = b.w.running_thread(100);
        b.fault(lone.tcb, 14, 0x6, 0x1000);
        assert_eq!(b.w.state(lone.tcb), ThreadState::Inactive);
        // The handler faults itself while handling (its fault endpoint is the one it
        // serves; nobody waits there): it blocks, queued behind nothing.
        let e = b.w.endpoint();
        let h = b.w.mint(e, Rights::ALL, 0xfa);
        let handler = b.w.thread_with(120, true, h);
        b.w.root_ok(handler.slot, L::TcbResume, &[], &[]);
        let th = b.w.thread_with(100, true, h);
        b.w.root_ok(th.slot, L::TcbResume, &[], &[]);
        b.w.recv(handler.tcb, e);
        b.fault(th.tcb, 6, 0, 0);
        b.fault(handler.tcb, 14, 0x4, 0);
        assert!(matches!(
            b.w.state(handler.tcb),
            ThreadState::BlockedOnSend { .. }
        ));
    });
    assert_eq!(taken, vec![false, true, false]);
}

#[test]
fn fault_fast_route_reply_grant_follows_the_handlers_receive_right() {
    // The handler waits through a capability without the grant right: the reply
    // capability it gets does not grant, on both routes.
    let taken = compare_routes(1, |b| {
        let (handler, th, _, e) = fault_pair(&mut b.w, 120, 100, Rights::ALL);
        // Wait again through a read-only copy (the handler's Recv is replaced).
        b.w.make_current(ROOT_TCB);
        b.w.root_ok(handler.slot, L::TcbSuspend, &[], &[]);
        b.w.root_ok(handler.slot, L::TcbResume, &[], &[]);
        let read_only = b.w.mint(e, Rights::READ, 0);
        b.w.recv(handler.tcb, read_only);
        b.fault(th.tcb, 6, 0, 0);
        assert!(matches!(
            b.w.cap_at(tcb::slot(handler.tcb, tcb::SLOT_CALLER)),
            Cap::Reply {
                can_grant: false,
                ..
            }
        ));
        reply_recv(b, handler.tcb, read_only, 0, &[0x50_2000]);
    });
    assert_eq!(taken, vec![true, true]);
}

#[test]
fn fault_to_a_waiting_handler_bound_to_an_active_notification_matches_the_general_path() {
    // The notification was signalled before it was bound to the waiting handler: it
    // stays active while the handler waits on the endpoint (as in seL4).
    let taken = compare_routes(1, |b| {
        let (handler, th, _, e) = fault_pair(&mut b.w, 120, 100, Rights::ALL);
        let n = b.w.notification();
        b.w.make_current(ROOT_TCB);
        b.w.send(ROOT_TCB, n, 0, &[], &[]);
        b.w.root_ok(handler.slot, L::TcbBindNotification, &[], &[n]);
        b.shot();
        b.fault(th.tcb, 14, 0x4, 0x2000);
        reply_recv(b, handler.tcb, e, 0, &[]);
    });
    assert!(taken[0], "delivered on the fast route");
}

#[test]
fn fault_fast_route_on_a_second_cpu_matches_the_general_path() {
    // Both threads belong to CPU 1 (the route indexes its CPU's state by `here`); a
    // ready thread of CPU 0 above them changes nothing there.
    let taken = compare_routes(2, |b| {
        let (handler, th, _, e) = fault_pair(&mut b.w, 120, 100, Rights::ALL);
        b.w.root_ok(handler.slot, L::TcbSetAffinity, &[1], &[]);
        b.w.root_ok(th.slot, L::TcbSetAffinity, &[1], &[]);
        b.w.running_thread(200);
        b.fault(th.tcb, 13, 0, 0);
        assert_eq!(b.w.k.cpus[1].current, handler.tcb);
        reply_recv(b, handler.tcb, e, 0, &[0x50_3000]);
        assert_eq!(b.w.k.cpus[1].current, th.tcb);
    });
    assert_eq!(taken, vec![true, true]);
}
