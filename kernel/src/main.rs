//! The Keel kernel image: glue between the trusted core (`keel-hal`) and the safe
//! object layer (`keel-kern`). Boot hands over here once the machine is up; this file
//! decides what the image does (run the tests, start the root task) and owns no
//! mechanism of its own.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod syscalls;
mod tests;

use keel_abi::{exit, harness};
use keel_hal as hal;
use keel_hal::boot::BootInfo;
use keel_hal::user::UserExit;
use keel_kern::cmdline;
use keel_kern::testing::Tally;

hal::entry_point!(kernel_main);
hal::syscall_handler!(syscalls::handle);

/// Value the test image's root task exits with when it ran to the end.
pub const ROOT_TASK_TEST_EXIT: u64 = 0x600d;

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
    let mut tally = Tally::default();
    if testing {
        let fail_on_request = cmdline::flag(&boot.cmdline, harness::CMDLINE_FAIL_TEST);
        tally = hal::testing::run_all(|name| name != tests::FAILING_TEST || fail_on_request);
    }

    let exit = run_root_task(boot);
    if testing {
        tally.add(syscalls::take_user_tally());
        let outcome = tests::root_task_outcome(exit, ROOT_TASK_TEST_EXIT);
        hal::testing::report("root_task_ran_in_ring3_and_returned_its_value", &outcome);
        tally.record(&outcome);
        hal::println!("{} passed, {} failed", tally.passed, tally.failed);
        hal::qemu::exit(if tally.success() {
            exit::SUCCESS
        } else {
            exit::TESTS_FAILED
        });
    }
    if cmdline::flag(&boot.cmdline, "keel.bench") {
        hal::qemu::exit(exit::SUCCESS);
    }
    hal::println!("{}", harness::READY_LINE);
    hal::smp::idle_loop()
}

/// Loads the first boot module as the root task and runs it to completion.
fn run_root_task(boot: &BootInfo) -> Option<UserExit> {
    let Some(module) = boot.modules.first() else {
        log::error!("no root task: the bootloader passed no modules");
        return None;
    };
    let program = match hal::user::load(module.bytes()) {
        Ok(p) => p,
        Err(e) => {
            log::error!("root task '{}' is not a loadable ELF: {e:?}", module.name);
            return None;
        }
    };
    log::info!(
        "starting root task '{}' at {:#x}",
        module.name,
        program.entry
    );
    let exit = hal::user::enter(&program, hal::smp::online_cpus() as u64);
    match exit {
        UserExit::Exited(value) => {
            log::info!("root task '{}' exited with value {value:#x}", module.name)
        }
        UserExit::Faulted { vector, rip, .. } => log::error!(
            "root task '{}' faulted: {} at {rip:#x}",
            module.name,
            hal::trap::exception_name(vector as u64)
        ),
    }
    hal::user::unload(program);
    Some(exit)
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
