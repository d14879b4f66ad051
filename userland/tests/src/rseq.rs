//! User restartable sequences (issue 5, `keel_sys::rseq`, `keel_rt::percpu`).
//!
//! The injection test stops a thread with an instruction breakpoint at each boundary
//! of `percpu_add`'s critical section (and at the first instruction after it), adds
//! 1000 to the same per-CPU slot while the thread is stopped — what another thread on
//! that CPU could do — and resumes it. With the kernel's fix-up the sequence restarts
//! and the total is exact; without it (`keel.unsafe.user_rseq`) the thread commits a
//! stale value or is never restarted, and the test fails. Under TCG interrupts arrive
//! only between translated blocks, never inside the five-instruction section, so only
//! injection exercises every boundary; the stress tests check exactness and CPU
//! numbers under preemption and migration.

use core::sync::atomic::Ordering;

use keel_abi::error::Error as Code;
use keel_abi::fault::{BreakpointAccess, BreakpointType, FaultType, debug_exception};
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::rseq::RUNTIME_AREA_OFFSET;
use keel_rt::percpu::{self, Counter};
use keel_sys::cap::{Cap, Notification, init};
use keel_sys::invocations::{Args, invoke};
use keel_sys::{Error, rseq};

use crate::harness::{
    Env, OrFail, Suite, TestResult, add_shared, expect_code, expect_err, pause, recv_timeout,
    set_shared, shared, wait_until,
};
use crate::{CHILD_PRIORITY, ensure, fail};

/// Runs the tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("user_rseq_registration_checks_and_cpu_id", || {
        registration(env)
    });
    suite.run("user_rseq_abort_at_every_instruction_boundary", || {
        injection(env)
    });
    suite.run("user_rseq_percpu_counter_exact_under_migration", || {
        migration(env)
    });
    suite.run("user_rseq_index_pool_never_hands_out_twice", || pool(env));
}

fn registration(env: &mut Env) -> TestResult {
    let t = env.create(|_| {}, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let page = t.ipc_buffer & !0xfff;
        expect_err(
            t.tcb.set_rseq(page + RUNTIME_AREA_OFFSET + 8),
            Error::AlignmentError,
            "misaligned area",
        )?;
        expect_code(
            t.tcb.set_rseq(page + 0x1000),
            Code::InvalidArgument,
            "area outside the IPC buffer's frame",
        )?;
        t.tcb
            .set_rseq(page + RUNTIME_AREA_OFFSET)
            .or_fail("SetRseq")?;
        t.tcb.set_rseq(0).or_fail("unregister")
    })();
    env.destroy(t)?;
    result?;
    // The calling thread: registered on first use, its CPU number follows SetAffinity.
    let start = percpu::current_cpu();
    ensure!(start == 0, "root task registered on CPU {start}, not 0");
    if env.info.num_nodes() > 1 {
        init::TCB.set_affinity(1).or_fail("affinity 1")?;
        let moved = rseq::cpu_id();
        init::TCB.set_affinity(0).or_fail("affinity 0")?;
        ensure!(moved == 1, "after moving to CPU 1 the area says {moved}");
        ensure!(rseq::cpu_id() == 0, "back on CPU 0: {}", rseq::cpu_id());
    }
    Ok(())
}

static INJECTED: Counter = Counter::new();

/// The injection worker: registers, then one `percpu_add` per signal on `go` (its
/// argument); shared(3) = its CPU, shared(4) = 1 once registered, shared(2) = the
/// aborts of the last add, shared(0) counts finished adds.
fn injection_worker(go: u64) {
    percpu::ensure_registered();
    set_shared(3, rseq::cpu_id() as u64);
    set_shared(4, 1);
    let go = Cap::<Notification>::from_cptr(go);
    loop {
        go.wait();
        if shared(1) != 0 {
            return;
        }
        set_shared(2, rseq::percpu_add(INJECTED.slots(), 1));
        add_shared(0, 1);
    }
}

fn set_instruction_breakpoint(t: &keel_rt::Thread, address: u64) -> TestResult {
    let mut args = Args::new();
    for w in [
        0,
        address,
        BreakpointType::Instruction as u64,
        0,
        BreakpointAccess::Read as u64,
    ] {
        args.word(w);
    }
    invoke(t.tcb.cptr(), L::TcbSetBreakpoint, &args).or_fail("SetBreakpoint")?;
    Ok(())
}

fn unset_breakpoint(t: &keel_rt::Thread) -> TestResult {
    let mut args = Args::new();
    args.word(0);
    invoke(t.tcb.cptr(), L::TcbUnsetBreakpoint, &args).or_fail("UnsetBreakpoint")?;
    Ok(())
}

fn injection(env: &mut Env) -> TestResult {
    let go = env.notification()?;
    let t = env.spawn(injection_worker, go.cptr(), CHILD_PRIORITY)?;
    let result = (|| {
        ensure!(wait_until(|| shared(4) != 0), "worker did not register");
        let cpu = shared(3) as usize;
        let boundaries = rseq::percpu_add_boundaries();
        // Every boundary is tried; the failures are listed together (bit k: boundary k).
        let (mut stale, mut wrong_aborts) = (0u32, 0u32);
        for (k, &at) in boundaries.iter().enumerate() {
            let inside = k + 1 < boundaries.len();
            set_instruction_breakpoint(&t, at)?;
            let before = INJECTED.total();
            go.signal();
            let Some(r) = recv_timeout(env.fault_ep) else {
                fail!("boundary {k}: no breakpoint fault");
            };
            ensure!(
                FaultType::from_u64(r.label()) == Some(FaultType::DebugException)
                    && r.mr(debug_exception::FAULT_IP) == at,
                "boundary {k}: fault label {} at {:#x}, expected a breakpoint at {at:#x}",
                r.label(),
                r.mr(debug_exception::FAULT_IP)
            );
            // Another thread of this CPU updates the slot while the worker is stopped.
            INJECTED.slot(cpu).fetch_add(1000, Ordering::Relaxed);
            unset_breakpoint(&t)?;
            keel_sys::ipc::reply(&keel_sys::Message::new(0));
            let done = k as u64 + 1;
            ensure!(
                wait_until(|| shared(0) >= done),
                "boundary {k}: the add did not finish"
            );
            let (aborts, total) = (shared(2), INJECTED.total());
            if total != before + 1001 {
                stale |= 1 << k;
            }
            if aborts != inside as u64 {
                wrong_aborts |= 1 << k;
            }
        }
        ensure!(
            stale == 0 && wrong_aborts == 0,
            "of boundaries 0..=5 (5 = after the commit): lost the concurrent update at \
             {stale:#08b}, wrong abort count (1 inside, 0 after) at {wrong_aborts:#08b}"
        );
        Ok(())
    })();
    set_shared(1, 1);
    go.signal();
    pause(1_000_000);
    env.destroy(t)?;
    result
}

static STRESS: Counter = Counter::new();
/// Migration rounds the test makes while the workers add.
const MIGRATION_ROUNDS: u64 = 200;

/// Stress worker: adds 1 until shared(7) is set, counting its adds into shared(8 + i)
/// and checking the CPU number each time (shared(5) counts bad ones).
fn stress_worker(i: u64) {
    let mut adds = 0;
    let mut aborts = 0;
    while shared(7) == 0 {
        aborts += STRESS.add(1);
        adds += 1;
        set_shared(12, 1);
        if rseq::cpu_id() as usize >= keel_sys::rseq::MAX_CPUS {
            add_shared(5, 1);
        }
    }
    set_shared(8 + i as usize, adds);
    add_shared(6, aborts);
    add_shared(0, 1);
}

/// Runs four `worker` threads (argument: their number) while this thread moves them
/// between the CPUs `MIGRATION_ROUNDS` times each (a few rounds of round robin with
/// one CPU), then sets shared(7) and waits for them (each counts itself in shared(0)
/// when it stops; shared(12) says one made progress). Returns the migrations made.
fn run_migrating(env: &mut Env, worker: fn(u64)) -> Result<u64, crate::harness::Why> {
    let cpus = env.info.num_nodes();
    let mut threads = [const { None }; 4];
    for (i, slot) in threads.iter_mut().enumerate() {
        // With several CPUs, below the test's priority: the moves do not wait for the
        // workers, and workers moved to the test's CPU wait there until moved away
        // again. With one, at its priority (round robin).
        let priority = crate::ROOT_PRIORITY as u8 - (cpus > 1) as u8;
        *slot = Some(env.spawn(worker, i as u64, priority)?);
    }
    let mut moves = 0u64;
    let rounds = if cpus > 1 { MIGRATION_ROUNDS } else { 3 };
    for _ in 0..rounds {
        if cpus > 1 {
            for t in threads.iter().flatten() {
                let _ = t.tcb.set_affinity(moves % cpus);
                moves += 1;
            }
        }
        pause(200_000);
    }
    // On a loaded host the workers may not have run yet: wait until one has.
    wait_until(|| shared(12) != 0);
    set_shared(7, 1);
    for t in threads.iter().flatten() {
        // Away from this CPU, where they could not run while this thread waits.
        let _ = t.tcb.set_affinity(cpus - 1);
    }
    let finished = wait_until(|| shared(0) >= 4);
    for t in threads.iter_mut() {
        if let Some(t) = t.take() {
            env.destroy(t)?;
        }
    }
    ensure!(finished, "{} of 4 workers finished", shared(0));
    Ok(moves)
}

fn migration(env: &mut Env) -> TestResult {
    let cpus = env.info.num_nodes();
    let before = STRESS.total();
    let moves = run_migrating(env, stress_worker)?;
    let adds: u64 = (8..12).map(shared).sum();
    let total = STRESS.total() - before;
    ensure!(
        adds > 0 && total == adds,
        "per-CPU total {total}, the workers made {adds} adds"
    );
    ensure!(shared(5) == 0, "{} bad CPU numbers", shared(5));
    keel_rt::println!(
        "  ({adds} adds, {moves} migrations over {cpus} CPUs, {} aborts)",
        shared(6)
    );
    Ok(())
}

const POOL_SIZE: usize = 64;
static POOL: keel_rt::percpu::IndexPool<POOL_SIZE> = keel_rt::percpu::IndexPool::new();
/// Who holds each index (worker number + 1, 0 = nobody).
static OWNERS: [core::sync::atomic::AtomicU64; POOL_SIZE] =
    [const { core::sync::atomic::AtomicU64::new(0) }; POOL_SIZE];

/// Pool worker `w`: until shared(7), takes up to 6 indices, marks them its own, checks
/// and frees them; shared(5) counts an index handed out while someone held it or a
/// mark that changed under its holder, shared(8 + w) its allocations.
fn pool_worker(w: u64) {
    let me = w + 1;
    let mut held = [usize::MAX; 6];
    let mut allocations = 0;
    while shared(7) == 0 {
        for h in held.iter_mut() {
            if let Some(i) = POOL.alloc() {
                if OWNERS[i].swap(me, Ordering::Relaxed) != 0 {
                    add_shared(5, 1);
                }
                *h = i;
                allocations += 1;
            }
        }
        for h in held.iter_mut() {
            if *h != usize::MAX {
                if OWNERS[*h].swap(0, Ordering::Relaxed) != me {
                    add_shared(5, 1);
                }
                POOL.free(*h);
                *h = usize::MAX;
            }
        }
        set_shared(12, 1);
    }
    set_shared(8 + w as usize, allocations);
    add_shared(0, 1);
}

fn pool(env: &mut Env) -> TestResult {
    let cpus = env.info.num_nodes();
    let moves = run_migrating(env, pool_worker)?;
    let allocations: u64 = (8..12).map(shared).sum();
    ensure!(shared(5) == 0, "{} indices handed out twice", shared(5));
    ensure!(allocations > 0, "no allocations");
    ensure!(
        POOL.free_count() == POOL_SIZE,
        "{} of {POOL_SIZE} indices free after the workers stopped",
        POOL.free_count()
    );
    keel_rt::println!("  ({allocations} allocations, {moves} migrations over {cpus} CPUs)");
    Ok(())
}
