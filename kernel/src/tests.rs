//! In-kernel tests of the boot foundation, run by the test image (`keel.test`).
//!
//! Each checks a real outcome on the target: exceptions raised and handled, allocator
//! accounting, ACPI against what QEMU was told (`keel.smp=N` from the runner), timer
//! interrupts on every CPU, page-table rights.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use keel_hal as hal;
use keel_hal::boot::{BootInfo, MemoryKind};
use keel_kern::check;
use keel_kern::testing::Outcome;
use spin::Once;

#[path = "entry_tests.rs"]
mod entry_tests;

static BOOT: Once<&'static BootInfo> = Once::new();

/// The kernel command line (for tests that need a flag).
pub fn cmdline() -> &'static str {
    boot().cmdline.as_str()
}

/// Name of the test that fails on purpose (only with `keel.test_fail`).
pub const FAILING_TEST: &str = "harness_fails_on_request";

pub fn remember_boot_info(boot: &'static BootInfo) {
    BOOT.call_once(|| boot);
}

fn boot() -> &'static BootInfo {
    BOOT.get().expect("boot info")
}

/// The verdict on the root task: it must have exited with `expected`.
pub fn root_task_outcome(exit: Option<u64>, expected: u64) -> Outcome {
    check!(exit.is_some(), "the root task did not run");
    check!(
        exit == Some(expected),
        "root task ended with {:?}, expected exit {expected:#x}",
        exit
    );
    Outcome::Passed
}

fn invalid_opcode() -> Outcome {
    let caught = hal::trap::probe::invalid_opcode();
    check!(caught.is_some_and(|c| c.vector == 6), "UD2 gave {caught:?}");
    Outcome::Passed
}
hal::kernel_test!(exception_invalid_opcode_is_caught, invalid_opcode);

fn breakpoint() -> Outcome {
    let caught = hal::trap::probe::breakpoint();
    check!(
        caught.is_some_and(|c| c.vector == 3),
        "INT3 gave {caught:?}"
    );
    Outcome::Passed
}
hal::kernel_test!(exception_breakpoint_is_caught, breakpoint);

fn page_fault_not_present() -> Outcome {
    let guard = hal::boot::boot_stack_guard();
    let caught = hal::trap::probe::read(guard + 8);
    check!(
        caught.is_some(),
        "reading the boot stack guard page did not fault"
    );
    let c = caught.unwrap();
    check!(c.vector == 14 && c.address == guard + 8, "got {c:?}");
    check!(
        c.error_code & 1 == 0 && c.error_code & 2 == 0,
        "error code {:#x} is not a not-present read",
        c.error_code
    );
    Outcome::Passed
}
hal::kernel_test!(exception_page_fault_not_present, page_fault_not_present);

fn page_fault_write_protect() -> Outcome {
    let text = invalid_opcode as *const () as u64;
    let caught = hal::trap::probe::write_read_only(text);
    check!(
        caught.is_some_and(|c| c.vector == 14 && c.error_code & 3 == 3),
        "write to kernel text gave {caught:?}"
    );
    Outcome::Passed
}
hal::kernel_test!(
    exception_page_fault_write_to_kernel_text,
    page_fault_write_protect
);

fn general_protection() -> Outcome {
    let caught = hal::trap::probe::bad_segment();
    check!(
        caught.is_some_and(|c| c.vector == 13 && c.error_code == 0xfff8),
        "bad selector gave {caught:?}"
    );
    let caught = hal::trap::probe::read(0x8000_0000_0000_0000);
    check!(
        caught.is_some_and(|c| c.vector == 13),
        "non-canonical read gave {caught:?}"
    );
    Outcome::Passed
}
hal::kernel_test!(exception_general_protection_is_caught, general_protection);

fn divide_error() -> Outcome {
    let caught = hal::trap::probe::divide_error();
    check!(
        caught.is_some_and(|c| c.vector == 0),
        "division by zero gave {caught:?}"
    );
    Outcome::Passed
}
hal::kernel_test!(exception_divide_error_is_caught, divide_error);

fn no_fault_no_record() -> Outcome {
    let mapped = &BOOT as *const _ as u64;
    check!(
        hal::trap::probe::read(mapped).is_none(),
        "a mapped read was reported as a fault"
    );
    Outcome::Passed
}
hal::kernel_test!(
    exception_probe_reports_nothing_without_fault,
    no_fault_no_record
);

fn frame_accounting() -> Outcome {
    let before = hal::memory::frame_stats();
    let mut frames = Vec::new();
    for _ in 0..256 {
        match hal::memory::allocate_frame() {
            Some(f) => frames.push(f),
            None => {
                return Outcome::Failed(keel_kern::testing::alloc_free::Message::new(
                    format_args!("out of frames"),
                ));
            }
        }
    }
    let during = hal::memory::frame_stats();
    check!(
        during.free_frames == before.free_frames - 256,
        "free {} -> {}",
        before.free_frames,
        during.free_frames
    );
    let mut sorted = frames.clone();
    sorted.sort_unstable();
    sorted.dedup();
    check!(sorted.len() == 256, "a frame was handed out twice");
    check!(
        frames
            .iter()
            .all(|f| f.is_multiple_of(4096) && *f >= 0x10_0000),
        "bad frame address"
    );
    let kernel = (hal::boot::kernel_phys_start(), hal::boot::kernel_phys_end());
    check!(
        frames.iter().all(|f| *f < kernel.0 || *f >= kernel.1),
        "frame inside the kernel image"
    );
    for m in &boot().modules {
        check!(
            frames.iter().all(|f| *f + 4096 <= m.start || *f >= m.end),
            "frame inside module {}",
            m.name
        );
    }
    for f in &frames {
        check!(
            hal::memory::free_frame(*f).is_ok(),
            "free of {f:#x} refused"
        );
    }
    check!(
        hal::memory::free_frame(frames[0]).is_err(),
        "double free accepted"
    );
    check!(hal::memory::frame_stats() == before, "accounting drifted");
    Outcome::Passed
}
hal::kernel_test!(frame_allocator_accounting, frame_accounting);

fn heap() -> Outcome {
    let (used_before, total) = hal::memory::heap_usage();
    check!(total as u64 == hal::memory::HEAP_SIZE, "heap size {total}");
    {
        let big: Vec<u8> = alloc::vec![0xa5; 1 << 20];
        let boxes: Vec<Box<u64>> = (0..1000).map(Box::new).collect();
        check!(big.iter().all(|b| *b == 0xa5));
        check!(boxes.iter().enumerate().all(|(i, b)| **b == i as u64));
        let (used, _) = hal::memory::heap_usage();
        check!(
            used >= used_before + (1 << 20),
            "usage {used_before} -> {used}"
        );
    }
    check!(hal::memory::heap_usage().0 == used_before, "heap leaked");
    Outcome::Passed
}
hal::kernel_test!(heap_allocates_and_frees, heap);

fn acpi_cpus() -> Outcome {
    let platform = &boot().platform;
    check!(platform.acpi, "no ACPI tables found");
    let found = platform.usable_processors().count();
    match keel_kern::cmdline::value(&boot().cmdline, "keel.smp")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(expected) => check!(
            found == expected,
            "MADT lists {found} CPUs, QEMU has {expected}"
        ),
        None => return Outcome::Skipped("runner did not pass keel.smp=N"),
    }
    check!(!platform.io_apics.is_empty(), "no I/O APIC in the MADT");
    check!(platform.hpet.is_some(), "no HPET table");
    Outcome::Passed
}
hal::kernel_test!(acpi_madt_matches_smp, acpi_cpus);

fn acpi_power() -> Outcome {
    let power = boot().platform.power;
    if !boot().platform.acpi {
        return Outcome::Skipped("no ACPI tables");
    }
    check!(
        power.pm1a_control.is_some(),
        "no PM1a control block in the FADT"
    );
    let Some(dsdt) = power.dsdt else {
        check!(false, "no DSDT");
        return Outcome::Passed;
    };
    check!(
        keel_kern::aml::s5_sleep_types(hal::acpi::dsdt_bytes(dsdt)).is_some(),
        "no \\_S5 package in the DSDT's {} bytes of AML",
        dsdt.1
    );
    let record = crate::acpi_power_record(&power);
    check!(
        record.can_power_off(),
        "the root task's record cannot power off"
    );
    Outcome::Passed
}
hal::kernel_test!(acpi_fadt_and_dsdt_describe_power_off, acpi_power);

fn all_cpus_online() -> Outcome {
    let expected = boot().platform.usable_processors().count();
    check!(
        hal::smp::online_cpus() == expected,
        "{} of {expected} CPUs checked in",
        hal::smp::online_cpus()
    );
    for cpu in 0..expected {
        let area = hal::percpu::area(cpu);
        check!(area.is_some(), "CPU {cpu} has no per-CPU area");
        check!(area.unwrap().cpu_index as usize == cpu);
    }
    Outcome::Passed
}
hal::kernel_test!(smp_all_application_processors_check_in, all_cpus_online);

/// The memory types user mappings select with PWT, PCD and PAT (seL4's attributes):
/// IA32_PAT is programmed, entry 4 write-combining.
fn pat_programmed() -> Outcome {
    let pat = hal::cpu::pat();
    check!(pat == hal::cpu::PAT, "IA32_PAT {pat:#018x}");
    check!((pat >> 32) & 7 == 1, "entry 4 is not write-combining");
    Outcome::Passed
}
hal::kernel_test!(paging_pat_entry_4_is_write_combining, pat_programmed);

fn timer_ticks() -> Outcome {
    let cpus = hal::smp::online_cpus();
    let before: Vec<u64> = (0..cpus)
        .map(|c| hal::percpu::area(c).unwrap().ticks.load(Ordering::Relaxed))
        .collect();
    let start = hal::cpu::rdtsc();
    // Up to one second: every CPU must see at least three timer interrupts.
    loop {
        hal::cpu::wait_for_interrupt();
        let now: Vec<u64> = (0..cpus)
            .map(|c| hal::percpu::area(c).unwrap().ticks.load(Ordering::Relaxed))
            .collect();
        if now.iter().zip(&before).all(|(n, b)| *n >= b + 3) {
            return Outcome::Passed;
        }
        if hal::cpu::rdtsc() - start > hal::time::tsc_hz() {
            check!(false, "ticks {before:?} -> {now:?} in one second");
        }
    }
}
hal::kernel_test!(timer_ticks_advance_on_every_cpu, timer_ticks);

fn tsc_calibrated() -> Outcome {
    let hz = hal::time::tsc_hz();
    check!(
        (50_000_000..20_000_000_000).contains(&hz),
        "TSC frequency {hz} Hz is implausible"
    );
    Outcome::Passed
}
hal::kernel_test!(tsc_frequency_is_plausible, tsc_calibrated);

fn page_rights() -> Outcome {
    let pml4 = hal::paging::current_pml4();
    let text = hal::paging::translate(pml4, invalid_opcode as *const () as u64);
    check!(
        text.is_some_and(|t| !t.writable && t.executable && !t.user),
        "kernel text mapped {text:?}"
    );
    let data = hal::paging::translate(pml4, &BOOT as *const _ as u64);
    let nx = hal::cpu::features().nx;
    check!(
        data.is_some_and(|t| t.writable && t.executable != nx && !t.user),
        "kernel data mapped {data:?}"
    );
    check!(
        hal::paging::translate(pml4, 0).is_none(),
        "page 0 is mapped"
    );
    Outcome::Passed
}
hal::kernel_test!(paging_kernel_sections_have_their_rights, page_rights);

fn direct_map() -> Outcome {
    let pml4 = hal::paging::current_pml4();
    for r in boot()
        .memory_map
        .iter()
        .filter(|r| r.kind == MemoryKind::Available)
    {
        for phys in [r.start, r.end - 1] {
            let t = hal::paging::translate(pml4, hal::layout::phys_to_virt(phys));
            check!(
                t.is_some_and(|t| t.phys == phys && t.writable),
                "RAM {phys:#x} not in the direct map"
            );
        }
    }
    Outcome::Passed
}
hal::kernel_test!(paging_direct_map_covers_all_ram, direct_map);

fn ist_stacks() -> Outcome {
    let cpus = hal::smp::online_cpus();
    for cpu in 0..cpus {
        let area = hal::percpu::area(cpu).unwrap() as *const _ as u64;
        for ist in 1..=4 {
            let bottom = hal::layout::stack_bottom(cpu, ist);
            check!(
                bottom.is_multiple_of(hal::layout::STACK_SIZE),
                "IST stack {ist} of CPU {cpu} misaligned"
            );
            let pml4 = hal::paging::current_pml4();
            let word = hal::paging::translate(pml4, bottom).map(|t| t.phys);
            check!(word.is_some(), "IST stack {ist} of CPU {cpu} not mapped");
            let guard = hal::paging::translate(pml4, bottom - 8);
            check!(
                guard.is_none(),
                "IST stack {ist} of CPU {cpu} has no guard page"
            );
            let value = hal::trap::probe::read(bottom);
            check!(value.is_none(), "IST stack bottom unreadable");
            let stored = hal::percpu::ist_gs_word(cpu, ist);
            check!(
                stored == area,
                "IST stack {ist} of CPU {cpu} holds {stored:#x}, not its GS base {area:#x}"
            );
        }
    }
    Outcome::Passed
}
hal::kernel_test!(ist_stacks_aligned_guarded_and_hold_gs_base, ist_stacks);

fn protections() -> Outcome {
    let f = hal::cpu::features();
    let (cr0, cr4) = hal::cpu::control_registers();
    check!(cr0 & (1 << 16) != 0, "CR0.WP off");
    check!(!f.smep || cr4 & (1 << 20) != 0, "SMEP available but off");
    check!(!f.smap || cr4 & (1 << 21) != 0, "SMAP available but off");
    check!(!f.umip || cr4 & (1 << 11) != 0, "UMIP available but off");
    check!(
        !f.nx || hal::cpu::efer() & (1 << 11) != 0,
        "NX available but off"
    );
    Outcome::Passed
}
hal::kernel_test!(cpu_protections_enabled, protections);

fn root_image_checks() -> Outcome {
    check!(
        keel_kern::elf::plan(b"\x7fELF but not really").is_err(),
        "garbage accepted as a program"
    );
    let root = &boot().modules[0];
    let plan = keel_kern::elf::plan(root.bytes());
    check!(
        plan.is_ok(),
        "the root task image is refused: {:?}",
        plan.err()
    );
    Outcome::Passed
}
hal::kernel_test!(
    user_loader_refuses_garbage_and_accepts_the_root_task,
    root_image_checks
);

fn fails_on_request() -> Outcome {
    check!(false, "this test fails on purpose (keel.test_fail)");
    Outcome::Passed
}
hal::kernel_test!(harness_fails_on_request, fails_on_request);
