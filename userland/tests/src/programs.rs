//! Server programs loaded from their boot modules, as init loads them
//! (`keel_servers::loader`), with the `probe` program: a loaded server's text is
//! mapped read-only and is its own (writing it faults; the suite, linked at the same
//! addresses, keeps running), it cannot retype more than what is left of its memory
//! budget, its stack overflows into an unmapped guard page, and revoking the budget
//! returns all of it (50 load–fault–revoke rounds fit in one budget).

use keel_abi::fault::{FaultType, vm_fault};
use keel_rt::elf::Executable;
use keel_servers::cspace::slot;
use keel_servers::loader::{self, Budget, Loaded, Start};
use keel_sys::cap::{Cap, Endpoint, init};
use keel_sys::{CapRights, probe};

use crate::harness::{Env, FAULT_BADGE, OrFail, Suite, TestResult, recv_timeout};
use crate::{CHILD_PRIORITY, ensure, fail};

/// The probe program's modes (see `userland/programs/probe`).
const WRITE_TEXT: u64 = 1;
const USE_BUDGET: u64 = 2;
const OVERFLOW_STACK: u64 = 3;
/// log2 of the budget the tests give the probe.
const BUDGET_BITS: u32 = 20;

/// Runs the program tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("loaded_server_text_is_read_only_and_its_own", || {
        text_read_only(env)
    });
    suite.run("loaded_server_cannot_retype_beyond_its_budget", || {
        budget_enforced(env)
    });
    suite.run("loaded_server_stack_overflow_hits_a_guard_page", || {
        stack_guard(env)
    });
    suite.run("revoking_a_budget_returns_it_50_restarts", || {
        restarts_return_memory(env)
    });
}

/// What a test needs to load the probe: its image, a budget, the copy window and an
/// endpoint for its reports.
struct Bench {
    image: &'static [u8],
    budget: Budget,
    window: u64,
    report: Cap<Endpoint>,
}

fn bench(env: &mut Env) -> Result<Bench, crate::harness::Why> {
    let Some(image) = env.info.module("probe") else {
        fail!("no boot module 'probe' (the runner puts every program on the ISO)");
    };
    let pages = Executable::parse(image).or_fail("probe image")?.pages();
    let first = env
        .alloc
        .slots
        .alloc_range(pages + 32)
        .or_fail("budget slots")?;
    let untyped = env
        .alloc
        .untyped(BUDGET_BITS as u64)
        .or_fail("budget untyped")?;
    let window = env.alloc.scratch_range(0x1000, 0x1000);
    env.alloc
        .ensure_tables(init::VSPACE, window, 1)
        .or_fail("window tables")?;
    let report = env.alloc.create::<Endpoint>().or_fail("report endpoint")?;
    Ok(Bench {
        image,
        budget: Budget {
            untyped,
            bits: BUDGET_BITS,
            slots: first..first + pages + 32,
        },
        window,
        report,
    })
}

/// Loads the probe in `mode`, gives it the suite's fault endpoint and the report
/// endpoint, and starts it.
fn start_probe(env: &Env, bench: &Bench, mode: u64) -> Result<Loaded, crate::harness::Why> {
    let start = Start {
        priority: CHILD_PRIORITY,
        cpu: 0,
        free_slots: 2,
        argument: mode,
        second: 0,
    };
    let loaded = match loader::load(bench.image, &bench.budget, bench.window, start) {
        Ok(loaded) => loaded,
        Err(e) => fail!("loading the probe: {e:?}"),
    };
    loaded
        .space
        .copy(slot::FAULT, env.fault_ep_badged, CapRights::ALL)
        .or_fail("fault endpoint")?;
    loaded
        .space
        .copy(slot::SERVE, bench.report, CapRights::ALL)
        .or_fail("report endpoint")?;
    loaded.tcb.resume().or_fail("resume")?;
    Ok(loaded)
}

/// Waits for the probe's fault; returns (label, address word).
fn probe_fault(env: &Env) -> Result<(u64, u64), crate::harness::Why> {
    let Some(fault) = recv_timeout(env.fault_ep) else {
        fail!("the probe did not fault");
    };
    ensure!(fault.badge == FAULT_BADGE, "fault badge {:#x}", fault.badge);
    Ok((fault.label(), fault.mr(vm_fault::ADDR)))
}

fn text_read_only(env: &mut Env) -> TestResult {
    let bench = bench(env)?;
    let exe = Executable::parse(bench.image).or_fail("probe image")?;
    let own_before = probe::read_u64(probe::own_text_address());
    let _loaded = start_probe(env, &bench, WRITE_TEXT)?;
    let (label, address) = probe_fault(env)?;
    ensure!(
        bench.report.nb_recv().is_none(),
        "the probe wrote its own text"
    );
    ensure!(
        label == FaultType::VmFault as u64,
        "fault label {label}, not a VM fault"
    );
    let in_text = exe
        .segments()
        .iter()
        .any(|s| s.executable && (s.vaddr..s.vaddr + s.mem_size).contains(&address));
    ensure!(
        in_text,
        "fault address {address:#x} not in the probe's text"
    );
    // The suite is linked at the same addresses: its own text there is untouched and
    // it runs on.
    ensure!(
        probe::read_u64(probe::own_text_address()) == own_before,
        "the suite's text changed"
    );
    loader::unload(&bench.budget).or_fail("unload")?;
    Ok(())
}

fn budget_enforced(env: &mut Env) -> TestResult {
    let bench = bench(env)?;
    let loaded = start_probe(env, &bench, USE_BUDGET)?;
    let Some(report) = recv_timeout(bench.report) else {
        fail!("no report from the probe");
    };
    let [got, refused] = report.words::<2>();
    ensure!(
        loaded.spare_bits > 0 && loaded.spare_bits < BUDGET_BITS,
        "spare untyped of 2^{} bytes",
        loaded.spare_bits
    );
    ensure!(
        got == loaded.spare_bits as u64,
        "the probe retyped an untyped of 2^{got} bytes from a spare of 2^{}",
        loaded.spare_bits
    );
    ensure!(refused == 1, "a frame beyond the budget was made");
    ensure!(
        loaded.used + (1 << loaded.spare_bits) <= 1 << BUDGET_BITS,
        "used {} + spare exceed the budget",
        loaded.used
    );
    let (label, _) = probe_fault(env)?;
    ensure!(
        label == FaultType::UserException as u64,
        "fault label {label}"
    );
    loader::unload(&bench.budget).or_fail("unload")?;
    Ok(())
}

fn stack_guard(env: &mut Env) -> TestResult {
    use keel_servers::program::{STACK_BASE, STACK_PAGES, STACK_TOP};
    let bench = bench(env)?;
    let _loaded = start_probe(env, &bench, OVERFLOW_STACK)?;
    let (label, address) = probe_fault(env)?;
    ensure!(
        bench.report.nb_recv().is_none(),
        "the probe's recursion ended"
    );
    ensure!(
        label == FaultType::VmFault as u64,
        "fault label {label}, not a VM fault"
    );
    let guard = STACK_BASE + 0x1000..STACK_TOP - STACK_PAGES * 0x1000;
    ensure!(
        guard.contains(&address),
        "fault address {address:#x} not in the guard pages {guard:#x?}"
    );
    loader::unload(&bench.budget).or_fail("unload")?;
    Ok(())
}

fn restarts_return_memory(env: &mut Env) -> TestResult {
    let bench = bench(env)?;
    let free = env.alloc.untyped.free_bytes();
    for round in 0..50 {
        let loaded = start_probe(env, &bench, 0)?;
        ensure!(
            loaded.used > (1 << BUDGET_BITS) / 4,
            "round {round}: the probe took only {} bytes",
            loaded.used
        );
        let (label, _) = probe_fault(env)?;
        ensure!(
            label == FaultType::UserException as u64,
            "round {round}: fault label {label}"
        );
        loader::unload(&bench.budget).or_fail("unload")?;
    }
    ensure!(
        env.alloc.untyped.free_bytes() == free,
        "the suite's own memory changed"
    );
    Ok(())
}
