//! In-kernel tests of the trusted entry core (issue 4): the paranoid IST entry with a
//! foreign GS base, kernel restartable sequences (table, injection at every
//! instruction boundary, NMI stress), a stray kernel single step, the patched entry
//! switches, and the stack-overflow diagnosis (only with `keel.test_stack_overflow`,
//! which ends the boot on purpose; see tests/on_target.rs).

use keel_hal as hal;
use keel_hal::percpu::Event;
use keel_kern::check;
use keel_kern::testing::Outcome;

fn paranoid_nmi_user_gs() -> Outcome {
    // Values a user may hold in its GS base: 0, small, above 4 GiB (positive), and
    // kernel-looking negative ones, which only the RDGSBASE method can tell apart. The
    // decoy (a copy of this CPU's area) comes before 0xffff_8000_0000_0000: an entry
    // that trusts the sign survives the decoy and this test fails on its counts, where
    // the direct-map address would crash or hang it (keel.unsafe.paranoid).
    let fsgsbase = hal::cpu::features().fsgsbase;
    let decoy = hal::trap::decoy_gs_base();
    check!(
        (decoy as i64) < 0,
        "decoy GS base {decoy:#x} is not kernel-looking"
    );
    for foreign in [0u64, 1, 1 << 33, decoy, 0xffff_8000_0000_0000] {
        if (foreign as i64) < 0 && !fsgsbase {
            // Without FSGSBASE no thread can hold a negative base (prepare_thread).
            continue;
        }
        let (nmis, seen) = hal::trap::nmi_in_foreign_gs_window(foreign);
        check!(
            nmis == 1,
            "GS base {foreign:#x}: {nmis} NMIs counted in the window"
        );
        check!(
            seen == 1,
            "GS base {foreign:#x}: paranoid entry saw a foreign base {seen} times"
        );
    }
    Outcome::Passed
}
hal::kernel_test!(
    paranoid_nmi_with_user_gs_base_in_kernel_mode,
    paranoid_nmi_user_gs
);

fn rseq_table() -> Outcome {
    let table = hal::rseq::table();
    let (sorted, len) = hal::rseq::section_sorted();
    check!(
        len >= 3 && table.len() == len,
        "{len} sequences in the section"
    );
    check!(
        table.windows(2).all(|w| w[0].end <= w[1].start),
        "table not sorted and disjoint"
    );
    if !sorted {
        log::info!("rseq: linker section was not in address order (sorted at boot)");
    }
    for d in table {
        check!(
            hal::rseq::restart_address(d.start) == Some(d.restart)
                && hal::rseq::restart_address(d.end - 1) == Some(d.restart)
                && hal::rseq::restart_address(d.end)
                    .is_none_or(|_| table.iter().any(|e| e.start == d.end)),
            "lookup of {d:x?}"
        );
    }
    Outcome::Passed
}
hal::kernel_test!(rseq_table_sorted_and_looked_up, rseq_table);

fn rseq_injection() -> Outcome {
    // Steps: after the NOP (RIP = start), after the load, after the add, after the
    // committing store (RIP = end), then the three instructions that clear TF.
    let mut inside = 0;
    let mut k = 1;
    loop {
        let before = hal::percpu::event_count(Event::Test);
        let inj = hal::rseq::inject_at(k, Event::Test);
        let after = hal::percpu::event_count(Event::Test);
        if inj.steps < k {
            break;
        }
        check!(
            after == before + 2,
            "interruption at step {k} (RIP {:#x}): counter moved by {}, expected 2",
            inj.injected_rip,
            after - before
        );
        let within = hal::rseq::restart_address(inj.injected_rip).is_some();
        let start = within
            && hal::rseq::table()
                .iter()
                .any(|d| d.start == inj.injected_rip);
        if within && !start {
            inside += 1;
            check!(
                inj.restarted,
                "step {k}: inside the sequence but not restarted"
            );
        }
        k += 1;
        check!(k < 32, "single stepping did not end");
    }
    check!(
        inside == 2,
        "{inside} interruptions strictly inside the 3-instruction sequence, expected 2"
    );
    Outcome::Passed
}
hal::kernel_test!(
    rseq_interrupt_at_every_instruction_boundary_is_exact,
    rseq_injection
);

fn bump_test_counter() {
    hal::rseq::count_event(Event::Test);
}

fn rseq_nmi_stress() -> Outcome {
    let me = hal::percpu::current().apic_id;
    hal::trap::set_nmi_hook(Some(bump_test_counter));
    let test0 = hal::percpu::event_count(Event::Test);
    let nmi0 = hal::percpu::event_count(Event::Nmi);
    const N: u64 = 20_000;
    for i in 0..N {
        hal::rseq::count_event(Event::Test);
        hal::rseq::trace(Event::Test, i);
        if i % 64 == 0 {
            hal::apic::send_nmi(me);
        }
    }
    for _ in 0..10_000 {
        core::hint::spin_loop();
    }
    hal::trap::set_nmi_hook(None);
    let nmis = hal::percpu::event_count(Event::Nmi) - nmi0;
    let tests = hal::percpu::event_count(Event::Test) - test0;
    check!(nmis > 0, "no NMI arrived");
    check!(
        tests == N + nmis,
        "counter moved by {tests}, expected {N} + {nmis} NMIs"
    );
    let mut tail = [hal::percpu::TraceEntry::default(); 8];
    let n = hal::percpu::trace_tail(&mut tail);
    check!(n == 8, "trace ring holds {n}");
    check!(
        tail.iter()
            .any(|e| e.event == Event::Test as u64 && e.argument == N - 1),
        "last trace entry missing: {tail:x?}"
    );
    Outcome::Passed
}
hal::kernel_test!(
    rseq_counters_and_trace_exact_under_nmi_load,
    rseq_nmi_stress
);

fn stray_kernel_single_step() -> Outcome {
    let dropped = hal::trap::kernel_single_step();
    check!(
        dropped == 1,
        "{dropped} kernel #DB traps dropped, expected 1"
    );
    Outcome::Passed
}
hal::kernel_test!(
    debug_trap_in_kernel_mode_is_dropped,
    stray_kernel_single_step
);

fn idle_debug_registers() -> Outcome {
    check!(
        hal::debug::dr7() & 0xff == 0,
        "DR7 {:#x} has breakpoints enabled while no thread runs",
        hal::debug::dr7()
    );
    Outcome::Passed
}
hal::kernel_test!(debug_registers_clear_at_boot, idle_debug_registers);

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 32]);
    if depth == 0 {
        return frame[0];
    }
    recurse(core::hint::black_box(depth - 1)) + frame[1]
}

fn stack_overflow() -> Outcome {
    if !keel_kern::cmdline::flag(super::cmdline(), "keel.test_stack_overflow") {
        return Outcome::Skipped("needs keel.test_stack_overflow (ends the boot)");
    }
    log::info!("overflowing the kernel stack on purpose");
    let r = recurse(u64::MAX / 2);
    check!(false, "recursion returned {r}");
    Outcome::Passed
}
hal::kernel_test!(
    stack_overflow_is_diagnosed_on_the_double_fault_stack,
    stack_overflow
);

fn exception_entry_clears_ac() -> Outcome {
    let Some(caught) = hal::trap::probe::breakpoint_with_ac_set() else {
        return Outcome::Skipped("no SMAP");
    };
    check!(caught.vector == 3, "caught vector {}", caught.vector);
    check!(
        caught.handler_rflags & (1 << 18) == 0,
        "the exception handler ran with RFLAGS.AC set ({:#x}): SMAP suspended",
        caught.handler_rflags
    );
    Outcome::Passed
}
hal::kernel_test!(exception_entry_clears_rflags_ac, exception_entry_clears_ac);

fn deferred_interrupts() -> Outcome {
    let wake = hal::trap::WAKE_VECTOR as u64;
    // Whatever waits now (a timer tick) is let in and dropped.
    hal::cpu::preemption_window();
    while hal::rseq::take_deferred_interrupt().is_some() {}
    // A self-IPI sent with interrupts disabled arrives in the window and is deferred,
    // not handled (the handler would need the big kernel lock).
    hal::apic::send_ipi(hal::apic::id(), hal::trap::WAKE_VECTOR);
    let mut deferred = false;
    for _ in 0..1000 {
        if hal::cpu::preemption_window() {
            deferred = true;
            break;
        }
    }
    check!(
        deferred,
        "the self-IPI was not deferred by a preemption window"
    );
    let mut saw_wake = false;
    while let Some(v) = hal::rseq::take_deferred_interrupt() {
        saw_wake |= v == wake;
    }
    check!(saw_wake, "vector {wake:#x} was not among the deferred ones");
    // Vectors come back lowest first, each once.
    hal::rseq::defer_interrupt(200);
    hal::rseq::defer_interrupt(40);
    hal::rseq::defer_interrupt(200);
    let taken = [
        hal::rseq::take_deferred_interrupt(),
        hal::rseq::take_deferred_interrupt(),
        hal::rseq::take_deferred_interrupt(),
    ];
    check!(
        taken == [Some(40), Some(200), None],
        "deferred 200, 40, 200; took {taken:?}"
    );
    Outcome::Passed
}
hal::kernel_test!(
    preemption_window_defers_interrupts_to_the_bitmap,
    deferred_interrupts
);
