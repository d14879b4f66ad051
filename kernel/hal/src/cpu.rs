//! CPU identification, feature flags and the few instructions the rest of the kernel
//! needs as safe functions (interrupt flag, halt, TSC).

use spin::Once;
use x86::cpuid::CpuId;

/// The CPU features Keel cares about, read once with CPUID on the bootstrap CPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// x2APIC mode of the local APIC.
    pub x2apic: bool,
    /// The local APIC timer's TSC-deadline mode.
    pub tsc_deadline: bool,
    /// RDFSBASE/WRFSBASE/RDGSBASE/WRGSBASE.
    pub fsgsbase: bool,
    /// 1 GiB pages.
    pub huge_1g: bool,
    /// No-execute pages (EFER.NXE).
    pub nx: bool,
    /// Supervisor-mode execution prevention.
    pub smep: bool,
    /// Supervisor-mode access prevention.
    pub smap: bool,
    /// User-mode instruction prevention.
    pub umip: bool,
    /// Global pages.
    pub pge: bool,
    /// Process-context identifiers (CR4.PCIDE).
    pub pcid: bool,
    /// The INVPCID instruction.
    pub invpcid: bool,
    /// Invariant TSC (constant rate).
    pub invariant_tsc: bool,
    /// Running under a hypervisor (CPUID.1:ECX[31]).
    pub hypervisor: bool,
}

static FEATURES: Once<Features> = Once::new();

/// Reads the CPU features (first call) and returns them.
pub fn features() -> &'static Features {
    FEATURES.call_once(|| {
        let f = read_features();
        HAS_FSGSBASE.store(f.fsgsbase, core::sync::atomic::Ordering::Relaxed);
        f
    })
}

fn read_features() -> Features {
    {
        let cpuid = CpuId::new();
        let info = cpuid.get_feature_info();
        let ext = cpuid.get_extended_feature_info();
        let ext_fn = cpuid.get_extended_processor_and_feature_identifiers();
        let power = cpuid.get_advanced_power_mgmt_info();
        Features {
            x2apic: info.as_ref().is_some_and(|f| f.has_x2apic()),
            tsc_deadline: info.as_ref().is_some_and(|f| f.has_tsc_deadline()),
            hypervisor: info.as_ref().is_some_and(|f| f.has_hypervisor()),
            pge: info.as_ref().is_some_and(|f| f.has_pge()),
            pcid: info.as_ref().is_some_and(|f| f.has_pcid()),
            invpcid: ext.as_ref().is_some_and(|f| f.has_invpcid()),
            fsgsbase: ext.as_ref().is_some_and(|f| f.has_fsgsbase()),
            smep: ext.as_ref().is_some_and(|f| f.has_smep()),
            smap: ext.as_ref().is_some_and(|f| f.has_smap()),
            umip: ext.as_ref().is_some_and(|f| f.has_umip()),
            huge_1g: ext_fn.as_ref().is_some_and(|f| f.has_1gib_pages()),
            nx: ext_fn.as_ref().is_some_and(|f| f.has_execute_disable()),
            invariant_tsc: power.as_ref().is_some_and(|f| f.has_invariant_tsc()),
        }
    }
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is never set by Keel.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Enables interrupts, waits for one, and disables them again.
pub fn wait_for_interrupt() {
    // SAFETY: the kernel allows interrupts here; `sti; hlt` takes the interrupt after
    // HLT starts (STI's one-instruction shadow), so none is lost between the two.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// A preemption window: lets the interrupts waiting on this CPU arrive (STI, NOP, CLI;
/// STI's shadow makes the NOP run first). The interrupt path sees the return address
/// [`preemption_window_end`] and only acknowledges and defers them
/// (`rseq::defer_interrupt`): this CPU holds the big kernel lock here. Returns whether
/// any interrupt is deferred.
pub fn preemption_window() -> bool {
    // SAFETY: interrupts are enabled for one instruction; the handlers that can run
    // then defer their work (see above) and touch nothing this code holds. The
    // function clobbers nothing (C ABI, no registers used).
    unsafe { keel_preemption_window() };
    crate::rseq::deferred_interrupts()
}

core::arch::global_asm!(
    r#"
    .text
    .balign 16
    .global keel_preemption_window
keel_preemption_window:
    sti
    nop
    .global keel_preemption_window_end
keel_preemption_window_end:
    cli
    ret
"#
);

unsafe extern "C" {
    fn keel_preemption_window();
    static keel_preemption_window_end: u8;
}

/// The address at which interrupts taken in [`preemption_window`] return.
pub fn preemption_window_end() -> u64 {
    (&raw const keel_preemption_window_end) as u64
}

/// The current RFLAGS.
pub fn rflags() -> u64 {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack; no other effect.
    unsafe {
        core::arch::asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags))
    };
    flags
}

/// Whether interrupts are enabled (RFLAGS.IF).
pub fn interrupts_enabled() -> bool {
    rflags() & (1 << 9) != 0
}

/// Stops this CPU for good (interrupts off, HLT in a loop).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI; HLT only stops this CPU; NMIs still run their handlers and return
        // to the loop.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// A spin-loop hint for busy waits.
#[inline(always)]
pub fn relax() {
    core::hint::spin_loop();
}

/// IA32_PAT as every CPU runs with it (seL4's layout): entries 0-3 as at reset (write-
/// back, write-through, UC-, uncacheable: an entry without the PAT bit means what its
/// PWT and PCD bits say), entry 4 write-combining (the PAT bit alone:
/// seL4_X86_WriteCombining), entries 5-7 as at reset. One byte per entry, entry 0 lowest.
pub const PAT: u64 = 0x0007_0401_0007_0406;

/// IA32_PAT of this CPU.
pub fn pat() -> u64 {
    // SAFETY: IA32_PAT exists on every x86-64 CPU; reading it has no side effects.
    unsafe { x86::msr::rdmsr(x86::msr::IA32_PAT) }
}

/// Turns on the protections the CPU has: write protection in ring 0, global pages, NX
/// (already on from boot), SMEP, SMAP and UMIP; and PCIDs where `crate::tlb` uses them.
/// Also programs the memory types ([`PAT`]). Runs on every CPU.
pub fn enable_protections() {
    // SAFETY: [`PAT`] changes only entry 4 from its reset value (write-back), and no
    // mapping yet uses entry 4 (the kernel's entries never set the PAT bit; user
    // mappings come later), so no cached line changes type; every CPU writes the same
    // value before it runs user code, as the SDM requires.
    unsafe { x86::msr::wrmsr(x86::msr::IA32_PAT, PAT) };
    use x86::controlregs::{Cr0, Cr4, cr0, cr0_write, cr4, cr4_write};
    let f = features();
    // SAFETY: each bit is set only when CPUID reports the feature (FSGSBASE only lets
    // code change its own FS/GS base, see trap.rs for the kernel's side); the kernel never
    // executes user pages (SMEP), never dereferences user pointers (SMAP: it reads user
    // memory through the direct map) and user code has no reason to run SGDT & co (UMIP).
    unsafe {
        cr0_write(cr0() | Cr0::CR0_WRITE_PROTECT);
        let mut bits = cr4();
        if f.pge {
            bits |= Cr4::CR4_ENABLE_GLOBAL_PAGES;
        }
        if f.smep {
            bits |= Cr4::CR4_ENABLE_SMEP;
        }
        if f.smap {
            bits |= Cr4::CR4_ENABLE_SMAP;
        }
        if f.umip {
            bits |= Cr4::CR4_ENABLE_UMIP;
        }
        if f.fsgsbase {
            // The paranoid entry uses RDGSBASE/WRGSBASE while this is on; the return
            // path turns it off for threads not allowed the instructions.
            bits |= Cr4::CR4_ENABLE_FSGSBASE;
        }
        if crate::tlb::pcids() {
            // CR3[11:0] is 0 here (the kernel's PML4, PCID 0), as setting PCIDE
            // requires; `tlb` tags user address spaces with their ASIDs from now on.
            bits |= Cr4::CR4_ENABLE_PCID;
        }
        cr4_write(bits);
    }
}

/// (CR0, CR4) of this CPU.
pub fn control_registers() -> (u64, u64) {
    // SAFETY: reading control registers has no side effects.
    unsafe {
        (
            x86::controlregs::cr0().bits() as u64,
            x86::controlregs::cr4().bits() as u64,
        )
    }
}

/// IA32_EFER of this CPU.
pub fn efer() -> u64 {
    // SAFETY: IA32_EFER exists on every x86-64 CPU; reading it has no side effects.
    unsafe { x86::msr::rdmsr(x86::msr::IA32_EFER) }
}

/// CR4.FSGSBASE (bit 16).
const CR4_FSGSBASE: u64 = 1 << 16;

/// Whether the CPU has RD/WR FS/GS BASE (cached, for the thread-switch path).
pub fn has_fsgsbase() -> bool {
    HAS_FSGSBASE.load(core::sync::atomic::Ordering::Relaxed)
}

static HAS_FSGSBASE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Turns CR4.FSGSBASE on or off on this CPU (no-op without the feature or if already
/// so). With it off, user RD/WR FS/GS BASE raise #UD.
pub fn set_user_fsgsbase(on: bool) {
    if !features().fsgsbase {
        return;
    }
    let cr4: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack)) };
    let new = if on {
        cr4 | CR4_FSGSBASE
    } else {
        cr4 & !CR4_FSGSBASE
    };
    if new != cr4 {
        // SAFETY: only the FSGSBASE bit changes; the paranoid entry reads CR4 to pick
        // its method, and with the bit off no thread can hold a negative GS base.
        unsafe { core::arch::asm!("mov cr4, {}", in(reg) new, options(nomem, nostack)) };
    }
}
