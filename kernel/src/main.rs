//! The Keel kernel image: glue between the trusted core (`keel-hal`) and the safe
//! object layer (`keel-kern`). Boot hands over here once the machine is up; this file
//! runs the in-kernel tests if asked, builds the root task, and connects the trusted
//! core's entry points to the object layer under the big kernel lock. It owns no
//! mechanism of its own.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod tests;

use core::sync::atomic::{AtomicBool, Ordering};

use keel_abi::{exit, harness};
use keel_hal as hal;
use keel_hal::boot::{BootInfo, MemoryKind};
use keel_hal::machine::Machine;
use keel_hal::sync::BigKernelLock;
use keel_kern::cmdline;
use keel_kern::kernel::Kernel;
use keel_kern::memory::Memory;
use keel_kern::object::tcb;
use keel_kern::testing::Tally;

// The scheduler's per-CPU array covers every CPU the hardware layer brings up.
const _: () = assert!(hal::layout::MAX_CPUS <= keel_kern::kernel::MAX_CPUS);

hal::entry_point!(kernel_main);
hal::kernel_entries! {
    syscall: syscall,
    user_trap: user_trap,
    kernel_interrupt: kernel_interrupt,
    idle_poll: idle_poll,
}

/// Value the test image's root task exits with when it ran to the end.
pub const ROOT_TASK_TEST_EXIT: u64 = 0x600d;

/// The kernel, behind the big kernel lock (None until boot has built it).
static KERNEL: BigKernelLock<Option<Kernel<Machine>>> = BigKernelLock::new(None);
/// The in-kernel tests' tally, reported with the user suite's at the end.
static TALLY: spin::Mutex<Tally> = spin::Mutex::new(Tally {
    passed: 0,
    failed: 0,
    skipped: 0,
});
static TESTING: AtomicBool = AtomicBool::new(false);
static BENCH: AtomicBool = AtomicBool::new(false);

fn kernel_main(boot: &'static BootInfo) -> ! {
    let boot_ms = hal::time::nanos_since(boot.boot_tsc) / 1_000_000;
    log::info!(
        "keel: {} CPUs, {} MiB usable, timer {} at {} Hz, booted by {} ({}), {} ms to main",
        hal::smp::online_cpus(),
        boot.memory.usable_bytes >> 20,
        hal::apic::timer_mode(),
        hal::apic::TIMER_HZ,
        boot.bootloader,
        if boot.uefi { "UEFI" } else { "BIOS" },
        boot_ms
    );
    tests::remember_boot_info(boot);
    let testing = cmdline::flag(&boot.cmdline, harness::CMDLINE_RUN_TESTS);
    TESTING.store(testing, Ordering::Relaxed);
    BENCH.store(
        cmdline::flag(&boot.cmdline, "keel.bench"),
        Ordering::Relaxed,
    );
    if testing {
        let fail_on_request = cmdline::flag(&boot.cmdline, harness::CMDLINE_FAIL_TEST);
        *TALLY.lock() =
            hal::testing::run_all(|name| name != tests::FAILING_TEST || fail_on_request);
    }

    let cpus = hal::smp::online_cpus();
    let machine = Machine::new(root_task_exited, test_report).with_test_hooks(testing);
    let mut kernel = Kernel::new(machine, cpus);
    kernel.fsgsbase_supported = hal::cpu::features().fsgsbase;
    kernel.io_apics = boot.platform.io_apics.len();
    kernel.set_fastpath(cmdline::value(&boot.cmdline, "keel.fastpath") != Some("off"));
    kernel.user_rseq = !hal::switches::is_off(hal::switches::Switch::UserRseq);
    let icount = cmdline::flag(&boot.cmdline, "keel.icount");
    let kvm = cmdline::value(&boot.cmdline, "keel.accel") == Some("kvm");
    kernel.platform_flags = (icount as u64 * keel_abi::syscall::PLATFORM_ICOUNT)
        | (kvm as u64 * keel_abi::syscall::PLATFORM_KVM);
    let Some(module) = boot.modules.first() else {
        panic!("no root task: the bootloader passed no modules")
    };
    let extra_modules: alloc::vec::Vec<(u64, u64)> =
        boot.modules[1..].iter().map(|m| (m.start, m.end)).collect();
    let root = keel_kern::boot::create_root_task(
        &mut kernel,
        module.bytes(),
        &extra_modules,
        &mut hal::memory::allocate_object,
        hal::cpu::features().nx,
    );
    let mut root = match root {
        Ok(root) => root,
        Err(e) => panic!("root task '{}' cannot be built: {e:?}", module.name),
    };
    // `keel.check_invariants` (every system call) or `keel.check_invariants=N`.
    let every = cmdline::value(&boot.cmdline, "keel.check_invariants")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|&n| n > 0)
        .or_else(|| cmdline::flag(&boot.cmdline, "keel.check_invariants").then_some(1));
    if let Some(every) = every {
        log::info!("keel: checking the kernel's invariants every {every} system call(s)");
        kernel.invariant_root = root.tcb;
        kernel.invariant_every = every;
    }
    let free = hal::memory::take_free_ranges();
    let mut untyped_bytes = 0;
    for &(start, end) in &free {
        root.add_untyped(&mut kernel, start, end, false);
        untyped_bytes += end - start;
    }
    for (start, end) in device_regions(boot) {
        root.add_untyped(&mut kernel, start, end, true);
    }
    add_x86_records(&mut root, &mut kernel, boot);
    let power = acpi_power_record(&boot.platform.power);
    log::info!(
        "acpi: power off {}, reset register {}",
        if power.can_power_off() {
            "by S5"
        } else {
            "unavailable"
        },
        if power.flags & keel_abi::bootinfo::acpi_power_flags::RESET_REGISTER != 0 {
            "present"
        } else {
            "absent"
        },
    );
    root.add_extra_record(
        &mut kernel,
        keel_abi::bootinfo::extra_id::KEEL_ACPI_POWER,
        &power.to_words(),
    );
    for (m, vaddr) in boot.modules[1..].iter().zip(root.module_vaddrs) {
        if vaddr == 0 {
            log::warn!("boot module '{}' left out: no room", m.name);
            continue;
        }
        let record = keel_abi::bootinfo::KeelModule::new(&m.name, vaddr, m.end - m.start);
        root.add_extra_record(
            &mut kernel,
            keel_abi::bootinfo::extra_id::KEEL_MODULE,
            &record.to_words(),
        );
    }
    log::info!(
        "root task '{}': {} MiB of untyped memory",
        module.name,
        untyped_bytes >> 20
    );
    root.finish(&mut kernel, cpus);
    *KERNEL.lock() = Some(kernel);
    hal::entry::enter_idle()
}

/// The root task's power-control record: the FADT's controls and the DSDT's S5 sleep
/// types.
fn acpi_power_record(power: &hal::acpi::PowerControls) -> keel_abi::bootinfo::KeelAcpiPower {
    use keel_abi::bootinfo::acpi_power_flags as flags;
    let mut record = keel_abi::bootinfo::KeelAcpiPower::default();
    if let Some(port) = power.pm1a_control {
        record.flags |= flags::PM1A_CONTROL;
        record.pm1a_control = port as u64;
        record.pm1b_control = power.pm1b_control.unwrap_or(0) as u64;
    }
    let sleep_types = power
        .dsdt
        .and_then(|dsdt| keel_kern::aml::s5_sleep_types(hal::acpi::dsdt_bytes(dsdt)));
    if let Some((a, b)) = sleep_types {
        record.flags |= flags::S5_SLEEP_TYPE;
        record.s5_sleep_type_a = a as u64;
        record.s5_sleep_type_b = b as u64;
    }
    if let Some((port, value)) = power.reset {
        record.flags |= flags::RESET_REGISTER;
        record.reset_port = port as u64;
        record.reset_value = value as u64;
    }
    record
}

/// Physical ranges below 4 GiB that are neither RAM nor reserved by firmware nor the
/// kernel's own devices: device memory the root task may map (as device untypeds).
fn device_regions(boot: &BootInfo) -> alloc::vec::Vec<(u64, u64)> {
    let mut taken: alloc::vec::Vec<(u64, u64)> =
        boot.memory_map.iter().map(|r| (r.start, r.end)).collect();
    taken.push((0, 0x10_0000));
    taken.push((
        boot.platform.local_apic_address,
        boot.platform.local_apic_address + 0x1000,
    ));
    for io in &boot.platform.io_apics {
        taken.push((io.address, io.address + 0x1000));
    }
    if let Some(hpet) = boot.platform.hpet {
        taken.push((hpet, hpet + 0x1000));
    }
    taken.sort_unstable();
    let mut gaps = alloc::vec::Vec::new();
    let mut cursor = 0u64;
    for (start, end) in taken {
        let start = start & !0xfff;
        if start > cursor && cursor < 1 << 32 {
            gaps.push((cursor, start.min(1 << 32)));
        }
        cursor = cursor.max((end + 0xfff) & !0xfff);
    }
    if cursor < 1 << 32 {
        gaps.push((cursor, 1 << 32));
    }
    let _ = MemoryKind::Available;
    gaps
}

/// seL4's x86 extra boot-info records, in seL4's order (`X86_RECORD_ORDER`): the ACPI
/// RSDP and the framebuffer when the bootloader gave them, the memory map (its first 50
/// entries, multiboot types) and the TSC frequency. No VBE record: GRUB's multiboot2
/// framebuffer tag replaces the VBE blocks.
fn add_x86_records(
    root: &mut keel_kern::boot::RootTask,
    kernel: &mut Kernel<Machine>,
    boot: &BootInfo,
) {
    use keel_abi::bootinfo::{self as abi, extra_id};
    if let Some(rsdp) = boot.rsdp {
        root.add_extra_record_bytes(kernel, extra_id::X86_ACPI_RSDP, &rsdp);
    }
    if let Some(fb) = boot.framebuffer {
        let record = abi::X86Framebuffer {
            addr: fb.phys,
            pitch: fb.pitch,
            width: fb.width,
            height: fb.height,
            bpp: fb.bpp,
            // Multiboot 2 framebuffer types: 1 direct RGB, 2 EGA text.
            fb_type: if fb.text { 2 } else { 1 },
        };
        root.add_extra_record_bytes(kernel, extra_id::X86_FRAMEBUFFER, &record.to_bytes());
    }
    let entries: alloc::vec::Vec<abi::X86MmapEntry> = boot
        .memory_map
        .iter()
        .map(|r| abi::X86MmapEntry::new(r.start, r.end - r.start, r.firmware_type))
        .collect();
    root.add_extra_record_bytes(
        kernel,
        extra_id::X86_MBMMAP,
        &abi::x86_mbmmap_body(&entries),
    );
    let mhz = u32::try_from(boot.tsc_hz / 1_000_000).unwrap_or(u32::MAX);
    root.add_extra_record_bytes(kernel, extra_id::X86_TSC_FREQ, &mhz.to_le_bytes());
}

/// The debug thread-exit call: the root task (or any thread) ended with `value`.
fn root_task_exited(_tcb: u64, value: u64) {
    log::info!("root task exited with value {value:#x}");
    if TESTING.load(Ordering::Relaxed) {
        let mut tally = *TALLY.lock();
        let outcome = tests::root_task_outcome(Some(value), ROOT_TASK_TEST_EXIT);
        hal::testing::report("root_task_ran_in_ring3_and_returned_its_value", &outcome);
        tally.record(&outcome);
        hal::println!("{} passed, {} failed", tally.passed, tally.failed);
        hal::qemu::exit(if tally.success() {
            exit::SUCCESS
        } else {
            exit::TESTS_FAILED
        });
    }
    if BENCH.load(Ordering::Relaxed) {
        // The bench program returns 0 when every benchmark ran (a panic is 0xdead).
        hal::qemu::exit(if value == 0 {
            exit::SUCCESS
        } else {
            exit::TESTS_FAILED
        });
    }
    hal::println!("{}", harness::READY_LINE);
}

/// The debug test-report call: the user suite's counts.
fn test_report(passed: u64, failed: u64) {
    let mut tally = TALLY.lock();
    tally.passed += passed as u32;
    tally.failed += failed as u32;
}

/// After a fast route (IPC fastpath, fault fast route) made `$next` current in `$k`
/// (the kernel behind `$guard`): leaves the kernel into it directly, with no
/// scheduling, or returns `prepare`'s choice if its RIP is not a user address (it
/// faults there). A macro, not a function: the guard is released before the jump
/// while `$k` borrows it.
macro_rules! leave_to_switched {
    ($guard:ident, $k:ident, $next:expr) => {{
        let next: u64 = $next.get();
        let pml4 = $k.pml4_of(next);
        check_invariants($k);
        if let Some(checked) = hal::entry::user_rip(tcb::record(next)) {
            hal::entry::prepare_thread(tcb::record(next), pml4);
            drop($guard);
            hal::entry::resume_checked(checked);
        }
        return prepare($k);
    }};
}

#[inline(always)]
fn syscall() -> Option<hal::entry::UserRip> {
    let mut guard = KERNEL.lock();
    let k = guard.as_mut()?;
    let here = hal::percpu::cpu_index();
    let t = k.cpus[here].current;
    // Another CPU may have stopped this thread (suspended or blocked it) while it waited
    // for the lock: its system call is not made; resumed, it redoes it.
    if t == 0 || !matches!(k.tcb(t).state, tcb::ThreadState::Running) {
        return prepare(k);
    }
    let number = k.tcb(t).context.rdx;
    // Each fast route leaves from its own arm (a shared exit tested the result again).
    match number as i64 {
        keel_abi::syscall::CALL => {
            if let Some(next) = k.fastpath_call(t, here) {
                leave_to_switched!(guard, k, next);
            }
        }
        keel_abi::syscall::REPLY_RECV => {
            if let Some(next) = k.fastpath_reply_recv(t, here) {
                leave_to_switched!(guard, k, next);
            }
        }
        keel_abi::syscall::SEND => {
            // Laid out after Call and ReplyRecv: without the hint the round trip takes
            // 7 instructions more (measured at 110d65a).
            core::hint::cold_path();
            if let Some(next) = k.fastpath_send(t, here) {
                leave_to_switched!(guard, k, next);
            }
        }
        _ => {}
    }
    k.handle_syscall(t, number);
    let entry = prepare(k);
    check_invariants(k);
    entry
}

fn handle_interrupt(k: &mut Kernel<Machine>, vector: u64) {
    let irq_base = hal::trap::IRQ_VECTOR_BASE as u64;
    match vector {
        v if v == hal::trap::TIMER_VECTOR as u64 => k.handle_timer_tick(),
        v if v == hal::trap::WAKE_VECTOR as u64 => k.handle_reschedule(),
        v if (irq_base..irq_base + keel_kern::object::irq::MAX_IRQS as u64).contains(&v) => {
            k.handle_irq((v - irq_base) as u16)
        }
        _ => {}
    }
}

#[inline(always)]
fn user_trap(vector: u64, error_code: u64, address: u64) -> Option<hal::entry::UserRip> {
    let mut guard = KERNEL.lock();
    let k = guard.as_mut()?;
    if vector == 7 && k.current() != 0 && hal::fpu::device_not_available(tcb::record(k.current())) {
        // #NM: the thread's FPU state is loaded (lazy switching); it carries on.
    } else if vector < 32 {
        // A fault whose handler already waits: delivered and switched to directly.
        if let Some(next) =
            k.faultpath_exception(vector, error_code, address, hal::percpu::cpu_index())
        {
            leave_to_switched!(guard, k, next);
        }
        k.handle_user_exception(vector, error_code, address);
    } else {
        handle_interrupt(k, vector);
    }
    prepare(k)
}

fn kernel_interrupt(vector: u64) {
    let mut guard = KERNEL.lock();
    if let Some(k) = guard.as_mut() {
        handle_interrupt(k, vector);
    }
}

fn idle_poll() -> Option<hal::entry::UserRip> {
    let mut guard = KERNEL.lock();
    prepare(guard.as_mut()?)
}

/// `keel.check_invariants`: checks the kernel's state (`keel_kern::invariants`); a
/// broken invariant panics the kernel.
#[inline(always)]
fn check_invariants(k: &mut Kernel<Machine>) {
    // A code switch, not a flag test: off unless the command line asks for checks.
    hal::switches::when_checking_invariants(|| {
        if k.invariant_root != 0
            && let Err(v) = k.check_invariants_after_syscall()
        {
            panic!("kernel invariant broken: {v}");
        }
    });
}

/// Runs the scheduler and readies the chosen thread: its address space, bases and
/// entry stack. A thread that cannot run (no address space, RIP outside user space)
/// faults instead, and the scheduler chooses again.
#[inline(never)]
fn prepare(k: &mut Kernel<Machine>) -> Option<hal::entry::UserRip> {
    // Interrupts a long operation let in at its preemption points: handled now.
    if hal::rseq::deferred_interrupts() {
        while let Some(vector) = hal::rseq::take_deferred_interrupt() {
            handle_interrupt(k, vector);
        }
    }
    loop {
        let t = k.schedule();
        if t == 0 {
            hal::fpu::idle();
            return None;
        }
        k.rseq_resume(t);
        let Some(checked) = hal::entry::user_rip(tcb::record(t)) else {
            k.handle_user_exception(13, 0, 0);
            continue;
        };
        match keel_kern::object::cap::raw::assigned_pml4(k.hw.read(tcb::slot(t, tcb::SLOT_VSPACE)))
        {
            Some(base) => {
                hal::entry::prepare_thread(tcb::record(t), base);
                return Some(checked);
            }
            None => {
                let rip = k.tcb(t).context.rip;
                k.handle_user_exception(14, 0, rip);
                if k.current() == t {
                    k.suspend(t);
                }
            }
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hal::console::force_unlock();
    hal::println!(
        "\n{} on CPU {}: {}",
        harness::PANIC_MARKER,
        hal::percpu::cpu_index(),
        info
    );
    hal::qemu::exit(exit::KERNEL_PANIC)
}
