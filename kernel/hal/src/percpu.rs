//! Per-CPU areas, reached through the kernel GS base from the first Rust instruction.
//!
//! Each CPU has one [`PerCpu`], found by `mov rax, gs:[0]` (its `self_ptr`). The
//! assembly entry paths use the fixed offsets `OFFSET_*`; `PerCpu` is `repr(C)` and a
//! compile-time check keeps the offsets true. The bootstrap CPU's area is a static so
//! that GS is valid before the heap exists; the other CPUs' areas come from the boot
//! heap and live forever.
//!
//! Invariant: while the CPU runs kernel code, `IA32_GS_BASE` holds the address of its
//! `PerCpu` (user GS is in `IA32_KERNEL_GS_BASE` until SWAPGS on exit).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::gdt::CpuTables;

/// Offset of `PerCpu::self_ptr`.
pub const OFFSET_SELF: usize = 0;
/// Offset of `PerCpu::kernel_stack_top` (loaded by the SYSCALL entry).
pub const OFFSET_KERNEL_STACK_TOP: usize = 8;
/// Offset of `PerCpu::user_rsp_scratch` (the SYSCALL entry's user RSP save slot).
pub const OFFSET_USER_RSP: usize = 16;
/// Offset of `PerCpu::context_top` (where SYSCALL saves the current thread's registers).
pub const OFFSET_CONTEXT_TOP: usize = 24;

/// One CPU's private data.
#[repr(C, align(64))]
pub struct PerCpu {
    /// Address of this structure (so `gs:[0]` yields a normal pointer).
    pub self_ptr: u64,
    /// Top of this CPU's kernel stack (also TSS.RSP0).
    pub kernel_stack_top: u64,
    /// User RSP saved by the SYSCALL entry before it switches stacks.
    pub user_rsp_scratch: u64,
    /// Just past the current thread's saved-register area in its TCB (also TSS.RSP0).
    pub context_top: u64,
    /// FS base loaded for user mode on this CPU.
    pub loaded_fs_base: u64,
    /// GS base loaded for user mode on this CPU (in IA32_KERNEL_GS_BASE while in the kernel).
    pub loaded_gs_base: u64,
    /// Dense CPU index (0 = bootstrap CPU).
    pub cpu_index: u32,
    /// Local APIC ID.
    pub apic_id: u32,
    /// Timer interrupts taken on this CPU.
    pub ticks: AtomicU64,
    /// Direct-map address of the context of the thread this CPU runs in user mode (set
    /// just before it returns to user mode, cleared first thing on every entry from user
    /// mode and when idle): another CPU that must change that thread waits for it to be
    /// 0 or another thread ("remote stall").
    pub running: AtomicU64,
    /// Set by a CPU that stalls this one: save the FPU registers' owner's state into its
    /// TCB before reporting the stall (its thread may run elsewhere next).
    pub fpu_save_request: core::sync::atomic::AtomicBool,
    /// The running thread may have changed its FS/GS state without a kernel entry
    /// telling: RD/WR FS/GS BASE allowed, a non-zero selector or a non-zero base loaded
    /// (a null selector load clears the base on Intel). Entries then read the bases.
    /// (The byte after `fpu_save_request`: the SYSCALL entry tests both with one load,
    /// [`OFFSET_ENTRY_WORK`].)
    pub save_bases: bool,
    /// The debug registers hold a thread's breakpoints (DR7 non-zero). (The byte after
    /// `save_bases`: `entry::prepare_thread` tests both with one load.)
    pub debug_loaded: bool,
    /// Kernel-mode exception expected by a probe (see `trap::probe`): its record.
    pub probe: crate::trap::ProbeRecord,
    /// This CPU's GDT, TSS and their pointers.
    pub tables: CpuTables,
    /// Event counters (index: [`Event`]), updated by restartable sequences
    /// ([`crate::rseq::count_event`]) from the kernel and from NMI/IRQ handlers.
    pub events: [u64; EVENTS],
    /// Interrupts taken inside a preemption window (`cpu::preemption_window`) and not
    /// yet handled: bit `v` of word `v / 64` for vector `v`. Set by the interrupt path
    /// and taken by the kernel, both with restartable sequences
    /// (`crate::rseq::defer_interrupt`, `crate::rseq::take_deferred_interrupt`).
    pub deferred_interrupts: [u64; 4],
    /// Entries ever appended to [`PerCpu::trace`] (the next slot is this modulo the size).
    pub trace_head: u64,
    /// The trace ring ([`crate::rseq::trace`]).
    pub trace: [TraceEntry; TRACE_ENTRIES as usize],
    /// State of a restartable-sequence injection test ([`crate::rseq::inject_at`]).
    pub injection: Injection,
    /// The running thread may use RD/WR FS/GS BASE (CR4.FSGSBASE is on): its bases
    /// are read back on every entry.
    pub user_fsgsbase: bool,
    /// The PML4 this CPU last loaded for a thread (CR3 without reading it).
    pub loaded_pml4: u64,
    /// Paranoid entries that found a user GS base in kernel mode (entry/exit windows).
    pub paranoid_user_gs: AtomicU64,
    /// The LDT object in LDTR (physical address; 0 = the null LDT).
    pub loaded_ldt: u64,
    /// This CPU's espfix64 IRET frame address in the alias with bits 31:16 zero.
    pub espfix_frame: u64,
    /// FPU (issue 7, `fpu.rs`): the context (TCB record, direct map) whose FPU state
    /// the registers hold unsaved, CR0.TS clear; 0: the registers hold the initial
    /// state and CR0.TS is set; `fpu::DIRTY`: unsaved state of a thread that is gone.
    /// Written by other CPUs (under the big kernel lock) when a TCB is deleted.
    pub fpu_owner: AtomicU64,
    /// FS selector (bits 15:0) and GS selector (bits 31:16) loaded for user mode
    /// (the kernel never loads FS or GS itself; doc/fsgsbase.md).
    pub loaded_selectors: u64,
}

/// Number of [`Event`] kinds.
pub const EVENTS: usize = 8;
/// Entries in a CPU's trace ring (a power of two).
pub const TRACE_ENTRIES: u64 = 64;

/// Per-CPU events counted with restartable sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Event {
    /// NMIs taken.
    Nmi = 0,
    /// Timer interrupts.
    Timer = 1,
    /// Other interrupts (IPIs, device IRQs).
    Irq = 2,
    /// Debug exceptions (#DB) taken.
    Debug = 3,
    /// Interrupted sequences restarted.
    RseqRestart = 4,
    /// Machine checks and double faults.
    Fatal = 5,
    /// The benchmark's counter.
    Bench = 6,
    /// Tests' counter.
    Test = 7,
}

impl Event {
    /// The event with this index (unknown indexes count as [`Event::Test`]).
    pub fn from_u64(v: u64) -> Self {
        match v {
            0 => Self::Nmi,
            1 => Self::Timer,
            2 => Self::Irq,
            3 => Self::Debug,
            4 => Self::RseqRestart,
            5 => Self::Fatal,
            6 => Self::Bench,
            _ => Self::Test,
        }
    }
}

/// One trace record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceEntry {
    /// The [`Event`].
    pub event: u64,
    /// Its argument (vector, RIP, ...).
    pub argument: u64,
    /// TSC when it was recorded.
    pub tsc: u64,
    /// Padding to 32 bytes.
    pub reserved: u64,
}

/// Record of an injection test: the #DB handler counts single steps while `armed`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Injection {
    /// Single-step traps are the test's.
    pub armed: bool,
    /// The step at which to interrupt.
    pub target: u64,
    /// The event the interruption counts.
    pub event: u64,
    /// Steps seen.
    pub steps: u64,
    /// RIP at the interruption.
    pub injected_rip: u64,
    /// Whether the interruption restarted a sequence.
    pub restarted: bool,
}

/// Offset of `PerCpu::running` (cleared by the SYSCALL entry's fast check).
pub const OFFSET_RUNNING: usize = core::mem::offset_of!(PerCpu, running);
/// Offset of the two bytes `fpu_save_request` and `save_bases`: the SYSCALL entry
/// takes its slow path when this 16-bit word or a user selector is non-zero.
pub const OFFSET_ENTRY_WORK: usize = core::mem::offset_of!(PerCpu, fpu_save_request);
const _: () = assert!(
    core::mem::offset_of!(PerCpu, save_bases) == OFFSET_ENTRY_WORK + 1
        && core::mem::offset_of!(PerCpu, debug_loaded) == OFFSET_ENTRY_WORK + 2,
    "the entry tests fpu_save_request and save_bases as one word, prepare_thread \
     save_bases and debug_loaded"
);
/// Offset of `PerCpu::espfix_frame`.
pub const OFFSET_ESPFIX_FRAME: usize = core::mem::offset_of!(PerCpu, espfix_frame);
/// Offset of `PerCpu::events`.
pub const OFFSET_EVENTS: usize = core::mem::offset_of!(PerCpu, events);
/// Offset of `PerCpu::deferred_interrupts`.
pub const OFFSET_DEFERRED: usize = core::mem::offset_of!(PerCpu, deferred_interrupts);
/// Offset of `PerCpu::trace_head`.
pub const OFFSET_TRACE_HEAD: usize = core::mem::offset_of!(PerCpu, trace_head);
/// Offset of `PerCpu::trace`.
pub const OFFSET_TRACE: usize = core::mem::offset_of!(PerCpu, trace);
const _: () = assert!(core::mem::size_of::<TraceEntry>() == 32);

const _: () = {
    assert!(core::mem::offset_of!(PerCpu, self_ptr) == OFFSET_SELF);
    assert!(core::mem::offset_of!(PerCpu, kernel_stack_top) == OFFSET_KERNEL_STACK_TOP);
    assert!(core::mem::offset_of!(PerCpu, user_rsp_scratch) == OFFSET_USER_RSP);
    assert!(core::mem::offset_of!(PerCpu, context_top) == OFFSET_CONTEXT_TOP);
};

impl PerCpu {
    /// A per-CPU area for CPU `cpu_index` (not yet installed).
    pub const fn new(cpu_index: u32, apic_id: u32) -> Self {
        Self {
            self_ptr: 0,
            kernel_stack_top: 0,
            user_rsp_scratch: 0,
            context_top: 0,
            loaded_fs_base: 0,
            loaded_gs_base: 0,
            cpu_index,
            apic_id,
            ticks: AtomicU64::new(0),
            running: AtomicU64::new(0),
            fpu_save_request: core::sync::atomic::AtomicBool::new(false),
            probe: crate::trap::ProbeRecord::new(),
            tables: CpuTables::new(),
            events: [0; EVENTS],
            deferred_interrupts: [0; 4],
            trace_head: 0,
            trace: [TraceEntry {
                event: 0,
                argument: 0,
                tsc: 0,
                reserved: 0,
            }; TRACE_ENTRIES as usize],
            injection: Injection {
                armed: false,
                target: 0,
                event: 0,
                steps: 0,
                injected_rip: 0,
                restarted: false,
            },
            user_fsgsbase: false,
            loaded_pml4: 0,
            debug_loaded: false,
            paranoid_user_gs: AtomicU64::new(0),
            loaded_ldt: 0,
            espfix_frame: 0,
            fpu_owner: AtomicU64::new(crate::fpu::DIRTY),
            loaded_selectors: 0,
            save_bases: false,
        }
    }
}

/// Makes `area` this CPU's per-CPU area: sets its self pointer and the GS base.
///
/// # Safety
/// `area` must live forever and never be installed on another CPU.
pub unsafe fn install(area: *mut PerCpu) {
    // SAFETY: the caller gives exclusive, 'static ownership of `area` to this CPU.
    unsafe {
        (*area).self_ptr = area as u64;
        x86::msr::wrmsr(x86::msr::IA32_GS_BASE, area as u64);
        x86::msr::wrmsr(x86::msr::IA32_KERNEL_GSBASE, 0);
        register(&*area);
    }
}

/// The current CPU's area.
#[inline(always)]
pub fn current() -> &'static PerCpu {
    let ptr: u64;
    // SAFETY: by the module invariant gs:[0] holds the address of this CPU's PerCpu,
    // which lives forever. Only shared references are handed out; mutable fields use
    // atomics or are touched only by this CPU with interrupts disabled.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) ptr, options(nostack, readonly, preserves_flags));
        &*(ptr as *const PerCpu)
    }
}

/// The current CPU's index (one GS-relative load).
#[inline(always)]
pub fn cpu_index() -> usize {
    let index: u32;
    // SAFETY: by the module invariant GS points at this CPU's PerCpu, whose
    // `cpu_index` never changes once the CPU runs.
    unsafe {
        core::arch::asm!(
            "mov {:e}, gs:[{offset}]",
            out(reg) index,
            offset = const core::mem::offset_of!(PerCpu, cpu_index),
            options(nostack, readonly, preserves_flags, pure)
        )
    };
    // Below MAX_CPUS already; the mask says so to the compiler, once, so the kernel's
    // per-CPU array indexing needs no reduction of its own.
    index as usize % crate::layout::MAX_CPUS
}

/// Counts a timer interrupt on this CPU.
pub fn count_tick() {
    current().ticks.fetch_add(1, Ordering::Relaxed);
    crate::rseq::count_event(Event::Timer);
}

/// This CPU's count of `event` (a plain read: only this CPU writes it).
pub fn event_count(event: Event) -> u64 {
    // SAFETY: the counter belongs to this CPU's area and is written only by this CPU;
    // a volatile read sees the latest committed value.
    unsafe { (&raw const current().events[event as usize]).read_volatile() }
}

/// CPU `cpu`'s count of `event` (may lag by updates in flight on that CPU).
pub fn event_count_of(cpu: usize, event: Event) -> u64 {
    // SAFETY: registered areas live forever; an aligned u64 read is not torn.
    area(cpu).map_or(0, |a| unsafe {
        (&raw const a.events[event as usize]).read_volatile()
    })
}

/// The last `n` (at most the ring size) trace entries of this CPU, oldest first.
pub fn trace_tail(out: &mut [TraceEntry]) -> usize {
    let area = current();
    // SAFETY: this CPU's own ring, read with interrupts disabled (an NMI may append;
    // the copy may then include its entry or not, never a torn head).
    let head = unsafe { (&raw const area.trace_head).read_volatile() };
    let n = (out.len() as u64).min(head).min(TRACE_ENTRIES);
    for i in 0..n {
        let index = (head - n + i) % TRACE_ENTRIES;
        // SAFETY: index is within the ring.
        out[i as usize] = unsafe { (&raw const area.trace[index as usize]).read_volatile() };
    }
    n as usize
}

static mut BOOTSTRAP_AREA: PerCpu = PerCpu::new(0, 0);

/// Installs the bootstrap CPU's static area (first thing in `hal_boot_main`).
pub fn install_bootstrap() {
    // SAFETY: called once, on the bootstrap CPU, before anything reads GS.
    unsafe { install(&raw mut BOOTSTRAP_AREA) };
}

/// Sets this CPU's local APIC ID in its area (once the APIC is up).
pub fn set_apic_id(apic_id: u32) {
    let area = current() as *const PerCpu as *mut PerCpu;
    // SAFETY: only this CPU writes its own area, with interrupts disabled, and nothing
    // holds a reference to this field across the write.
    unsafe { (*area).apic_id = apic_id };
}

static AREAS: [core::sync::atomic::AtomicPtr<PerCpu>; crate::layout::MAX_CPUS] =
    [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; crate::layout::MAX_CPUS];

/// Records `area` as the per-CPU area of its CPU index (for cross-CPU reads).
fn register(area: &'static PerCpu) {
    AREAS[area.cpu_index as usize].store(area as *const PerCpu as *mut PerCpu, Ordering::Release);
}

/// The per-CPU area of CPU `index`, if that CPU exists.
pub fn area(index: usize) -> Option<&'static PerCpu> {
    let ptr = AREAS.get(index)?.load(Ordering::Acquire);
    // SAFETY: registered areas live forever; only shared references are handed out.
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

/// The word at the bottom of IST stack `ist` of CPU `cpu` (the kernel GS base the
/// paranoid entry loads).
pub fn ist_gs_word(cpu: usize, ist: u64) -> u64 {
    let bottom = crate::layout::stack_bottom(cpu, ist);
    let Some(t) = crate::paging::translate(crate::paging::kernel_pml4(), bottom) else {
        return 0;
    };
    // SAFETY: the word is mapped kernel memory (checked), read through the direct map.
    unsafe { (crate::layout::phys_to_virt(t.phys) as *const u64).read_volatile() }
}
