//! Hostile tests of the trusted entry core (DESIGN §5.3, issue 4), after Linux's
//! `tools/testing/selftests/x86` scenarios, written for Keel's ABI: single stepping
//! across SYSCALL, NT across SYSCALL, MOV SS + kernel entry with a data breakpoint on
//! the MOV SS operand, and returns to non-canonical RIPs. On CPUs with FSGSBASE the
//! threads run with a kernel-looking GS base (0xffff_8000_0000_0000), so every #DB
//! they cause also tests the paranoid entry; their base must come back intact.

use core::sync::atomic::{AtomicU16, Ordering};

use keel_abi::fault::{BreakpointType, FaultType, UserContext, debug_exception, user_exception};
use keel_abi::invocation::InvocationLabel as L;
use keel_sys::cap::{Cap, Ldt, Pml4, init};
use keel_sys::hazards::{self, AfterMovSs, NT, TF};
use keel_sys::invocations::{Args, invoke};
use keel_sys::{Message, Received};

use crate::harness::{
    Env, OrFail, Suite, TestResult, Why, add_shared, pause, set_shared, shared, wait_until,
};
use crate::{CHILD_PRIORITY, ensure, fail};

/// The GS base the hostile threads run with where the CPU allows it.
const KERNEL_LOOKING_GS: u64 = 0xffff_8000_0000_0000;

/// Runs the entry-hazard tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("entry_single_step_across_syscall", || single_step(env));
    suite.run("entry_single_step_from_syscall_return_is_exact", || {
        single_step_from_syscall_return(env)
    });
    suite.run("entry_syscall_with_nt_and_nt_tf", || nt(env));
    suite.run("entry_mov_ss_data_breakpoint_then_kernel_entry", || {
        mov_ss(env)
    });
    suite.run("entry_sysret_to_non_canonical_rip_refused", || {
        sysret_rip(env)
    });
    suite.run("ldt_invalid_descriptors_refused", || ldt_invalid(env));
    suite.run("espfix_16bit_ss_keeps_user_esp_high_bits", || espfix(env));
    suite.run("espfix_bad_ss_and_cs_on_iret_fault_to_handler", || {
        espfix_bad_selectors(env)
    });
    suite.run("ldt_detached_on_deletion", || ldt_deletion(env));
    suite.run(
        "espfix_16bit_ss_keeps_user_esp_high_bits_on_every_cpu",
        || espfix_every_cpu(env),
    );
    suite.run(
        "ldt_changed_from_another_cpu_while_thread_runs_from_it",
        || ldt_cross_cpu(env),
    );
}

/// Gives the thread FSGSBASE and the kernel-looking GS base; false if the CPU lacks
/// FSGSBASE (then the thread keeps base 0).
fn hostile_gs(t: &keel_rt::Thread) -> bool {
    if init::FS_GS_BASE_CONTROL.set_access(t.tcb, true).is_err() {
        return false;
    }
    t.tcb.set_gs_base(KERNEL_LOOKING_GS).is_ok()
}

fn check_gs(t: &keel_rt::Thread, hostile: bool) -> TestResult {
    if hostile {
        let ctx = t
            .tcb
            .read_registers(false, 0, keel_abi::fault::USER_CONTEXT_WORDS)
            .or_fail("read registers")?;
        ensure!(
            ctx.gs_base == KERNEL_LOOKING_GS,
            "GS base came back as {:#x}",
            ctx.gs_base
        );
    }
    Ok(())
}

/// Serves the fault endpoint until shared word 0 reaches `done`: resumes debug
/// faults (counting them by reason in shared words 8..12) and skips the 2-byte
/// instruction of a #GP. Returns false on a time-out.
fn serve(env: &mut Env, done: u64) -> Result<bool, crate::harness::Why> {
    let mut bad: Option<(u64, u64)> = None;
    let finished = wait_until(|| {
        if let Some(r) = env.fault_ep.nb_recv() {
            handle(&r, &mut bad);
        }
        shared(0) >= done
    });
    if let Some((label, w)) = bad {
        fail!("unexpected fault: label<<8|MR3 {label:#x}, MR0 {w:#x}");
    }
    Ok(finished)
}

fn handle(r: &Received, bad: &mut Option<(u64, u64)>) {
    match FaultType::from_u64(r.label()) {
        Some(FaultType::DebugException) => {
            let reason = r.mr(debug_exception::EXCEPTION_REASON);
            add_shared(8 + (reason as usize).min(3), 1);
            if reason == BreakpointType::Data as u64 {
                set_shared(12, r.mr(debug_exception::TRIGGER_ADDRESS));
            }
            keel_sys::ipc::reply(&Message::new(0));
        }
        Some(FaultType::UserException) if r.mr(user_exception::NUMBER) == 13 => {
            add_shared(13, 1);
            let w = r.words::<3>();
            keel_sys::ipc::reply(&Message::new(0).words(&[w[0] + 2, w[1], w[2]]));
        }
        // QEMU TCG raises #UD for ICEBP (0xf1, 1 byte): skip it.
        Some(FaultType::UserException) if r.mr(user_exception::NUMBER) == 6 => {
            add_shared(14, 1);
            let w = r.words::<3>();
            keel_sys::ipc::reply(&Message::new(0).words(&[w[0] + 1, w[1], w[2]]));
        }
        _ => *bad = Some((r.label() << 8 | r.mr(3), r.mr(0))),
    }
}

fn single_step_thread(_: u64) {
    let after = hazards::flags_across_syscall(TF);
    set_shared(1, after);
    let steps = shared(10);
    // TF is clear again: the next system call and what follows must not trap.
    keel_sys::ipc::yield_now();
    keel_sys::ipc::yield_now();
    set_shared(2, shared(10) - steps);
    set_shared(0, 1);
}

fn single_step(env: &mut Env) -> TestResult {
    let t = env.create(single_step_thread, 0, CHILD_PRIORITY)?;
    let hostile = hostile_gs(&t);
    t.start().or_fail("start")?;
    let finished = serve(env, 1)?;
    let result = (|| {
        ensure!(
            finished,
            "thread did not finish ({} single steps)",
            shared(10)
        );
        ensure!(
            shared(1) & TF != 0,
            "TF lost across SYSCALL: RFLAGS {:#x}",
            shared(1)
        );
        ensure!(
            shared(10) >= 3,
            "{} single-step faults, expected at least 3",
            shared(10)
        );
        ensure!(
            shared(2) == 0,
            "{} single steps after TF was cleared",
            shared(2)
        );
        check_gs(&t, hostile)
    })();
    env.destroy(t)?;
    result
}

fn nt_thread(_: u64) {
    set_shared(1, hazards::flags_across_syscall(NT));
    set_shared(2, hazards::flags_across_syscall(NT | TF));
    set_shared(0, 1);
}

fn nt(env: &mut Env) -> TestResult {
    let t = env.create(nt_thread, 0, CHILD_PRIORITY)?;
    let hostile = hostile_gs(&t);
    t.start().or_fail("start")?;
    let finished = serve(env, 1)?;
    let result = (|| {
        ensure!(finished, "thread did not finish");
        ensure!(
            shared(1) & NT != 0,
            "NT lost across SYSCALL: {:#x}",
            shared(1)
        );
        ensure!(
            shared(2) & (NT | TF) == NT | TF,
            "NT+TF lost across SYSCALL: {:#x}",
            shared(2)
        );
        check_gs(&t, hostile)
    })();
    env.destroy(t)?;
    result
}

static SELECTOR: AtomicU16 = AtomicU16::new(0);

const VARIANTS: [AfterMovSs; 6] = [
    AfterMovSs::Syscall,
    AfterMovSs::Int3,
    AfterMovSs::IntN3,
    AfterMovSs::IntN4,
    AfterMovSs::Icebp,
    AfterMovSs::SyscallBadRsp,
];

fn mov_ss_thread(_: u64) {
    SELECTOR.store(hazards::current_ss(), Ordering::SeqCst);
    for v in VARIANTS {
        hazards::mov_ss_then(&SELECTOR, v);
        add_shared(0, 1);
    }
}

fn set_breakpoint(t: &keel_rt::Thread, address: u64) -> TestResult {
    let mut args = Args::new();
    for w in [0, address, BreakpointType::Data as u64, 2, 2] {
        args.word(w);
    }
    invoke(t.tcb.cptr(), L::TcbSetBreakpoint, &args).or_fail("SetBreakpoint")?;
    let mut args = Args::new();
    args.word(0);
    let r = invoke(t.tcb.cptr(), L::TcbGetBreakpoint, &args).or_fail("GetBreakpoint")?;
    ensure!(
        r.mr(0) == address && r.mr(1) == 0 && r.mr(2) == 2 && r.mr(3) == 2 && r.mr(4) == 1,
        "GetBreakpoint gave {:x?}",
        [r.mr(0), r.mr(1), r.mr(2), r.mr(3), r.mr(4)]
    );
    let mut args = Args::new();
    for w in [0, 0xffff_8000_0000_0000, BreakpointType::Data as u64, 8, 2] {
        args.word(w);
    }
    ensure!(
        invoke(t.tcb.cptr(), L::TcbSetBreakpoint, &args).is_err(),
        "a breakpoint on a kernel address was accepted"
    );
    Ok(())
}

fn mov_ss(env: &mut Env) -> TestResult {
    let t = env.create(mov_ss_thread, 0, CHILD_PRIORITY)?;
    let hostile = hostile_gs(&t);
    set_breakpoint(&t, SELECTOR.as_ptr() as u64)?;
    t.start().or_fail("start")?;
    let finished = serve(env, VARIANTS.len() as u64)?;
    let result = (|| {
        ensure!(
            finished,
            "thread stopped after {} of {} variants",
            shared(0),
            VARIANTS.len()
        );
        ensure!(
            shared(13) == 1,
            "{} #GP faults for INT 4, expected 1",
            shared(13)
        );
        ensure!(
            shared(11) + shared(14) >= 3,
            "{} software break faults and {} #UD (INT3, INT 3, ICEBP), expected 3",
            shared(11),
            shared(14)
        );
        if shared(8) != 0 {
            ensure!(
                shared(12) == SELECTOR.as_ptr() as u64,
                "watchpoint fault reported address {:#x}",
                shared(12)
            );
        }
        keel_rt::println!(
            "  (mov ss: {} watchpoint faults in user mode, {} software breaks, {} ICEBP #UD, GS base {:#x})",
            shared(8),
            shared(11),
            shared(14),
            if hostile { KERNEL_LOOKING_GS } else { 0 }
        );
        check_gs(&t, hostile)
    })();
    env.destroy(t)?;
    result
}

fn spin_thread(_: u64) {
    loop {
        keel_sys::ipc::yield_now();
    }
}

fn sysret_rip(env: &mut Env) -> TestResult {
    let t = env.create(spin_thread, 0, CHILD_PRIORITY)?;
    let result = (|| {
        for rip in [1u64 << 47, (1 << 47) + 0x1000, 1 << 63, u64::MAX - 0xfff] {
            let ctx = UserContext {
                rip,
                ..Default::default()
            };
            ensure!(
                t.tcb.write_registers(false, 0, 1, &ctx).is_err(),
                "WriteRegisters accepted RIP {rip:#x}"
            );
        }
        Ok(())
    })();
    env.destroy(t)?;
    result
}

// ---- Single steps across a SYSCALL's return (the exit path's TF check) ----

/// Single-step faults recorded by [`serve_steps`], at most.
const MAX_STEPS: usize = 8;

/// What [`serve_steps`] saw: the FaultIPs of the single-step faults in order.
struct Steps {
    finished: bool,
    ips: [u64; MAX_STEPS],
    count: usize,
}

impl Steps {
    fn ips(&self) -> &[u64] {
        &self.ips[..self.count.min(MAX_STEPS)]
    }
}

/// RIPs printed as offsets from the probe's return address (`[+0 +1 +b]`), short
/// enough for a failure message.
struct Offsets<'a>(&'a [u64]);

impl core::fmt::Display for Offsets<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ret = hazards::step_probe_return();
        f.write_str("[")?;
        for (i, ip) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            match ip.checked_sub(ret) {
                Some(d) if d < 0x1000 => write!(f, "{sep}+{d:x}")?,
                _ => write!(f, "{sep}{ip:#x}")?,
            }
        }
        f.write_str("]")
    }
}

/// Serves the fault endpoint until the thread running [`hazards::step_probe`] sets
/// shared word 0: records the FaultIP of every single-step fault and resumes it. Any
/// other fault fails the test (the thread is left stopped).
fn serve_steps(env: &mut Env) -> Result<Steps, Why> {
    let mut steps = Steps {
        finished: false,
        ips: [0; MAX_STEPS],
        count: 0,
    };
    let mut bad: Option<(u64, u64)> = None;
    steps.finished = wait_until(|| {
        if let Some(r) = env.fault_ep.nb_recv() {
            let single_step = FaultType::from_u64(r.label()) == Some(FaultType::DebugException)
                && r.mr(debug_exception::EXCEPTION_REASON) == BreakpointType::SingleStep as u64;
            if single_step {
                if steps.count < MAX_STEPS {
                    steps.ips[steps.count] = r.mr(debug_exception::FAULT_IP);
                }
                steps.count += 1;
                keel_sys::ipc::reply(&Message::new(0));
            } else if bad.is_none() {
                bad = Some((r.label(), r.mr(0)));
            }
        }
        bad.is_some() || shared(0) == 1
    });
    if let Some((label, w)) = bad {
        fail!("unexpected fault: label {label:#x}, MR0 {w:#x}");
    }
    Ok(steps)
}

fn self_stepping_thread(_: u64) {
    hazards::step_probe(keel_abi::syscall::YIELD, 0, true);
    set_shared(0, 1);
}

fn stepped_while_waiting_thread(ep: u64) {
    hazards::step_probe(keel_abi::syscall::RECV, ep, false);
    set_shared(0, 1);
}

/// The single steps of a thread that sets TF itself (POPFQ) and makes a Yield.
fn steps_of_self_stepping_thread(env: &mut Env) -> Result<Steps, Why> {
    set_shared(0, 0);
    let t = env.create(self_stepping_thread, 0, CHILD_PRIORITY)?;
    let steps = t.start().or_fail("start").and_then(|()| serve_steps(env));
    env.destroy(t)?;
    steps
}

/// The single-step stops of a thread waiting in Recv when a debugger (this thread)
/// configures single stepping on it with a count of 3, then sends it a message.
fn steps_of_thread_stepped_while_waiting(env: &mut Env) -> Result<Steps, Why> {
    set_shared(0, 0);
    let ret = hazards::step_probe_return();
    let ep = env.endpoint()?;
    let t = env.create(stepped_while_waiting_thread, ep.cptr(), CHILD_PRIORITY)?;
    let steps = (|| {
        t.start().or_fail("start")?;
        // Its saved RIP is the return address once it has entered its Recv (it runs
        // first, on this CPU and above this thread's priority, and blocks there).
        let waiting = wait_until(|| {
            t.tcb
                .read_registers(false, 0, 1)
                .is_ok_and(|c| c.rip == ret)
        });
        ensure!(waiting, "thread never waited in its Recv at {ret:#x}");
        let mut args = Args::new();
        args.word(0);
        args.word(3);
        invoke(t.tcb.cptr(), L::TcbConfigureSingleStepping, &args)
            .or_fail("ConfigureSingleStepping")?;
        ep.nb_send(&Message::new(0));
        serve_steps(env)
    })();
    env.destroy(t)?;
    env.alloc.delete(ep).or_fail("delete endpoint")?;
    steps
}

/// A thread with TF in its saved RFLAGS that entered by SYSCALL must leave the kernel by
/// IRETQ, which single-steps from the first instruction after the call: a SYSRET with
/// TF in R11 raises #DB at once, before that instruction runs (on hardware, and under
/// QEMU's TCG too), so the thread's handler would see a stop at the return address
/// where the thread ran no instruction. With `keel.unsafe.sysret` both halves fail.
///
/// 1. The thread sets TF itself (POPFQ) and makes a Yield: exactly one single-step
///    fault after each of the five instructions that follow the call, none at its
///    return address.
/// 2. A debugger (this thread) configures single stepping with a count of 3 on a thread
///    waiting in Recv, then sends it a message: the thread must stop after exactly
///    three instructions after the call, then after each further one (a stop at the
///    return address would be counted as one of the three).
fn single_step_from_syscall_return(env: &mut Env) -> TestResult {
    let after = hazards::step_probe_steps();
    let own = steps_of_self_stepping_thread(env)?;
    let debugger = steps_of_thread_stepped_while_waiting(env)?;
    ensure!(
        own.finished && debugger.finished,
        "a stepped thread did not finish: {} and {} single steps",
        own.count,
        debugger.count
    );
    let own_ok = own.ips() == after;
    let debugger_ok = debugger.ips() == &after[2..];
    ensure!(
        own_ok && debugger_ok,
        "stops after the call (from its return address): own TF {} (want {}); \
         debugger, count 3: {} (want {}){}",
        Offsets(own.ips()),
        Offsets(&after),
        Offsets(debugger.ips()),
        Offsets(&after[2..]),
        if own.ips().first() == Some(&hazards::step_probe_return()) {
            ": SYSRET with TF"
        } else {
            ""
        }
    );
    Ok(())
}

// ---- LDT and espfix64 (DESIGN §5.4) ----

/// 32-bit flat code segment, DPL 3.
const LDT_CODE32: u64 = 0x00cf_fa00_0000_ffff;
/// 16-bit (B = 0) writable data segment, DPL 3, base 0, limit 0xffff.
const LDT_DATA16: u64 = 0x0000_f200_0000_ffff;
/// Descriptor present bit.
const PRESENT: u64 = 1 << 47;
const CODE_INDEX: u64 = 1;
const SS_INDEX: u64 = 2;
const CODE_SEL: u16 = ((CODE_INDEX as u16) << 3) | 4 | 3;
const SS_SEL: u16 = ((SS_INDEX as u16) << 3) | 4 | 3;
/// The probe's ESP: bits 31:16 = 0x1234, which no kernel stack address has.
const PROBE_ESP: u32 = 0x1234_5678;

/// A new LDT with the probe's code and stack segments, attached to our address space.
fn attach_ldt(env: &mut Env) -> Result<Cap<Ldt>, crate::harness::Why> {
    let ldt = env.alloc.create::<Ldt>().or_fail("retype LDT")?;
    ldt.set_entries(CODE_INDEX, &[LDT_CODE32, LDT_DATA16])
        .or_fail("SetEntries")?;
    init::VSPACE.set_ldt(Some(ldt)).or_fail("SetLDT")?;
    Ok(ldt)
}

fn detach_ldt() -> TestResult {
    init::VSPACE.set_ldt(None).or_fail("SetLDT detach")
}

fn ldt_invalid(env: &mut Env) -> TestResult {
    let ldt = env.alloc.create::<Ldt>().or_fail("retype LDT")?;
    let bad = [
        (LDT_CODE32 & !(3 << 45), "DPL 0 code"),
        (0x00cf_fe00_0000_ffff, "conforming code"),
        (0x00ef_fa00_0000_ffff, "L = D = 1 code"),
        (0x0000_e900_0000_0067, "64-bit TSS"),
        (0x0000_e200_0000_0fff, "LDT descriptor"),
        (0x0000_ec00_0008_1000, "call gate"),
        (0x0000_ee00_0008_1000, "interrupt gate"),
    ];
    for (d, what) in bad {
        // The bad descriptor is the second: InvalidArgument 3 (= 2 + 1).
        match ldt.set_entries(10, &[LDT_DATA16, d]) {
            Err(e) => ensure!(
                e == keel_sys::Error::InvalidArgument { index: 3 },
                "{what}: error {e:?}, expected InvalidArgument 3"
            ),
            Ok(()) => fail!("{what} ({d:#x}) accepted"),
        }
    }
    ensure!(
        ldt.set_entries(512, &[0]).is_err() && ldt.set_entries(511, &[0, 0]).is_err(),
        "out-of-range SetEntries accepted"
    );
    ldt.set_entries(
        0,
        &[
            0,
            LDT_CODE32,
            LDT_DATA16,
            0x00af_fa00_0000_ffff,
            LDT_DATA16 & !PRESENT,
        ],
    )
    .or_fail("valid descriptors")?;
    ensure!(
        init::FS_GS_BASE_CONTROL
            .cast::<Pml4>()
            .set_ldt(Some(ldt))
            .is_err(),
        "SetLDT on a non-PML4 capability accepted"
    );
    env.alloc.delete(ldt).or_fail("delete LDT")?;
    Ok(())
}

fn espfix_thread(spins: u64) {
    let r = hazards::compat16_probe(CODE_SEL, SS_SEL, PROBE_ESP, spins as u32);
    set_shared(1, r.esp_after_trap as u64);
    set_shared(2, r.esp_changed as u64);
    set_shared(0, 1);
}

/// Serves debug faults (resume) until shared word 0 is set.
fn espfix(env: &mut Env) -> TestResult {
    let ldt = attach_ldt(env)?;
    let t = env.create(espfix_thread, 2_000_000, CHILD_PRIORITY)?;
    let hostile = hostile_gs(&t);
    t.start().or_fail("start")?;
    let finished = serve(env, 1)?;
    let result = (|| {
        ensure!(finished, "the 16-bit-stack thread did not finish");
        ensure!(
            shared(1) as u32 == PROBE_ESP,
            "after INT3 and IRET to a 16-bit SS, ESP is {:#x}, not {PROBE_ESP:#x}: ESP[31:16] leaked",
            shared(1)
        );
        ensure!(
            shared(2) == 0,
            "ESP bits changed across interrupts: {:#x} (xor with {PROBE_ESP:#x})",
            shared(2)
        );
        ensure!(shared(11) >= 1, "no software break fault for the INT3");
        check_gs(&t, hostile)
    })();
    env.destroy(t)?;
    detach_ldt()?;
    env.alloc.delete(ldt).or_fail("delete LDT")?;
    result
}

fn espfix_bad_selectors(env: &mut Env) -> TestResult {
    let ldt = attach_ldt(env)?;
    let t = env.create(espfix_thread, 1000, CHILD_PRIORITY)?;
    t.start().or_fail("start")?;
    // Step 1: the INT3. Make SS not present, resume: the IRET must fault (#SS).
    // Step 2: #SS for SS: make SS present, CS not present, resume: #NP for CS.
    // Step 3: #NP: make CS present again, resume: the thread finishes.
    let mut seen: [(u64, u64); 3] = [(0, 0); 3];
    let mut step = 0;
    let mut bad = None;
    let finished = wait_until(|| {
        if let Some(r) = env.fault_ep.nb_recv() {
            let kind = FaultType::from_u64(r.label());
            let number = r.mr(user_exception::NUMBER);
            let code = r.mr(user_exception::CODE);
            let ok = match (step, kind) {
                (0, Some(FaultType::DebugException)) => {
                    ldt.set_entries(SS_INDEX, &[LDT_DATA16 & !PRESENT]).is_ok()
                }
                (1, Some(FaultType::UserException)) => ldt
                    .set_entries(CODE_INDEX, &[LDT_CODE32 & !PRESENT, LDT_DATA16])
                    .is_ok(),
                (2, Some(FaultType::UserException)) => {
                    ldt.set_entries(CODE_INDEX, &[LDT_CODE32]).is_ok()
                }
                _ => false,
            };
            if step < 3 {
                seen[step] = (number, code);
            }
            if !ok {
                bad = Some((step, r.label(), number));
            }
            step += 1;
            match kind {
                Some(FaultType::UserException) => {
                    let w = r.words::<3>();
                    keel_sys::ipc::reply(&Message::new(0).words(&w));
                }
                _ => keel_sys::ipc::reply(&Message::new(0)),
            }
        }
        shared(0) >= 1 || bad.is_some()
    });
    let result = (|| {
        if let Some((s, label, number)) = bad {
            fail!("step {s}: unexpected fault label {label} number {number}");
        }
        ensure!(
            finished,
            "thread did not finish (step {step}, faults {seen:?})"
        );
        // The SDM says #SS for a not-present SS on IRET; QEMU raises #NP.
        ensure!(
            (seen[1].0 == 12 || seen[1].0 == 11) && seen[1].1 & !3 == SS_SEL as u64 & !3,
            "IRET to a not-present SS gave {:?}, expected #SS (12) or #NP (11) with the selector",
            seen[1]
        );
        ensure!(
            seen[2].0 == 11 && seen[2].1 & !3 == CODE_SEL as u64 & !3,
            "IRET to a not-present CS gave {:?}, expected #NP (11) with the selector",
            seen[2]
        );
        ensure!(
            shared(1) as u32 == PROBE_ESP,
            "ESP after the faulted IRETs is {:#x}",
            shared(1)
        );
        Ok(())
    })();
    env.destroy(t)?;
    detach_ldt()?;
    env.alloc.delete(ldt).or_fail("delete LDT")?;
    result
}

fn ldt_deletion(env: &mut Env) -> TestResult {
    ensure!(
        !hazards::selector_accessible(SS_SEL),
        "LDT selector accessible before any LDT"
    );
    let ldt = attach_ldt(env)?;
    ensure!(
        hazards::selector_accessible(SS_SEL) && hazards::selector_accessible(CODE_SEL),
        "LDT selectors not accessible after SetLDT"
    );
    env.alloc.delete(ldt).or_fail("delete LDT")?;
    ensure!(
        !hazards::selector_accessible(SS_SEL),
        "LDT selector still accessible after the LDT was deleted"
    );
    // Detaching with no LDT attached is fine.
    detach_ldt()
}

/// The espfix64 check of [`espfix`] once on every CPU: each CPU has its own ministack
/// and alias region (`ESPFIX_BASE + cpu * 4 GiB`).
fn espfix_every_cpu(env: &mut Env) -> TestResult {
    let cpus = env.info.num_nodes();
    let ldt = attach_ldt(env)?;
    let result = (|| {
        for cpu in 0..cpus {
            for w in [0, 1, 2, 11] {
                set_shared(w, 0);
            }
            let t = env.create(espfix_thread, 100_000, CHILD_PRIORITY)?;
            let outcome = (|| {
                t.tcb.set_affinity(cpu).or_fail("SetAffinity")?;
                t.start().or_fail("start")?;
                let finished = serve(env, 1)?;
                ensure!(
                    finished,
                    "CPU {cpu}: the 16-bit-stack thread did not finish"
                );
                ensure!(
                    shared(1) as u32 == PROBE_ESP && shared(2) == 0,
                    "CPU {cpu}: ESP {:#x} after INT3 (expected {PROBE_ESP:#x}), changes {:#x}",
                    shared(1),
                    shared(2)
                );
                ensure!(shared(11) >= 1, "CPU {cpu}: no software break fault");
                Ok(())
            })();
            env.destroy(t)?;
            outcome?;
        }
        Ok(())
    })();
    detach_ldt()?;
    env.alloc.delete(ldt).or_fail("delete LDT")?;
    result
}

/// Spin-loop iterations of the cross-CPU LDT test: practically endless; the test ends
/// the loop with `compat16_stop` once both LDT changes have landed.
const CROSS_CPU_SPINS: u64 = u32::MAX as u64;

/// Waits for the next fault of the thread, or its end (shared word 0).
fn next_fault(env: &mut Env) -> Option<Received> {
    let mut got = None;
    wait_until(|| {
        got = env.fault_ep.nb_recv();
        got.is_some() || shared(0) == 1
    });
    got
}

/// An LDT changed on this CPU while a thread on another CPU runs with CS and SS from
/// it: first SS made not present, then the whole LDT detached. The other CPU reloads
/// its LDTR (shootdown IPI) and the thread's next return to user mode (that IPI's or a
/// timer's IRETQ) faults: a UserException for its handler with the selector, never a
/// kernel fault. Restored, the thread runs on and finishes with ESP intact.
fn ldt_cross_cpu(env: &mut Env) -> TestResult {
    let cpus = env.info.num_nodes();
    if cpus < 2 {
        return Err(Why::Skipped("needs two CPUs"));
    }
    let ldt = attach_ldt(env)?;
    let t = env.create(espfix_thread, CROSS_CPU_SPINS, CHILD_PRIORITY)?;
    let result = (|| {
        t.tcb.set_affinity(cpus - 1).or_fail("SetAffinity")?;
        t.start().or_fail("start")?;
        // The INT3 before the spin loop: resume it, and let it get into the loop.
        let Some(r) = next_fault(env) else {
            fail!("no INT3 fault from the thread on CPU {}", cpus - 1)
        };
        ensure!(
            r.label() == FaultType::DebugException as u64,
            "first fault label {}, expected the INT3's DebugException",
            r.label()
        );
        keel_sys::ipc::reply(&Message::new(0));
        pause(1_000_000);
        ensure!(shared(0) == 0, "the thread finished before the LDT changed");
        // 1. SS not present.
        ldt.set_entries(SS_INDEX, &[LDT_DATA16 & !PRESENT])
            .or_fail("SetEntries SS not present")?;
        let Some(r) = next_fault(env) else {
            fail!(
                "SS made not present on another CPU: no fault, thread finished: {}",
                shared(0)
            )
        };
        let (number, code) = (r.mr(user_exception::NUMBER), r.mr(user_exception::CODE));
        ensure!(
            r.label() == FaultType::UserException as u64
                && (number == 11 || number == 12)
                && code & !3 == SS_SEL as u64 & !3,
            "SS made not present: fault label {} number {number} code {code:#x}, expected #NP/#SS with {SS_SEL:#x}",
            r.label()
        );
        ldt.set_entries(SS_INDEX, &[LDT_DATA16])
            .or_fail("SetEntries SS present")?;
        keel_sys::ipc::reply(&Message::new(0).words(&r.words::<3>()));
        pause(1_000_000);
        ensure!(
            shared(0) == 0,
            "the thread finished before the LDT was detached"
        );
        // 2. The LDT detached: CS and SS name nothing.
        detach_ldt()?;
        let Some(r) = next_fault(env) else {
            fail!(
                "LDT detached on another CPU: no fault, thread finished: {}",
                shared(0)
            )
        };
        let (number, code) = (r.mr(user_exception::NUMBER), r.mr(user_exception::CODE));
        ensure!(
            r.label() == FaultType::UserException as u64
                && (11..=13).contains(&number)
                && (code & !3 == SS_SEL as u64 & !3 || code & !3 == CODE_SEL as u64 & !3),
            "LDT detached: fault label {} number {number} code {code:#x}, expected #GP/#NP/#SS with an LDT selector",
            r.label()
        );
        init::VSPACE.set_ldt(Some(ldt)).or_fail("SetLDT again")?;
        keel_sys::ipc::reply(&Message::new(0).words(&r.words::<3>()));
        pause(1_000_000);
        ensure!(shared(0) == 0, "the thread left its loop by itself");
        hazards::compat16_stop();
        ensure!(
            wait_until(|| shared(0) == 1),
            "the thread did not finish after the LDT came back"
        );
        ensure!(
            shared(1) as u32 == PROBE_ESP && shared(2) == 0,
            "ESP {:#x} after INT3, changes {:#x} over the loop (expected {PROBE_ESP:#x}, 0)",
            shared(1),
            shared(2)
        );
        if let Some(r) = env.fault_ep.nb_recv() {
            fail!("unexpected fault label {} MR0 {:#x}", r.label(), r.mr(0));
        }
        Ok(())
    })();
    env.destroy(t)?;
    detach_ldt()?;
    env.alloc.delete(ldt).or_fail("delete LDT")?;
    result
}
