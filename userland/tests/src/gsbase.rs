//! FS/GS state semantics, the FSGSBASE right, and fibers (issue 5, doc/fsgsbase.md).
//!
//! "W" threads hold the FSGSBASE right and set odd, negative and zero bases with
//! WRFSBASE/WRGSBASE themselves (so the kernel must record what the CPU held); "N"
//! threads have no right and get their bases from TCBSetTLSBase/TCBSetGSBase, checked
//! through `fs:[0]`/`gs:[0]`. On CPUs without FSGSBASE only N threads run; tests that
//! need the right report `skipped (no FSGSBASE)`.

use keel_abi::error::Error;
use keel_abi::fault::{FaultType, USER_CONTEXT_WORDS, user_exception};
use keel_abi::invocation::InvocationLabel as L;
use keel_sys::cap::{Cap, Endpoint, init};
use keel_sys::fiber as f;
use keel_sys::invocations::{Args, invoke};
use keel_sys::{Message, probe};

use crate::harness::{
    Env, OrFail, Suite, TestResult, Why, pause, recv_timeout, set_shared, shared, wait_until,
};
use crate::{CHILD_PRIORITY, ensure, fail};

/// Markers N threads find at their bases.
static FS_AREA: [u64; 2] = [0x0f5_0f5_0f5, 0];
static GS_AREA: [u64; 2] = [0x065_065_065, 0];

/// W threads' bases: odd FS, negative odd GS (kernel-looking), and a zero pair.
const W_FS: u64 = 0x0000_1234_5678_9abd;
const W_GS: u64 = 0xffff_8000_0000_0003;

/// Checker threads share the root task's priority (round robin with its polling).
const SAME: u8 = crate::ROOT_PRIORITY as u8;

/// Runs the tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("gsbase_set_access_checks_its_argument", || set_access(env));
    suite.run("gsbase_wrgsbase_without_right_is_ud_fault", || {
        without_right(env)
    });
    suite.run("gsbase_right_works_and_revocation_takes_effect", || {
        revoke(env)
    });
    suite.run(
        "gsbase_bases_survive_switches_and_timer_with_and_without_right",
        || alternate(env),
    );
    suite.run("gsbase_bases_survive_migration", || migration(env));
    suite.run("gsbase_read_write_registers_round_trip", || round_trip(env));
    suite.run(
        "gsbase_set_tls_and_gs_base_of_a_thread_running_on_another_cpu",
        || set_bases_elsewhere(env),
    );
    suite.run("gsbase_bases_survive_fault_and_resume", || {
        fault_resume(env)
    });
    suite.run("fiber_spawn_yield_join_tls_exact", fibers);
    suite.run("fiber_1024_ring_through_channels_exact", fiber_ring);
    suite.run("fiber_server_one_fiber_per_client", || fiber_server(env));
}

fn skipped() -> Why {
    Why::Skipped("no FSGSBASE")
}

fn has_fsgsbase(env: &mut Env) -> bool {
    let _ = env;
    init::FS_GS_BASE_CONTROL
        .set_access(init::TCB, false)
        .is_ok()
}

fn set_access(env: &mut Env) -> TestResult {
    let t = env.create(|_| {}, 0, CHILD_PRIORITY)?;
    let mut args = Args::new();
    args.word(2);
    args.cap(t.tcb.cptr());
    let bad = invoke(
        init::FS_GS_BASE_CONTROL.cptr(),
        L::FsGsBaseControlSetAccess,
        &args,
    );
    let mut args = Args::new();
    args.word(1);
    args.cap(init::CNODE.cptr());
    let not_tcb = invoke(
        init::FS_GS_BASE_CONTROL.cptr(),
        L::FsGsBaseControlSetAccess,
        &args,
    );
    let good = init::FS_GS_BASE_CONTROL.set_access(t.tcb, true);
    env.destroy(t)?;
    match bad {
        Err(e) if e.is(Error::InvalidArgument) => {}
        Err(e) => fail!("MR0 = 2: {e}, expected InvalidArgument"),
        Ok(_) => fail!("MR0 = 2 accepted"),
    }
    ensure!(not_tcb.is_err(), "a CNode accepted as the TCB");
    match good {
        Ok(()) => Ok(()),
        Err(e) if e.is(Error::IllegalOperation) => Err(skipped()),
        Err(e) => fail!("SetAccess: {e}"),
    }
}

fn write_gs(_: u64) {
    f::wrgsbase(0x1234);
    set_shared(0, 1);
}

/// Expects a #UD fault message; returns its RIP.
fn expect_ud(env: &mut Env) -> Result<u64, Why> {
    let Some(r) = recv_timeout(env.fault_ep) else {
        fail!("no fault message")
    };
    ensure!(
        r.label() == FaultType::UserException as u64,
        "label {}",
        r.label()
    );
    let w = r.words::<5>();
    ensure!(
        w[user_exception::NUMBER] == 6,
        "exception {}",
        w[user_exception::NUMBER]
    );
    Ok(w[user_exception::FAULT_IP])
}

fn without_right(env: &mut Env) -> TestResult {
    let t = env.spawn(write_gs, 0, CHILD_PRIORITY)?;
    let r = expect_ud(env);
    env.destroy(t)?;
    r?;
    ensure!(shared(0) == 0, "WRGSBASE ran without the right");
    Ok(())
}

fn revoked_thread(_: u64) {
    f::wrgsbase(W_GS);
    f::wrfsbase(W_FS);
    set_shared(
        1,
        (f::rdgsbase() == W_GS && f::rdfsbase() == W_FS) as u64 + 1,
    );
    // Wait for the revocation without starving the (lower-priority) root task.
    let _ = Cap::<keel_sys::cap::Tcb>::from_cptr(keel_sys::thread::current().tcb).suspend();
    f::wrgsbase(0x1000);
    set_shared(3, 1);
}

fn revoke(env: &mut Env) -> TestResult {
    if !has_fsgsbase(env) {
        return Err(skipped());
    }
    let t = env.create(revoked_thread, 0, CHILD_PRIORITY)?;
    init::FS_GS_BASE_CONTROL
        .set_access(t.tcb, true)
        .or_fail("grant")?;
    t.start().or_fail("start")?;
    let r = (|| {
        ensure!(wait_until(|| shared(1) != 0), "thread did not report");
        ensure!(
            shared(1) == 2,
            "RDGSBASE/RDFSBASE did not return the written bases"
        );
        init::FS_GS_BASE_CONTROL
            .set_access(t.tcb, false)
            .or_fail("revoke")?;
        ensure!(
            wait_until(|| t.tcb.read_registers(false, 0, 1).is_ok() && shared(1) != 0),
            "thread gone"
        );
        pause(5_000_000);
        t.tcb.resume().or_fail("resume")?;
        expect_ud(env)?;
        ensure!(shared(3) == 0, "WRGSBASE ran after revocation");
        Ok(())
    })();
    env.destroy(t)?;
    r
}

/// Checks the thread's bases `rounds` times (spinning so timer interrupts land,
/// yielding every 64 checks); argument bit 0: W thread (uses the instructions),
/// bit 1: N thread with zero bases. Errors go to shared 5, progress to shared 6/7.
fn checker(arg: u64) {
    let w = arg & 1 != 0;
    let zero = arg & 2 != 0;
    if w {
        f::wrfsbase(W_FS);
        f::wrgsbase(W_GS);
    }
    let rounds = shared(4);
    for i in 0..rounds {
        let ok = if w {
            f::rdfsbase() == W_FS && f::rdgsbase() == W_GS && f::selectors() == 0
        } else if zero {
            f::selectors() == 0
        } else {
            f::segment_word(false) == FS_AREA[0] && f::segment_word(true) == GS_AREA[0]
        };
        if !ok {
            set_shared(5, 1 + arg);
        }
        if i % 64 == 0 {
            keel_sys::ipc::yield_now();
        }
        for _ in 0..200 {
            core::hint::spin_loop();
        }
    }
    crate::harness::add_shared(6, 1);
}

fn n_thread(env: &mut Env, zero: bool) -> Result<keel_rt::Thread, Why> {
    let t = env.create(checker, if zero { 2 } else { 0 }, SAME)?;
    if !zero {
        t.tcb
            .set_tls_base(FS_AREA.as_ptr() as u64)
            .or_fail("SetTLSBase")?;
        t.tcb
            .set_gs_base(GS_AREA.as_ptr() as u64)
            .or_fail("SetGSBase")?;
    }
    Ok(t)
}

fn w_thread(env: &mut Env) -> Result<Option<keel_rt::Thread>, Why> {
    let t = env.create(checker, 1, SAME)?;
    if init::FS_GS_BASE_CONTROL.set_access(t.tcb, true).is_err() {
        env.destroy(t)?;
        return Ok(None);
    }
    Ok(Some(t))
}

fn finish(env: &mut Env, threads: &mut [Option<keel_rt::Thread>], n: u64) -> TestResult {
    let mut done = wait_until(|| shared(6) == n);
    // On a loaded host (several multi-CPU guests on two cores) the threads may need
    // longer: give them up to four more limits, and say so.
    for extra in 1..=4 {
        if done {
            break;
        }
        done = wait_until(|| shared(6) == n);
        if done {
            keel_rt::println!("  (threads finished only after {} time limits)", extra + 1);
        }
    }
    // A thread that faulted waits for the suite's handler: say which fault.
    let fault = env
        .fault_ep
        .nb_recv()
        .map(|r| (r.label(), r.mr(0), r.mr(1)));
    if !done {
        // Where the threads are: state words through ReadRegisters.
        for t in threads.iter().flatten() {
            if let Ok(ctx) = t.tcb.read_registers(false, 0, USER_CONTEXT_WORDS) {
                keel_rt::println!(
                    "  (unfinished thread: rip {:#x} rsp {:#x} fs {:#x} gs {:#x})",
                    ctx.rip,
                    ctx.rsp,
                    ctx.fs_base,
                    ctx.gs_base
                );
            }
        }
    }
    for t in threads.iter_mut() {
        if let Some(t) = t.take() {
            env.destroy(t)?;
        }
    }
    ensure!(
        done,
        "threads did not finish ({} of {n}); pending fault (label, MR0, MR1): {fault:?}",
        shared(6)
    );
    ensure!(
        shared(5) == 0,
        "a base changed under thread kind {}",
        shared(5) - 1
    );
    Ok(())
}

fn alternate(env: &mut Env) -> TestResult {
    set_shared(4, 3000);
    let mut threads = [
        w_thread(env)?,
        Some(n_thread(env, false)?),
        w_thread(env)?,
        Some(n_thread(env, true)?),
    ];
    let n = threads.iter().flatten().count() as u64;
    for t in threads.iter().flatten() {
        t.start().or_fail("start")?;
    }
    finish(env, &mut threads, n)
}

fn migration(env: &mut Env) -> TestResult {
    if env.info.num_nodes() < 2 {
        return Err(Why::Skipped("one CPU"));
    }
    set_shared(4, 6000);
    let mut threads = [w_thread(env)?, Some(n_thread(env, false)?)];
    let n = threads.iter().flatten().count() as u64;
    for t in threads.iter().flatten() {
        t.start().or_fail("start")?;
    }
    for k in 0..12 {
        for t in threads.iter().flatten() {
            let _ = t.tcb.set_affinity((k + 1) % 2);
        }
        pause(20_000_000);
    }
    finish(env, &mut threads, n)
}

fn round_trip(env: &mut Env) -> TestResult {
    set_shared(4, 6000);
    let mut threads = [w_thread(env)?, Some(n_thread(env, false)?)];
    let n = threads.iter().flatten().count() as u64;
    for t in threads.iter().flatten() {
        t.start().or_fail("start")?;
    }
    let cpus = env.info.num_nodes();
    for k in 0..8u64 {
        pause(10_000_000);
        for (i, t) in threads.iter().enumerate() {
            let Some(t) = t else { continue };
            let ctx = t
                .tcb
                .read_registers(true, 0, USER_CONTEXT_WORDS)
                .or_fail("read")?;
            if i != 1 && shared(6) == 0 && k > 0 {
                ensure!(
                    ctx.fs_base == W_FS && ctx.gs_base == W_GS,
                    "ReadRegisters: bases {:#x}/{:#x}, not what the thread wrote",
                    ctx.fs_base,
                    ctx.gs_base
                );
            }
            if cpus > 1 {
                let _ = t.tcb.set_affinity(k % 2);
            }
            t.tcb
                .write_registers(true, 0, USER_CONTEXT_WORDS, &ctx)
                .or_fail("write back")?;
        }
    }
    finish(env, &mut threads, n)
}

/// Publishes its FS and GS bases (RDFSBASE, RDGSBASE) in shared words 2 and 7 for ever,
/// counting in word 3.
fn base_watcher(_: u64) {
    loop {
        set_shared(2, f::rdfsbase());
        set_shared(7, f::rdgsbase());
        crate::harness::add_shared(3, 1);
    }
}

/// TCBSetTLSBase and TCBSetGSBase of a thread with the FSGSBASE right that is running
/// on another CPU: it sees the new bases at once, and they stay (the kernel reads such a
/// thread's bases back from the CPU when it enters, which without a stall of that CPU
/// first would put the old ones back).
fn set_bases_elsewhere(env: &mut Env) -> TestResult {
    let cpus = env.info.num_nodes();
    if cpus < 2 {
        return Err(Why::Skipped("one CPU"));
    }
    if !has_fsgsbase(env) {
        return Err(skipped());
    }
    let t = env.create(base_watcher, 0, CHILD_PRIORITY)?;
    let result = (|| {
        init::FS_GS_BASE_CONTROL
            .set_access(t.tcb, true)
            .or_fail("grant the FSGSBASE right")?;
        t.tcb.set_affinity(cpus - 1).or_fail("SetAffinity")?;
        t.start().or_fail("start")?;
        ensure!(
            wait_until(|| shared(3) > 1000),
            "the thread on the other CPU did not run"
        );
        for (round, (fs, gs)) in [(W_FS, W_GS), (0x7000_1000, 0x7000_2000)]
            .into_iter()
            .enumerate()
        {
            t.tcb.set_tls_base(fs).or_fail("SetTLSBase")?;
            t.tcb.set_gs_base(gs).or_fail("SetGSBase")?;
            let seen = shared(3);
            ensure!(
                wait_until(|| shared(3) > seen + 1000 && shared(2) == fs && shared(7) == gs),
                "round {round}: the running thread's bases are {:#x}/{:#x}, not {fs:#x}/{gs:#x}",
                shared(2),
                shared(7)
            );
            // Timer interrupts enter the kernel meanwhile: the bases stay.
            pause(30_000_000);
            ensure!(
                shared(2) == fs && shared(7) == gs,
                "round {round}: the bases went back to {:#x}/{:#x}",
                shared(2),
                shared(7)
            );
        }
        Ok(())
    })();
    env.destroy(t)?;
    result
}

fn fault_thread(arg: u64) {
    if arg == 1 {
        f::wrfsbase(W_FS);
        f::wrgsbase(W_GS);
    }
    probe::ud2();
    let ok = if arg == 1 {
        f::rdfsbase() == W_FS && f::rdgsbase() == W_GS
    } else {
        f::segment_word(false) == FS_AREA[0] && f::segment_word(true) == GS_AREA[0]
    };
    set_shared(0, 1 + ok as u64);
}

fn fault_resume(env: &mut Env) -> TestResult {
    let with_right = has_fsgsbase(env);
    for arg in [0, 1] {
        if arg == 1 && !with_right {
            continue;
        }
        set_shared(0, 0);
        let t = env.create(fault_thread, arg, CHILD_PRIORITY)?;
        if arg == 1 {
            init::FS_GS_BASE_CONTROL
                .set_access(t.tcb, true)
                .or_fail("grant")?;
        } else {
            t.tcb.set_tls_base(FS_AREA.as_ptr() as u64).or_fail("TLS")?;
            t.tcb.set_gs_base(GS_AREA.as_ptr() as u64).or_fail("GS")?;
        }
        t.start().or_fail("start")?;
        let r = (|| {
            let ip = expect_ud(env)?;
            keel_sys::ipc::reply(&Message::new(0).words(&[ip + probe::UD2_LENGTH]));
            ensure!(wait_until(|| shared(0) != 0), "not resumed");
            ensure!(
                shared(0) == 2,
                "bases changed across fault (thread kind {arg})"
            );
            Ok(())
        })();
        env.destroy(t)?;
        r?;
    }
    Ok(())
}

/// Fibers of the TLS test.
const FIBERS: usize = 16;

/// 16 fibers, each with its own TLS value, yield 200 times each checking it.
fn fibers() -> TestResult {
    let mode = keel_rt::fiber::setup(init::TCB, init::FS_GS_BASE_CONTROL);
    fn body(id: u64) {
        f::tls_set(0, id * 1_000_000);
        for k in 0..200 {
            if f::tls_get(0) != id * 1_000_000 + k || f::current() != Some(id as usize) {
                set_shared(5, 1);
            }
            f::tls_set(0, id * 1_000_000 + k + 1);
            f::yield_now();
        }
        crate::harness::add_shared(6, f::tls_get(0));
    }
    let mut ids = [0; FIBERS];
    for (i, id) in ids.iter_mut().enumerate() {
        *id = f::spawn(body, i as u64).ok_or_else(|| crate::harness::why(format_args!("spawn")))?;
        ensure!(*id == i, "fiber id {id} for the {i}th spawn");
    }
    f::run();
    let switches = f::switches();
    let _ = init::FS_GS_BASE_CONTROL.set_access(init::TCB, false);
    let n = FIBERS as u64;
    ensure!(shared(5) == 0, "a fiber saw another's TLS ({mode:?})");
    let expected = (0..n).map(|i| i * 1_000_000 + 200).sum::<u64>();
    ensure!(
        shared(6) == expected,
        "sum {} expected {expected}",
        shared(6)
    );
    ensure!(switches >= 200 * n, "only {switches} switches");
    Ok(())
}

/// Rounds the token makes around the ring of every fiber.
const RING_ROUNDS: u64 = 3;
static RING: [keel_rt::fiber::Channel; f::MAX_FIBERS] =
    [const { keel_rt::fiber::Channel::new() }; f::MAX_FIBERS];

/// Every fiber slot in a ring: fiber i takes the token from channel i and passes it,
/// plus one, to channel i + 1, `RING_ROUNDS` times, checking its TLS word each time.
fn fiber_ring() -> TestResult {
    static STACKS: [keel_rt::fiber::FiberStackChunk; keel_rt::fiber::chunks_for(f::MAX_FIBERS)] =
        [const { keel_rt::fiber::FiberStackChunk::new() };
            keel_rt::fiber::chunks_for(f::MAX_FIBERS)];
    let mode =
        keel_rt::fiber::setup_with_stacks(init::TCB, init::FS_GS_BASE_CONTROL, Some(&STACKS));
    fn body(i: u64) {
        let n = f::MAX_FIBERS as u64;
        f::tls_set(2, i ^ 0x5a5a_0000);
        for _ in 0..RING_ROUNDS {
            let token = RING[i as usize].recv();
            if f::tls_get(2) != i ^ 0x5a5a_0000 || f::current() != Some(i as usize) {
                set_shared(5, 1);
            }
            RING[((i + 1) % n) as usize].send(token + 1);
        }
    }
    for i in 0..f::MAX_FIBERS {
        let id = f::spawn(body, i as u64)
            .ok_or_else(|| crate::harness::why(format_args!("spawn {i}")))?;
        ensure!(id == i, "fiber id {id} for the {i}th spawn");
    }
    ensure!(f::spawn(body, 0).is_none(), "a fiber beyond MAX_FIBERS");
    RING[0].send(0);
    f::run();
    let switches = f::switches();
    let _ = init::FS_GS_BASE_CONTROL.set_access(init::TCB, false);
    let n = f::MAX_FIBERS as u64;
    ensure!(shared(5) == 0, "a fiber saw another's TLS ({mode:?})");
    let token = RING[0].try_recv();
    ensure!(
        token == Some(n * RING_ROUNDS),
        "token {token:?}, expected {} after {switches} switches",
        n * RING_ROUNDS
    );
    keel_rt::println!("  ({n} fibers, {switches} switches, {mode:?})");
    Ok(())
}

const CLIENTS: usize = 4;
const CALLS: u64 = 25;
static CLIENT_EPS: [core::sync::atomic::AtomicU64; CLIENTS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; CLIENTS];

fn client(i: u64) {
    let ep = Cap::<Endpoint>::from_cptr(
        CLIENT_EPS[i as usize].load(core::sync::atomic::Ordering::SeqCst),
    );
    for v in 0..CALLS {
        let r = ep.call(&Message::new(0).word(v));
        if r.mr(0) != v * 2 + i {
            set_shared(5, 1);
        }
    }
    crate::harness::add_shared(6, 1);
}

fn serve(i: u64) {
    let ep = Cap::<Endpoint>::from_cptr(
        CLIENT_EPS[i as usize].load(core::sync::atomic::Ordering::SeqCst),
    );
    f::tls_set(1, i);
    for _ in 0..CALLS {
        let m = keel_rt::fiber::recv(ep);
        if f::tls_get(1) != i {
            set_shared(5, 2);
        }
        keel_sys::ipc::reply(&Message::new(0).word(m.mr(0) * 2 + i));
    }
}

fn fiber_server(env: &mut Env) -> TestResult {
    for ep in CLIENT_EPS.iter() {
        ep.store(env.endpoint()?.cptr(), core::sync::atomic::Ordering::SeqCst);
    }
    keel_rt::fiber::setup(init::TCB, init::FS_GS_BASE_CONTROL);
    let mut threads = [const { None }; CLIENTS];
    for (i, t) in threads.iter_mut().enumerate() {
        f::spawn(serve, i as u64);
        *t = Some(env.spawn(client, i as u64, CHILD_PRIORITY)?);
    }
    f::run();
    let _ = init::FS_GS_BASE_CONTROL.set_access(init::TCB, false);
    let done = wait_until(|| shared(6) == CLIENTS as u64);
    for t in threads.iter_mut() {
        if let Some(t) = t.take() {
            env.destroy(t)?;
        }
    }
    ensure!(done, "clients finished: {}", shared(6));
    ensure!(shared(5) == 0, "wrong answer or TLS bleed ({})", shared(5));
    Ok(())
}
