//! Instruction sequences for the hostile entry tests (DESIGN §5.3): system calls with
//! TF or NT set, and MOV SS followed by a kernel entry (the pending-#DB hazard).
//! Each one is a complete, self-restoring sequence; the kernel must survive it and
//! the thread's fault handler must see only the thread's own events.

use core::sync::atomic::AtomicU16;

use keel_abi::syscall as number;

/// RFLAGS.TF.
pub const TF: u64 = 1 << 8;
/// RFLAGS.NT.
pub const NT: u64 = 1 << 14;

/// Sets `bits` (TF and/or NT) in RFLAGS, makes a Yield system call, reads RFLAGS right
/// after it, and clears the bits again. Returns the RFLAGS seen after the call. With TF
/// set the thread single-steps (its fault handler gets debug faults and must resume it).
pub fn flags_across_syscall(bits: u64) -> u64 {
    let after: u64;
    // SAFETY: only RFLAGS bits TF/NT change, and both are cleared again; NT has no
    // effect in 64-bit user code and TF only raises #DB, handled by the kernel; Yield
    // clobbers RCX and R11 (declared); the stack is balanced.
    unsafe {
        core::arch::asm!(
            "pushfq",
            "or qword ptr [rsp], {bits}",
            "popfq",
            "syscall",
            "pushfq",
            "pop {after}",
            "pushfq",
            "and qword ptr [rsp], {clear}",
            "popfq",
            bits = in(reg) bits,
            clear = in(reg) !bits,
            after = out(reg) after,
            inout("rdx") number::YIELD => _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    after
}

/// What follows the MOV SS in [`mov_ss_then`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterMovSs {
    /// SYSCALL (Yield).
    Syscall,
    /// INT3 (0xcc).
    Int3,
    /// INT 3 (0xcd 0x03).
    IntN3,
    /// INT 4 (a #GP from user mode: the gate has DPL 0). 2 bytes.
    IntN4,
    /// INT1 / ICEBP (0xf1).
    Icebp,
    /// SYSCALL with a non-canonical RSP (CVE-2018-8897's variant).
    SyscallBadRsp,
}

/// Executes `mov ss, [selector]` (reloading the current SS from memory, where a data
/// breakpoint may watch it) immediately followed by `then`. RCX, R11 and RDX are
/// clobbered; RSP is restored even after [`AfterMovSs::SyscallBadRsp`].
pub fn mov_ss_then(selector: &AtomicU16, then: AfterMovSs) {
    let p = selector.as_ptr() as *const u16;
    // SAFETY: SS is reloaded with the value it already has (the caller stores the
    // current SS); each variant enters the kernel, which returns to the next
    // instruction (a fault handler resumes after the INT variants); the bad-RSP
    // variant keeps the real RSP in R12 and restores it right after the SYSCALL, and
    // uses no stack in between.
    unsafe {
        match then {
            AfterMovSs::Syscall => core::arch::asm!(
                "mov ss, word ptr [{p}]",
                "syscall",
                p = in(reg) p,
                inout("rdx") number::YIELD => _,
                lateout("rcx") _,
                lateout("r11") _,
            ),
            AfterMovSs::Int3 => core::arch::asm!(
                "mov ss, word ptr [{p}]",
                "int3",
                p = in(reg) p,
            ),
            AfterMovSs::IntN3 => core::arch::asm!(
                "mov ss, word ptr [{p}]",
                ".byte 0xcd, 0x03",
                p = in(reg) p,
            ),
            AfterMovSs::IntN4 => core::arch::asm!(
                "mov ss, word ptr [{p}]",
                ".byte 0xcd, 0x04",
                p = in(reg) p,
            ),
            AfterMovSs::Icebp => core::arch::asm!(
                "mov ss, word ptr [{p}]",
                ".byte 0xf1",
                p = in(reg) p,
            ),
            AfterMovSs::SyscallBadRsp => core::arch::asm!(
                "mov r12, rsp",
                "mov rsp, {bad}",
                "mov ss, word ptr [{p}]",
                "syscall",
                "mov rsp, r12",
                p = in(reg) p,
                bad = in(reg) 0x8badf00d5aadc0deu64,
                out("r12") _,
                inout("rdx") number::YIELD => _,
                lateout("rcx") _,
                lateout("r11") _,
            ),
        }
    }
}

/// The current SS selector.
pub fn current_ss() -> u16 {
    let ss: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe { core::arch::asm!("mov {:x}, ss", out(reg) ss, options(nomem, nostack)) };
    ss
}
