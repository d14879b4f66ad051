//! x87, SSE and AVX registers from user code, for the FPU tests and benchmarks
//! (issue 7).
//!
//! Userland is built soft-float (x86_64-unknown-none): the compiler never keeps a
//! value in an x87, XMM or YMM register, so these functions own those registers and
//! load or read them with inline assembly through memory. They cannot name them as
//! asm operands or clobbers (that needs the `sse` target feature), and need not:
//! no compiled code around them uses them.

/// CPUID leaf `leaf`, sub-leaf `sub`.
fn cpuid(leaf: u32, sub: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, sub)
}

/// XCR0 (0 without OSXSAVE).
pub fn xcr0() -> u64 {
    if cpuid(1, 0).ecx & (1 << 27) == 0 {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV of XCR0 is allowed in ring 3 once CR4.OSXSAVE is set (checked).
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi) };
    lo as u64 | (hi as u64) << 32
}

/// Whether AVX (YMM) registers are usable: the CPU has AVX and the kernel enabled
/// the SSE and AVX state components.
pub fn has_avx() -> bool {
    cpuid(1, 0).ecx & (1 << 28) != 0 && xcr0() & 6 == 6
}

/// The 16 XMM registers (or the 16 YMM registers with AVX) as 64-bit words: register
/// `i` is words `4i..4i+4` (the upper two only with AVX).
pub type Vectors = [u64; 64];

/// The x87 stack: eight 64-bit integers (FILD/FISTP exact).
pub type X87 = [i64; 8];

/// Loads XMM0–15 (YMM0–15 if `ymm`) from `v`.
pub fn load_vectors(v: &Vectors, ymm: bool) {
    let p = v.as_ptr();
    // SAFETY: reads only `v` (64 words); the registers are not used by compiled code
    // (module comment).
    unsafe {
        if ymm {
            core::arch::asm!(
                "vmovdqu ymm0, [{p}]", "vmovdqu ymm1, [{p} + 32]",
                "vmovdqu ymm2, [{p} + 64]", "vmovdqu ymm3, [{p} + 96]",
                "vmovdqu ymm4, [{p} + 128]", "vmovdqu ymm5, [{p} + 160]",
                "vmovdqu ymm6, [{p} + 192]", "vmovdqu ymm7, [{p} + 224]",
                "vmovdqu ymm8, [{p} + 256]", "vmovdqu ymm9, [{p} + 288]",
                "vmovdqu ymm10, [{p} + 320]", "vmovdqu ymm11, [{p} + 352]",
                "vmovdqu ymm12, [{p} + 384]", "vmovdqu ymm13, [{p} + 416]",
                "vmovdqu ymm14, [{p} + 448]", "vmovdqu ymm15, [{p} + 480]",
                p = in(reg) p, options(nostack, readonly, preserves_flags));
        } else {
            core::arch::asm!(
                "movdqu xmm0, [{p}]", "movdqu xmm1, [{p} + 32]",
                "movdqu xmm2, [{p} + 64]", "movdqu xmm3, [{p} + 96]",
                "movdqu xmm4, [{p} + 128]", "movdqu xmm5, [{p} + 160]",
                "movdqu xmm6, [{p} + 192]", "movdqu xmm7, [{p} + 224]",
                "movdqu xmm8, [{p} + 256]", "movdqu xmm9, [{p} + 288]",
                "movdqu xmm10, [{p} + 320]", "movdqu xmm11, [{p} + 352]",
                "movdqu xmm12, [{p} + 384]", "movdqu xmm13, [{p} + 416]",
                "movdqu xmm14, [{p} + 448]", "movdqu xmm15, [{p} + 480]",
                p = in(reg) p, options(nostack, readonly, preserves_flags));
        }
    }
}

/// Stores XMM0–15 (YMM0–15 if `ymm`) into `v` (upper words untouched without `ymm`).
pub fn store_vectors(v: &mut Vectors, ymm: bool) {
    let p = v.as_mut_ptr();
    // SAFETY: writes only `v` (64 words).
    unsafe {
        if ymm {
            core::arch::asm!(
                "vmovdqu [{p}], ymm0", "vmovdqu [{p} + 32], ymm1",
                "vmovdqu [{p} + 64], ymm2", "vmovdqu [{p} + 96], ymm3",
                "vmovdqu [{p} + 128], ymm4", "vmovdqu [{p} + 160], ymm5",
                "vmovdqu [{p} + 192], ymm6", "vmovdqu [{p} + 224], ymm7",
                "vmovdqu [{p} + 256], ymm8", "vmovdqu [{p} + 288], ymm9",
                "vmovdqu [{p} + 320], ymm10", "vmovdqu [{p} + 352], ymm11",
                "vmovdqu [{p} + 384], ymm12", "vmovdqu [{p} + 416], ymm13",
                "vmovdqu [{p} + 448], ymm14", "vmovdqu [{p} + 480], ymm15",
                p = in(reg) p, options(nostack, preserves_flags));
        } else {
            core::arch::asm!(
                "movdqu [{p}], xmm0", "movdqu [{p} + 32], xmm1",
                "movdqu [{p} + 64], xmm2", "movdqu [{p} + 96], xmm3",
                "movdqu [{p} + 128], xmm4", "movdqu [{p} + 160], xmm5",
                "movdqu [{p} + 192], xmm6", "movdqu [{p} + 224], xmm7",
                "movdqu [{p} + 256], xmm8", "movdqu [{p} + 288], xmm9",
                "movdqu [{p} + 320], xmm10", "movdqu [{p} + 352], xmm11",
                "movdqu [{p} + 384], xmm12", "movdqu [{p} + 416], xmm13",
                "movdqu [{p} + 448], xmm14", "movdqu [{p} + 480], xmm15",
                p = in(reg) p, options(nostack, preserves_flags));
        }
    }
}

/// Empties the x87 stack and pushes `x[0]`, …, `x[7]` (ST0 = `x[7]`).
pub fn load_x87(x: &X87) {
    let p = x.as_ptr();
    // SAFETY: reads only `x`; the x87 stack is not used by compiled code.
    unsafe {
        core::arch::asm!(
            "ffree st(0)", "ffree st(1)", "ffree st(2)", "ffree st(3)",
            "ffree st(4)", "ffree st(5)", "ffree st(6)", "ffree st(7)",
            "fild qword ptr [{p}]", "fild qword ptr [{p} + 8]",
            "fild qword ptr [{p} + 16]", "fild qword ptr [{p} + 24]",
            "fild qword ptr [{p} + 32]", "fild qword ptr [{p} + 40]",
            "fild qword ptr [{p} + 48]", "fild qword ptr [{p} + 56]",
            p = in(reg) p, options(nostack, readonly));
    }
}

/// Reads the x87 stack without changing it (FST of each register in order, then the
/// values put back): `x[7]` = ST0 … `x[0]` = ST7, as [`load_x87`] pushed them.
pub fn store_x87(x: &mut X87) {
    let p = x.as_mut_ptr();
    // SAFETY: writes only `x`. FISTP pops the eight values; FILD pushes them back in
    // the original order, so the stack is as before.
    unsafe {
        core::arch::asm!(
            "fistp qword ptr [{p} + 56]", "fistp qword ptr [{p} + 48]",
            "fistp qword ptr [{p} + 40]", "fistp qword ptr [{p} + 32]",
            "fistp qword ptr [{p} + 24]", "fistp qword ptr [{p} + 16]",
            "fistp qword ptr [{p} + 8]", "fistp qword ptr [{p}]",
            "fild qword ptr [{p}]", "fild qword ptr [{p} + 8]",
            "fild qword ptr [{p} + 16]", "fild qword ptr [{p} + 24]",
            "fild qword ptr [{p} + 32]", "fild qword ptr [{p} + 40]",
            "fild qword ptr [{p} + 48]", "fild qword ptr [{p} + 56]",
            p = in(reg) p, options(nostack));
    }
}

/// (FCW, FSW, MXCSR).
pub fn control() -> (u16, u16, u32) {
    let (mut cw, mut sw, mut mx) = (0u16, 0u16, 0u32);
    // SAFETY: stores into the three locals only.
    unsafe {
        core::arch::asm!("fnstcw [{}]", "fnstsw [{}]", "stmxcsr [{}]",
            in(reg) &mut cw, in(reg) &mut sw, in(reg) &mut mx, options(nostack, preserves_flags));
    }
    (cw, sw, mx)
}

/// Sets FCW and MXCSR.
pub fn set_control(fcw: u16, mxcsr: u32) {
    // SAFETY: loads the two control registers from the locals; `mxcsr` must have no
    // reserved bit set (else #GP, a fault of this thread, not of the kernel).
    unsafe {
        core::arch::asm!("fldcw [{}]", "ldmxcsr [{}]", in(reg) &fcw, in(reg) &mxcsr,
            options(nostack, readonly, preserves_flags));
    }
}

/// Whether XMM0–15 (and YMM upper halves with AVX) are all zero and the x87 stack is
/// empty (the initial state).
pub fn registers_initial(ymm: bool) -> bool {
    let mut v = [0xa5a5_a5a5_a5a5_a5a5u64; 64];
    store_vectors(&mut v, ymm);
    let zero = (0..16).all(|r| {
        v[4 * r] == 0 && v[4 * r + 1] == 0 && (!ymm || (v[4 * r + 2] == 0 && v[4 * r + 3] == 0))
    });
    let mut env = [0u16; 14];
    // SAFETY: FNSTENV writes the 28-byte environment into `env` (and masks x87
    // exceptions, which FLDENV undoes).
    unsafe {
        core::arch::asm!("fnstenv [{0}]", "fldenv [{0}]", in(reg) env.as_mut_ptr(),
            options(nostack, preserves_flags));
    }
    zero && env[4] == 0xffff
}

/// SSE divide by zero (DIVSS 1.0/0.0) with MXCSR.ZM clear: raises #XM.
pub fn sse_divide_by_zero() {
    let one: u32 = 0x3f80_0000;
    let zero: u32 = 0;
    let mxcsr: u32 = 0x1f80 & !(1 << 9);
    // SAFETY: uses XMM0/XMM1 (owned, module comment) and the locals; the #XM is a fault
    // of this thread delivered to its handler.
    unsafe {
        core::arch::asm!("ldmxcsr [{m}]", "movd xmm0, [{a}]", "movd xmm1, [{b}]",
            "divss xmm0, xmm1", m = in(reg) &mxcsr, a = in(reg) &one, b = in(reg) &zero,
            options(nostack, readonly));
    }
}

/// x87 divide by zero with FCW.ZM clear, then FWAIT: raises #MF.
pub fn x87_divide_by_zero() {
    let cw: u16 = 0x037f & !(1 << 2);
    // SAFETY: uses the x87 stack (owned); the #MF is a fault of this thread.
    unsafe {
        core::arch::asm!("fninit", "fldcw [{}]", "fld1", "fldz", "fdivp st(1), st", "fwait",
            in(reg) &cw, options(nostack, readonly));
    }
}

/// An SSE instruction (for FPU-disabled threads: raises #NM).
pub fn touch_sse() {
    // SAFETY: XMM0 is owned (module comment).
    unsafe { core::arch::asm!("xorps xmm0, xmm0", options(nomem, nostack, preserves_flags)) };
}

/// One arithmetic step on XMM0 and ST0 (marks the state modified; benchmarks).
pub fn touch() {
    // SAFETY: XMM0 and the x87 stack are owned (module comment); FLD1/FSTP keeps the
    // x87 stack balanced.
    unsafe {
        core::arch::asm!(
            "addps xmm0, xmm0",
            "fld1",
            "fstp st(0)",
            options(nomem, nostack, preserves_flags)
        )
    };
}
