//! Faults delivered to a fault endpoint: user exceptions (#UD, #GP, #DE), VM faults,
//! unknown system calls and capability faults, each received by the suite (playing the
//! handler) with seL4's label and message layout, and resumed by a reply.

use keel_abi::error::LookupFailure;
use keel_abi::fault::{FaultType, cap_fault, unknown_syscall, user_exception, vm_fault};
use keel_abi::message::CapRights;
use keel_abi::object::ObjectType;
use keel_rt::ThreadConfig;
use keel_sys::cap::{CNode, Cap, Endpoint, init};
use keel_sys::{Message, Received, VmAttributes, probe};

use crate::harness::{
    DEPTH, Env, FAULT_BADGE, OrFail, Suite, TestResult, pause, recv_timeout, set_shared, shared,
    wait_until,
};
use crate::{CHILD_PRIORITY, ensure, fail};

/// Runs the fault tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("fault_ud2_user_exception_resumed_past_it", || {
        exception(env, ud2, 6)
    });
    suite.run("fault_hlt_general_protection_resumed", || {
        exception(env, hlt, 13)
    });
    suite.run("fault_divide_error_resumed", || exception(env, div, 0));
    suite.run("fault_port_in_without_ioport_is_gp", || {
        exception(env, port_in, 13)
    });
    suite.run("fault_reply_with_label_leaves_thread_stopped", || {
        reply_label(env)
    });
    suite.run("fault_vm_read_of_unmapped_page_fixed_by_handler", || {
        vm_fault_fixed(env)
    });
    suite.run("fault_unknown_syscall_emulated_by_handler", || unknown(env));
    suite.run("fault_cap_fault_on_guard_mismatch", || cap_fault_test(env));
    suite.run("fault_invoking_empty_slot_is_invalid_capability", || {
        empty_slot(env)
    });
    suite.run("fault_without_handler_stops_thread", || no_handler(env));
    suite.run(
        "fault_fast_route_handler_thread_hostile_replies_fpu_intact",
        || fast_route(env, false),
    );
    suite.run("fault_fast_route_handler_on_another_cpu", || {
        fast_route(env, true)
    });
}

fn ud2(_: u64) {
    probe::ud2();
    set_shared(0, 1);
}

fn hlt(_: u64) {
    probe::hlt();
    set_shared(0, 1);
}

fn div(_: u64) {
    probe::divide_by_zero();
    set_shared(0, 1);
}

fn port_in(_: u64) {
    probe::port_in8(0x80);
    set_shared(0, 1);
}

fn length_of(vector: u64, ip: u64) -> u64 {
    match vector {
        6 => probe::UD2_LENGTH,
        0 => probe::DIV_LENGTH,
        _ => {
            // HLT (0xf4) and IN AL, DX (0xec) are both one byte.
            let _ = ip;
            probe::HLT_LENGTH
        }
    }
}

/// Receives one fault message or fails.
fn fault(env: &mut Env) -> Result<Received, crate::harness::Why> {
    let Some(r) = recv_timeout(env.fault_ep) else {
        fail!("no fault message")
    };
    ensure!(
        r.badge == FAULT_BADGE,
        "fault badge {:#x}, expected {FAULT_BADGE:#x}",
        r.badge
    );
    Ok(r)
}

fn exception(env: &mut Env, entry: fn(u64), vector: u64) -> TestResult {
    let t = env.spawn(entry, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let r = fault(env)?;
        ensure!(
            r.label() == FaultType::UserException as u64,
            "label {}",
            r.label()
        );
        ensure!(
            r.length() == user_exception::LENGTH,
            "length {}",
            r.length()
        );
        let w = r.words::<5>();
        ensure!(
            w[user_exception::NUMBER] == vector,
            "exception number {}",
            w[user_exception::NUMBER]
        );
        ensure!(
            shared(0) == 0,
            "thread continued past the faulting instruction"
        );
        let ip = w[user_exception::FAULT_IP];
        ensure!(ip > 0x1000 && ip < 0x10_0000_0000, "fault IP {ip:#x}");
        ensure!(
            w[user_exception::SP] >= t.stack_base() && w[user_exception::SP] < t.stack_top(),
            "fault SP {:#x} not on the thread's stack",
            w[user_exception::SP]
        );
        let next = ip + length_of(vector, ip);
        keel_sys::ipc::reply(&Message::new(0).words(&[next, w[1], w[2]]));
        ensure!(
            wait_until(|| shared(0) == 1),
            "thread not resumed after the instruction"
        );
        Ok(())
    })();
    env.destroy(t)?;
    result
}

fn reply_label(env: &mut Env) -> TestResult {
    let t = env.spawn(ud2, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let r = fault(env)?;
        let w = r.words::<3>();
        keel_sys::ipc::reply(&Message::new(1).words(&[w[0] + 2, w[1], w[2]]));
        pause(100_000_000);
        ensure!(shared(0) == 0, "a reply with label 1 resumed the thread");
        Ok(())
    })();
    env.destroy(t)?;
    result
}

/// Reads the word at the address in word 10; stores it in word 0.
fn reader(_: u64) {
    let v = probe::read_u64(shared(10));
    set_shared(0, v);
}

fn vm_fault_fixed(env: &mut Env) -> TestResult {
    let address = env.alloc.scratch_range(0x1000, 0x20_0000) + 0x18;
    set_shared(10, address);
    let t = env.spawn(reader, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let r = fault(env)?;
        ensure!(
            r.label() == FaultType::VmFault as u64,
            "label {}",
            r.label()
        );
        ensure!(r.length() == vm_fault::LENGTH, "length {}", r.length());
        let w = r.words::<4>();
        ensure!(
            w[vm_fault::ADDR] == address,
            "fault address {:#x}, expected {address:#x}",
            w[vm_fault::ADDR]
        );
        ensure!(
            w[vm_fault::PREFETCH_FAULT] == vm_fault::DATA_FAULT,
            "not a data fault"
        );
        ensure!(
            w[vm_fault::FSR] & 0b111 == 0b100,
            "error code {:#x}: expected user read of a non-present page",
            w[vm_fault::FSR]
        );
        // Fix it: map a frame there with a value in it, and resume.
        let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
        env.alloc
            .map_frame(
                init::VSPACE,
                frame,
                address & !0xfff,
                CapRights::READ_WRITE,
                VmAttributes::DEFAULT,
                1,
            )
            .or_fail("map")?;
        probe::write_u64(address, 0x5eed_f00d);
        keel_sys::ipc::reply(&Message::new(0));
        ensure!(wait_until(|| shared(0) != 0), "thread not resumed");
        ensure!(shared(0) == 0x5eed_f00d, "thread read {:#x}", shared(0));
        Ok(())
    })();
    env.destroy(t)?;
    result
}

/// Makes an unknown system call; stores RAX and RBX afterwards in words 0 and 1.
fn unknown_caller(_: u64) {
    let (rax, rbx) = probe::unknown_syscall(-1000, 7);
    set_shared(1, rbx);
    set_shared(0, rax);
}

fn unknown(env: &mut Env) -> TestResult {
    let t = env.spawn(unknown_caller, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let r = fault(env)?;
        ensure!(
            r.label() == FaultType::UnknownSyscall as u64,
            "label {}",
            r.label()
        );
        ensure!(
            r.length() == unknown_syscall::LENGTH,
            "length {}",
            r.length()
        );
        let mut w = r.words::<{ unknown_syscall::LENGTH }>();
        ensure!(
            w[unknown_syscall::SYSCALL] == -1000i64 as u64,
            "number {:#x}",
            w[unknown_syscall::SYSCALL]
        );
        ensure!(
            w[unknown_syscall::RAX] == 7,
            "RAX {}",
            w[unknown_syscall::RAX]
        );
        ensure!(
            w[unknown_syscall::RBX] == keel_sys::MARKS[0],
            "RBX {:#x}",
            w[unknown_syscall::RBX]
        );
        ensure!(
            w[unknown_syscall::RDX] == -1000i64 as u64,
            "RDX {:#x}",
            w[unknown_syscall::RDX]
        );
        let sp = w[unknown_syscall::SP];
        ensure!(
            sp >= t.stack_base() && sp < t.stack_top(),
            "SP {sp:#x} not on the thread's stack"
        );
        // Emulate: RAX = 99, continue after the SYSCALL instruction.
        w[unknown_syscall::RAX] = 99;
        w[unknown_syscall::FAULT_IP] += probe::SYSCALL_LENGTH;
        keel_sys::ipc::reply(&Message::new(0).words(&w[..unknown_syscall::REPLY_REGISTERS]));
        ensure!(wait_until(|| shared(0) != 0), "thread not resumed");
        ensure!(shared(0) == 99, "RAX after the emulated call {}", shared(0));
        ensure!(
            shared(1) == keel_sys::MARKS[0],
            "RBX changed to {:#x}",
            shared(1)
        );
        Ok(())
    })();
    env.destroy(t)?;
    result
}

/// Sends on a capability pointer with guard bits set (a lookup failure).
fn bad_sender(_: u64) {
    Cap::<Endpoint>::from_cptr(1 << 40 | 5).send(&Message::new(1));
    set_shared(0, 1);
}

fn cap_fault_test(env: &mut Env) -> TestResult {
    let t = env.spawn(bad_sender, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let r = fault(env)?;
        ensure!(
            r.label() == FaultType::CapFault as u64,
            "label {}",
            r.label()
        );
        let w = r.words::<7>();
        ensure!(
            w[cap_fault::ADDR] == 1 << 40 | 5,
            "address {:#x}",
            w[cap_fault::ADDR]
        );
        ensure!(w[cap_fault::IN_RECV_PHASE] == 0, "in receive phase");
        ensure!(
            w[cap_fault::LOOKUP_FAILURE_TYPE] == LookupFailure::GuardMismatch as u64,
            "lookup failure type {}",
            w[cap_fault::LOOKUP_FAILURE_TYPE]
        );
        ensure!(r.length() == 7, "length {}", r.length());
        ensure!(
            w[cap_fault::BITS_LEFT] == 64,
            "bits left {}",
            w[cap_fault::BITS_LEFT]
        );
        ensure!(shared(0) == 0, "thread ran on");
        Ok(())
    })();
    env.destroy(t)?;
    result
}

/// Invokes the empty slot in word 10 as a CNode; stores 1 + the error code in word 0.
fn empty_invoker(_: u64) {
    let r = Cap::<CNode>::from_cptr(shared(10)).delete(1, DEPTH);
    let code = match r {
        Ok(()) => 100,
        Err(e) => e.code().map_or(200, |c| c as u64),
    };
    set_shared(0, code + 1);
}

fn empty_slot(env: &mut Env) -> TestResult {
    let empty = env.slot()?;
    set_shared(10, empty);
    let t = env.spawn(empty_invoker, 0, CHILD_PRIORITY)?;
    let mut fault_label = None;
    let done = wait_until(|| {
        if let Some(r) = env.fault_ep.nb_recv() {
            fault_label = Some(r.label());
        }
        shared(0) != 0 || fault_label.is_some()
    });
    env.destroy(t)?;
    if let Some(l) = fault_label {
        fail!(
            "the kernel sent a fault (label {l}); seL4 replies InvalidCapability to a Call on an empty slot"
        );
    }
    ensure!(done, "no reply");
    let code = shared(0) - 1;
    ensure!(
        code == keel_abi::error::Error::InvalidCapability as u64,
        "reply code {code}, expected InvalidCapability"
    );
    Ok(())
}

fn no_handler(env: &mut Env) -> TestResult {
    let config = ThreadConfig {
        priority: CHILD_PRIORITY,
        fault_ep: 0,
        affinity: None,
        cspace: None,
    };
    let t = env.alloc.create_thread(ud2, 0, config).or_fail("create")?;
    t.start().or_fail("start")?;
    pause(100_000_000);
    let flag = shared(0);
    let regs = t.tcb.read_registers(false, 0, 1);
    let stray = env.fault_ep.nb_recv();
    t.destroy(&mut env.alloc).or_fail("destroy")?;
    ensure!(flag == 0, "thread ran past its fault");
    ensure!(stray.is_none(), "a fault went to the suite's endpoint");
    regs.or_fail("read registers of the stopped thread")?;
    Ok(())
}

// ---- The fault fast route (kernel faultpath.rs): a handler thread already waiting in
// Recv/ReplyRecv when the fault comes, each with its own FPU values, and hostile
// replies mixed in. Shared words: 0 the faulter's rounds, 1 its FPU mismatch (100 +
// register), 2 the handler's rounds, 3 the handler's first error (a code below), 4 the
// endpoint, 6 handler done, 7 the handler's FPU mismatch (100 + register).

/// Round trips of the fast-route test.
const FAST_ROUNDS: u64 = 300;
/// A kernel address a reply gives as RIP: the thread must fault (#GP), not run there.
const KERNEL_RIP: u64 = 0xffff_8000_0010_0000;
/// A non-canonical RSP a reply gives: the thread's first stack access faults.
const BAD_RSP: u64 = 0x8000_0000_0000_0000;

/// RFLAGS a reply gives: IOPL 3, TF, NT, RF, VM, AC, VIF, VIP, ID and every reserved
/// bit (all must go, or be harmless), but not DF.
const HOSTILE_FLAGS: u64 = !(1 << 10);

/// Faults (#UD) `FAST_ROUNDS` times, checking its FPU registers after each resume,
/// then once more (the handler stops it with a labelled reply).
fn fast_faulter(seed: u64) {
    let ymm = keel_sys::fpu::has_avx();
    crate::fpu::load(seed, ymm);
    for i in 0..=FAST_ROUNDS {
        probe::ud2();
        if let Err(r) = crate::fpu::check(seed, ymm)
            && shared(1) == 0
        {
            set_shared(1, 100 + r);
        }
        set_shared(0, i + 1);
    }
    probe::ud2();
}

/// The handler: receives the faults on the endpoint in word 4 and replies with
/// ReplyRecv; every tenth round a hostile reply (kernel RIP, [`HOSTILE_FLAGS`],
/// non-canonical RSP), whose consequence it checks in the next message.
fn fast_handler(seed: u64) {
    let ymm = keel_sys::fpu::has_avx();
    crate::fpu::load(seed, ymm);
    let ep = Cap::<Endpoint>::from_cptr(shared(4));
    let error = |code: u64| {
        if shared(3) == 0 {
            set_shared(3, code);
        }
    };
    let mut r = ep.recv();
    let mut rounds = 0;
    loop {
        if let Err(reg) = crate::fpu::check(seed, ymm)
            && shared(7) == 0
        {
            set_shared(7, 100 + reg);
        }
        if r.badge != 0x0f || r.label() != FaultType::UserException as u64 || r.length() != 5 {
            error(1_000 + r.label());
            let w = r.words::<4>();
            set_shared(8, rounds);
            set_shared(9, w[0]);
            set_shared(10, w[1]);
            set_shared(11, w[3]);
            break;
        }
        let w = r.words::<5>();
        let (ip, sp, flags, number) = (w[0], w[1], w[2], w[3]);
        if number != 6 {
            error(2_000 + number);
            break;
        }
        if shared(0) > FAST_ROUNDS {
            // The last #UD: stopped by a reply with a label.
            keel_sys::ipc::reply(&Message::new(1).words(&[ip + 2, sp, flags]));
            break;
        }
        rounds += 1;
        set_shared(2, rounds);
        let next = ip + probe::UD2_LENGTH;
        let hostile = match rounds % 10 {
            3 => Some((KERNEL_RIP, sp, flags)),
            // Every bit but DF (user-settable, kept: compiled code assumes it clear).
            5 => Some((next, sp, HOSTILE_FLAGS)),
            7 => Some((next, BAD_RSP, flags)),
            _ => None,
        };
        let Some((hip, hsp, hflags)) = hostile else {
            r = ep.reply_recv(&Message::new(0).words(&[next, sp, flags]));
            continue;
        };
        r = ep.reply_recv(&Message::new(0).words(&[hip, hsp, hflags]));
        if hflags == HOSTILE_FLAGS {
            // Sanitised (no TF: no debug fault follows): the next message is the next
            // round's #UD, checked at the top of the loop.
            continue;
        }
        // A #GP (kernel RIP) or a stack fault (#SS or #GP) with the values given.
        let w = r.words::<5>();
        let ok = r.label() == FaultType::UserException as u64
            && matches!(w[3], 12 | 13)
            && (hip != KERNEL_RIP || w[0] == KERNEL_RIP)
            && (hsp != BAD_RSP || w[1] == BAD_RSP);
        if !ok {
            error(3_000 + w[3]);
            break;
        }
        // Resume it properly: after the #UD, or at the instruction the bad stack
        // stopped, with its own stack.
        let resume = if hip == KERNEL_RIP { next } else { w[0] };
        r = ep.reply_recv(&Message::new(0).words(&[resume, sp, flags]));
    }
    set_shared(6, 1);
}

fn fast_route(env: &mut Env, across: bool) -> TestResult {
    let cpus = env.info.num_nodes();
    if across && cpus < 2 {
        return Err(crate::harness::Why::Skipped("one CPU"));
    }
    let ep = env.endpoint()?;
    let badged = env.mint(ep, CapRights::ALL, 0x0f)?.cptr();
    set_shared(4, ep.cptr());
    let handler = env.create(fast_handler, 7, CHILD_PRIORITY - 10)?;
    let config = ThreadConfig {
        priority: CHILD_PRIORITY,
        fault_ep: badged,
        affinity: across.then_some(1),
        cspace: None,
    };
    let faulter = env
        .alloc
        .create_thread(fast_faulter, 8, config)
        .or_fail("create faulter")?;
    let result = (|| {
        handler.start().or_fail("start handler")?;
        faulter.start().or_fail("start faulter")?;
        let mut done = false;
        for _ in 0..5 {
            let progress = shared(0);
            done = wait_until(|| shared(6) != 0);
            if done || shared(0) == progress {
                break;
            }
        }
        ensure!(
            done,
            "handler not done: faulter rounds {}, handler rounds {}, error {}",
            shared(0),
            shared(2),
            shared(3)
        );
        ensure!(
            shared(3) == 0,
            "handler error {} in round {} (message words {:#x} {:#x} {:#x})",
            shared(3),
            shared(8),
            shared(9),
            shared(10),
            shared(11)
        );
        ensure!(shared(0) == FAST_ROUNDS + 1, "faulter rounds {}", shared(0));
        ensure!(shared(1) == 0, "faulter FPU register {}", shared(1));
        ensure!(shared(7) == 0, "handler FPU register {}", shared(7));
        Ok(())
    })();
    env.destroy(faulter)?;
    env.destroy(handler)?;
    result
}
