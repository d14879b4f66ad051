//! The SYSCALL entry.
//!
//! SWAPGS, park the user RSP in the per-CPU area, point RSP at the current thread's
//! register area in its TCB (`context_top`), push the registers there in
//! `UserContext` order (vector = the SYSCALL marker), switch to the CPU's kernel stack,
//! check in a few instructions that the thread's FS/GS state needs no saving (null
//! selectors, no per-CPU entry work; otherwise `entry::syscall_entry_slow` saves it),
//! zero every general register (so no user-chosen value reaches the kernel's Rust code
//! in a register, where it could steer speculation; `entry.clear_regs=off` patches the
//! block out) and call the kernel. The exit is [`crate::entry`]'s return path, which
//! reloads every register from the context (doc/entry.md).
//!
//! The flag mask clears TF, IF, DF, IOPL, NT and AC on entry, so user TF never single
//! steps the kernel and user NT never reaches a kernel IRETQ.

use crate::gdt;
use crate::percpu::{OFFSET_CONTEXT_TOP, OFFSET_KERNEL_STACK_TOP, OFFSET_USER_RSP};

core::arch::global_asm!(
    concat!(
    r#"
    .section .text.entry, "ax"
    .balign 16
    .global syscall_entry
syscall_entry:
    swapgs
    mov gs:[{user_rsp}], rsp
    mov rsp, gs:[{context_top}]
    push {user_ss}
    push qword ptr gs:[{user_rsp}]
    push r11
    push {user_cs}
    push rcx
    push 0
    push {marker}
"#,
    crate::push_gprs!(),
    r#"
    mov rsp, gs:[{kernel_stack}]
    /* The fast check: null FS, GS, DS and ES selectors, and neither an FPU save
       request nor bases to read back (the two bytes at entry_work) -> the thread's
       FS/GS state is what the CPU was given, nothing to save. The user RAX and RCX are
       in the context already. Passed, it leaves RAX = 0 (the selectors ORed, each
       zero-extended: MOV from a segment register to a 32-bit register clears bits
       63:16; then the OR with entry_work zero) and RCX = ES = 0, so the clearing
       below skips them. */
    mov eax, fs
    mov ecx, gs
    or eax, ecx
    mov ecx, ds
    or eax, ecx
    mov ecx, es
    or eax, ecx
    or ax, word ptr gs:[{entry_work}]
    jnz 7f
    /* Last: a CPU stalling this one may use the context once it sees 0 here. */
    mov qword ptr gs:[{running}], 0
    .global keel_syscall_clear
keel_syscall_clear:
"#,
    crate::clear_gprs_but_rax_rcx!(),
    r#"
1:
"#,
    crate::patch_site!("{clear_switch}", "keel_syscall_clear", "1b"),
    r#"
    /* No CLD: the flag mask cleared DF (it is not one of the keel.unsafe.fmask bits). */
    call {dispatch}
    ud2 /* the glue leaves through entry::resume */
7:
    /* The slow check: registers cleared first (always), then the FS/GS state saved
       and an FPU save request served (`entry::syscall_entry_slow`, which clears
       `running` last), then the common path. */
"#,
    crate::clear_gprs!(),
    r#"
    call {slow}
    jmp 1b

    /* SYSCALL from compatibility mode (a 16/32-bit code segment from an LDT) lands
       here through IA32_CSTAR. It is not part of Keel's ABI: the thread gets an
       invalid-opcode fault at the SYSCALL instruction. The CPU does not keep the
       user's CS and SS; the context records the flat user selectors. */
    .balign 16
    .global keel_compat_syscall_entry
keel_compat_syscall_entry:
    swapgs
    mov gs:[{user_rsp}], rsp
    mov rsp, gs:[{context_top}]
    push {user_ss}
    push qword ptr gs:[{user_rsp}]
    push r11
    push {user_cs}
    sub rcx, 2
    push rcx
    push 0
    push 6
"#,
    crate::push_gprs!(),
    r#"
    mov rsp, gs:[{kernel_stack}]
    cld
    call {trap}
    ud2 /* trap_from_user leaves through entry::resume */
"#),
    user_rsp = const OFFSET_USER_RSP,
    context_top = const OFFSET_CONTEXT_TOP,
    kernel_stack = const OFFSET_KERNEL_STACK_TOP,
    user_ss = const gdt::USER_DATA as u64,
    user_cs = const gdt::USER_CODE as u64,
    marker = const keel_kern::object::tcb::SYSCALL_VECTOR,
    clear_switch = const crate::switches::Switch::ClearRegs as u64,
    entry_work = const crate::percpu::OFFSET_ENTRY_WORK,
    running = const crate::percpu::OFFSET_RUNNING,
    dispatch = sym crate::entry::keel_entry_syscall,
    slow = sym crate::entry::syscall_entry_slow,
    trap = sym crate::entry::trap_from_user,
);

unsafe extern "C" {
    fn syscall_entry();
    fn keel_compat_syscall_entry();
}

/// RFLAGS bits cleared on SYSCALL entry: TF, IF, DF, IOPL, NT, AC.
const FLAGS_MASK: u64 = (1 << 8) | (1 << 9) | (1 << 10) | (3 << 12) | (1 << 14) | (1 << 18);

/// Programs this CPU's SYSCALL MSRs.
pub fn init_cpu() {
    use x86::msr::{IA32_CSTAR, IA32_EFER, IA32_FMASK, IA32_LSTAR, IA32_STAR, rdmsr, wrmsr};
    // SYSRET loads CS = base + 16 and SS = base + 8 (with RPL 3): base 0x10 gives the
    // user code 0x23 and user data 0x1b selectors of the GDT.
    let star = ((gdt::KERNEL_DATA as u64 | 3) << 48) | ((gdt::KERNEL_CODE as u64) << 32);
    // SAFETY: the entry point is the assembly above; the selectors match gdt::load.
    unsafe {
        wrmsr(IA32_EFER, rdmsr(IA32_EFER) | 1);
        wrmsr(IA32_STAR, star);
        wrmsr(IA32_LSTAR, syscall_entry as *const () as u64);
        wrmsr(IA32_CSTAR, keel_compat_syscall_entry as *const () as u64);
        let mask = if crate::switches::is_off(crate::switches::Switch::Fmask) {
            FLAGS_MASK & !((1 << 8) | (1 << 14))
        } else {
            FLAGS_MASK
        };
        wrmsr(IA32_FMASK, mask);
    }
}
