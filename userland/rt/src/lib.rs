//! The Keel user runtime: console output, the panic handler, and the root task's
//! resource helpers — a slot allocator over the boot info's empty region, an untyped
//! allocator that retypes objects into free slots, page-table creation for mappings,
//! and threads in the root task's own address space.
//!
//! A program links this crate, declares its main with `keel_sys::entry_point!` and
//! prints with [`println!`]. A panic prints its message and ends the program with
//! [`PANIC_EXIT`]. The root task calls [`init`] with its boot argument and builds an
//! [`Allocator`] from the boot info.
#![no_std]
#![forbid(unsafe_code)]

mod alloc;
mod console;
pub mod elf;
pub mod fiber;
pub mod percpu;
mod thread;
mod vspace;

pub use alloc::{Allocator, Error, ROOT_DEPTH, Result, SlotAllocator, UntypedAllocator};
pub use console::print;
pub use thread::{Thread, ThreadCSpace, ThreadConfig};
pub use vspace::{IPC_BUFFER_REGION, SCRATCH_REGION};

use keel_sys::bootinfo::BootInfo;

/// Exit value of a program that panicked.
pub const PANIC_EXIT: u64 = 0xdead;

/// Sets up the root task's runtime from the value the kernel passed in RDI: the boot
/// info, whose IPC buffer becomes this thread's. `None` if the kernel passed no boot
/// info (a kernel from before the object model).
pub fn init(boot_argument: u64) -> Option<BootInfo> {
    let info = BootInfo::at(boot_argument)?;
    keel_sys::ipc::set_buffer_address(info.ipc_buffer());
    let mut block = keel_sys::thread::current();
    block.tcb = keel_sys::cap::init::TCB.cptr();
    keel_sys::thread::set_current(block);
    Some(info)
}

/// Whether a panic faults (a server program: init receives the fault) instead of
/// ending the program with [`PANIC_EXIT`] (the root task).
static PANIC_FAULTS: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Makes a panic of this program fault (an undefined instruction) after its message, so
/// that its fault handler (init) sees it; a server program calls this first.
pub fn panic_faults() {
    PANIC_FAULTS.store(true, core::sync::atomic::Ordering::Relaxed);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("user panic: {info}");
    if PANIC_FAULTS.load(core::sync::atomic::Ordering::Relaxed) {
        loop {
            keel_sys::probe::ud2();
        }
    }
    keel_sys::debug_thread_exit(PANIC_EXIT)
}
