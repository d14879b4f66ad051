//! Boot switches of the entry core: `entry.clear_regs=off`, and the test-only
//! `keel.unsafe.<name>` switches that each turn one defence off so that a hostile test
//! can show it failing (negative controls; never use them otherwise). The same
//! mechanism makes a few boot-time choices that are not defences cost no flag test at
//! run time: the eager XSAVEOPT switch, the invariant checker's call, the untagged CR3
//! load (patched over where PCIDs are on).
//!
//! Switches that guard entry-path instructions are applied by patching: the assembly
//! marks each guarded block in the `.keel_patch` section as `(switch, start, end)`,
//! and [`configure`] (on the bootstrap CPU, before any other CPU starts and before any
//! user code runs) overwrites the first bytes of every block whose switch is off with a
//! jump to its end. A switch left on costs nothing; one turned off costs one jump.
//! The other switches are read at run time with [`is_off`].

use core::sync::atomic::{AtomicU32, Ordering};

/// One defence that can be switched off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Switch {
    /// Register clearing on entry (`entry.clear_regs=off`; a supported setting).
    ClearRegs = 0,
    /// SYSRET safety checks: RIP canonical, and TF/NT/RF in the saved RFLAGS send the
    /// return through IRETQ (`keel.unsafe.sysret`).
    Sysret = 1,
    /// Paranoid IST entry with RDGSBASE/WRGSBASE; off = always the GS_BASE sign test
    /// (`keel.unsafe.paranoid`).
    Paranoid = 2,
    /// Kernel restartable-sequence lookup on interrupts (`keel.unsafe.rseq`).
    Rseq = 3,
    /// espfix64 for returns to a 16-bit stack segment (`keel.unsafe.espfix`).
    Espfix = 4,
    /// TF and NT in the SYSCALL flag mask (`keel.unsafe.fmask`).
    Fmask = 5,
    /// Debug registers cleared when switching to a thread without breakpoints
    /// (`keel.unsafe.debug_regs`).
    DebugRegs = 6,
    /// The user restartable-sequence fix-up on returns to user mode
    /// (`keel.unsafe.user_rseq`; read by the glue into `Kernel::user_rseq`).
    UserRseq = 7,
    /// CLAC at interrupt and exception entry (clears RFLAGS.AC a user thread may have
    /// set; `keel.unsafe.clac`); also off when the CPU has no SMAP (CLAC would be #UD).
    Clac = 8,
    /// Not a defence: the inline XSAVEOPT/XRSTOR of `fpu::switch_to`, off (patched to
    /// the general FPU switch) unless the CPU has XSAVEOPT and switching is eager
    /// (set by `fpu::init_cpu` on the bootstrap CPU).
    FpuEagerXsaveopt = 9,
    /// Not a defence: the glue's call of the kernel invariant checker after each
    /// system call ([`when_checking_invariants`]), on only when the command line has
    /// `keel.check_invariants` in any form (the kernel reads its value).
    CheckInvariants = 10,
    /// Not a defence: CR3 loads without PCIDs (`tlb::switch_to_user`). Off, so patched
    /// into the PCID-tagged load, when the CPU has PCID and INVPCID and the command
    /// line does not say `keel.pcid=off` (`tlb::pcids`).
    UntaggedCr3 = 11,
}

const NAMES: [(Switch, &str); 8] = [
    (Switch::Sysret, "keel.unsafe.sysret"),
    (Switch::Paranoid, "keel.unsafe.paranoid"),
    (Switch::Rseq, "keel.unsafe.rseq"),
    (Switch::Espfix, "keel.unsafe.espfix"),
    (Switch::Fmask, "keel.unsafe.fmask"),
    (Switch::DebugRegs, "keel.unsafe.debug_regs"),
    (Switch::UserRseq, "keel.unsafe.user_rseq"),
    (Switch::Clac, "keel.unsafe.clac"),
];

static OFF: AtomicU32 = AtomicU32::new(0);

/// Whether the defence `s` was switched off on the command line.
#[inline]
pub fn is_off(s: Switch) -> bool {
    OFF.load(Ordering::Relaxed) & (1 << s as u32) != 0
}

/// A patch site, emitted by the entry assembly into `.keel_patch`.
#[repr(C)]
struct Site {
    switch: u64,
    start: u64,
    end: u64,
}

unsafe extern "C" {
    static __keel_patch_start: Site;
    static __keel_patch_end: Site;
}

fn sites() -> &'static [Site] {
    // SAFETY: the linker places only `Site` records (three quads each, emitted by the
    // entry assembly) between these two symbols.
    unsafe {
        let start = &raw const __keel_patch_start;
        let end = &raw const __keel_patch_end;
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// Reads the switches from the kernel command line and patches the entry code.
/// Runs once, on the bootstrap CPU, after the kernel page tables (the direct map) are
/// up and before any other CPU starts or any user code runs.
pub fn configure(cmdline: &str) {
    let mut off = 0u32;
    if keel_kern::cmdline::value(cmdline, "entry.clear_regs") == Some("off") {
        off |= 1 << Switch::ClearRegs as u32;
        log::info!("entry: register clearing off (entry.clear_regs=off)");
    }
    for (s, name) in NAMES {
        if keel_kern::cmdline::flag(cmdline, name) {
            off |= 1 << s as u32;
            log::warn!("entry: defence switched off for a negative test: {name}");
        }
    }
    if !crate::cpu::features().smap {
        off |= 1 << Switch::Clac as u32;
    }
    let f = crate::cpu::features();
    let pcid_off = keel_kern::cmdline::value(cmdline, "keel.pcid") == Some("off");
    if f.pcid && f.invpcid && !pcid_off {
        off |= 1 << Switch::UntaggedCr3 as u32;
    }
    log::info!(
        "tlb: PCIDs {}",
        match (f.pcid, f.invpcid, pcid_off) {
            (true, true, false) => "on (user address spaces tagged with their ASIDs)",
            (true, true, true) => "off (keel.pcid=off)",
            (true, false, _) => "off (the CPU has PCID but no INVPCID)",
            _ => "off (the CPU has none)",
        }
    );
    if !cmdline
        .split_whitespace()
        .any(|w| w.split('=').next() == Some("keel.check_invariants"))
    {
        off |= 1 << Switch::CheckInvariants as u32;
    }
    OFF.fetch_or(off, Ordering::Relaxed);
    patch(off);
}

/// Turns the code switch `s` on (its blocks run) or off (patched into jumps over
/// them). Same rules as [`configure`]: on the bootstrap CPU, before any other CPU
/// starts or any user code runs; a block once patched stays patched.
pub fn set_code_switch(s: Switch, on: bool) {
    if !on {
        OFF.fetch_or(1 << s as u32, Ordering::Relaxed);
        patch(1 << s as u32);
    }
}

/// Runs `f` if the [`Switch::CheckInvariants`] code switch is on. One jump either
/// way (to `f`, or, patched at boot when the switch is off, to the next instruction):
/// no flag is read.
#[inline(always)]
pub fn when_checking_invariants(f: impl FnOnce()) {
    // SAFETY: a jump to a label of this function, marked as a patch site whose block
    // is the jump itself (patched, it jumps to the instruction after it); no register,
    // flag or memory is touched.
    unsafe {
        core::arch::asm!(
            "2:",
            "jmp {on}",
            "3:",
            crate::patch_site!("{switch}", "2b", "3b"),
            switch = const Switch::CheckInvariants as u64,
            on = label { f() },
            options(nomem, nostack, preserves_flags)
        )
    }
}

/// Patches every block whose switch is in `off` into a jump to its end.
fn patch(off: u32) {
    for site in sites() {
        if off & (1 << site.switch) == 0 {
            continue;
        }
        // (Negative when the block's end is a label placed before it: the near jump
        // then goes backwards.)
        let distance = site.end.wrapping_sub(site.start);
        let phys = crate::layout::image_virt_to_phys(site.start);
        let bytes = crate::layout::phys_to_virt(phys) as *mut u8;
        // SAFETY: `start` begins a block of kernel text (emitted by our assembly, at
        // least 2 bytes long: the shortest is CLAC's 3; a block whose end is more than
        // 129 bytes ahead or behind it, at least 5: the FPU switch's 8) that no CPU
        // executes yet: only the bootstrap CPU runs, and it is not inside the entry
        // code. The text is written
        // through its direct-map alias (writable); the jump keeps the instruction
        // stream valid because execution resumes at `end`, an instruction boundary.
        unsafe {
            if distance - 2 <= 127 {
                bytes.write_volatile(0xeb);
                bytes.add(1).write_volatile((distance - 2) as u8);
            } else {
                bytes.write_volatile(0xe9);
                let rel = ((distance - 5) as u32).to_le_bytes();
                for (i, b) in rel.iter().enumerate() {
                    bytes.add(1 + i).write_volatile(*b);
                }
            }
        }
    }
    // CPUID serialises instruction fetch after the code writes (cross-modifying code
    // is not a concern: no other CPU runs).
    core::arch::x86_64::__cpuid(0);
}
