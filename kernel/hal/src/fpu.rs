//! Per-thread x87/SSE/AVX(/AVX-512) state (issue 7; doc/entry.md §10).
//!
//! The kernel is soft-float and never executes an FPU, SSE or AVX instruction except
//! the save/restore instructions here, so the registers always hold user state. Each
//! TCB object carries its thread's state area (`tcb::FPU_OFFSET`), saved with XSAVEOPT
//! (XSAVE without it; FXSAVE on CPUs without XSAVE) and restored with XRSTOR (FXRSTOR).
//!
//! Per CPU, `PerCpu::fpu_owner` says whose state the registers hold:
//! - a context address: that thread's, unsaved, CR0.TS clear;
//! - 0: the initial state (nobody's), CR0.TS set (an FPU instruction raises #NM);
//! - [`DIRTY`]: unsaved state of a thread that was deleted (or whose FPU flag changed
//!   while it ran on another CPU), CR0.TS clear: scrubbed at the next switch.
//!
//! Switching (`entry::prepare_thread` calls [`switch_to`] only when needed):
//! - **eager** (default): switching to a thread that may use the FPU saves the owner's
//!   state and restores the thread's; switching to an FPU-disabled thread saves the
//!   owner's state and loads the initial state with CR0.TS set;
//! - **lazy** (`fpu=lazy`): switching away from the owner saves its state and loads the
//!   initial state with CR0.TS set; the thread's first FPU instruction raises #NM and
//!   [`device_not_available`] restores its state.
//!
//! In both modes a thread never runs with another thread's values in the registers
//! (not even behind CR0.TS, which only stops architectural access: LazyFP), a switch
//! between two threads that hold no FPU state (FPU-disabled, or lazy and not using it)
//! touches nothing, and a thread's area is up to date whenever it is not the running
//! thread of some CPU (going idle saves too), so migration needs no cross-CPU work.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use keel_kern::object::tcb::{self, Tcb};
use spin::Once;

/// `PerCpu::fpu_owner` value: the registers hold state nobody will save.
pub const DIRTY: u64 = 1;

/// XCR0 bits Keel enables where the CPU has them: x87, SSE, AVX, and AVX-512's opmask,
/// ZMM_Hi256 and Hi16_ZMM. Not: MPX (bits 3–4, deprecated), PKRU (bit 9: needs
/// CR4.PKE, which Keel leaves off), AMX tile state (8 KiB; would need a larger TCB).
const USER_COMPONENTS: u64 = 0b1110_0111;
/// The three AVX-512 components (enabled together or not at all).
const AVX512_COMPONENTS: u64 = 0b1110_0000;

/// How this machine saves FPU state (the same on every CPU).
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// XSAVE/XRSTOR (else FXSAVE/FXRSTOR).
    pub xsave: bool,
    /// XSAVEOPT (saves only components modified since the last XRSTOR).
    pub xsaveopt: bool,
    /// XCR0 (with XSAVE), the requested-feature bitmap of every save and restore.
    pub xcr0: u64,
    /// Bytes of the save area.
    pub size: u64,
    /// Lazy switching (`fpu=lazy`).
    pub lazy: bool,
}

static CONFIG: Once<Config> = Once::new();
/// The save/restore method, copied out of [`CONFIG`] for the thread-switch path:
/// 0 FXSAVE, 1 XSAVE, 2 XSAVEOPT.
static METHOD: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
/// XCR0, copied out of [`CONFIG`] for the thread-switch path.
static XCR0: AtomicU64 = AtomicU64::new(0);
static LAZY: AtomicBool = AtomicBool::new(false);

/// The initial state area: FCW 0x37F, MXCSR 0x1F80, XSAVE header zero (every component
/// in its initial configuration).
#[repr(C, align(64))]
struct Area([u8; tcb::FPU_BYTES as usize]);

static INITIAL: Area = {
    let mut a = [0u8; tcb::FPU_BYTES as usize];
    a[0] = tcb::FPU_INITIAL_FCW as u8;
    a[1] = (tcb::FPU_INITIAL_FCW >> 8) as u8;
    a[24] = tcb::FPU_INITIAL_MXCSR as u8;
    a[25] = (tcb::FPU_INITIAL_MXCSR >> 8) as u8;
    Area(a)
};

/// Reads the `fpu=` boot switch (before [`init_cpu`] on the bootstrap CPU).
pub fn configure(cmdline: &str) {
    let lazy = keel_kern::cmdline::value(cmdline, "fpu") == Some("lazy");
    LAZY.store(lazy, Ordering::Relaxed);
}

/// The machine's FPU configuration (after [`init_cpu`] on the bootstrap CPU).
pub fn config() -> Config {
    *CONFIG.get().expect("fpu::init_cpu not run")
}

fn cpuid(leaf: u32, sub: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, sub)
}

fn xsetbv(xcr0: u64) {
    // SAFETY: CR4.OSXSAVE is set and `xcr0` holds only components CPUID reports, x87
    // always, and AVX/AVX-512 only with SSE (XSETBV's validity rules).
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0, in("eax") xcr0 as u32,
            in("edx") (xcr0 >> 32) as u32, options(nomem, nostack))
    };
}

/// Sets up this CPU's FPU: CR0.MP and NE on, EM off; CR4.OSFXSR and OSXMMEXCPT (SSE
/// and #XM), CR4.OSXSAVE and XCR0 where XSAVE exists; initial register state with
/// CR0.TS set. Runs on every CPU; the first call (bootstrap CPU) fixes the [`Config`].
pub fn init_cpu() {
    const CR0_MP: u64 = 1 << 1;
    const CR0_EM: u64 = 1 << 2;
    const CR0_TS: u64 = 1 << 3;
    const CR0_NE: u64 = 1 << 5;
    const CR4_OSFXSR: u64 = 1 << 9;
    const CR4_OSXMMEXCPT: u64 = 1 << 10;
    const CR4_OSXSAVE: u64 = 1 << 18;
    let has_xsave = cpuid(1, 0).ecx & (1 << 26) != 0;
    let (cr0, cr4): (u64, u64);
    // SAFETY: reading control registers has no side effects.
    unsafe {
        core::arch::asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
    }
    let mut new_cr4 = cr4 | CR4_OSFXSR | CR4_OSXMMEXCPT;
    if has_xsave {
        new_cr4 |= CR4_OSXSAVE;
    }
    // SAFETY: only FPU-related bits change: the kernel runs no FPU/SSE code (soft-float
    // target), so none of its instructions changes meaning; TS stays clear until the
    // initial state is loaded below.
    unsafe {
        core::arch::asm!("mov cr0, {}", in(reg) (cr0 | CR0_MP | CR0_NE) & !(CR0_EM | CR0_TS),
            options(nomem, nostack));
        core::arch::asm!("mov cr4, {}", in(reg) new_cr4, options(nomem, nostack));
    }
    let first_cpu = !CONFIG.is_completed();
    let config = CONFIG.call_once(|| {
        let lazy = LAZY.load(Ordering::Relaxed);
        if !has_xsave {
            log::info!("FXSAVE (no XSAVE), 512-byte area");
            return Config {
                xsave: false,
                xsaveopt: false,
                xcr0: 0,
                size: 512,
                lazy,
            };
        }
        let leaf = cpuid(0xd, 0);
        let supported = leaf.eax as u64 | (leaf.edx as u64) << 32;
        let mut xcr0 = supported & USER_COMPONENTS;
        if xcr0 & AVX512_COMPONENTS != AVX512_COMPONENTS {
            xcr0 &= !AVX512_COMPONENTS;
        }
        if xcr0 & 0b100 == 0 {
            xcr0 &= !AVX512_COMPONENTS;
        }
        xsetbv(xcr0);
        let mut size = cpuid(0xd, 0).ebx as u64;
        if size > tcb::FPU_BYTES {
            log::warn!(
                "fpu: XSAVE area {size} bytes > {}: AVX-512 off",
                tcb::FPU_BYTES
            );
            xcr0 &= !AVX512_COMPONENTS;
            xsetbv(xcr0);
            size = cpuid(0xd, 0).ebx as u64;
        }
        let xsaveopt = cpuid(0xd, 1).eax & 1 != 0;
        log::info!(
            "XSAVE{} XCR0 {xcr0:#x}, {size}-byte area, {} switching",
            if xsaveopt { "OPT" } else { "" },
            if lazy { "lazy" } else { "eager" }
        );
        Config {
            xsave: true,
            xsaveopt,
            xcr0,
            size,
            lazy,
        }
    });
    METHOD.store(
        if config.xsaveopt {
            2
        } else {
            config.xsave as u8
        },
        Ordering::Relaxed,
    );
    XCR0.store(config.xcr0, Ordering::Relaxed);
    if first_cpu {
        // Eager switching with XSAVEOPT: [`switch_to`]'s inline case applies (patched
        // before any other CPU starts or any thread runs).
        crate::switches::set_code_switch(
            crate::switches::Switch::FpuEagerXsaveopt,
            config.xsaveopt && !config.lazy,
        );
    }
    if config.xsave {
        xsetbv(config.xcr0);
    }
    // SAFETY: loads the initial state from a valid area; CR0.TS is clear.
    unsafe { restore(INITIAL.0.as_ptr() as u64) };
    set_ts();
    crate::percpu::current()
        .fpu_owner
        .store(0, Ordering::Relaxed);
}

/// Whether a switch to a thread that may use the FPU loads its state (eager).
#[inline(always)]
pub fn eager() -> bool {
    !LAZY.load(Ordering::Relaxed)
}

fn set_ts() {
    // SAFETY: sets CR0.TS only (the kernel itself executes no FPU instruction while it
    // is set except after clearing it again in this module).
    unsafe {
        core::arch::asm!("mov {t}, cr0", "or {t}, 8", "mov cr0, {t}", t = out(reg) _,
            options(nomem, nostack))
    };
}

fn clear_ts() {
    // SAFETY: CLTS only clears CR0.TS.
    unsafe { core::arch::asm!("clts", options(nomem, nostack)) };
}

/// Saves the registers into the area at `area` (direct map, 64-byte aligned).
///
/// # Safety
/// `area` is a live TCB's FPU area (or another writable area of the configured size)
/// and CR0.TS is clear.
#[inline(always)]
unsafe fn save(area: u64) {
    let (method, xcr0) = (METHOD.load(Ordering::Relaxed), XCR0.load(Ordering::Relaxed));
    let (lo, hi) = (xcr0 as u32, (xcr0 >> 32) as u32);
    // SAFETY: as the caller promises; the instructions write only the area.
    unsafe {
        if method == 2 {
            core::arch::asm!("xsaveopt64 [{}]", in(reg) area, in("eax") lo, in("edx") hi,
                options(nostack, preserves_flags));
        } else if method == 1 {
            core::arch::asm!("xsave64 [{}]", in(reg) area, in("eax") lo, in("edx") hi,
                options(nostack, preserves_flags));
        } else {
            core::arch::asm!("fxsave64 [{}]", in(reg) area, options(nostack, preserves_flags));
        }
    }
}

/// Loads the registers from the area at `area`.
///
/// # Safety
/// `area` holds a valid save image (written by [`save`], or the initial image the
/// object layer writes into a new TCB) and CR0.TS is clear.
#[inline(always)]
unsafe fn restore(area: u64) {
    let (method, xcr0) = (METHOD.load(Ordering::Relaxed), XCR0.load(Ordering::Relaxed));
    let (lo, hi) = (xcr0 as u32, (xcr0 >> 32) as u32);
    // SAFETY: as the caller promises; the instructions only read the area.
    unsafe {
        if method != 0 {
            core::arch::asm!("xrstor64 [{}]", in(reg) area, in("eax") lo, in("edx") hi,
                options(nostack, preserves_flags, readonly));
        } else {
            core::arch::asm!("fxrstor64 [{}]", in(reg) area, options(nostack, preserves_flags, readonly));
        }
    }
}

/// The FPU area of the TCB whose record (context) is at direct-map address `context`.
#[inline(always)]
fn area_of(context: u64) -> u64 {
    context - tcb::TCB_RECORD_OFFSET + tcb::FPU_OFFSET
}

fn owner_slot() -> &'static AtomicU64 {
    &crate::percpu::current().fpu_owner
}

/// Saves this CPU's FPU owner's state into its TCB and gives the registers up (a
/// remote stall: the owner may run on another CPU next).
pub fn park_current() {
    park(owner_slot());
}

/// Gives the registers up: saves the owner's state (if any), loads the initial state
/// and sets CR0.TS.
fn park(owner: &AtomicU64) {
    let o = owner.load(Ordering::Relaxed);
    if o == 0 {
        return;
    }
    if o != DIRTY {
        // SAFETY: a context owner is a live TCB (deletion turns it into DIRTY); TS is
        // clear while the registers have an owner.
        unsafe { save(area_of(o)) };
    }
    // SAFETY: the initial image is valid; TS is clear.
    unsafe { restore(INITIAL.0.as_ptr() as u64) };
    set_ts();
    owner.store(0, Ordering::Relaxed);
}

/// The FPU part of a thread switch to the thread whose context is at `context`, when
/// Switches the FPU registers (`owner_slot`: this CPU's `fpu_owner`, holding `owner`)
/// to the thread whose record is `context`, when `prepare_thread` found they do not
/// hold its state: something to do if they belong to another thread, or this thread's
/// state is to be loaded eagerly. Big kernel lock held. Hot with eager
/// switching: the common case (XSAVEOPT, both threads may use the FPU) is inline and
/// reads one flag; every other case is [`switch_to_general`].
#[inline(always)]
pub fn switch_to(owner_slot: &AtomicU64, context: u64, tcb: &Tcb, owner: u64) {
    // The common eager case, inline: another thread's state is loaded, XSAVEOPT exists.
    // EDX:EAX all ones requests every component XCR0 enables. Without eager XSAVEOPT
    // switching the two instructions are patched at boot into a jump to the general
    // way (the `FpuEagerXsaveopt` switch, `switches::set_code_switch`; the patch
    // site's end is the `general` label), so the common case falls through.
    if owner > DIRTY && !tcb.fpu_disabled() {
        // SAFETY: `owner` is a live TCB's record (deletion turns it into DIRTY) whose
        // state the registers hold, CR0.TS clear while they have an owner; `context` is
        // a live TCB's record whose area holds a valid image. The instructions touch
        // only the two areas. Unpatched only where the CPU has XSAVEOPT and XCR0 is set
        // (eager switching configured, `init_cpu` run on every CPU before it runs
        // threads). The 8 bytes of the two instructions hold the patched jump.
        unsafe {
            core::arch::asm!(
                "2:",
                "xsaveopt64 [{old}]",
                "xrstor64 [{new}]",
                crate::patch_site!("{switch}", "2b", "{general}"),
                old = in(reg) area_of(owner),
                new = in(reg) area_of(context),
                in("eax") u32::MAX,
                in("edx") u32::MAX,
                switch = const crate::switches::Switch::FpuEagerXsaveopt as u64,
                general = label {
                    switch_to_general(context, tcb);
                    return;
                },
                options(nostack, preserves_flags)
            )
        };
        owner_slot.store(context, Ordering::Relaxed);
    } else if owner != 0 || (!tcb.fpu_disabled() && eager()) {
        switch_to_general(context, tcb);
    }
}

/// [`switch_to`] in every other case (FXSAVE/XSAVE machines, lazy switching, an
/// FPU-disabled thread, registers holding nobody's or a deleted thread's state).
#[cold]
#[inline(never)]
fn switch_to_general(context: u64, tcb: &Tcb) {
    let owner = owner_slot();
    if !tcb.fpu_disabled() && eager() {
        let o = owner.load(Ordering::Relaxed);
        if o == 0 {
            clear_ts();
        } else if o != DIRTY {
            // SAFETY: as in `park`.
            unsafe { save(area_of(o)) };
        }
        // SAFETY: `context` is a live TCB's record; its area holds a valid image.
        unsafe { restore(area_of(context)) };
        owner.store(context, Ordering::Relaxed);
    } else {
        park(owner);
    }
}

/// #NM from user mode in the thread whose record is at physical `context_phys`: loads
/// its state if it may use the FPU (lazy switching) and returns true; false means the
/// thread is FPU-disabled and gets a UserException fault. Big kernel lock held.
pub fn device_not_available(context_phys: u64) -> bool {
    let context = crate::layout::phys_to_virt(context_phys);
    // SAFETY: the glue passes the current thread's live TCB record.
    let tcb = unsafe { &*(context as *const Tcb) };
    if tcb.fpu_disabled() {
        return false;
    }
    let owner = owner_slot();
    let o = owner.load(Ordering::Relaxed);
    if o == context {
        // Not ours (CR0.TS is clear while we own the registers): a spurious #NM.
        return true;
    }
    park(owner);
    clear_ts();
    // SAFETY: the current thread's live TCB; TS clear.
    unsafe { restore(area_of(context)) };
    owner.store(context, Ordering::Relaxed);
    true
}

/// Another CPU asked this one, which spins for the big kernel lock, to save its FPU
/// registers' owner's state (that thread is being moved elsewhere): saves it, then
/// clears the request.
pub fn service_save_request() {
    let area = crate::percpu::current();
    if area.fpu_save_request.load(Ordering::Acquire) {
        park(owner_slot());
        area.fpu_save_request.store(false, Ordering::Release);
    }
}

/// This CPU goes idle: its last thread's state is saved (it may run elsewhere next).
/// Big kernel lock held.
pub fn idle() {
    park(owner_slot());
}

/// The TCB at physical `tcb` is deleted (`save` false) or its FPU flag changes (`save`
/// true): no CPU keeps its state as owner. This CPU saves it first if asked; another
/// CPU still running the thread keeps its values unsaved (DIRTY) until its next switch.
/// Big kernel lock held (every CPU reads its owner only under it).
pub fn release(tcb: u64, save: bool) {
    let context = crate::layout::phys_to_virt(tcb::record(tcb));
    let owner = owner_slot();
    if owner.load(Ordering::Relaxed) == context {
        if save {
            park(owner);
        } else {
            owner.store(DIRTY, Ordering::Relaxed);
        }
    }
    for cpu in 0..crate::smp::online_cpus() {
        if let Some(area) = crate::percpu::area(cpu) {
            let _ = area.fpu_owner.compare_exchange(
                context,
                DIRTY,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}
