//! Crossing between user threads and the kernel: the return path to user mode, the
//! idle loop, and the hand-off to the kernel's handlers.
//!
//! A thread's registers live in its TCB (`keel_kern::object::tcb::UserContext`). While
//! a thread runs, the per-CPU `context_top` and TSS.RSP0 point just past its 22 pushed
//! words, so SYSCALL and every trap from user mode save the registers straight into
//! the TCB; the handlers then run on the CPU's kernel stack. To run a thread the kernel
//! returns the address of its context, and [`keel_return_to_user`] pops it: with SYSRET
//! if the thread last entered through SYSCALL and its saved RFLAGS have none of TF, NT
//! and RF, else with IRETQ (which restores RCX, R11 and every flag exactly). RIP must be
//! a user address (the glue guarantees it; this path checks it again, fatally). Every
//! register is reloaded from the context, so no kernel value reaches user mode; RCX and
//! R11 after SYSRET are the thread's own RIP and RFLAGS. See doc/entry.md.
//!
//! The kernel's handlers are `extern "Rust"` functions the kernel image defines with
//! [`crate::kernel_entries!`]; they take the big kernel lock.

use crate::percpu::OFFSET_KERNEL_STACK_TOP;

/// Words of a context that the entry code pushes.
pub const PUSHED_WORDS: u64 = keel_kern::object::tcb::CONTEXT_PUSHED_WORDS as u64;
const VECTOR_OFFSET: u64 = 15 * 8;

/// Offset of RIP in a context.
const RIP_OFFSET: u64 = 17 * 8;
/// Offset of CS in a context.
const CS_OFFSET: u64 = 18 * 8;
/// Offset of RFLAGS in a context.
const RFLAGS_OFFSET: u64 = 19 * 8;
/// Offset of RSP in a context.
const RSP_OFFSET: u64 = 20 * 8;
/// Offset of SS in a context.
const SS_OFFSET: u64 = 21 * 8;
/// Saved RFLAGS bits that send a SYSCALL return through IRETQ: TF (SYSRET would raise
/// the single-step trap before the first user instruction instead of after it), NT
/// (never set by the kernel's own paths; a thread that set it with POPF gets it back
/// exactly through IRETQ, and SYSRET stays on the plain flags), RF (SYSRET cannot
/// restore it: an instruction breakpoint at the return address would fire again).
pub const IRET_ONLY_FLAGS: u64 = (1 << 8) | (1 << 14) | (1 << 16);

core::arch::global_asm!(
    concat!(
    r#"
    .section .text.entry, "ax"
    .balign 16
    .global keel_return_to_user
keel_return_to_user:
    test rax, rax
    jz 5f
    .global keel_return_to_thread
keel_return_to_thread:
8:
    mov rcx, [rax + {rip}]
    shr rcx, 47
    jnz 6f
9:
"#,
    crate::patch_site!("{sysret_switch}", "8b", "9b"),
    r#"
    /* Entered here by `resume_checked` (RIP already found below 2^47). */
    .global keel_return_checked
keel_return_checked:
    mov rsp, rax
    .global keel_exit_checks
keel_exit_checks:
    test dword ptr [rsp + {rflags}], {iret_flags}
    jnz 2f
1:
"#,
    crate::patch_site!("{sysret_switch}", "keel_exit_checks", "1b"),
    r#"
    cmp qword ptr [rsp + {vector}], {syscall_marker}
    jne 2f
    /* Not R11 and RCX, which SYSRET takes from RFLAGS and RIP: they lie next to the
       vector and error code, skipped with them. */
"#,
    crate::pop_gprs_but_r11_rcx!(),
    r#"
    add rsp, 32
    mov rcx, [rsp]
    mov r11, [rsp + 16]
    mov rsp, [rsp + 24]
    swapgs
    .global keel_sysret
keel_sysret:
    sysretq
2:
    /* CS or SS from the LDT: the espfix64 path (a 16-bit SS would keep the stack's
       ESP[31:16]; a selector made bad meanwhile faults on the IRETQ). */
    test byte ptr [rsp + {cs}], 4
    jnz 20f
    test byte ptr [rsp + {ss}], 4
    jnz 20f
"#,
    crate::pop_gprs!(),
    r#"
    add rsp, 16
    swapgs
    .global keel_iret_to_user
keel_iret_to_user:
    iretq
20:
    /* espfix64: IRETQ from this CPU's ministack, in the alias whose address bits
       31:16 are the user's ESP[31:16] (RAX = frame in the alias with bits 31:16 zero,
       OR the user's bits in). */
    .global keel_espfix_alias
keel_espfix_alias:
    mov rax, gs:[{espfix_frame}]
    mov ecx, dword ptr [rsp + {rsp_off}]
    and ecx, 0xffff0000
    or rax, rcx
    jmp 22f
21:
"#,
    crate::patch_site!("{espfix_switch}", "keel_espfix_alias", "21b"),
    r#"
    /* keel.unsafe.espfix: IRETQ from the kernel stack (leaks its ESP[31:16]). */
    mov rax, gs:[{kernel_stack}]
    sub rax, 64
22:
    mov rcx, [rsp + {rip}]
    mov [rax], rcx
    mov rcx, [rsp + {cs}]
    mov [rax + 8], rcx
    mov rcx, [rsp + {rflags}]
    mov [rax + 16], rcx
    mov rcx, [rsp + {rsp_off}]
    mov [rax + 24], rcx
    mov rcx, [rsp + {ss}]
    mov [rax + 32], rcx
    mov gs:[{scratch}], rax
"#,
    crate::pop_gprs!(),
    r#"
    mov rsp, gs:[{scratch}]
    swapgs
    /* A fault here (#GP/#NP/#SS: a bad or not-present SS/CS) is turned into a fault
       of the thread by `trap_common` (see trap.rs). */
    .global keel_espfix_iret
keel_espfix_iret:
    iretq
5:
    mov rsp, gs:[{kernel_stack}]
    call {idle}
    ud2
6:
    mov rsp, gs:[{kernel_stack}]
    mov rdi, rax
    call {bad_rip}
    ud2
"#),
    vector = const VECTOR_OFFSET,
    rip = const RIP_OFFSET,
    rflags = const RFLAGS_OFFSET,
    cs = const CS_OFFSET,
    ss = const SS_OFFSET,
    rsp_off = const RSP_OFFSET,
    espfix_frame = const crate::percpu::OFFSET_ESPFIX_FRAME,
    espfix_switch = const crate::switches::Switch::Espfix as u64,
    scratch = const crate::percpu::OFFSET_USER_RSP,
    iret_flags = const IRET_ONLY_FLAGS,
    sysret_switch = const crate::switches::Switch::Sysret as u64,
    syscall_marker = const keel_kern::object::tcb::SYSCALL_VECTOR,
    kernel_stack = const OFFSET_KERNEL_STACK_TOP,
    idle = sym idle,
    bad_rip = sym bad_return_rip,
);

/// The return path found a RIP outside user space in the context it was given: the
/// glue broke its guarantee. SYSRET with a non-canonical RCX faults in ring 0 on Intel
/// CPUs (with the user's RSP), and so does IRETQ, so this is checked and fatal.
extern "C" fn bad_return_rip(context: u64) -> ! {
    // SAFETY: `context` is the context the glue handed to `resume` (a TCB's registers).
    let rip = unsafe { ((context + RIP_OFFSET) as *const u64).read() };
    panic!("return to user with RIP {rip:#x} outside user space (context {context:#x})")
}

unsafe extern "C" {
    /// Runs the thread whose context starts at RAX (a direct-map address), or the idle
    /// loop if RAX is 0. Never returns.
    fn keel_return_to_user() -> !;
}

/// Leaves the kernel: runs the thread whose context is at `context` (0 = idle).
pub fn resume(context: u64) -> ! {
    // SAFETY: `context` is 0 or the direct-map address of the current thread's context,
    // prepared by `prepare_thread` (RIP checked, CR3 and bases loaded); the return path
    // abandons the current kernel stack, which holds nothing live.
    unsafe {
        core::arch::asm!("jmp {}", sym keel_return_to_user, in("rax") context, options(noreturn))
    }
}

unsafe extern "C" {
    /// [`keel_return_to_user`] for a thread's context (RAX) whose RIP is known to be a
    /// user address: no idle test, no RIP test.
    fn keel_return_checked() -> !;
}

/// A thread's context (direct-map address) whose saved RIP [`user_rip`] found below
/// 2^47, so the exit need not test it again (SYSRET with a non-canonical RCX would
/// fault in ring 0). Only [`user_rip`] makes one.
pub struct UserRip(u64);

/// The context of the TCB record at physical address `context_phys` if its saved RIP is
/// a user address (below 2^47), else `None` (the thread must fault instead of
/// running). The caller holds the big kernel lock until [`prepare_thread`] has run for
/// the same thread, so nothing changes the RIP before [`resume_checked`] leaves.
#[inline(always)]
pub fn user_rip(context_phys: u64) -> Option<UserRip> {
    let context = crate::layout::phys_to_virt(context_phys);
    // SAFETY: the glue passes the record address of a live TCB (the context is its
    // first field), read through the direct map under the big kernel lock.
    let rip = unsafe { ((context + RIP_OFFSET) as *const u64).read() };
    (rip < crate::layout::USER_END).then_some(UserRip(context))
}

/// Leaves the kernel into the thread whose context `checked` is, prepared by
/// [`prepare_thread`]: [`resume`] without the idle and RIP tests.
#[inline(always)]
pub fn resume_checked(checked: UserRip) -> ! {
    // SAFETY: as in `resume`; `checked` is a prepared thread's context (not 0) whose
    // RIP is a user address (`user_rip`), and no CPU changes it before this thread next
    // enters the kernel (`prepare_thread` published it as running: a CPU that stalls
    // this one waits for that entry).
    unsafe {
        core::arch::asm!("jmp {}", sym keel_return_checked, in("rax") checked.0, options(noreturn))
    }
}

/// Leaves the kernel: into the prepared thread `next`, or the idle loop (`None`).
#[inline(always)]
pub fn resume_next(next: Option<UserRip>) -> ! {
    match next {
        Some(checked) => resume_checked(checked),
        None => resume(0),
    }
}

unsafe extern "C" {
    /// The kernel's system-call handler, called by the SYSCALL entry's assembly; it
    /// leaves the kernel through [`resume_next`] with the thread to run (or idle), so
    /// it neither returns nor restores the callee-saved registers (they hold nothing:
    /// the entry zeroed them, and the exit reloads every register from the context).
    pub(crate) safe fn keel_entry_syscall() -> !;
}

unsafe extern "Rust" {
    /// The kernel's handler of a trap from user mode (exception or interrupt; vector,
    /// error code and fault address given); leaves through [`resume_next`].
    safe fn keel_entry_user_trap(vector: u64, error_code: u64, fault_address: u64) -> !;
    /// The kernel's handler of an interrupt that arrived while the CPU was idle.
    safe fn keel_entry_kernel_interrupt(vector: u64);
    /// The idle loop asks whether a thread is ready; returns it, prepared.
    safe fn keel_entry_idle_poll() -> Option<UserRip>;
}

/// Defines the kernel's entry handlers (see the functions this module declares).
#[macro_export]
macro_rules! kernel_entries {
    (syscall: $s:path, user_trap: $u:path, kernel_interrupt: $k:path, idle_poll: $i:path $(,)?) => {
        #[allow(unsafe_code)]
        // SAFETY: unique symbol, called only by hal::entry.
        #[unsafe(export_name = "keel_entry_syscall")]
        extern "C" fn __keel_entry_syscall() -> ! {
            let f: fn() -> Option<$crate::entry::UserRip> = $s;
            $crate::entry::resume_next(f())
        }
        #[allow(unsafe_code)]
        // SAFETY: unique symbol, called only by hal::entry.
        #[unsafe(export_name = "keel_entry_user_trap")]
        extern "Rust" fn __keel_entry_user_trap(vector: u64, error_code: u64, address: u64) -> ! {
            let f: fn(u64, u64, u64) -> Option<$crate::entry::UserRip> = $u;
            $crate::entry::resume_next(f(vector, error_code, address))
        }
        #[allow(unsafe_code)]
        // SAFETY: unique symbol, called only by hal::entry.
        #[unsafe(export_name = "keel_entry_kernel_interrupt")]
        extern "Rust" fn __keel_entry_kernel_interrupt(vector: u64) {
            let f: fn(u64) = $k;
            f(vector)
        }
        #[allow(unsafe_code)]
        // SAFETY: unique symbol, called only by hal::entry.
        #[unsafe(export_name = "keel_entry_idle_poll")]
        extern "Rust" fn __keel_entry_idle_poll() -> Option<$crate::entry::UserRip> {
            let f: fn() -> Option<$crate::entry::UserRip> = $i;
            f()
        }
    };
}

/// The SYSCALL entry's slow check (registers saved in the TCB and cleared, on the
/// kernel stack): a user selector is non-null, or the CPU has entry work (an FPU save
/// request, bases to read back). The entry then calls the glue's `keel_entry_syscall`.
pub(crate) extern "C" fn syscall_entry_slow() {
    save_user_bases();
}

/// The register-clearing test hook (KeelDebugKernelStackCount): how many 8-byte words
/// of this CPU's kernel stack, from the caller's frame up to the top, equal
/// `!complement`. The caller passes the complement, so the value itself is never in
/// a caller's frame; this function's own frame (where the compiler may keep it) is
/// skipped. Frame pointers are forced, so RBP marks that frame.
#[inline(never)]
pub fn kernel_stack_count(complement: u64) -> u64 {
    let frame: u64;
    // SAFETY: copies RBP; no memory access.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) frame, options(nomem, nostack, preserves_flags))
    };
    let top = crate::percpu::current().kernel_stack_top;
    let mut count = 0;
    // Above the saved RBP and the return address: the callers' frames.
    let mut word = frame + 16;
    while word + 8 <= top {
        // SAFETY: `frame + 16 .. top` lies within this CPU's kernel stack (this function
        // runs on it, below the callers' frames), mapped and 8-byte aligned.
        let value = unsafe { (word as *const u64).read_volatile() };
        if !value == complement {
            count += 1;
        }
        word += 8;
    }
    count
}

/// A trap from user mode lands here (registers saved in the TCB); the glue's handler
/// leaves the kernel itself ([`resume`]).
pub(crate) extern "C" fn trap_from_user() -> ! {
    save_user_bases();
    let context = crate::percpu::current().context_top - PUSHED_WORDS * 8;
    // SAFETY: `context` is the current thread's context, just written by the entry code.
    let (vector, error_code) = unsafe {
        let words = context as *const u64;
        (words.add(15).read(), words.add(16).read())
    };
    let address = if vector == 14 { crate::trap::cr2() } else { 0 };
    crate::trap::acknowledge(vector);
    keel_entry_user_trap(vector, error_code, address)
}

/// Records the thread's FS/GS state as the CPU holds it (doc/fsgsbase.md), on every
/// entry from user mode: the selectors always (two register moves); the bases when the
/// thread may have changed them without the kernel knowing (RD/WR FS/GS BASE allowed,
/// or a selector load: non-zero, or null over a non-zero base).
#[inline(always)]
fn save_user_bases() {
    // This CPU no longer runs a thread in user mode: its registers are in its TCB (and,
    // when another CPU stalls this one, its FPU state too).
    // (`percpu::current()` is read afresh each time: one GS load is cheaper than
    // keeping it in a callee-saved register across the out-of-line calls.)
    if crate::percpu::current()
        .fpu_save_request
        .load(core::sync::atomic::Ordering::Relaxed)
    {
        crate::fpu::service_save_request();
    }
    if any_user_selector() || crate::percpu::current().save_bases {
        save_user_bases_slow(user_selectors());
    }
    // Last: a CPU stalling this one may read and write the context (bases and
    // selectors included) as soon as it sees 0 here.
    crate::percpu::current()
        .running
        .store(0, core::sync::atomic::Ordering::Release);
}

/// Whether any of FS, GS, DS, ES holds a non-null selector value (MOV from a segment
/// register into a 64-bit register zero-extends: one OR chain, no packing).
#[inline(always)]
fn any_user_selector() -> bool {
    let any: u64;
    // SAFETY: reads four segment registers; no memory access.
    unsafe {
        core::arch::asm!(
            "mov {a}, fs",
            "mov {t}, gs",
            "or {a}, {t}",
            "mov {t}, ds",
            "or {a}, {t}",
            "mov {t}, es",
            "or {a}, {t}",
            a = out(reg) any,
            t = out(reg) _,
            options(nomem, nostack)
        )
    };
    any != 0
}

/// FS (bits 15:0), GS (31:16), DS (47:32) and ES (63:48) selectors as the CPU holds
/// them (the kernel never changes DS or ES: they are the thread's).
#[inline(always)]
fn user_selectors() -> u64 {
    let (fs, gs, ds, es): (u64, u64, u64, u64);
    // SAFETY: reads four segment registers; no memory access, no side effects.
    unsafe {
        core::arch::asm!(
            "mov {fs:r}, fs",
            "mov {gs:r}, gs",
            "mov {ds:r}, ds",
            "mov {es:r}, es",
            fs = out(reg) fs,
            gs = out(reg) gs,
            ds = out(reg) ds,
            es = out(reg) es,
            options(nomem, nostack, preserves_flags)
        )
    };
    (fs & 0xffff) | (gs & 0xffff) << 16 | (ds & 0xffff) << 32 | (es & 0xffff) << 48
}

#[cold]
#[inline(never)]
fn save_user_bases_slow(selectors: u64) {
    let area =
        crate::percpu::current() as *const crate::percpu::PerCpu as *mut crate::percpu::PerCpu;
    // SAFETY: the MSRs hold the thread's FS base and (until SWAPGS on exit) its GS base;
    // `context_top` is the address of the context's fs_base, gs_base and selectors
    // words in the current TCB; this CPU's own per-CPU area, interrupts disabled.
    unsafe {
        let fs = x86::msr::rdmsr(x86::msr::IA32_FS_BASE);
        let gs = x86::msr::rdmsr(x86::msr::IA32_KERNEL_GSBASE);
        let top = (*area).context_top;
        (top as *mut u64).write(fs);
        ((top + 8) as *mut u64).write(gs);
        ((top + 16) as *mut u64).write(selectors);
        (*area).loaded_fs_base = fs;
        (*area).loaded_gs_base = gs;
        (*area).loaded_selectors = selectors;
        update_save_bases(area);
    }
}

/// Recomputes `PerCpu::save_bases` from what is loaded.
///
/// # Safety
/// `area` is this CPU's per-CPU area, interrupts disabled.
unsafe fn update_save_bases(area: *mut crate::percpu::PerCpu) {
    // SAFETY: as the caller promises.
    unsafe {
        (*area).save_bases = (*area).user_fsgsbase
            || (*area).loaded_selectors != 0
            || (*area).loaded_fs_base != 0
            || (*area).loaded_gs_base != 0;
    }
}

/// Loads the thread's DS, ES, FS and GS selectors and the FS/GS bases
/// (doc/fsgsbase.md): a non-zero
/// selector whose descriptor can be loaded gives the base from the descriptor; a null
/// selector (0–3) is loaded as it was and the base written exactly; a selector that
/// can no longer be loaded (its LDT entry changed or went away) is replaced by 0.
///
/// # Safety
/// `area` is this CPU's per-CPU area, interrupts disabled, kernel GS base live.
#[cold]
#[inline(never)]
unsafe fn load_user_segments(
    area: *mut crate::percpu::PerCpu,
    selectors: u64,
    fs_base: u64,
    gs_base: u64,
) {
    let fs_sel = loadable_or_null((selectors & 0xffff) as u16);
    let gs_sel = loadable_or_null((selectors >> 16 & 0xffff) as u16);
    let ds_sel = loadable_or_null((selectors >> 32 & 0xffff) as u16);
    let es_sel = loadable_or_null((selectors >> 48 & 0xffff) as u16);
    // SAFETY: the selectors are null or descriptors LAR found present, readable and of
    // DPL 3, so the loads cannot fault. GS is loaded between two SWAPGS so that the
    // user's base (IA32_KERNEL_GS_BASE) takes the descriptor's value, not the kernel's;
    // an NMI in between is handled by the paranoid entry, which never trusts the GS
    // base in ring 0. Bases written are canonical (sanitised by the caller).
    unsafe {
        // DS and ES are not used by the kernel in 64-bit mode: the thread's values.
        core::arch::asm!(
            "mov ds, {0:e}",
            "mov es, {1:e}",
            in(reg) ds_sel as u32,
            in(reg) es_sel as u32,
            options(nomem, nostack, preserves_flags)
        );
        core::arch::asm!("mov fs, {0:e}", in(reg) fs_sel as u32, options(nomem, nostack, preserves_flags));
        core::arch::asm!(
            "swapgs",
            "mov gs, {0:e}",
            "swapgs",
            in(reg) gs_sel as u32,
            options(nomem, nostack, preserves_flags)
        );
        let fs = if fs_sel & !3 == 0 {
            x86::msr::wrmsr(x86::msr::IA32_FS_BASE, fs_base);
            fs_base
        } else {
            x86::msr::rdmsr(x86::msr::IA32_FS_BASE)
        };
        let gs = if gs_sel & !3 == 0 {
            x86::msr::wrmsr(x86::msr::IA32_KERNEL_GSBASE, gs_base);
            gs_base
        } else {
            x86::msr::rdmsr(x86::msr::IA32_KERNEL_GSBASE)
        };
        (*area).loaded_fs_base = fs;
        (*area).loaded_gs_base = gs;
        (*area).loaded_selectors =
            fs_sel as u64 | (gs_sel as u64) << 16 | (ds_sel as u64) << 32 | (es_sel as u64) << 48;
    }
}

/// `selector` if it is null (0–3) or names a present data or readable code segment of
/// DPL 3 (LAR), else 0.
fn loadable_or_null(selector: u16) -> u16 {
    if selector & !3 == 0 {
        return selector;
    }
    let (rights, valid): (u32, u8);
    // SAFETY: LAR only reads the descriptor tables; no other effect than ZF.
    unsafe {
        core::arch::asm!(
            "lar {r:e}, {s:e}",
            "setz {v}",
            r = out(reg) rights,
            s = in(reg) selector as u32,
            v = out(reg_byte) valid,
            options(nomem, nostack)
        )
    };
    let present = rights & (1 << 15) != 0;
    let dpl3 = rights >> 13 & 3 == 3;
    let segment = rights & (1 << 12) != 0;
    let readable = rights & (1 << 11) == 0 || rights & (1 << 9) != 0;
    if valid != 0 && present && dpl3 && segment && readable {
        selector
    } else {
        0
    }
}

/// An interrupt in kernel mode (only the idle loop runs with interrupts enabled).
pub(crate) fn interrupt_in_kernel(vector: u64) {
    crate::trap::acknowledge(vector);
    keel_entry_kernel_interrupt(vector);
}

/// The idle loop: wait for an interrupt, then ask the kernel for a thread.
extern "C" fn idle() -> ! {
    loop {
        crate::percpu::current()
            .running
            .store(0, core::sync::atomic::Ordering::Release);
        if let Some(checked) = keel_entry_idle_poll() {
            resume_checked(checked);
        }
        // Idle on the kernel's own address space: the last thread's may be deleted
        // (and its memory reused) while this CPU sleeps.
        crate::tlb::use_kernel_address_space();
        crate::cpu::wait_for_interrupt();
    }
}

/// Enters the idle loop on this CPU's kernel stack (boot: after the kernel is set up).
pub fn enter_idle() -> ! {
    resume(0)
}

/// Prepares this CPU to run the thread whose context is at physical address
/// `context_phys` (the start of its TCB record): its address space (`pml4`), FS/GS
/// bases (the context's), CR4.FSGSBASE and debug registers as the record says, and the
/// entry stack pointers. The thread then runs by [`resume_checked`] with the proof
/// [`user_rip`] gave for the same record.
#[inline(always)]
pub fn prepare_thread(context_phys: u64, pml4: u64) {
    let context = crate::layout::phys_to_virt(context_phys);
    // SAFETY: the glue passes the record address of a live TCB (the context is its
    // first field), read through the direct map; the object layer does not run
    // concurrently on this TCB (the big kernel lock is held).
    let tcb = unsafe { &*(context as *const keel_kern::object::tcb::Tcb) };
    let area =
        crate::percpu::current() as *const crate::percpu::PerCpu as *mut crate::percpu::PerCpu;
    // SAFETY: this CPU's own per-CPU area, interrupts disabled. CR3 is only loaded here
    // once threads run, so `loaded_pml4` tracks it without reading CR3. Each slow
    // register (CR3, CR4, debug registers, MSRs) is written only when its value changes,
    // out of line.
    unsafe {
        if (*area).loaded_pml4 != pml4 {
            crate::tlb::switch_to_user(pml4, context_phys, area);
            // The LDT goes with the address space (looked up only when CR3 changes;
            // `ldt::set` refreshes every CPU when an address space's LDT changes).
            // While no address space has one, no CPU has one loaded: one test.
            if crate::ldt::any() {
                crate::ldt::switch_to(pml4);
            }
        }
        // Nothing to load when the CPU holds the plain state (no FSGSBASE right, null
        // selectors, zero bases, no debug registers: `save_bases` and `debug_loaded`
        // false, one 16-bit load) and the thread wants it too (one OR chain; a DR7
        // with R/W or LEN bits but no enable merely takes the longer way).
        let cpu_not_plain = (&raw const (*area).save_bases)
            .cast::<u16>()
            .read_unaligned()
            != 0;
        let c = &tcb.context;
        let thread_not_plain =
            c.fs_base | c.gs_base | c.selectors | tcb.debug.dr7 | tcb.fsgsbase_allowed as u64;
        if cpu_not_plain || thread_not_plain != 0 {
            load_thread_registers(tcb);
        }
        // --- FPU (issue 7, fpu.rs): nothing to do while the registers hold this
        // thread's state, or hold nobody's and this thread's is not loaded eagerly.
        let fpu_owner = (*area)
            .fpu_owner
            .load(core::sync::atomic::Ordering::Relaxed);
        if fpu_owner != context {
            crate::fpu::switch_to(&(*area).fpu_owner, context, tcb, fpu_owner);
        }
        // --- end FPU
        let top = context + PUSHED_WORDS * 8;
        (*area).context_top = top;
        (*area).tables.set_kernel_entry_stack(top);
        (*area)
            .running
            .store(context, core::sync::atomic::Ordering::Release);
    }
}

/// The rarely needed part of [`prepare_thread`]: CR4.FSGSBASE, debug registers, and
/// the FS/GS base MSRs, each written only if it changes.
#[cold]
#[inline(never)]
fn load_thread_registers(tcb: &keel_kern::object::tcb::Tcb) {
    let user_fsgsbase = tcb.fsgsbase_allowed && crate::cpu::has_fsgsbase();
    let (fs_base, gs_base) = (tcb.context.fs_base, tcb.context.gs_base);
    let area =
        crate::percpu::current() as *const crate::percpu::PerCpu as *mut crate::percpu::PerCpu;
    // SAFETY: as in `prepare_thread`; the MSRs hold the user FS base and (until SWAPGS
    // on exit) the user GS base.
    unsafe {
        if user_fsgsbase != (*area).user_fsgsbase {
            crate::cpu::set_user_fsgsbase(user_fsgsbase);
        }
        // Without CR4.FSGSBASE the paranoid entry tells kernel from user GS by the sign
        // of IA32_GS_BASE, so a thread must never run with a negative GS base then.
        let gs_base = if !user_fsgsbase && (gs_base as i64) < 0 {
            0
        } else {
            gs_base
        };
        // WRMSR of a non-canonical base faults in ring 0; the object layer sanitises
        // every base it stores, and this keeps a slip from becoming a kernel #GP.
        let canonical = |b: u64| matches!((b as i64) >> 47, 0 | -1);
        let fs_base = if canonical(fs_base) { fs_base } else { 0 };
        let gs_base = if canonical(gs_base) { gs_base } else { 0 };
        if (*area).debug_loaded || tcb.debug.any_breakpoint() {
            crate::debug::load(tcb);
        }
        // Issue 5 (doc/fsgsbase.md): selectors, then bases. Every entry records what the
        // CPU holds (`save_user_bases`), so the loaded_* values are exact here.
        let selectors = tcb.context.selectors;
        if selectors != 0 || (*area).loaded_selectors != 0 {
            load_user_segments(area, selectors, fs_base, gs_base);
        } else {
            if (*area).loaded_fs_base != fs_base {
                x86::msr::wrmsr(x86::msr::IA32_FS_BASE, fs_base);
                (*area).loaded_fs_base = fs_base;
            }
            if (*area).loaded_gs_base != gs_base {
                x86::msr::wrmsr(x86::msr::IA32_KERNEL_GSBASE, gs_base);
                (*area).loaded_gs_base = gs_base;
            }
        }
        (*area).user_fsgsbase = user_fsgsbase;
        update_save_bases(area);
        // End of issue 5's part.
    }
}
