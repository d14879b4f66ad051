//! Hostile tests of what the entry core hands to user mode (DESIGN §5.1, §5.3, issue 4):
//! the registers a new thread starts with, seen by its very first instruction; system
//! calls at the top of user space and fault replies that ask for non-canonical RIPs;
//! privileged instructions and IOPL in ring 3; no-execute stack and data and read-only
//! text in the program the kernel loaded; debug registers that must not outlive the
//! thread that set them.

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use keel_abi::fault::{
    BreakpointType, FaultType, UserContext, debug_exception, unknown_syscall, user_exception,
    vm_fault,
};
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::message::CapRights;
use keel_abi::object::{ObjectType, USER_TOP};
use keel_abi::syscall as number;
use keel_sys::cap::{Cap, Tcb, init};
use keel_sys::hazards::{self, Privileged};
use keel_sys::invocations::{Args, invoke};
use keel_sys::{Message, Received, VmAttributes, probe};

use crate::harness::{
    Env, FAULT_BADGE, OrFail, Suite, TestResult, Why, add_shared, expect_err, recv_timeout,
    set_shared, shared, wait_until,
};
use crate::{CHILD_PRIORITY, ensure, fail};

/// Runs the entry-state tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("entry_new_thread_initial_registers", || {
        initial_registers(env)
    });
    suite.run(
        "entry_syscall_at_top_of_user_space_and_non_canonical_replies",
        || top_of_user_space(env),
    );
    suite.run(
        "entry_privileged_instructions_fault_and_iopl_stays_0",
        || privileged(env),
    );
    suite.run("entry_stack_and_data_no_execute_text_read_only", || {
        program_protection(env)
    });
    suite.run("entry_ds_es_belong_to_their_thread", || ds_es(env));
    suite.run("entry_debug_registers_do_not_outlive_their_thread", || {
        debug_registers(env)
    });
    suite.run("entry_user_registers_do_not_reach_the_kernel_stack", || {
        registers_cleared(env)
    });
}

/// Makes 8 KeelDebugKernelStackCount calls, each with a fresh value in every free
/// register; shared(1) counts the copies the kernel found, shared(2) finished threads.
fn stack_count_thread(_: u64) {
    for round in 0..8u64 {
        // Fresh each time and never in a message: only a register could carry it.
        let value = 0x5eed_0000_0000_0000 ^ keel_sys::rdtsc().rotate_left(17) ^ round;
        add_shared(1, hazards::kernel_stack_count_of_registers(value));
    }
    add_shared(2, 1);
}

/// DESIGN §5.1: the SYSCALL entry clears the general registers before the kernel's
/// Rust code runs, so no user value sits in a register the compiled code may spill or
/// push. A system call with a fresh value in every free register, on every CPU, must
/// find no copy of it on the kernel stack (the glue's prologue pushes the callee-saved
/// registers it received: with `entry.clear_regs=off` they are the user's, and this
/// test fails, which the runner's `defence_off_clear_regs_is_caught` checks).
fn registers_cleared(env: &mut Env) -> TestResult {
    for cpu in 0..env.info.num_nodes() {
        set_shared(1, 0);
        set_shared(2, 0);
        let t = env.create(stack_count_thread, 0, CHILD_PRIORITY)?;
        let outcome = (|| {
            t.tcb.set_affinity(cpu).or_fail("SetAffinity")?;
            t.start().or_fail("start")?;
            ensure!(
                wait_until(|| shared(2) == 1),
                "CPU {cpu}: the thread did not finish"
            );
            ensure!(
                shared(1) == 0,
                "CPU {cpu}: {} copies of the user registers' values on the kernel stack",
                shared(1)
            );
            Ok(())
        })();
        env.destroy(t)?;
        outcome?;
    }
    Ok(())
}

/// RFLAGS of a new thread: IF and the reserved bit 1.
const INITIAL_RFLAGS: u64 = 0x202;
/// The user code and stack selectors (GDT, RPL 3).
const USER_CS: u64 = 0x23;
const USER_SS: u64 = 0x1b;

/// A TCB fresh from Retype in the root task's spaces, with the suite's fault endpoint,
/// not started.
fn fresh_tcb(env: &mut Env) -> Result<Cap<Tcb>, Why> {
    let tcb = env.alloc.create::<Tcb>().or_fail("retype TCB")?;
    tcb.set_space(env.fault_ep_badged.cptr(), init::CNODE, 0, init::VSPACE, 0)
        .or_fail("SetSpace")?;
    tcb.set_priority(init::TCB, CHILD_PRIORITY as u64)
        .or_fail("SetPriority")?;
    Ok(tcb)
}

/// Receives one fault message from a thread of the suite, or fails.
fn fault(env: &mut Env, what: &str) -> Result<Received, Why> {
    let Some(r) = recv_timeout(env.fault_ep) else {
        fail!("{what}: no fault message")
    };
    ensure!(r.badge == FAULT_BADGE, "{what}: badge {:#x}", r.badge);
    Ok(r)
}

/// Expects a UserException `vector` at `ip`; returns its words.
fn expect_exception(r: &Received, vector: u64, ip: u64, what: &str) -> Result<[u64; 5], Why> {
    ensure!(
        r.label() == FaultType::UserException as u64,
        "{what}: fault label {} (MR0 {:#x}), expected a UserException",
        r.label(),
        r.mr(0)
    );
    let w = r.words::<5>();
    ensure!(
        w[user_exception::NUMBER] == vector && w[user_exception::FAULT_IP] == ip,
        "{what}: exception {} at {:#x} (code {:#x}), expected {vector} at {ip:#x}",
        w[user_exception::NUMBER],
        w[user_exception::FAULT_IP],
        w[user_exception::CODE]
    );
    Ok(w)
}

/// Starts a fresh TCB at the register probe with the first `count` words of `ctx`
/// written, and returns what its first instruction saw.
fn probe_start(
    env: &mut Env,
    ctx: &UserContext,
    count: usize,
    what: &str,
) -> Result<hazards::InitialState, Why> {
    hazards::initial_state_reset();
    let tcb = fresh_tcb(env)?;
    let result = (|| {
        tcb.write_registers(false, 0, count, ctx)
            .or_fail("WriteRegisters")?;
        tcb.resume().or_fail("Resume")?;
        let r = fault(env, what)?;
        expect_exception(&r, 6, hazards::initial_state_ud2(), what)?;
        match hazards::initial_state() {
            Some(s) => Ok(s),
            None => fail!("{what}: the probe's UD2 faulted but its block is incomplete"),
        }
    })();
    env.alloc.delete(tcb).or_fail("delete TCB")?;
    result
}

fn initial_registers(env: &mut Env) -> TestResult {
    // 1. A TCB fresh from Retype, only RIP written: every general-purpose register,
    //    RSP included, is 0; RFLAGS is IF + bit 1; CS/SS the user selectors; the data
    //    and FS/GS selectors null.
    let entry = hazards::initial_state_entry();
    let ctx = UserContext {
        rip: entry,
        ..Default::default()
    };
    let s = probe_start(env, &ctx, 1, "fresh TCB")?;
    for (i, g) in s.gprs.iter().enumerate() {
        ensure!(
            *g == 0,
            "fresh TCB: {} = {g:#x} at the first instruction, expected 0",
            hazards::GPR_NAMES[i]
        );
    }
    ensure!(
        s.rflags == INITIAL_RFLAGS,
        "fresh TCB: RFLAGS {:#x}, expected {INITIAL_RFLAGS:#x}",
        s.rflags
    );
    check_selectors(&s, "fresh TCB")?;

    // 2. Every register written with its own value and RFLAGS with all ones: each
    //    arrives exactly (whichever of SYSRET/IRETQ the kernel uses), and RFLAGS only
    //    with the bits user code may hold (CF PF AF ZF SF DF OF, IF forced; no TF, IOPL,
    //    NT, RF, AC, ID).
    let value = |i: u64| 0x0101_0101_0101_0101u64.wrapping_mul(i + 1) ^ 0x8000_0000_0000_0000;
    let ctx = UserContext {
        rip: entry,
        rsp: value(7),
        rflags: u64::MAX,
        rax: value(0),
        rbx: value(1),
        rcx: value(2),
        rdx: value(3),
        rsi: value(4),
        rdi: value(5),
        rbp: value(6),
        r8: value(8),
        r9: value(9),
        r10: value(10),
        r11: value(11),
        r12: value(12),
        r13: value(13),
        r14: value(14),
        r15: value(15),
        fs_base: 0,
        gs_base: 0,
    };
    let s = probe_start(
        env,
        &ctx,
        keel_abi::fault::USER_CONTEXT_WORDS,
        "all registers written",
    )?;
    for (i, g) in s.gprs.iter().enumerate() {
        ensure!(
            *g == value(i as u64),
            "all registers written: {} = {g:#x}, expected {:#x}",
            hazards::GPR_NAMES[i],
            value(i as u64)
        );
    }
    let allowed = keel_abi::fault::sanitise_rflags(u64::MAX);
    ensure!(
        s.rflags == allowed && allowed == 0xed7,
        "RFLAGS written as all ones arrived as {:#x}, expected {allowed:#x} (0xed7)",
        s.rflags
    );
    check_selectors(&s, "all registers written")
}

fn check_selectors(s: &hazards::InitialState, what: &str) -> TestResult {
    let [cs, ss, ds, es, fs, gs] = s.selectors;
    ensure!(
        cs == USER_CS && ss == USER_SS,
        "{what}: CS {cs:#x} SS {ss:#x}, expected {USER_CS:#x} {USER_SS:#x}"
    );
    // DS and ES are not part of a thread's state in 64-bit mode (the kernel does not
    // switch them); they must at least never hold anything but null or the flat user
    // data selector. FS and GS are the thread's (0 for a new one).
    ensure!(
        (ds == 0 || ds == USER_SS) && (es == 0 || es == USER_SS) && fs == 0 && gs == 0,
        "{what}: DS {ds:#x} ES {es:#x} FS {fs:#x} GS {gs:#x}"
    );
    Ok(())
}

// ---- SYSCALL near 2^47, non-canonical RIPs through fault replies ----

/// The last page user space may map: `USER_TOP` itself is refused (vspace_map_errors),
/// so a SYSCALL in its last two bytes returns to `USER_TOP`, the highest RIP a SYSRET
/// can be asked for.
const TOP_PAGE: u64 = USER_TOP - 0x1000;
/// Offsets in the page: `syscall` (unknown number), `ud2`, `syscall` (Yield).
const AT_UNKNOWN_SYSCALL: u64 = TOP_PAGE + 0xffa;
const AT_UD2: u64 = TOP_PAGE + 0xffc;
const AT_LAST_SYSCALL: u64 = TOP_PAGE + 0xffe;
/// A system-call number the kernel does not know.
const UNKNOWN: u64 = 0x7e57;

fn top_of_user_space(env: &mut Env) -> TestResult {
    // A 2 MiB page ending at 2^47 would make USER_TOP mappable (and a SYSCALL in its
    // last bytes would ask SYSRET for RIP 2^47): refused like the 4 KiB page there.
    let large = env
        .alloc
        .frame(ObjectType::X86LargePage)
        .or_fail("2 MiB frame")?;
    let refused = large.map(
        init::VSPACE,
        (1 << 47) - (2 << 20),
        CapRights::READ_WRITE,
        VmAttributes::DEFAULT,
    );
    env.alloc.delete(large).or_fail("delete 2 MiB frame")?;
    expect_err(
        refused,
        keel_sys::Error::InvalidArgument { index: 0 },
        "a 2 MiB page ending at 2^47",
    )?;
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    env.alloc
        .map_frame(
            init::VSPACE,
            frame,
            TOP_PAGE,
            CapRights::READ_WRITE,
            VmAttributes::DEFAULT,
            1,
        )
        .or_fail("map the last page below USER_TOP")?;
    // nop; nop; syscall; ud2; syscall — the last byte is at USER_TOP - 1.
    probe::write_u64(TOP_PAGE + 0xff8, 0x050f_0b0f_050f_9090);
    let t = env.create(|_| {}, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let mut ctx = t
            .tcb
            .read_registers(false, 0, keel_abi::fault::USER_CONTEXT_WORDS)
            .or_fail("read registers")?;
        ctx.rip = AT_UNKNOWN_SYSCALL;
        ctx.rdx = UNKNOWN;
        t.tcb
            .write_registers(false, 0, keel_abi::fault::USER_CONTEXT_WORDS, &ctx)
            .or_fail("write registers")?;
        t.start().or_fail("start")?;
        top_sequence(env)
    })();
    env.destroy(t)?;
    env.alloc.delete(frame).or_fail("delete frame")?;
    result
}

/// The fault conversation with the thread of [`top_of_user_space`].
fn top_sequence(env: &mut Env) -> TestResult {
    // 1. The unknown system call; reply: RIP 2^47 (non-canonical), RDX = Yield. The
    //    thread's context still says "entered by SYSCALL", so a return path trusting
    //    it would SYSRET with a non-canonical RCX (#GP in ring 0 on Intel).
    let r = fault(env, "unknown system call")?;
    ensure!(
        r.label() == FaultType::UnknownSyscall as u64
            && r.mr(unknown_syscall::FAULT_IP) == AT_UNKNOWN_SYSCALL
            && r.mr(unknown_syscall::SYSCALL) == UNKNOWN,
        "expected UnknownSyscall {UNKNOWN:#x} at {AT_UNKNOWN_SYSCALL:#x}: label {}, IP {:#x}, number {:#x}",
        r.label(),
        r.mr(unknown_syscall::FAULT_IP),
        r.mr(unknown_syscall::SYSCALL)
    );
    let mut regs = r.words::<18>();
    regs[unknown_syscall::RDX] = number::YIELD as u64;
    regs[unknown_syscall::FAULT_IP] = 1 << 47;
    keel_sys::ipc::reply(&Message::new(0).words(&regs));
    // 2. The thread cannot run at 2^47: a #GP (13) of the thread, reported at that RIP.
    //    Reply with a kernel-half RIP: again a #GP, never a kernel fault.
    let w = expect_exception(&fault(env, "RIP 2^47")?, 13, 1 << 47, "RIP 2^47")?;
    let kernel_half = 0xffff_8000_0000_0000;
    keel_sys::ipc::reply(&Message::new(0).words(&[kernel_half, w[1], w[2]]));
    let w = expect_exception(
        &fault(env, "kernel-half RIP")?,
        13,
        kernel_half,
        "kernel-half RIP",
    )?;
    // 3. A good RIP (the UD2 in the top page) with a non-canonical RSP, which IRETQ
    //    loads without a check (the code there uses no stack): the thread runs again
    //    and its #UD reports that RSP.
    let bad_rsp = 1u64 << 47;
    keel_sys::ipc::reply(&Message::new(0).words(&[AT_UD2, bad_rsp, w[2]]));
    let w = expect_exception(&fault(env, "UD2")?, 6, AT_UD2, "UD2 below USER_TOP")?;
    ensure!(
        w[user_exception::SP] == bad_rsp,
        "UD2 with a non-canonical RSP reported SP {:#x}",
        w[user_exception::SP]
    );
    // 4. The SYSCALL in the last two bytes below USER_TOP (RDX = Yield), RSP still
    //    non-canonical: SYSRET to USER_TOP, whose fetch is an instruction page fault
    //    in user mode.
    keel_sys::ipc::reply(&Message::new(0).words(&[AT_LAST_SYSCALL, bad_rsp, w[2]]));
    let r = fault(env, "return to USER_TOP")?;
    ensure!(
        r.label() == FaultType::VmFault as u64
            && r.mr(vm_fault::IP) == USER_TOP
            && r.mr(vm_fault::ADDR) == USER_TOP
            && r.mr(vm_fault::PREFETCH_FAULT) == vm_fault::INSTRUCTION_FAULT,
        "after SYSCALL at {AT_LAST_SYSCALL:#x}: label {} IP {:#x} address {:#x} prefetch {}, expected an instruction fault at {USER_TOP:#x}",
        r.label(),
        r.mr(vm_fault::IP),
        r.mr(vm_fault::ADDR),
        r.mr(vm_fault::PREFETCH_FAULT)
    );
    Ok(())
}

// ---- Privileged instructions and IOPL ----

fn privileged_thread(_: u64) {
    for which in Privileged::ALL {
        hazards::privileged(which);
        add_shared(1, 1);
    }
    set_shared(2, hazards::popf_iopl3_if0());
    set_shared(0, 1);
}

fn privileged(env: &mut Env) -> TestResult {
    let t = env.spawn(privileged_thread, 0, CHILD_PRIORITY)?;
    let result = (|| {
        for (i, which) in Privileged::ALL.into_iter().enumerate() {
            let what = match which {
                Privileged::Cli => "CLI",
                Privileged::Sti => "STI",
                Privileged::InDx => "IN AL, DX",
                Privileged::OutDx => "OUT DX, AL",
                Privileged::InImmediate => "IN AL, imm8",
                Privileged::OutImmediate => "OUT imm8, AL",
                Privileged::InString => "INSB",
                Privileged::OutString => "OUTSB",
            };
            let r = fault(env, what)?;
            ensure!(
                r.label() == FaultType::UserException as u64,
                "{what}: fault label {}, expected a UserException",
                r.label()
            );
            let w = r.words::<5>();
            ensure!(
                w[user_exception::NUMBER] == 13 && w[user_exception::CODE] == 0,
                "{what}: exception {} code {:#x}, expected #GP (13) code 0",
                w[user_exception::NUMBER],
                w[user_exception::CODE]
            );
            ensure!(
                shared(1) == i as u64,
                "{what}: the thread got past {} instructions, expected {i}",
                shared(1)
            );
            let next = w[user_exception::FAULT_IP] + which.length();
            keel_sys::ipc::reply(&Message::new(0).words(&[next, w[1], w[2]]));
        }
        ensure!(
            wait_until(|| shared(0) == 1),
            "thread did not finish after the faults"
        );
        let flags = shared(2);
        ensure!(
            flags & 0x3000 == 0 && flags & 0x200 != 0,
            "POPF asking for IOPL 3 and IF 0 in ring 3 gave RFLAGS {flags:#x}: IOPL must stay 0, IF 1"
        );
        if let Some(r) = env.fault_ep.nb_recv() {
            fail!("unexpected fault label {} MR0 {:#x}", r.label(), r.mr(0));
        }
        Ok(())
    })();
    env.destroy(t)?;
    result
}

// ---- No-execute stack and data, read-only text (as the kernel loaded the program) ----

/// A page of the program's writable data (initialised, so in .data), all RET.
#[repr(C, align(4096))]
struct DataPage([AtomicU8; 4096]);
static RET_PAGE: DataPage = DataPage([const { AtomicU8::new(0xc3) }; 4096]);

/// Shared word 10: the address the thread is about to execute or write.
fn stack_thread(_: u64) {
    hazards::call_on_stack(|a| set_shared(10, a));
    set_shared(0, 1);
}

fn data_thread(_: u64) {
    let a = RET_PAGE.0.as_ptr() as u64 + 64;
    set_shared(10, a);
    probe::call(a);
    set_shared(0, 1);
}

fn text_thread(_: u64) {
    hazards::write_own_text(|a| set_shared(10, a));
    set_shared(0, 1);
}

/// Whether the CPU has no-execute (CPUID 0x8000_0001 EDX bit 20).
fn has_nx() -> bool {
    core::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0001
        && core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 20) != 0
}

/// Runs `entry`, which must fault at shared word 10's address: an instruction fetch
/// (`fetch`) or a write to a present page.
fn expect_protection(env: &mut Env, entry: fn(u64), fetch: bool, what: &str) -> TestResult {
    set_shared(0, 0);
    set_shared(10, 0);
    let t = env.spawn(entry, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let Some(r) = recv_timeout(env.fault_ep) else {
            fail!("{what}: no fault (the thread finished: {})", shared(0) == 1)
        };
        ensure!(
            r.label() == FaultType::VmFault as u64,
            "{what}: fault label {} MR0 {:#x}, expected a VmFault",
            r.label(),
            r.mr(0)
        );
        let address = shared(10);
        let fsr = r.mr(vm_fault::FSR);
        ensure!(
            address != 0 && r.mr(vm_fault::ADDR) == address,
            "{what}: fault address {:#x}, expected {address:#x}",
            r.mr(vm_fault::ADDR)
        );
        if fetch {
            ensure!(
                r.mr(vm_fault::PREFETCH_FAULT) == vm_fault::INSTRUCTION_FAULT
                    && r.mr(vm_fault::IP) == address
                    && fsr & 0b10101 == 0b10101,
                "{what}: not an instruction fetch from a present page (IP {:#x}, FSR {fsr:#x})",
                r.mr(vm_fault::IP)
            );
        } else {
            ensure!(
                r.mr(vm_fault::PREFETCH_FAULT) == vm_fault::DATA_FAULT && fsr & 0b111 == 0b111,
                "{what}: not a user write to a present page (FSR {fsr:#x})"
            );
        }
        ensure!(shared(0) == 0, "{what}: the thread went on");
        Ok(())
    })();
    env.destroy(t)?;
    result
}

fn program_protection(env: &mut Env) -> TestResult {
    expect_protection(env, text_thread, false, "write to the program's own text")?;
    if !has_nx() {
        return Err(Why::Skipped(
            "read-only text checked; the CPU has no NX, so stack and data are executable",
        ));
    }
    expect_protection(env, stack_thread, true, "RET on the thread's stack")?;
    expect_protection(env, data_thread, true, "RET in the program's .data")
}

// ---- Debug registers across thread switches ----

/// Written by the watched thread (under its watchpoint) and then by a thread without
/// breakpoints.
static WATCHED: AtomicU64 = AtomicU64::new(0);

fn watched_writer(n: u64) {
    // A plain MOV store (Relaxed). With a SeqCst store (an XCHG) the watched write was
    // seen, rarely and mostly under heavy host load, to complete without a #DB; the
    // cause is not established (QEMU TCG's atomic path is suspected).
    WATCHED.store(n, Ordering::Relaxed);
    set_shared(n as usize, 1);
}

/// Sets a write watchpoint (8 bytes) on [`WATCHED`] in `t`'s debug registers.
fn watch(t: &keel_rt::Thread) -> TestResult {
    let mut args = Args::new();
    for w in [
        0,
        WATCHED.as_ptr() as u64,
        BreakpointType::Data as u64,
        8,
        1,
    ] {
        args.word(w);
    }
    invoke(t.tcb.cptr(), L::TcbSetBreakpoint, &args).or_fail("SetBreakpoint")?;
    Ok(())
}

fn debug_registers(env: &mut Env) -> TestResult {
    // Thread A (with the watchpoint) writes WATCHED: one data-breakpoint fault, resumed.
    // All threads are created on this CPU (a TCB starts with the CPU that made it), so
    // the next thread to run here after A finds A's breakpoints in the debug registers
    // unless the kernel cleared them.
    let a = env.create(watched_writer, 1, CHILD_PRIORITY)?;
    let result = (|| {
        watch(&a)?;
        a.start().or_fail("start A")?;
        let Some(r) = recv_timeout(env.fault_ep) else {
            // Say whether A wrote without trapping or never ran.
            let rip = a.tcb.read_registers(false, 0, 1).map_or(0, |c| c.rip);
            fail!(
                "watched write: no fault message (A finished its write: {}, A's RIP {rip:#x}, \
                 WATCHED = {})",
                shared(1) == 1,
                WATCHED.load(Ordering::SeqCst)
            )
        };
        ensure!(
            r.badge == FAULT_BADGE,
            "watched write: badge {:#x}",
            r.badge
        );
        ensure!(
            r.label() == FaultType::DebugException as u64
                && r.mr(debug_exception::EXCEPTION_REASON) == BreakpointType::Data as u64
                && r.mr(debug_exception::TRIGGER_ADDRESS) == WATCHED.as_ptr() as u64,
            "A's write: label {} reason {} address {:#x}, expected its watchpoint",
            r.label(),
            r.mr(debug_exception::EXCEPTION_REASON),
            r.mr(debug_exception::TRIGGER_ADDRESS)
        );
        keel_sys::ipc::reply(&Message::new(0));
        ensure!(wait_until(|| shared(1) == 1), "A did not finish");
        Ok(())
    })();
    env.destroy(a)?;
    result?;
    // Thread B has no breakpoints: its write must not trap.
    let b = env.spawn(watched_writer, 2, CHILD_PRIORITY)?;
    let mut stray = None;
    let finished = wait_until(|| {
        if let Some(r) = env.fault_ep.nb_recv() {
            stray = Some((r.label(), r.mr(debug_exception::EXCEPTION_REASON)));
        }
        shared(2) == 1 || stray.is_some()
    });
    env.destroy(b)?;
    if let Some((label, reason)) = stray {
        fail!(
            "a thread without breakpoints got fault label {label} (reason {reason}) writing the \
             address another thread watched: the debug registers outlived their thread"
        );
    }
    ensure!(finished, "thread B did not finish");
    Ok(())
}

// ---- DS and ES ----

/// Switches each thread makes.
const DS_ES_ROUNDS: u64 = 200;

/// Loads DS/ES with the user data selector (argument 1) or leaves them null (0),
/// then yields `DS_ES_ROUNDS` times checking them after each switch; shared(2 + arg)
/// counts wrong values, shared(1) finished threads.
fn ds_es_thread(loads: u64) {
    let want = if loads == 1 { USER_SS as u16 } else { 0 };
    if loads == 1 {
        hazards::load_ds_es(want);
    }
    for _ in 0..DS_ES_ROUNDS {
        keel_sys::ipc::yield_now();
        let (ds, es) = hazards::ds_es();
        if ds != want || es != want {
            add_shared(2 + loads as usize, 1);
        }
    }
    add_shared(1, 1);
}

/// A thread's DS and ES are its own: one thread loads the user data selector, another
/// on the same CPU keeps them null, and each finds its own after every switch (the
/// kernel saves both at entry and reloads them when they differ from the CPU's).
fn ds_es(env: &mut Env) -> TestResult {
    let a = env.spawn(ds_es_thread, 1, CHILD_PRIORITY)?;
    let b = env.spawn(ds_es_thread, 0, CHILD_PRIORITY)?;
    let finished = wait_until(|| shared(1) == 2);
    env.destroy(a)?;
    env.destroy(b)?;
    ensure!(finished, "{} of 2 threads finished", shared(1));
    ensure!(
        shared(3) == 0 && shared(2) == 0,
        "wrong DS/ES after a switch: {} times in the thread that loaded them, {} in the one that did not",
        shared(3),
        shared(2)
    );
    Ok(())
}
