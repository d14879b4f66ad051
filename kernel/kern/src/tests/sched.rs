//! The scheduler: priorities, round robin, direct switch, yield, affinity, suspend/resume.

use keel_abi::error::Error as E;
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::syscall::{RECV, REPLY_RECV, SEND, YIELD};

use crate::object::tcb::TIME_SLICE_TICKS;

use super::*;

#[test]
fn higher_priority_preempts_lower_waits() {
    let mut w = World::new();
    let low = w.running_thread(50);
    assert_eq!(w.k.current(), ROOT_TCB);
    assert_eq!(w.ready(0, 50), vec![low.tcb]);
    let high = w.running_thread(150);
    assert_eq!(w.k.current(), high.tcb);
    assert_eq!(w.ready(0, 100), vec![ROOT_TCB]);
    // The high thread blocks: the root (next best) runs, not the low one.
    let e = w.endpoint_for_test();
    w.recv(high.tcb, e);
    assert_eq!(w.k.current(), ROOT_TCB);
    // Priority changes take effect at once; above the authority's MCP they fail.
    w.root_ok(low.slot, L::TcbSetPriority, &[120], &[S_TCB]);
    assert_eq!(w.k.current(), low.tcb);
    w.make_current(ROOT_TCB);
    w.root_ok(S_TCB, L::TcbSetMcPriority, &[110], &[S_TCB]);
    let r = w.root(low.slot, L::TcbSetPriority, &[111], &[S_TCB]);
    assert_eq!((r.label, r.mrs), (err(E::RangeError), vec![0, 110]));
    let r = w.root(low.slot, L::TcbSetPriority, &[1], &[e]);
    assert_eq!((r.label, r.mrs), (err(E::InvalidCapability), vec![1]));
    w.root_ok(low.slot, L::TcbSetSchedParams, &[90, 90], &[S_TCB]);
    assert_eq!((w.tcb(low.tcb).mcp, w.tcb(low.tcb).priority), (90, 90));
}

impl World {
    fn endpoint_for_test(&mut self) -> u64 {
        let cur = self.k.current();
        if cur != ROOT_TCB {
            // Make the root run just for this (it is the only one with the untyped).
            self.make_current(ROOT_TCB);
            let e = self.endpoint();
            self.make_current(cur);
            e
        } else {
            self.endpoint()
        }
    }
}

#[test]
fn round_robin_on_timer_ticks() {
    let mut w = World::new();
    let a = w.running_thread(200);
    let b = w.running_thread(200);
    w.make_current(a.tcb);
    assert_eq!(w.ready(0, 200), vec![b.tcb]);
    let mut order = Vec::new();
    for _ in 0..4 {
        for _ in 0..TIME_SLICE_TICKS {
            order.push(w.k.current());
            w.k.handle_timer_tick();
            w.k.schedule();
        }
    }
    let slice = TIME_SLICE_TICKS as usize;
    let expect: Vec<u64> = [a.tcb, b.tcb, a.tcb, b.tcb]
        .iter()
        .flat_map(|t| std::iter::repeat_n(*t, slice))
        .collect();
    assert_eq!(order, expect);
    // A lower-priority thread never runs while they are runnable.
    assert!(!order.contains(&ROOT_TCB));
    w.check_invariants();
}

#[test]
fn direct_switch_on_ipc() {
    let mut w = World::new();
    let e = w.endpoint();
    let server = w.running_thread(150);
    w.recv(server.tcb, e);
    assert_eq!(w.k.current(), ROOT_TCB);
    // The root sends: the higher-priority server runs right away.
    w.send(ROOT_TCB, e, 1, &[], &[]);
    assert_eq!(w.k.current(), server.tcb);
    assert_eq!(
        w.ready(0, 100),
        vec![ROOT_TCB],
        "the sender goes to the head of its queue"
    );
    // A lower-priority receiver does not preempt the sender.
    w.make_current(ROOT_TCB);
    w.root_ok(server.slot, L::TcbSuspend, &[], &[]);
    let low = w.running_thread(50);
    w.recv(low.tcb, e);
    w.make_current(ROOT_TCB);
    w.send(ROOT_TCB, e, 2, &[], &[]);
    assert_eq!(w.k.current(), ROOT_TCB);
    assert_eq!(w.state(low.tcb), ThreadState::Running);
    assert_eq!(w.ready(0, 50), vec![low.tcb]);
}

#[test]
fn reply_recv_waking_two_threads_loses_neither() {
    let mut w = World::new();
    let e = w.endpoint();
    let caller = w.running_thread(150);
    let sender = w.running_thread(150);
    let server = w.running_thread(150);
    // Nobody receives yet: the Call and then the Send queue on the endpoint.
    w.call(caller.tcb, e, 1, &[], &[]);
    w.send(sender.tcb, e, 2, &[], &[]);
    w.recv(server.tcb, e);
    assert_eq!(w.received(server.tcb).label, 1);
    // One ReplyRecv: the reply wakes the caller (a direct switch candidate on this
    // CPU), the receive takes the queued Send and wakes the sender.
    w.load(server.tcb, e, 0, &[], &[]);
    w.syscall(server.tcb, REPLY_RECV);
    assert_eq!(w.received(server.tcb).label, 2);
    for t in [caller.tcb, sender.tcb] {
        assert_eq!(w.state(t), ThreadState::Running);
        assert!(
            w.k.tcb(t).queued || w.k.cpus[0].current == t,
            "{t:#x} is runnable but neither running nor in a ready queue: lost"
        );
    }
}

#[test]
fn yield_rotates_equal_priorities() {
    let mut w = World::new();
    let a = w.running_thread(200);
    let b = w.running_thread(200);
    w.make_current(a.tcb);
    w.raw_syscall(YIELD);
    assert_eq!(w.k.current(), b.tcb);
    w.raw_syscall(YIELD);
    assert_eq!(w.k.current(), a.tcb);
    // Alone at its priority, a yielding thread keeps running.
    w.root_ok_as(a.tcb, b.slot, L::TcbSuspend);
    w.raw_syscall(YIELD);
    assert_eq!(w.k.current(), a.tcb);
}

impl World {
    fn root_ok_as(&mut self, t: u64, cptr: u64, label: L) {
        let r = self.invoke(t, cptr, label, &[], &[]);
        assert_eq!(r.label, 0);
    }
}

#[test]
fn idle_when_nothing_runs_and_tick_wakes() {
    let mut w = World::new();
    let e = w.endpoint();
    w.recv(ROOT_TCB, e);
    assert_eq!(w.k.current(), 0);
    w.k.handle_timer_tick();
    w.k.schedule();
    assert_eq!(w.k.current(), 0);
    // An interrupt-driven signal would make it runnable; here: cancel its receive.
    w.k.restart_all_waiters(Queue::Endpoint(w.addr(e)), false);
    w.k.handle_timer_tick();
    w.k.schedule();
    assert_eq!(w.k.current(), ROOT_TCB);
    assert_eq!(w.tcb(ROOT_TCB).context.rip, SYSCALL_IP);
}

#[test]
fn affinity_moves_a_thread_to_another_cpu() {
    let mut w = World::with_cpus(2);
    let t = w.running_thread(50);
    let r = w.root(t.slot, L::TcbSetAffinity, &[2], &[]);
    assert_eq!(r.label, err(E::IllegalOperation));
    w.root_ok(t.slot, L::TcbSetAffinity, &[1], &[]);
    assert_eq!(w.tcb(t.tcb).affinity, 1);
    assert!(w.k.hw.ipis.contains(&1), "reschedule IPI to CPU 1");
    assert!(w.ready(0, 50).is_empty());
    assert_eq!(w.ready(1, 50), vec![t.tcb]);
    // CPU 1 takes the IPI and runs it.
    w.k.hw.cpu = 1;
    w.k.handle_reschedule();
    w.k.schedule();
    assert_eq!(w.k.current(), t.tcb);
    // A thread woken from CPU 0 that belongs to CPU 1 gets an IPI, not a direct switch.
    let e = w.endpoint_on_cpu0();
    w.k.hw.cpu = 1;
    w.recv(t.tcb, e);
    assert_eq!(w.k.current(), 0, "CPU 1 idles");
    w.k.hw.ipis.clear();
    w.make_current(ROOT_TCB);
    w.send(ROOT_TCB, e, 0, &[], &[]);
    assert_eq!(w.k.current(), ROOT_TCB);
    assert_eq!(w.k.hw.ipis, vec![1]);
    w.k.hw.cpu = 1;
    w.k.handle_reschedule();
    w.k.schedule();
    assert_eq!(w.k.current(), t.tcb);
    // Moving the running thread back: CPU 1 must choose again.
    w.k.hw.cpu = 0;
    w.root_ok(t.slot, L::TcbSetAffinity, &[0], &[]);
    assert_eq!(w.k.cpus[1].current, 0);
    assert_eq!(w.ready(0, 50), vec![t.tcb]);
    let _ = (RECV, SEND);
}

impl World {
    /// A thread of priority `prio` moved to CPU 1 and running there; `in_syscall`: it
    /// has entered SYSCALL there (registers saved) and waits for the lock. CPU 0 (the
    /// root) is current again afterwards.
    fn running_on_cpu1(&mut self, prio: u8, in_syscall: bool) -> Thread {
        let t = self.running_thread(prio);
        self.root_ok(t.slot, L::TcbSetAffinity, &[1], &[]);
        self.k.hw.cpu = 1;
        self.k.handle_reschedule();
        self.k.schedule();
        assert_eq!(self.k.current(), t.tcb);
        if in_syscall {
            let c = &mut self.k.tcb_mut(t.tcb).context;
            c.rip = SYSCALL_IP + 2;
            c.vector = tcb::SYSCALL_VECTOR;
        }
        self.k.hw.cpu = 0;
        self.make_current(ROOT_TCB);
        t
    }

    fn endpoint_on_cpu0(&mut self) -> u64 {
        self.k.hw.cpu = 0;
        self.make_current(ROOT_TCB);
        self.endpoint()
    }
}

#[test]
fn suspend_and_resume() {
    let mut w = World::new();
    let e = w.endpoint();
    let t = w.running_thread(50);
    w.root_ok(t.slot, L::TcbSuspend, &[], &[]);
    assert_eq!(w.state(t.tcb), ThreadState::Inactive);
    assert!(!w.tcb(t.tcb).queued);
    w.root_ok(t.slot, L::TcbResume, &[], &[]);
    assert_eq!(w.state(t.tcb), ThreadState::Restart);
    assert!(w.tcb(t.tcb).queued);
    // Resuming a runnable thread changes nothing.
    w.root_ok(t.slot, L::TcbResume, &[], &[]);
    // A blocked sender leaves the endpoint queue when suspended.
    w.send(t.tcb, e, 0, &[], &[]);
    w.root_ok(t.slot, L::TcbSuspend, &[], &[]);
    assert!(w.queue(Queue::Endpoint(w.addr(e))).is_empty());
    // Suspending oneself: the thread stops and the CPU chooses again.
    let s = w.running_thread(150);
    assert_eq!(w.k.current(), s.tcb);
    let r = w.call(s.tcb, s.slot, L::TcbSuspend as u64, &[], &[]);
    let _ = r;
    assert_eq!(w.state(s.tcb), ThreadState::Inactive);
    assert_eq!(w.k.current(), ROOT_TCB);
}

/// seL4's updateRestartPC: a thread whose system call has completed (a server whose
/// ReplyRecv has received a Call and not yet run; a thread that suspended itself) and
/// that is suspended and resumed goes on after the call. Redoing it would, for the
/// server, send the caller its own message back as the reply (what the concurrent
/// fuzz test checks Calls for), and make a thread that suspended itself suspend
/// itself again.
#[test]
fn a_suspended_thread_does_not_redo_a_completed_system_call() {
    let mut w = World::new();
    let e = w.endpoint();
    let server = w.running_thread(50);
    let client = w.running_thread(60);
    w.k.tcb_mut(server.tcb).context.rdi = e;
    w.k.tcb_mut(server.tcb).context.rsi = 0;
    w.syscall(server.tcb, REPLY_RECV);
    assert!(matches!(
        w.state(server.tcb),
        ThreadState::BlockedOnReceive { .. }
    ));
    let _ = w.call(client.tcb, e, 7, &[1, 2], &[]);
    assert_eq!(w.state(client.tcb), ThreadState::BlockedOnReply);
    assert_eq!(w.received(server.tcb).label, 7);
    assert_eq!(w.state(server.tcb), ThreadState::Running);
    w.make_current(ROOT_TCB);
    w.root_ok(server.slot, L::TcbSuspend, &[], &[]);
    w.root_ok(server.slot, L::TcbResume, &[], &[]);
    w.make_current(server.tcb);
    assert_eq!(
        w.tcb(server.tcb).context.rip,
        SYSCALL_IP + 2,
        "ReplyRecv redone"
    );
    assert_eq!(w.received(server.tcb).label, 7);
    assert_eq!(w.state(client.tcb), ThreadState::BlockedOnReply);
    // Its reply still reaches the client.
    w.load(server.tcb, 0, 3, &[9], &[]);
    w.syscall(server.tcb, keel_abi::syscall::REPLY);
    assert_eq!(w.received(client.tcb).label, 3);
    assert_eq!(w.received(client.tcb).mrs, vec![9]);
    // A thread that suspended itself, resumed, goes on after its Suspend.
    let s = w.running_thread(150);
    let _ = w.call(s.tcb, s.slot, L::TcbSuspend as u64, &[], &[]);
    assert_eq!(w.state(s.tcb), ThreadState::Inactive);
    w.make_current(ROOT_TCB);
    w.root_ok(s.slot, L::TcbResume, &[], &[]);
    assert_eq!(w.k.current(), s.tcb);
    assert_eq!(w.state(s.tcb), ThreadState::Running);
    assert_eq!(w.tcb(s.tcb).context.rip, SYSCALL_IP + 2, "Suspend redone");
}

#[test]
fn deleting_a_running_thread() {
    let mut w = World::new();
    let t = w.running_thread(50);
    let tcb_addr = t.tcb;
    w.root_ok(S_CNODE, L::CNodeDelete, &[t.slot, 64], &[]);
    assert!(!w.k.hw.exists::<Tcb>(tcb::record(tcb_addr)));
    assert!(w.ready(0, 50).is_empty());
    // A thread deleting its own TCB.
    let s = w.running_thread(150);
    w.load(s.tcb, S_CNODE, L::CNodeDelete as u64, &[s.slot, 64], &[]);
    w.syscall(s.tcb, keel_abi::syscall::CALL);
    assert!(!w.k.hw.exists::<Tcb>(tcb::record(s.tcb)));
    assert_eq!(w.k.current(), ROOT_TCB);
}

/// A thread that another CPU moves or suspends while its own CPU waits for the lock
/// with its system call: the call is not lost or made by a stopped thread; the thread
/// redoes it where (or when) it runs next.
#[test]
fn a_system_call_waiting_on_another_cpu_is_redone_after_a_move() {
    let mut w = World::with_cpus(2);
    let t = w.running_on_cpu1(50, true);
    // CPU 0 moves it.
    w.root_ok(t.slot, L::TcbSetAffinity, &[0], &[]);
    assert_eq!(w.k.cpus[1].current, 0, "CPU 1 drops the entry");
    assert_eq!(w.state(t.tcb), ThreadState::Restart);
    // Scheduled on CPU 0, it is back on its SYSCALL instruction.
    w.k.tcb_mut(ROOT_TCB).state = ThreadState::Inactive;
    w.k.reschedule_required();
    w.k.schedule();
    assert_eq!(w.k.current(), t.tcb);
    assert_eq!(w.tcb(t.tcb).context.rip, SYSCALL_IP);
    assert_eq!(w.state(t.tcb), ThreadState::Running);
    // An exception entry of a thread that is no longer runnable is ignored: resumed,
    // it re-executes the instruction.
    w.k.tcb_mut(t.tcb).state = ThreadState::Inactive;
    w.k.handle_user_exception(13, 0, 0);
    assert_eq!(w.tcb(t.tcb).fault, tcb::Fault::None);
}

/// A thread running on another CPU that this CPU suspends and resumes before that CPU
/// has chosen again: it is queued there and no longer that CPU's current thread (the
/// invariant checker found it both, under the concurrent fuzz test); that CPU then
/// chooses it again, and its pending system call is redone.
#[test]
fn suspend_and_resume_of_a_thread_running_on_another_cpu() {
    let mut w = World::with_cpus(2);
    let t = w.running_on_cpu1(50, true);
    w.root_ok(t.slot, L::TcbSuspend, &[], &[]);
    assert_eq!(w.k.cpus[1].current, 0, "CPU 1 drops its current thread");
    w.root_ok(t.slot, L::TcbResume, &[], &[]);
    assert_eq!(w.k.cpus[1].current, 0);
    assert_eq!(w.ready(1, 50), vec![t.tcb]);
    w.check_invariants();
    w.k.hw.cpu = 1;
    w.k.handle_reschedule();
    w.k.schedule();
    assert_eq!(w.k.current(), t.tcb);
    assert_eq!(w.state(t.tcb), ThreadState::Running);
    assert_eq!(
        w.tcb(t.tcb).context.rip,
        SYSCALL_IP,
        "the pending call is redone"
    );
    w.check_invariants();
}

/// seL4's restart: Resume (and WriteRegisters or CopyRegisters with resume) acts on a
/// stopped thread, inactive or blocked, which then redoes its system call; a runnable
/// thread is left alone (before, a resumed thread running on another CPU was queued
/// there while still current).
#[test]
fn resume_restarts_stopped_threads_only() {
    let mut w = World::with_cpus(2);
    let e = w.endpoint();
    // Blocked in Recv: off the queue, and its Recv is redone where it runs next.
    let receiver = w.running_thread(50);
    w.recv(receiver.tcb, e);
    w.make_current(ROOT_TCB);
    w.root_ok(receiver.slot, L::TcbResume, &[], &[]);
    assert_eq!(w.state(receiver.tcb), ThreadState::Restart);
    assert!(w.queue(Queue::Endpoint(w.addr(e))).is_empty());
    w.make_current(receiver.tcb);
    assert_eq!(w.tcb(receiver.tcb).context.rip, SYSCALL_IP);
    // Waiting for a reply: the server's reply capability goes, and the Call is redone.
    let client = w.running_thread(40);
    w.recv(receiver.tcb, e);
    let _ = w.call(client.tcb, e, 5, &[], &[]);
    assert_eq!(w.state(client.tcb), ThreadState::BlockedOnReply);
    w.make_current(ROOT_TCB);
    w.root_ok(client.slot, L::TcbResume, &[], &[]);
    assert_eq!(w.state(client.tcb), ThreadState::Restart);
    assert!(cspace::cap(&w.k.hw, tcb::slot(receiver.tcb, tcb::SLOT_CALLER)).is_null());
    // Running on another CPU: WriteRegisters with resume writes, but does not queue it;
    // that CPU goes on with it from the registers written.
    let t = w.running_on_cpu1(30, false);
    w.root_ok(t.slot, L::TcbWriteRegisters, &[1, 1, 0x50_2000], &[]);
    assert_eq!(w.k.cpus[1].current, t.tcb);
    assert!(!w.tcb(t.tcb).queued);
    assert_eq!(w.state(t.tcb), ThreadState::Restart);
    w.check_invariants();
    w.k.hw.cpu = 1;
    w.k.schedule();
    assert_eq!(w.k.current(), t.tcb);
    assert_eq!(w.state(t.tcb), ThreadState::Running);
    assert_eq!(w.tcb(t.tcb).context.rip, 0x50_2000);
    w.check_invariants();
}

/// Registers written (or copied) while the thread's own CPU waits for the lock with a
/// system call or an exception of it: that CPU must not handle the entry with the new
/// registers (it made an unknown system call with the written RDX under the concurrent
/// fuzz test). The thread restarts from its registers: at the written RIP, or, when an
/// integer-only CopyRegisters left the SYSCALL marker, on its SYSCALL instruction with
/// the copied registers.
#[test]
fn registers_written_while_an_entry_waits_on_another_cpu() {
    let mut w = World::with_cpus(2);
    let t = w.running_on_cpu1(50, true);
    w.root_ok(t.slot, L::TcbWriteRegisters, &[0, 1, 0x50_2000], &[]);
    assert_eq!(
        w.state(t.tcb),
        ThreadState::Restart,
        "CPU 1 must not make the waiting call"
    );
    assert_eq!(w.k.cpus[1].current, t.tcb);
    w.check_invariants();
    // Nor handle an exception entry of it.
    w.k.hw.cpu = 1;
    w.k.handle_user_exception(13, 0, 0);
    assert_eq!(w.tcb(t.tcb).fault, tcb::Fault::None);
    w.k.schedule();
    assert_eq!(w.k.current(), t.tcb);
    assert_eq!(w.state(t.tcb), ThreadState::Running);
    assert_eq!(w.tcb(t.tcb).context.rip, 0x50_2000, "goes on where written");
    assert_eq!(w.tcb(t.tcb).context.vector, 0);
    w.check_invariants();

    let mut w = World::with_cpus(2);
    let source = w.running_thread(40);
    w.k.tcb_mut(source.tcb).context.rdx = 0x1234;
    let t = w.running_on_cpu1(50, true);
    w.root_ok(t.slot, L::TcbCopyRegisters, &[8], &[source.slot]);
    assert_eq!(w.state(t.tcb), ThreadState::Restart);
    w.k.hw.cpu = 1;
    w.k.schedule();
    assert_eq!(w.state(t.tcb), ThreadState::Running);
    assert_eq!(
        w.tcb(t.tcb).context.rip,
        SYSCALL_IP,
        "the call is made again"
    );
    assert_eq!(
        w.tcb(t.tcb).context.rdx,
        0x1234,
        "with the copied registers"
    );
    w.check_invariants();
}

/// A thread in a user restartable sequence that the timer preempts for another thread
/// restarts it; one that keeps the CPU (nobody else ready at its priority) does not.
#[test]
fn timer_preemption_marks_the_rseq_fix_up() {
    let mut w = World::new();
    let a = w.running_thread(200);
    let buffer = w.tcb(a.tcb).ipc_buffer;
    w.root_ok(a.slot, L::TcbSetRseq, &[buffer + 0x800], &[]);
    w.make_current(a.tcb);
    let expire = |w: &mut World| {
        w.k.tcb_mut(a.tcb).context.vector = 32;
        for _ in 0..TIME_SLICE_TICKS {
            w.k.handle_timer_tick();
        }
    };
    // Alone at its priority: its slice ends but it keeps the CPU.
    expire(&mut w);
    w.k.schedule();
    assert_eq!(w.k.current(), a.tcb);
    assert!(!w.tcb(a.tcb).rseq_pending);
    // Another thread of its priority is ready: it is switched out.
    let b = w.running_thread(200);
    w.make_current(a.tcb);
    expire(&mut w);
    w.k.schedule();
    assert_eq!(w.k.current(), b.tcb);
    assert!(w.tcb(a.tcb).rseq_pending);
    w.check_invariants();
}

/// Whether `t` is where the scheduler will find it: current on its CPU or queued.
fn findable(w: &World, t: u64) -> bool {
    let r = w.tcb(t);
    r.queued || w.k.cpus[r.affinity as usize].current == t
}

#[test]
fn a_timer_tick_on_an_idle_cpu_keeps_a_thread_woken_before_it() {
    // An idle CPU takes an interrupt that wakes thread `a` (a signal: SwitchTo(a) is
    // pending until the idle loop asks the scheduler); another CPU makes `b` ready on
    // it; then the CPU's timer tick arrives before the idle loop runs the scheduler.
    let mut w = World::new();
    let a = w.thread(100);
    let b = w.thread(100);
    let root = w.addr(S_TCB);
    w.k.set_state(root, ThreadState::Inactive);
    w.k.schedule();
    assert_eq!(w.k.current(), 0, "CPU 0 idle");
    w.k.set_state(a.tcb, ThreadState::Running);
    w.k.possible_switch_to(a.tcb);
    w.k.set_state(b.tcb, ThreadState::Running);
    w.k.enqueue(b.tcb, false);
    w.k.handle_timer_tick();
    w.k.schedule();
    assert!(findable(&w, a.tcb), "the woken thread was lost");
    assert!(findable(&w, b.tcb));
}

#[test]
fn a_switch_to_a_thread_blocked_meanwhile_is_not_made() {
    // SwitchTo(a) is pending on an idle CPU while another entry blocks `a` (here:
    // suspends it); the scheduler must not run a thread that cannot run.
    let mut w = World::new();
    let a = w.thread(100);
    let root = w.addr(S_TCB);
    w.k.set_state(root, ThreadState::Inactive);
    w.k.schedule();
    w.k.set_state(a.tcb, ThreadState::Running);
    w.k.possible_switch_to(a.tcb);
    w.k.set_state(a.tcb, ThreadState::Inactive);
    w.k.schedule();
    assert_eq!(w.k.current(), 0, "a suspended thread was made current");
}

/// TCB invocations that change what a thread running on another CPU holds in that CPU's
/// registers stall that CPU first (it saves them into the TCB), so nothing is lost:
/// SetTLSBase and SetGSBase (a thread with the FSGSBASE right has its bases read back
/// at its next entry, which put the old base back: the on-target test
/// `gsbase_set_tls_and_gs_base_of_a_thread_running_on_another_cpu` found it), and
/// SetFlags before it releases the thread's FPU state (the live state on that CPU was
/// dropped).
#[test]
fn state_another_cpu_holds_is_saved_before_it_changes() {
    let mut w = World::with_cpus(2);
    let t = w.running_on_cpu1(50, false);
    w.root_ok(t.slot, L::TcbSetTlsBase, &[0x7000], &[]);
    assert_eq!(w.k.hw.stalls_and_releases, vec![Stall::Cpu(1)]);
    w.k.hw.stalls_and_releases.clear();
    w.root_ok(t.slot, L::TcbSetGsBase, &[0x8000], &[]);
    assert_eq!(w.k.hw.stalls_and_releases, vec![Stall::Cpu(1)]);
    w.k.hw.stalls_and_releases.clear();
    let fpu_disabled = keel_abi::object::tcb_flags::FPU_DISABLED;
    w.root_ok(t.slot, L::TcbSetFlags, &[0, fpu_disabled], &[]);
    assert_eq!(
        w.k.hw.stalls_and_releases,
        vec![Stall::Cpu(1), Stall::FpuRelease(t.tcb)]
    );
    // Every TCB invocation stalls it first (seL4 too), so that its CPU takes the change
    // when it goes back to it: a breakpoint, new roots, a new IPC buffer, a priority.
    let f = w.make(keel_abi::object::ObjectType::X86Page4K, 0);
    for (label, mrs, caps) in [
        (L::TcbSetBreakpoint, &[0, 0x40_0000, 0, 8, 1][..], &[][..]),
        (L::TcbSetSpace, &[0, 0, 0], &[S_CNODE, S_VSPACE]),
        (L::TcbSetIpcBuffer, &[0x3000_0000], &[f]),
        (L::TcbSetPriority, &[40], &[S_TCB]),
    ] {
        w.k.hw.stalls_and_releases.clear();
        w.root_ok(t.slot, label, mrs, caps);
        assert_eq!(w.k.hw.stalls_and_releases, vec![Stall::Cpu(1)], "{label:?}");
    }
    // On this CPU's own side nothing is stalled.
    w.k.hw.stalls_and_releases.clear();
    let u = w.running_thread(40);
    w.root_ok(u.slot, L::TcbSetTlsBase, &[0x7000], &[]);
    w.root_ok(u.slot, L::TcbSetFlags, &[0, fpu_disabled], &[]);
    assert_eq!(w.k.hw.stalls_and_releases, vec![Stall::FpuRelease(u.tcb)]);
    w.check_invariants();
}
