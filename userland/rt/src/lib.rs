//! The Keel user runtime: console output (the kernel's debug console, or the serial
//! server once a thread has one: [`set_console`]), the panic handler, the heap (the
//! global allocator: [`heap`]), typed IPC for servers and clients ([`protocol`]), and
//! the root task's resource helpers — a slot allocator over the boot info's empty region, an untyped
//! allocator that retypes objects into free slots, page-table creation for mappings,
//! and threads in the root task's own address space.
//!
//! A program links this crate, declares its main with `keel_sys::entry_point!` and
//! prints with [`println!`]. A panic prints its message (`user panic: ...`, also what
//! running out of heap prints); in the root task it then ends the program with
//! [`PANIC_EXIT`], in any other thread it raises a fault (UD2) for the thread's fault
//! handler. The root task calls [`init`] with its boot argument and builds an
//! [`Allocator`] from the boot info.
#![no_std]
#![forbid(unsafe_code)]

mod alloc;
mod console;
/// The ELF64 reader shared with the kernel.
pub use keel_abi::elf;
pub mod fiber;
pub mod heap;
pub mod percpu;
pub mod protocol;
mod thread;
mod vspace;

pub use alloc::{Allocator, Error, ROOT_DEPTH, Result, SlotAllocator, UntypedAllocator};
pub use console::{console_is_serial, print, reset_console, set_console};
pub use thread::{Thread, ThreadCSpace, ThreadConfig};
pub use vspace::{IPC_BUFFER_REGION, SCRATCH_REGION};

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use keel_sys::bootinfo::BootInfo;

/// Exit value of a program that panicked.
pub const PANIC_EXIT: u64 = 0xdead;

/// The root task's IPC buffer address, once [`init`] has run: the root task's fibers
/// (which run on stacks of their own) share it, other threads have their own.
static ROOT_IPC_BUFFER: AtomicU64 = AtomicU64::new(0);

/// Set by [`not_root_task`]: no thread of this program is the root task.
static NOT_ROOT_TASK: AtomicBool = AtomicBool::new(false);

/// Says that this program is not the root task although its first thread runs on the
/// root stack (`_start`): a server loaded from a module of its own. Its panics then
/// fault, for its fault handler, instead of ending the run (the kernel treats a
/// thread exit as the root task's).
pub fn not_root_task() {
    NOT_ROOT_TASK.store(true, Ordering::Relaxed);
}

/// Whether the calling thread is the root task (or one of its fibers).
fn in_root_task() -> bool {
    let buffer = keel_sys::thread::current().ipc_buffer;
    !NOT_ROOT_TASK.load(Ordering::Relaxed)
        && (keel_sys::thread::on_root_stack()
            || (buffer != 0 && buffer == ROOT_IPC_BUFFER.load(Ordering::Relaxed)))
}

/// Sets up the root task's runtime from the value the kernel passed in RDI: the boot
/// info, whose IPC buffer becomes this thread's. `None` if the kernel passed no boot
/// info (a kernel from before the object model).
pub fn init(boot_argument: u64) -> Option<BootInfo> {
    let info = BootInfo::at(boot_argument)?;
    keel_sys::ipc::set_buffer_address(info.ipc_buffer());
    ROOT_IPC_BUFFER.store(info.ipc_buffer(), Ordering::Relaxed);
    let mut block = keel_sys::thread::current();
    block.tcb = keel_sys::cap::init::TCB.cptr();
    keel_sys::thread::set_current(block);
    Some(info)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::print_panic(format_args!("user panic: {info}\n"));
    if !in_root_task() {
        // Any other thread (a server) faults, so that its fault handler (init) hears of
        // it: it reports the server and restarts it if its manifest says so. A handler
        // that resumes it past the UD2 ends it below.
        keel_sys::probe::ud2();
    }
    keel_sys::debug_thread_exit(PANIC_EXIT)
}
