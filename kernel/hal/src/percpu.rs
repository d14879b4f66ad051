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
    /// Kernel-mode exception expected by a probe (see `trap::probe`): its record.
    pub probe: crate::trap::ProbeRecord,
    /// This CPU's GDT, TSS and their pointers.
    pub tables: CpuTables,
}

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
            probe: crate::trap::ProbeRecord::new(),
            tables: CpuTables::new(),
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

/// The current CPU's index.
pub fn cpu_index() -> usize {
    current().cpu_index as usize
}

/// Counts a timer interrupt on this CPU.
pub fn count_tick() {
    current().ticks.fetch_add(1, Ordering::Relaxed);
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
