//! Fibers: user-level threads that switch in user mode (issue 5, doc/fsgsbase.md §5).
//!
//! One kernel thread runs up to [`MAX_FIBERS`] fibers, cooperatively: [`spawn`],
//! [`yield_now`], [`join`], [`run`]. A switch saves the callee-saved registers on the
//! fiber's stack, its RSP and its GS base, and loads the next fiber's: the GS base with
//! RDGSBASE/WRGSBASE when the thread holds the FSGSBASE right ([`GsMode::Instructions`]),
//! else with the TCBSetGSBase invocation on the thread's own TCB
//! ([`GsMode::Invocation`]). Each fiber's GS base points at its own thread-local block
//! of [`TLS_WORDS`] words ([`tls_get`], [`tls_set`] use `gs:[8 * i]`).
//!
//! Fiber stacks are [`FIBER_STACK_SIZE`] bytes, eight to a chunk of
//! [`crate::thread::STACK_SIZE`] bytes aligned like a thread stack; each chunk carries a
//! copy of the owning thread's [`crate::thread::ThreadBlock`] at its base, so the IPC
//! buffer (found by masking RSP with the thread-stack size) works in fibers. Each
//! fiber's TLS block sits at its own stack's base (after the block in a chunk's first
//! stack), its initial frame at the top. Fibers belong to the thread that
//! called [`init`]; calls from another thread panic.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::cap::{Cap, Tcb, init as initial};
use crate::thread::{self, STACK_SIZE, ThreadBlock};

/// Fibers at most per owner thread (each needs [`FIBER_STACK_SIZE`] bytes of stack from
/// the pool given to [`init_with_stacks`]; [`init`] uses a built-in pool of
/// [`DEFAULT_FIBERS`]).
pub const MAX_FIBERS: usize = 1024;
/// Fibers the built-in stack pool holds.
pub const DEFAULT_FIBERS: usize = 16;
/// Bytes of each fiber's stack.
pub const FIBER_STACK_SIZE: usize = 8 * 1024;
/// Fiber stacks per thread-stack-sized chunk.
const FIBERS_PER_CHUNK: usize = STACK_SIZE / FIBER_STACK_SIZE;
/// Words of each fiber's GS-based thread-local block.
pub const TLS_WORDS: usize = 16;
/// Offset of the TLS block from the stack base (after the thread block).
const TLS_OFFSET: u64 = 64;
const _: () = assert!(core::mem::size_of::<ThreadBlock>() as u64 <= TLS_OFFSET);

/// How a switch changes the GS base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsMode {
    /// RDGSBASE/WRGSBASE in user mode (the thread was granted FSGSBASE).
    Instructions,
    /// TCBSetGSBase on the thread's own TCB (CPUs without FSGSBASE, or no right).
    Invocation,
}

/// A fiber's identity (index of its slot).
pub type FiberId = usize;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Ready,
    Done,
}

#[derive(Clone, Copy)]
struct Slot {
    rsp: u64,
    gs_base: u64,
    state: State,
    entry: fn(u64),
    argument: u64,
}

fn nothing(_: u64) {}

const FREE: Slot = Slot {
    rsp: 0,
    gs_base: 0,
    state: State::Free,
    entry: nothing,
    argument: 0,
};

struct Scheduler {
    slots: [Slot; MAX_FIBERS],
    /// Running fiber, or `MAX_FIBERS` for the thread's own stack.
    current: usize,
    main_rsp: u64,
    main_gs: u64,
    mode: GsMode,
    tcb: u64,
    switches: u64,
    /// Slots `used..` have never held a fiber since `init` (not scanned).
    used: usize,
}

struct Shared(UnsafeCell<Scheduler>);
// SAFETY: only the owner thread (checked by `sched`) touches the scheduler.
unsafe impl Sync for Shared {}

static SCHED: Shared = Shared(UnsafeCell::new(Scheduler {
    slots: [FREE; MAX_FIBERS],
    current: MAX_FIBERS,
    main_rsp: 0,
    main_gs: 0,
    mode: GsMode::Invocation,
    tcb: 0,
    switches: 0,
    used: 0,
}));
/// IPC buffer address of the owner thread (copied into every fiber's block).
static OWNER: AtomicU64 = AtomicU64::new(0);

/// Stack memory for [`FIBERS_PER_CHUNK`] fibers, aligned like a thread stack (its
/// first bytes hold the owner's thread block). A program that wants more than
/// [`DEFAULT_FIBERS`] fibers declares `static S: [FiberStackChunk; chunks_for(n)] = [const {
/// FiberStackChunk::new() }; chunks_for(n)]` and
/// passes it to [`init_with_stacks`].
#[repr(C, align(131072))]
pub struct FiberStackChunk(UnsafeCell<[u8; STACK_SIZE]>);
// SAFETY: each fiber stack in a chunk is used by one fiber of the owner thread at a
// time; the chunk's thread block is written only by `spawn` on the owner thread.
unsafe impl Sync for FiberStackChunk {}

impl FiberStackChunk {
    /// An unused chunk (array initialisers: `[const { FiberStackChunk::new() }; n]`).
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; STACK_SIZE]))
    }
}

impl Default for FiberStackChunk {
    fn default() -> Self {
        Self::new()
    }
}

/// Chunks needed for `fibers` fibers.
pub const fn chunks_for(fibers: usize) -> usize {
    fibers.div_ceil(FIBERS_PER_CHUNK)
}

static DEFAULT_CHUNKS: [FiberStackChunk; chunks_for(DEFAULT_FIBERS)] =
    [const { FiberStackChunk::new() }; chunks_for(DEFAULT_FIBERS)];
/// The pool in use: address of its first chunk and how many fibers it holds.
static POOL: AtomicU64 = AtomicU64::new(0);
static POOL_FIBERS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Base of the chunk holding fiber `i`'s stack (where its thread block is).
fn chunk_base(i: usize) -> u64 {
    POOL.load(Ordering::Relaxed) + ((i / FIBERS_PER_CHUNK) * STACK_SIZE) as u64
}

/// Base of fiber `i`'s stack.
fn stack_base(i: usize) -> u64 {
    chunk_base(i) + ((i % FIBERS_PER_CHUNK) * FIBER_STACK_SIZE) as u64
}

/// Runs `f` on the scheduler. Only the owner thread may call it, and no reference to
/// the scheduler lives across a switch.
fn sched<R>(f: impl FnOnce(&mut Scheduler) -> R) -> R {
    assert!(
        OWNER.load(Ordering::Relaxed) == thread::current().ipc_buffer,
        "fibers used from a thread that does not own them"
    );
    // SAFETY: single owner thread (checked above); callers never hold the reference
    // across a switch (switches go through raw pointers in `switch_to`).
    f(unsafe { &mut *SCHED.0.get() })
}

/// Makes the calling thread the owner of the fibers, switching GS bases with `mode`
/// (its TCB capability `tcb` serves the invocation fallback), with the built-in pool
/// of [`DEFAULT_FIBERS`] stacks. Forgets fibers of an earlier run. The thread's own GS
/// base is restored whenever control returns to it.
pub fn init(mode: GsMode, tcb: Cap<Tcb>) {
    init_with_stacks(mode, tcb, &DEFAULT_CHUNKS);
}

/// [`init`] with the program's own pool of stacks (up to [`MAX_FIBERS`] fibers).
pub fn init_with_stacks(mode: GsMode, tcb: Cap<Tcb>, stacks: &'static [FiberStackChunk]) {
    POOL.store(stacks.as_ptr() as u64, Ordering::Relaxed);
    POOL_FIBERS.store(
        (stacks.len() * FIBERS_PER_CHUNK).min(MAX_FIBERS),
        Ordering::Relaxed,
    );
    let block = thread::current();
    OWNER.store(block.ipc_buffer, Ordering::Relaxed);
    sched(|s| {
        s.slots = [FREE; MAX_FIBERS];
        s.current = MAX_FIBERS;
        s.mode = mode;
        s.tcb = if tcb.cptr() != 0 {
            tcb.cptr()
        } else {
            initial::TCB.cptr()
        };
        s.switches = 0;
        s.used = 0;
    });
}

/// Creates a fiber running `entry(argument)`; `None` if all slots are taken.
pub fn spawn(entry: fn(u64), argument: u64) -> Option<FiberId> {
    let block = ThreadBlock {
        ipc_buffer: OWNER.load(Ordering::Relaxed),
        tcb: sched(|s| s.tcb),
        ..ThreadBlock::default()
    };
    sched(|s| {
        let capacity = POOL_FIBERS.load(Ordering::Relaxed);
        let i = (0..capacity).find(|&i| s.slots[i].state != State::Ready)?;
        s.used = s.used.max(i + 1);
        let base = stack_base(i);
        let top = base + FIBER_STACK_SIZE as u64;
        // Initial frame popped by `keel_fiber_switch`: r15, r14, r13, r12 (= slot index),
        // rbx, rbp, return address `keel_fiber_start`; RSP after its RET is 16-aligned.
        let rsp = top - 72;
        // SAFETY: the slot is not running (Free or Done), so its stack is unused; the
        // writes stay inside it (TLS after the first 64 bytes, frame at the top) and the
        // chunk's thread block, which every fiber of this owner has the same value in
        // (running fibers only read it).
        unsafe {
            (chunk_base(i) as *mut ThreadBlock).write_volatile(block);
            core::ptr::write_bytes((base + TLS_OFFSET) as *mut u64, 0, TLS_WORDS);
            let frame = rsp as *mut u64;
            for w in 0..7 {
                frame.add(w).write(0);
            }
            frame.add(3).write(i as u64);
            frame.add(6).write(keel_fiber_start as *const () as u64);
        }
        s.slots[i] = Slot {
            rsp,
            gs_base: base + TLS_OFFSET,
            state: State::Ready,
            entry,
            argument,
        };
        Some(i)
    })
}

/// Switches to the next ready fiber (round robin), if any other is ready. Fibers call
/// it; the owner thread's own stack uses [`run`].
pub fn yield_now() {
    let next = sched(|s| next_ready(s, s.current));
    if let Some(n) = next {
        switch_to(n);
    }
}

/// Runs fibers until none is ready (all done). Call from the owner thread's own stack.
pub fn run() {
    while let Some(n) = sched(|s| next_ready(s, MAX_FIBERS)) {
        switch_to(n);
    }
}

/// Waits (yielding) until fiber `id` has finished.
pub fn join(id: FiberId) {
    while sched(|s| s.slots[id].state == State::Ready) {
        yield_now();
    }
}

/// The running fiber, or `None` on the thread's own stack.
pub fn current() -> Option<FiberId> {
    sched(|s| (s.current < MAX_FIBERS).then_some(s.current))
}

/// Fiber switches made since [`init`].
pub fn switches() -> u64 {
    sched(|s| s.switches)
}

/// The first ready fiber after `from` (`MAX_FIBERS` = the thread's own stack) in
/// round-robin order, other than the running one.
fn next_ready(s: &Scheduler, from: usize) -> Option<usize> {
    let used = s.used.min(MAX_FIBERS);
    let start = if from >= used { 0 } else { from + 1 };
    (start..used)
        .chain(0..start)
        .find(|&i| i != s.current && s.slots[i].state == State::Ready)
}

/// Saves the current context (fiber or main) and runs `to` (`MAX_FIBERS` = main).
fn switch_to(to: usize) {
    let p = SCHED.0.get();
    // SAFETY: owner thread only (every caller went through `sched`); raw pointers, so
    // no reference lives across the switch; `to` is Ready (its saved RSP is a frame
    // made by `spawn` or by an earlier switch) or main (saved when it switched away).
    unsafe {
        let from = (*p).current;
        let (from_rsp, from_gs): (*mut u64, *mut u64) = if from == MAX_FIBERS {
            (&raw mut (*p).main_rsp, &raw mut (*p).main_gs)
        } else {
            (
                &raw mut (*p).slots[from].rsp,
                &raw mut (*p).slots[from].gs_base,
            )
        };
        let (to_rsp, to_gs) = if to == MAX_FIBERS {
            ((*p).main_rsp, (*p).main_gs)
        } else {
            ((*p).slots[to].rsp, (*p).slots[to].gs_base)
        };
        (*p).current = to;
        (*p).switches += 1;
        let instructions = (*p).mode == GsMode::Instructions;
        if !instructions {
            // Fallback: the kernel sets the GS base (the fibers' bases are their TLS
            // blocks, known here; main's was recorded when it first switched away).
            let _ = Cap::<Tcb>::from_cptr((*p).tcb).set_gs_base(to_gs);
        }
        keel_fiber_switch(from_rsp, to_rsp, instructions as u64, from_gs, to_gs);
    }
}

/// First code of a new fiber (RSP 16-aligned, R12 = slot index).
extern "C" fn fiber_main(index: u64) -> ! {
    let (entry, argument) = sched(|s| {
        let slot = &s.slots[index as usize];
        (slot.entry, slot.argument)
    });
    entry(argument);
    let next = sched(|s| {
        s.slots[index as usize].state = State::Done;
        next_ready(s, index as usize).unwrap_or(MAX_FIBERS)
    });
    switch_to(next);
    unreachable!("a finished fiber was resumed")
}

unsafe extern "C" {
    fn keel_fiber_switch(
        from_rsp: *mut u64,
        to_rsp: u64,
        wrgsbase: u64,
        from_gs: *mut u64,
        to_gs: u64,
    );
    fn keel_fiber_start();
}

core::arch::global_asm!(
    r#"
    .text
    .balign 16
    .global keel_fiber_switch
keel_fiber_switch:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    test rdx, rdx
    jz 1f
    rdgsbase rax
    mov [rcx], rax
    wrgsbase r8
1:
    mov [rdi], rsp
    mov rsp, rsi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    .balign 16
    .global keel_fiber_start
keel_fiber_start:
    mov rdi, r12
    call {main}
    ud2
"#,
    main = sym fiber_main,
);

/// Thread-local word `i` (< [`TLS_WORDS`]) of the running fiber: `gs:[8 * i]`.
pub fn tls_get(i: usize) -> u64 {
    assert!(i < TLS_WORDS);
    let v: u64;
    // SAFETY: a load through GS; in a fiber GS points at its TLS block (the thread's
    // own GS base elsewhere: a fault, not undefined behaviour, if unmapped).
    unsafe {
        core::arch::asm!("mov {v}, gs:[{o}]", v = out(reg) v, o = in(reg) i * 8, options(nostack, readonly, preserves_flags))
    };
    v
}

/// Sets thread-local word `i` of the running fiber.
pub fn tls_set(i: usize, value: u64) {
    assert!(i < TLS_WORDS);
    // SAFETY: a store through GS into the running fiber's TLS block (see `tls_get`).
    unsafe {
        core::arch::asm!("mov gs:[{o}], {v}", v = in(reg) value, o = in(reg) i * 8, options(nostack, preserves_flags))
    };
}

/// RDGSBASE (#UD, a UserException 6 fault, without the FSGSBASE right).
pub fn rdgsbase() -> u64 {
    let v: u64;
    // SAFETY: reads the GS base; no memory access.
    unsafe {
        core::arch::asm!("rdgsbase {}", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// WRGSBASE (#UD without the right). Rust code here never addresses memory through GS
/// except [`tls_get`]/[`tls_set`], so any canonical value is sound.
pub fn wrgsbase(value: u64) {
    // SAFETY: changes the GS base only (see above).
    unsafe {
        core::arch::asm!("wrgsbase {}", in(reg) value, options(nomem, nostack, preserves_flags))
    };
}

/// RDFSBASE (#UD without the right).
pub fn rdfsbase() -> u64 {
    let v: u64;
    // SAFETY: reads the FS base; no memory access.
    unsafe {
        core::arch::asm!("rdfsbase {}", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// WRFSBASE (#UD without the right); Keel's Rust code does not use FS.
pub fn wrfsbase(value: u64) {
    // SAFETY: changes the FS base only; nothing in this program addresses through FS.
    unsafe {
        core::arch::asm!("wrfsbase {}", in(reg) value, options(nomem, nostack, preserves_flags))
    };
}

/// The word at `fs:[0]`, or at `gs:[0]` (`gs` true): how a thread without the right
/// checks which base the CPU holds.
pub fn segment_word(gs: bool) -> u64 {
    let v: u64;
    // SAFETY: a load through FS/GS; the caller has mapped memory there (else a fault).
    unsafe {
        if gs {
            core::arch::asm!("mov {}, gs:[0]", out(reg) v, options(nostack, readonly, preserves_flags))
        } else {
            core::arch::asm!("mov {}, fs:[0]", out(reg) v, options(nostack, readonly, preserves_flags))
        }
    };
    v
}

/// The FS and GS selectors (bits 15:0 and 31:16) as the CPU holds them.
pub fn selectors() -> u64 {
    let (fs, gs): (u64, u64);
    // SAFETY: reads two segment registers.
    unsafe {
        core::arch::asm!("mov {0:r}, fs", "mov {1:r}, gs", out(reg) fs, out(reg) gs, options(nomem, nostack, preserves_flags))
    };
    (fs & 0xffff) | (gs & 0xffff) << 16
}
