//! A server program's side of being started by init from its own boot module: the
//! runtime set-up a server program does before it runs its server's entry, and the
//! layout init builds for it (see [`crate::loader`]).
//!
//! A server program is a crate of its own (`userland/programs/NAME`, binary `NAME`)
//! whose `main.rs` is one line: `keel_servers::server_program!(keel_servers::echo::main);`.
//! init loads it into an address space of its own and starts it with its packed start
//! information in RDI (the argument of the server's entry) and, for a server that is
//! given one, the address of a read-only copy of the boot info in RSI.
//!
//! Layout of a server's address space: its ELF segments (text and read-only data
//! mapped read-only, data and bss writable and not executable), its IPC buffer at
//! [`IPC_BUFFER`], and its stack: the `keel_sys::thread::STACK_SIZE` (128 KiB) at
//! [`STACK_BASE`], of which only the lowest page (the thread block) and the top
//! [`STACK_PAGES`] pages are mapped; the pages between, and the page below the base,
//! are unmapped guard pages, so an overflow faults. init passes the stack's top in RDX
//! (`_start` switches to it).

use keel_sys::cap::{Cap, Tcb};
use keel_sys::thread::ThreadBlock;

use crate::cspace::slot;

/// Where init maps a server program's IPC buffer.
pub const IPC_BUFFER: u64 = keel_rt::IPC_BUFFER_REGION.start;
/// The base of a server program's stack (aligned to `keel_sys::thread::STACK_SIZE`,
/// below `keel_sys::probe::WINDOW`).
pub const STACK_BASE: u64 = 0x1_0000_0000;
/// Pages mapped at the top of the stack (64 KiB).
pub const STACK_PAGES: u64 = 16;
/// The top of a server program's stack (its initial RSP).
pub const STACK_TOP: u64 = STACK_BASE + keel_sys::thread::STACK_SIZE as u64;
const _: () = assert!(STACK_BASE.is_multiple_of(keel_sys::thread::STACK_SIZE as u64));
const _: () = assert!(STACK_PAGES < keel_sys::thread::STACK_SIZE as u64 / 4096 - 1);

/// The system call a program makes when its entry returns: a number the kernel does not
/// know, so the kernel reports it to init as an UnknownSyscall fault (seL4's way of
/// handing a thread's request to its fault handler), and init records the program as
/// exited instead of faulted. ("EXIT" in ASCII.)
pub const EXIT_SYSCALL: u64 = 0x4558_4954;

/// Runs a server program: sets up the runtime (IPC buffer, own TCB, a panic becomes a
/// fault that init handles), runs `entry(argument)`, and when `entry` returns, tells
/// init ([`EXIT_SYSCALL`]) and stays stopped (init does not answer; without an answer
/// the thread suspends itself for good).
pub fn run(argument: u64, entry: fn(u64)) -> u64 {
    keel_sys::ipc::set_buffer_address(IPC_BUFFER);
    keel_sys::thread::set_current(ThreadBlock {
        ipc_buffer: IPC_BUFFER,
        tcb: slot::TCB,
        ..ThreadBlock::default()
    });
    keel_rt::not_root_task();
    entry(argument);
    keel_sys::syscall2(EXIT_SYSCALL as i64, 0, 0);
    let own = Cap::<Tcb>::from_cptr(slot::TCB);
    loop {
        let _ = own.suspend();
        keel_sys::ipc::yield_now();
    }
}

/// `keel_sys`, for [`server_program!`]'s expansion: a program needs no dependency of its
/// own on `keel-sys` (only if its code uses it).
#[doc(hidden)]
pub use keel_sys as __keel_sys;

/// The `main.rs` of a server program: `keel_servers::server_program!(path::to::main);`
/// with the server's entry `fn(u64)`.
#[macro_export]
macro_rules! server_program {
    ($entry:path) => {
        fn __keel_server_main(argument: u64) -> u64 {
            $crate::program::run(argument, $entry)
        }
        $crate::program::__keel_sys::entry_point!(__keel_server_main);
    };
}
