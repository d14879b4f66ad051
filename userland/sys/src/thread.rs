//! Per-thread data and thread start-up: the stacks of the root task and of threads the
//! runtime creates, the [`ThreadBlock`] at the base of each stack, and the registers a
//! new thread starts with.
//!
//! Every Keel user thread runs on a stack of [`STACK_SIZE`] bytes aligned to its size;
//! the lowest bytes of that stack hold the thread's [`ThreadBlock`] (its IPC buffer
//! address, its own TCB capability and where its console output goes). The current
//! thread finds its block by masking RSP, so per-thread data needs neither a system
//! call nor FS/GS base support — the role a thread-local variable plays in rust-sel4. `_start` moves the root task onto
//! [`ROOT_STACK`]; [`ThreadStack`] hands out the stacks of other threads.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::cap::{Cap, Tcb};

/// log2 of the size (and alignment) of every thread stack.
pub const STACK_BITS: u32 = 17;
/// Size of every thread stack: 128 KiB.
pub const STACK_SIZE: usize = 1 << STACK_BITS;
/// Number of stacks for threads other than the root task.
pub const THREAD_STACKS: usize = 8;

/// One thread stack; its [`ThreadBlock`] sits in its lowest bytes.
#[repr(C, align(131072))]
pub struct Stack(UnsafeCell<[u8; STACK_SIZE]>);

const _: () = assert!(core::mem::align_of::<Stack>() == STACK_SIZE);

// SAFETY: the stack memory is only touched by the one thread running on it and, before
// that thread starts, through `ThreadStack::prepare` by the thread that owns the
// handle; the block is written and read with volatile accesses.
unsafe impl Sync for Stack {}

impl Stack {
    const fn new() -> Self {
        Self(UnsafeCell::new([0; STACK_SIZE]))
    }

    fn base(&self) -> u64 {
        self.0.get() as u64
    }
}

/// The root task's stack (`_start` switches to it).
pub static ROOT_STACK: Stack = Stack::new();
/// RDI as the kernel passed it to `_start`: the boot-info frame's address (a server
/// program started by init: its packed start information).
pub static BOOT_ARGUMENT: AtomicU64 = AtomicU64::new(0);
/// RSI as `_start` found it: 0 for the root task; for a server program, the address
/// of a read-only copy of the boot-info frame when init maps one (the power server),
/// else 0.
pub static SECOND_ARGUMENT: AtomicU64 = AtomicU64::new(0);

static STACKS: [Stack; THREAD_STACKS] = [const { Stack::new() }; THREAD_STACKS];
static STACK_IN_USE: [AtomicBool; THREAD_STACKS] =
    [const { AtomicBool::new(false) }; THREAD_STACKS];

/// Per-thread data at the base of the thread's stack.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ThreadBlock {
    /// User address of the thread's IPC buffer (0: none).
    pub ipc_buffer: u64,
    /// Capability pointer of the thread's own TCB (0: unknown).
    pub tcb: u64,
    /// Where the thread's console output goes: a function that writes bytes to the
    /// endpoint [`ThreadBlock::console_endpoint`] (the runtime sets it to the serial
    /// server's WRITE once the thread has found one), or `None` for the kernel's debug
    /// console.
    pub console: Option<fn(u64, &[u8]) -> bool>,
    /// The endpoint (a capability pointer in the thread's own CSpace) that
    /// [`ThreadBlock::console`] writes to.
    pub console_endpoint: u64,
}

fn current_block_address() -> u64 {
    let rsp: u64;
    // SAFETY: reads RSP; no memory access.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags))
    };
    rsp & !(STACK_SIZE as u64 - 1)
}

/// The current thread's block.
pub fn current() -> ThreadBlock {
    let p = current_block_address() as *const ThreadBlock;
    // SAFETY: every thread runs on a `Stack` (root: `_start`; others: `ThreadStack`),
    // which is aligned to its size, so masking RSP gives the stack's base, where the
    // block lives; the memory is ours and always initialised (zeroed static).
    unsafe { p.read_volatile() }
}

/// The current thread's IPC buffer address ([`ThreadBlock::ipc_buffer`]), read alone
/// (every IPC-buffer access asks for it; [`current`] reads the whole block).
pub fn current_ipc_buffer() -> u64 {
    let p = current_block_address() as *const ThreadBlock;
    // SAFETY: as in `current`; the field is read in place, without creating a reference.
    unsafe { core::ptr::addr_of!((*p).ipc_buffer).read_volatile() }
}

/// Whether the calling thread is the root task (it runs on [`ROOT_STACK`]).
pub fn on_root_stack() -> bool {
    current_block_address() == ROOT_STACK.base()
}

/// Changes the current thread's block (the root task records its IPC buffer here).
pub fn set_current(block: ThreadBlock) {
    let p = current_block_address() as *mut ThreadBlock;
    // SAFETY: as in `current`; only this thread reads its own block.
    unsafe { p.write_volatile(block) }
}

/// The value the kernel passed to `_start` in RDI (the boot-info address).
pub fn boot_argument() -> u64 {
    BOOT_ARGUMENT.load(Ordering::Relaxed)
}

/// The value `_start` found in RSI (see [`SECOND_ARGUMENT`]).
pub fn second_argument() -> u64 {
    SECOND_ARGUMENT.load(Ordering::Relaxed)
}

/// A stack for a new thread, owned until [`ThreadStack::release`].
#[derive(Debug)]
pub struct ThreadStack {
    index: usize,
}

impl ThreadStack {
    /// Takes a free stack, if one is left.
    pub fn allocate() -> Option<Self> {
        (0..THREAD_STACKS)
            .find(|&i| {
                STACK_IN_USE[i]
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .map(|index| Self { index })
    }

    /// Lowest address of the stack (where the block is).
    pub fn base(&self) -> u64 {
        STACKS[self.index].base()
    }

    /// First address above the stack.
    pub fn top(&self) -> u64 {
        self.base() + STACK_SIZE as u64
    }

    /// Writes the block of the thread that will run on this stack.
    pub fn prepare(&self, block: ThreadBlock) {
        let p = self.base() as *mut ThreadBlock;
        // SAFETY: the stack belongs to this handle; the block is at its aligned base
        // and is read by the thread with volatile accesses.
        unsafe { p.write_volatile(block) }
    }

    /// The registers a thread starts with to run `entry(argument)` on this stack; it
    /// suspends itself (through its TCB capability `tcb`) when `entry` returns.
    pub fn start_registers(&self, entry: fn(u64), argument: u64, tcb: Cap<Tcb>) -> StartRegisters {
        StartRegisters {
            rip: thread_start as *const () as u64,
            // As if `thread_start` had been called: RSP + 8 is 16-byte aligned.
            rsp: self.top() - 8,
            rdi: entry as *const () as u64,
            rsi: argument,
            rdx: tcb.cptr(),
        }
    }

    /// Gives the stack back; the thread that ran on it must be gone (suspended for
    /// good or deleted).
    pub fn release(self) {
        STACK_IN_USE[self.index].store(false, Ordering::Release);
    }
}

/// Register values of a new thread (the other registers may be anything).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartRegisters {
    /// Entry: the runtime's thread trampoline.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// First argument: the function to run.
    pub rdi: u64,
    /// Second argument: its argument.
    pub rsi: u64,
    /// Third argument: the thread's own TCB capability.
    pub rdx: u64,
}

extern "C" fn thread_start(entry: usize, argument: u64, tcb: u64) -> ! {
    // SAFETY: the only way to start a thread here is with registers from
    // `ThreadStack::start_registers`, which puts a `fn(u64)` in RDI.
    let entry: fn(u64) = unsafe { core::mem::transmute::<usize, fn(u64)>(entry) };
    entry(argument);
    let own = Cap::<Tcb>::from_cptr(tcb);
    loop {
        let _ = own.suspend();
        crate::syscall::yield_now();
    }
}
