//! Interrupts and exceptions: the IDT, the 256 entry stubs, the trap frame, and the
//! dispatcher with its exception fix-up table and register dump.
//!
//! Every vector has a 16-byte stub that pushes a zero error code where the CPU pushes
//! none, then the vector number, and jumps to `trap_common`, which swaps GS when the
//! trap came from user mode, saves the general registers into a [`TrapFrame`] and calls
//! [`trap_dispatch`]. NMI, #DF, #MC and #DB have their own stubs and run on their IST
//! stacks through the paranoid entry (`paranoid_common`), which never trusts CS to
//! tell which GS base is live: with CR4.FSGSBASE on it saves the interrupted GS base
//! (RDGSBASE), loads the kernel's from the lowest word of the IST stack (RSP masked
//! with the stack size) and writes the saved value back on exit; with CR4.FSGSBASE off
//! it reads IA32_GS_BASE and swaps only if the value is not negative, which is correct
//! because no thread can then hold a negative GS base (see `entry::prepare_thread`).
//! A #DB from user mode is then moved into the thread's context and leaves like any
//! user trap (a debug fault for its handler); NMIs return where they hit.
//!
//! Every interrupt, exception and NMI that interrupts kernel mode first applies the
//! kernel restartable-sequence rule ([`crate::rseq::fix_interrupted`]).
//!
//! Kernel-mode exceptions are fatal (register dump, then panic) unless the faulting
//! instruction is listed in the `.keel_extable` section: then the fault is recorded in
//! the per-CPU [`ProbeRecord`] and execution continues at the listed address. The
//! probes in [`probe`] use this to let tests raise #UD, #BP, #GP and #PF in the kernel.
//! User-mode exceptions end the user program (see [`crate::user`]).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::gdt;

/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 0x20;
/// Vector of the "wake up / check in" IPI.
pub const WAKE_VECTOR: u8 = 0xf0;
/// Vector of the "stop" IPI sent by a panicking CPU.
pub const STOP_VECTOR: u8 = 0xf1;
/// Spurious-interrupt vector of the local APIC.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Vector number the SYSCALL entry stores in its frame.
pub const SYSCALL_MARKER: u64 = 0x100;

/// Registers saved on entry from kernel mode, in stack order (lowest address first).
///
/// The same 22 words, in the same order, as the start of a thread's
/// `keel_kern::object::tcb::UserContext` (where entries from user mode save them); the
/// assertions below keep the two layouts in step. It is a type of its own because a
/// kernel-mode frame on a stack has nothing after `ss`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Next to the vector: the SYSRET exit skips R11 and RCX with the vector and
    /// error code in one stack adjustment (it loads them from RFLAGS and RIP).
    pub r11: u64,
    pub rcx: u64,
    /// Vector number (or [`SYSCALL_MARKER`]).
    pub vector: u64,
    /// Error code (0 where the CPU pushes none).
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = {
    use core::mem::offset_of;
    use keel_kern::object::tcb::{CONTEXT_PUSHED_WORDS, UserContext as U};
    assert!(core::mem::size_of::<TrapFrame>() == CONTEXT_PUSHED_WORDS * 8);
    assert!(offset_of!(TrapFrame, r15) == offset_of!(U, r15));
    assert!(offset_of!(TrapFrame, rax) == offset_of!(U, rax));
    assert!(offset_of!(TrapFrame, vector) == offset_of!(U, vector));
    assert!(offset_of!(TrapFrame, error_code) == offset_of!(U, error_code));
    assert!(offset_of!(TrapFrame, rip) == offset_of!(U, rip));
    assert!(offset_of!(TrapFrame, ss) == offset_of!(U, ss));
};

impl TrapFrame {
    /// Whether the trap interrupted user mode.
    pub fn from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

core::arch::global_asm!(
    concat!(
    r#"
    .section .text.entry, "ax"
    .balign 16
    .global trap_stubs
trap_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    .else
    push 0
    .endif
    push vector
    jmp trap_common
    .set vector, vector + 1
    .endr

    .balign 16
trap_common:
    /* stack: vector, error code, RIP, CS, RFLAGS, RSP, SS */
    /* RFLAGS.AC off: a user thread that set it must not run this entry with SMAP
       suspended (IRETQ restores the interrupted RFLAGS). Patched out without SMAP. */
5:
    clac
6:
"#,
    crate::patch_site!("{clac_switch}", "5b", "6b"),
    r#"
    test byte ptr [rsp + 24], 3
    jz 3f
    /* From user mode: the CPU pushed into the current thread's TCB (TSS.RSP0). */
    swapgs
"#,
    crate::push_gprs!(),
    r#"
    mov rsp, gs:[{kernel_stack}]
    cld
    call {from_user}
    ud2 /* trap_from_user leaves through entry::resume */
3:
    /* A fault on the espfix64 IRETQ (a bad or not-present SS or CS from the LDT):
       GS is the user's; the thread's registers are intact in its TCB. */
    push rax
    lea rax, [rip + keel_espfix_iret]
    cmp [rsp + 24], rax
    pop rax
    je 30f
    /* From kernel mode: the idle loop, a probe, or a kernel bug. */
"#,
    crate::push_gprs!(),
    r#"
    cld
    mov rdi, rsp
    call {dispatch}
"#,
    crate::pop_gprs!(),
    r#"
    add rsp, 16
    iretq
30:
    /* Report it as the thread's exception (vector and error code into its context),
       on the kernel stack, as if it had come from user mode. */
    swapgs
    mov rax, gs:[{context_top}]
    mov rcx, [rsp]
    mov [rax - {vector_from_top}], rcx
    mov rcx, [rsp + 8]
    mov [rax - {error_from_top}], rcx
    mov rsp, gs:[{kernel_stack}]
    cld
    call {from_user}
    ud2 /* trap_from_user leaves through entry::resume */
"#),
    dispatch = sym trap_dispatch,
    from_user = sym crate::entry::trap_from_user,
    clac_switch = const crate::switches::Switch::Clac as u64,
    kernel_stack = const crate::percpu::OFFSET_KERNEL_STACK_TOP,
    context_top = const crate::percpu::OFFSET_CONTEXT_TOP,
    vector_from_top = const (22 - 15) * 8,
    error_from_top = const (22 - 16) * 8,
);

core::arch::global_asm!(
    concat!(
    r#"
    .section .text.entry, "ax"
    .balign 16
    .global keel_paranoid_debug
keel_paranoid_debug:
    push 0
    push 1
    jmp paranoid_common
    .balign 16
    .global keel_paranoid_nmi
keel_paranoid_nmi:
    push 0
    push 2
    jmp paranoid_common
    .balign 16
    .global keel_paranoid_double_fault
keel_paranoid_double_fault:
    push 8
    jmp paranoid_common
    .balign 16
    .global keel_paranoid_machine_check
keel_paranoid_machine_check:
    push 0
    push 18
    jmp paranoid_common

    .balign 16
paranoid_common:
    /* On the IST stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. GS unknown.
       RFLAGS.AC off, as in trap_common (patched out without SMAP). */
5:
    clac
6:
"#,
    crate::patch_site!("{clac_switch}", "5b", "6b"),
    r#""#,
    crate::push_gprs!(),
    r#"
    cld
    xor r13d, r13d
    mov rax, cr4
    bt rax, 16
    jnc 9f
    .global keel_paranoid_fsgsbase
keel_paranoid_fsgsbase:
    /* r12 = 2: restore the saved base (r13) on exit. */
    rdgsbase r13
    mov rax, rsp
    and rax, -{stack_size}
    mov rax, [rax]
    wrgsbase rax
    mov r12d, 2
    jmp 8f
9:
"#,
    crate::patch_site!("{paranoid_switch}", "keel_paranoid_fsgsbase", "9b"),
    r#"
    /* No FSGSBASE: a negative IA32_GS_BASE is the kernel's (r12 = 0), else swap
       (r12 = 1, swap back on exit). */
    mov ecx, 0xc0000101
    rdmsr
    xor r12d, r12d
    test edx, edx
    js 8f
    swapgs
    mov r12d, 1
8:
    mov rdi, rsp
    mov rsi, r12
    mov rdx, r13
    call {dispatch}
    test eax, eax
    jnz 10f
    cmp r12d, 2
    jne 11f
    wrgsbase r13
    jmp 12f
11:
    test r12d, r12d
    jz 12f
    swapgs
12:
"#,
    crate::pop_gprs!(),
    r#"
    add rsp, 16
    iretq
10:
    /* A #DB from user mode, copied into the thread's context: make the GS bases the
       usual kernel-mode pair (IA32_KERNEL_GS_BASE = the user's) and leave through the
       user-trap path on the kernel stack. */
    cmp r12d, 2
    jne 13f
    swapgs
    wrgsbase r13
    swapgs
13:
    mov rsp, gs:[{kernel_stack}]
    cmp eax, 2
    je 14f
    call {from_user}
    ud2 /* trap_from_user leaves through entry::resume */
14:
    /* An NMI from user mode with an LDT CS or SS, copied into the thread's context:
       return through the espfix path instead of an IRETQ from this IST stack. */
    mov rax, gs:[{context_top}]
    sub rax, {context_bytes}
    jmp keel_return_to_user
"#),
    context_top = const crate::percpu::OFFSET_CONTEXT_TOP,
    context_bytes = const crate::entry::PUSHED_WORDS * 8,
    stack_size = const crate::layout::STACK_SIZE,
    paranoid_switch = const crate::switches::Switch::Paranoid as u64,
    clac_switch = const crate::switches::Switch::Clac as u64,
    dispatch = sym paranoid_dispatch,
    from_user = sym crate::entry::trap_from_user,
    kernel_stack = const crate::percpu::OFFSET_KERNEL_STACK_TOP,
);

unsafe extern "C" {
    static trap_stubs: u8;
    static keel_paranoid_debug: u8;
    static keel_paranoid_nmi: u8;
    static keel_paranoid_double_fault: u8;
    static keel_paranoid_machine_check: u8;
    static __keel_extable_start: ExtableEntry;
    static __keel_extable_end: ExtableEntry;
}

#[repr(C, align(16))]
struct Idt(core::cell::UnsafeCell<[u64; 512]>);

// SAFETY: written only by `init_idt` on the bootstrap CPU before any other CPU runs or
// the IDT is loaded; read-only afterwards.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(core::cell::UnsafeCell::new([0; 512]));

/// Fills the IDT (once, on the bootstrap CPU).
pub fn init_idt() {
    // The stubs are 16 bytes apart.
    let stubs = &raw const trap_stubs as u64;
    for vector in 0..256u64 {
        let (handler, ist) = match vector {
            2 => (&raw const keel_paranoid_nmi as u64, gdt::IST_NMI),
            8 => (
                &raw const keel_paranoid_double_fault as u64,
                gdt::IST_DOUBLE_FAULT,
            ),
            18 => (
                &raw const keel_paranoid_machine_check as u64,
                gdt::IST_MACHINE_CHECK,
            ),
            1 => (&raw const keel_paranoid_debug as u64, gdt::IST_DEBUG),
            _ => (stubs + vector * 16, 0),
        };
        let ist = ist as u64;
        // #BP may be raised from user mode with INT3; every other gate is ring 0 only.
        let dpl: u64 = if vector == 3 { 3 } else { 0 };
        let low = (handler & 0xffff)
            | ((gdt::KERNEL_CODE as u64) << 16)
            | (ist << 32)
            | ((0x8e | (dpl << 5)) << 40)
            | (((handler >> 16) & 0xffff) << 48);
        // SAFETY: the IDT is written only here, on the bootstrap CPU before any other
        // CPU starts and before it is loaded.
        unsafe {
            let idt = &mut *IDT.0.get();
            idt[vector as usize * 2] = low;
            idt[vector as usize * 2 + 1] = handler >> 32;
        }
    }
}

/// Loads the IDT on this CPU.
pub fn load_idt() {
    // SAFETY: the IDT is fully initialised (init_idt) and never written again.
    unsafe {
        let idt = &*IDT.0.get();
        let pointer = x86::dtables::DescriptorTablePointer::new(idt);
        x86::dtables::lidt(&pointer);
    }
}

/// An exception fix-up: a fault at `instruction` continues at `continuation`.
#[repr(C)]
struct ExtableEntry {
    instruction: u64,
    continuation: u64,
}

fn extable() -> &'static [ExtableEntry] {
    // SAFETY: the linker places only ExtableEntry records (16 bytes each, emitted by
    // the probe assembly) between these two symbols.
    unsafe {
        let start = &raw const __keel_extable_start;
        let end = &raw const __keel_extable_end;
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// What the last probed kernel exception was (per CPU).
#[derive(Debug)]
pub struct ProbeRecord {
    vector: AtomicU64,
    error_code: AtomicU64,
    address: AtomicU64,
    /// RFLAGS as the handler found them (RFLAGS.AC must be clear there).
    handler_rflags: AtomicU64,
}

impl ProbeRecord {
    /// No exception recorded.
    pub const fn new() -> Self {
        Self {
            vector: AtomicU64::new(NONE),
            error_code: AtomicU64::new(0),
            address: AtomicU64::new(0),
            handler_rflags: AtomicU64::new(0),
        }
    }
}

impl Default for ProbeRecord {
    fn default() -> Self {
        Self::new()
    }
}

const NONE: u64 = u64::MAX;

/// An exception a probe caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaughtException {
    /// Vector number.
    pub vector: u8,
    /// Error code pushed by the CPU (0 if none).
    pub error_code: u64,
    /// CR2 for a page fault, else 0.
    pub address: u64,
    /// RFLAGS in the kernel's exception handler.
    pub handler_rflags: u64,
}

/// Probes: instructions that raise an exception in the kernel on purpose, caught
/// through the fix-up table. Each returns what was caught, or `None`.
pub mod probe {
    use super::*;

    fn take() -> Option<CaughtException> {
        let record = &crate::percpu::current().probe;
        let vector = record.vector.swap(NONE, Ordering::Relaxed);
        (vector != NONE).then(|| CaughtException {
            vector: vector as u8,
            error_code: record.error_code.load(Ordering::Relaxed),
            address: record.address.load(Ordering::Relaxed),
            handler_rflags: record.handler_rflags.load(Ordering::Relaxed),
        })
    }

    /// Executes INT3 with RFLAGS.AC set (STAC), then clears it again; `None` without
    /// SMAP (STAC would be #UD). The entry must have cleared AC before the handler ran.
    pub fn breakpoint_with_ac_set() -> Option<CaughtException> {
        if !crate::cpu::features().smap {
            return None;
        }
        // SAFETY: the CPU has SMAP, so STAC/CLAC exist; AC is set only around the INT3
        // (the kernel touches no user memory meanwhile); the fix-up entry maps the
        // trap's RIP to itself.
        unsafe {
            core::arch::asm!(
                "stac",
                "int3",
                "2:",
                "clac",
                ".pushsection .keel_extable, \"a\"",
                ".quad 2b, 2b",
                ".popsection",
                options(nostack)
            )
        };
        take()
    }

    /// Executes UD2.
    pub fn invalid_opcode() -> Option<CaughtException> {
        // SAFETY: UD2 faults; the fix-up entry continues at label 2.
        unsafe {
            core::arch::asm!(
                "3: ud2",
                "2:",
                ".pushsection .keel_extable, \"a\"",
                ".quad 3b, 2b",
                ".popsection",
                options(nostack)
            )
        };
        take()
    }

    /// Executes INT3 (a trap: the fix-up is keyed on the next instruction).
    pub fn breakpoint() -> Option<CaughtException> {
        // SAFETY: INT3 traps with RIP after it; the fix-up entry maps that RIP to itself.
        unsafe {
            core::arch::asm!(
                "int3",
                "2:",
                ".pushsection .keel_extable, \"a\"",
                ".quad 2b, 2b",
                ".popsection",
                options(nostack)
            )
        };
        take()
    }

    /// Reads the byte at `address` (a page fault if it is not mapped).
    pub fn read(address: u64) -> Option<CaughtException> {
        // SAFETY: the load either succeeds (the value is discarded) or faults and the
        // fix-up continues after it; no memory is written.
        unsafe {
            core::arch::asm!(
                "3: mov {tmp}, byte ptr [{addr}]",
                "2:",
                ".pushsection .keel_extable, \"a\"",
                ".quad 3b, 2b",
                ".popsection",
                addr = in(reg) address,
                tmp = out(reg_byte) _,
                options(nostack, readonly)
            )
        };
        take()
    }

    /// Writes a byte to `address`, which must be a read-only or unmapped kernel page
    /// (a page fault; a writable page would be modified).
    pub fn write_read_only(address: u64) -> Option<CaughtException> {
        let page = crate::paging::translate(crate::paging::current_pml4(), address);
        if page.is_some_and(|t| t.writable) {
            return None;
        }
        // SAFETY: the page is read-only or unmapped (checked above), so the store
        // faults and the fix-up continues after it without writing anything.
        unsafe {
            core::arch::asm!(
                "3: mov byte ptr [{addr}], 0",
                "2:",
                ".pushsection .keel_extable, \"a\"",
                ".quad 3b, 2b",
                ".popsection",
                addr = in(reg) address,
                options(nostack)
            )
        };
        take()
    }

    /// Loads DS with a selector beyond the GDT limit (#GP with that selector).
    pub fn bad_segment() -> Option<CaughtException> {
        // SAFETY: the load faults (selector 0xfff8 is past the GDT), so DS is unchanged.
        unsafe {
            core::arch::asm!(
                "3: mov ds, {sel:x}",
                "2:",
                ".pushsection .keel_extable, \"a\"",
                ".quad 3b, 2b",
                ".popsection",
                sel = in(reg) 0xfff8u64,
                options(nostack)
            )
        };
        take()
    }

    /// Divides by zero (#DE).
    pub fn divide_error() -> Option<CaughtException> {
        // SAFETY: DIV by zero faults before writing RAX/RDX; the fix-up continues after.
        unsafe {
            core::arch::asm!(
                "3: div {zero}",
                "2:",
                ".pushsection .keel_extable, \"a\"",
                ".quad 3b, 2b",
                ".popsection",
                zero = in(reg) 0u64,
                inout("rax") 1u64 => _,
                inout("rdx") 0u64 => _,
                options(nostack, nomem)
            )
        };
        take()
    }
}

/// Names of the exception vectors.
pub fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved 15",
        "#MF x87 floating point",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD floating point",
        "#VE virtualization",
        "#CP control protection",
        "reserved 22",
        "reserved 23",
        "reserved 24",
        "reserved 25",
        "reserved 26",
        "reserved 27",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "reserved 31",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("interrupt")
}

/// Reads CR2.
pub fn cr2() -> u64 {
    // SAFETY: reading CR2 has no side effects.
    unsafe { x86::controlregs::cr2() as u64 }
}

/// Prints every register of `frame` plus the control registers and a frame-pointer
/// backtrace.
pub fn dump(frame: &TrapFrame) {
    use crate::println;
    // SAFETY: reading control registers has no side effects.
    let (cr0, cr3, cr4) = unsafe {
        (
            x86::controlregs::cr0().bits(),
            x86::controlregs::cr3(),
            x86::controlregs::cr4().bits(),
        )
    };
    println!(
        "{} (vector {}, error code {:#x}) on CPU {} in {} mode",
        exception_name(frame.vector),
        frame.vector,
        frame.error_code,
        crate::percpu::cpu_index(),
        if frame.from_user() { "user" } else { "kernel" }
    );
    println!(
        "RIP {:#018x}  CS  {:#06x}  RFLAGS {:#010x}",
        frame.rip, frame.cs, frame.rflags
    );
    println!("RSP {:#018x}  SS  {:#06x}", frame.rsp, frame.ss);
    println!(
        "RAX {:#018x}  RBX {:#018x}  RCX {:#018x}",
        frame.rax, frame.rbx, frame.rcx
    );
    println!(
        "RDX {:#018x}  RSI {:#018x}  RDI {:#018x}",
        frame.rdx, frame.rsi, frame.rdi
    );
    println!(
        "RBP {:#018x}  R8  {:#018x}  R9  {:#018x}",
        frame.rbp, frame.r8, frame.r9
    );
    println!(
        "R10 {:#018x}  R11 {:#018x}  R12 {:#018x}",
        frame.r10, frame.r11, frame.r12
    );
    println!(
        "R13 {:#018x}  R14 {:#018x}  R15 {:#018x}",
        frame.r13, frame.r14, frame.r15
    );
    println!(
        "CR0 {:#018x}  CR2 {:#018x}  CR3 {:#018x}  CR4 {:#x}",
        cr0,
        cr2(),
        cr3,
        cr4
    );
    // SAFETY: reading MSRs that exist on every x86-64 CPU.
    let (gs, kgs, fs) = unsafe {
        (
            x86::msr::rdmsr(x86::msr::IA32_GS_BASE),
            x86::msr::rdmsr(x86::msr::IA32_KERNEL_GSBASE),
            x86::msr::rdmsr(x86::msr::IA32_FS_BASE),
        )
    };
    println!("GS.base {gs:#018x}  KERNEL_GS.base {kgs:#018x}  FS.base {fs:#018x}");
    if !frame.from_user() {
        backtrace(frame.rbp);
    }
}

/// Follows saved frame pointers from `rbp`, printing return addresses, as long as each
/// frame lies in mapped kernel memory.
pub fn backtrace(mut rbp: u64) {
    crate::print!("backtrace:");
    for _ in 0..16 {
        let mapped = |a: u64| {
            a >= crate::layout::DIRECT_MAP
                && a.is_multiple_of(8)
                && crate::paging::translate(crate::paging::current_pml4(), a).is_some()
                && crate::paging::translate(crate::paging::current_pml4(), a + 8).is_some()
        };
        if !mapped(rbp) {
            break;
        }
        // SAFETY: both words were checked to be mapped kernel memory.
        let (next, ret) = unsafe { ((rbp as *const u64).read(), ((rbp + 8) as *const u64).read()) };
        if ret == 0 {
            break;
        }
        crate::print!(" {ret:#x}");
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    crate::println!();
}

/// Acknowledges an interrupt: end of interrupt at the local APIC, the timer's re-arm
/// and tick count, a TLB-shootdown request. Exceptions need nothing (tested inline, so
/// an exception's entry makes no call).
#[inline(always)]
pub(crate) fn acknowledge(vector: u64) {
    if vector >= 32 {
        acknowledge_interrupt(vector);
    }
}

/// [`acknowledge`] for an interrupt vector (32–255).
#[inline(never)]
fn acknowledge_interrupt(vector: u64) {
    if vector != TIMER_VECTOR as u64 {
        crate::rseq::count_event(crate::percpu::Event::Irq);
    }
    crate::rseq::trace(crate::percpu::Event::Irq, vector);
    match vector {
        v if v == TIMER_VECTOR as u64 => {
            crate::percpu::count_tick();
            crate::apic::timer_tick();
            crate::apic::end_of_interrupt();
        }
        v if v == crate::tlb::TLB_VECTOR as u64 => {
            crate::tlb::service_request();
            crate::apic::end_of_interrupt();
        }
        v if v == STOP_VECTOR as u64 => crate::cpu::halt_forever(),
        v if v == SPURIOUS_VECTOR as u64 => {}
        _ => crate::apic::end_of_interrupt(),
    }
}

/// First vector of device interrupts (IRQ n arrives on vector `IRQ_VECTOR_BASE + n`).
pub const IRQ_VECTOR_BASE: u8 = 0x30;

/// Rust side of a trap from kernel mode (called by `trap_common`).
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector;
    if vector < 32 {
        kernel_exception(frame);
    } else if frame.rip == crate::cpu::preemption_window_end() {
        // A long operation's preemption point (this CPU holds the big kernel lock):
        // acknowledge now, handle when that kernel entry ends.
        acknowledge(vector);
        if !matches!(vector, v if v == SPURIOUS_VECTOR as u64 || v == crate::tlb::TLB_VECTOR as u64)
        {
            crate::rseq::defer_interrupt(vector);
        }
    } else {
        crate::rseq::fix_interrupted(&mut frame.rip);
        crate::entry::interrupt_in_kernel(vector);
    }
}

/// How the paranoid entry found GS (its register r12): 0 = the kernel's (sign test),
/// 1 = swapped (sign test), 2 = saved with RDGSBASE and replaced.
const GS_SWAPPED: u64 = 1;
const GS_SAVED: u64 = 2;

/// DR6 bits: breakpoint conditions B0–B3, and BS (single step).
const DR6_B0_B3: u64 = 0xf;
const DR6_BS: u64 = 1 << 14;
/// DR6 value with no condition recorded.
const DR6_CLEAR: u64 = 0xffff_0ff0;

/// Reads and clears DR6.
pub(crate) fn take_dr6() -> u64 {
    let dr6: u64;
    // SAFETY: reading and writing DR6 only changes the recorded debug conditions.
    unsafe {
        core::arch::asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack));
        core::arch::asm!("mov dr6, {}", in(reg) DR6_CLEAR, options(nomem, nostack));
    }
    dr6
}

/// Rust side of the paranoid entry (NMI, #DF, #MC, #DB) with a valid kernel GS base.
/// `gs_mode` and `saved_gs` say how GS was found. Returns 1 if the trap must leave
/// through the user-trap path (a #DB from user mode, already copied into the thread's
/// context), 2 if it must return to the thread through the return path (an NMI from
/// user mode with an LDT selector, copied likewise), 0 to return where it hit.
extern "C" fn paranoid_dispatch(frame: &mut TrapFrame, gs_mode: u64, saved_gs: u64) -> u64 {
    let area = crate::percpu::current();
    if !frame.from_user() {
        let user_gs = match gs_mode {
            GS_SWAPPED => true,
            GS_SAVED => saved_gs != area.self_ptr,
            _ => false,
        };
        if user_gs {
            area.paranoid_user_gs.fetch_add(1, Ordering::Relaxed);
        }
    }
    match frame.vector {
        2 => {
            crate::rseq::count_event(crate::percpu::Event::Nmi);
            crate::rseq::trace(crate::percpu::Event::Nmi, frame.rip);
            if !frame.from_user() {
                crate::rseq::fix_interrupted(&mut frame.rip);
            }
            nmi_hook();
            if frame.from_user() && (frame.cs | frame.ss) & 4 != 0 {
                // An LDT CS or SS: an IRETQ from here would leak this stack's ESP[31:16]
                // to a 16-bit SS and could fault with the user's GS base. Leave through
                // the return path (espfix64) with the frame in the thread's context.
                copy_frame_to_context(frame, area);
                return 2;
            }
            0
        }
        1 => {
            let dr6 = take_dr6();
            crate::rseq::count_event(crate::percpu::Event::Debug);
            if frame.from_user() {
                // A breakpoint, watchpoint or single step of the thread (or ICEBP):
                // its fault handler hears about it.
                frame.error_code = dr6;
                copy_frame_to_context(frame, area);
                return 1;
            }
            if dr6 & DR6_BS != 0 && crate::rseq::injection_step(&mut frame.rip) {
                return 0;
            }
            crate::rseq::fix_interrupted(&mut frame.rip);
            // A #DB in kernel mode is never the kernel's own: a user single step or
            // data breakpoint whose trap was held by MOV SS/POP SS until the first
            // kernel instruction, or a stray TF. Drop it; TF off, so the kernel runs on.
            frame.rflags &= !(1 << 8);
            log::debug!(
                "#DB in kernel mode at {:#x} (DR6 {dr6:#x}) ignored",
                frame.rip
            );
            KERNEL_DEBUG_TRAPS.fetch_add(1, Ordering::Relaxed);
            if dr6 & DR6_B0_B3 != 0 {
                KERNEL_DEBUG_BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
            }
            0
        }
        8 => double_fault(frame),
        _ => {
            crate::rseq::count_event(crate::percpu::Event::Fatal);
            crate::console::force_unlock();
            crate::println!("\nmachine check:");
            dump(frame);
            panic!("machine check at {:#x}", frame.rip);
        }
    }
}

/// Copies an IST frame of a trap from user mode into the current thread's context.
fn copy_frame_to_context(frame: &TrapFrame, area: &crate::percpu::PerCpu) {
    let context = area.context_top - crate::entry::PUSHED_WORDS * 8;
    // SAFETY: `context` is the current thread's register area in its TCB (context_top
    // is set whenever a thread runs), 22 words, not aliased by the IST frame.
    unsafe {
        core::ptr::copy_nonoverlapping(
            frame as *const TrapFrame as *const u64,
            context as *mut u64,
            crate::entry::PUSHED_WORDS as usize,
        );
    }
}

/// #DB traps taken in kernel mode and dropped (all CPUs).
pub static KERNEL_DEBUG_TRAPS: AtomicU64 = AtomicU64::new(0);
/// Of those, how many reported a hardware breakpoint condition (B0–B3).
pub static KERNEL_DEBUG_BREAKPOINTS: AtomicU64 = AtomicU64::new(0);

/// Test hook run by every NMI (0 = none): a function the tests install.
static NMI_HOOK: AtomicU64 = AtomicU64::new(0);

/// Installs `hook` to run in every NMI on every CPU (tests), or removes it.
pub fn set_nmi_hook(hook: Option<fn()>) {
    NMI_HOOK.store(hook.map_or(0, |f| f as usize as u64), Ordering::SeqCst);
}

fn nmi_hook() {
    let hook = NMI_HOOK.load(Ordering::SeqCst);
    if hook != 0 {
        // SAFETY: only `set_nmi_hook` stores non-zero values, and they are `fn()`s.
        let f: fn() = unsafe { core::mem::transmute(hook as usize) };
        f();
    }
}

/// A double fault: always fatal; says whether a kernel stack overflowed into its
/// guard page (the usual cause: a push into the guard faulted, and the page fault
/// could not be delivered on the same stack).
fn double_fault(frame: &mut TrapFrame) -> ! {
    crate::rseq::count_event(crate::percpu::Event::Fatal);
    crate::console::force_unlock();
    crate::println!("\nkernel exception:");
    dump(frame);
    let fault_address = cr2();
    match overflowed_stack(frame.rsp, fault_address) {
        Some(which) => crate::println!(
            "diagnosis: kernel stack overflow into the guard page of {which} (RSP {:#x}, CR2 {fault_address:#x}); caught on the #DF stack",
            frame.rsp
        ),
        None => crate::println!(
            "diagnosis: double fault, not a stack overflow (RSP {:#x}, CR2 {fault_address:#x})",
            frame.rsp
        ),
    }
    panic!("#DF double fault in kernel mode at {:#x}", frame.rip);
}

/// Which kernel stack `rsp`/`cr2` say overflowed, if any.
fn overflowed_stack(rsp: u64, cr2: u64) -> Option<&'static str> {
    const NAMES: [&str; crate::layout::STACKS_PER_CPU as usize] = [
        "a kernel stack",
        "an NMI stack",
        "a #DF stack",
        "a #MC stack",
        "a #DB stack",
        "an idle stack",
    ];
    let near_guard = |guard: u64, a: u64| a >= guard && a < guard + crate::layout::STACK_SIZE + 256;
    let boot_guard = crate::boot::boot_stack_guard();
    if near_guard(boot_guard, cr2) || (rsp >= boot_guard && rsp < boot_guard + 4096 + 256) {
        return Some("the boot stack");
    }
    let region = crate::layout::KERNEL_STACKS;
    let end = region
        + crate::layout::MAX_CPUS as u64
            * crate::layout::STACKS_PER_CPU
            * crate::layout::STACK_SLOT;
    for a in [cr2, rsp] {
        if a >= region && a < end {
            let slot = (a - region) / crate::layout::STACK_SLOT;
            let guard = region + slot * crate::layout::STACK_SLOT;
            if near_guard(guard, a) {
                return Some(NAMES[(slot % crate::layout::STACKS_PER_CPU) as usize]);
            }
        }
    }
    None
}

fn kernel_exception(frame: &mut TrapFrame) {
    let vector = frame.vector;
    if let Some(fixup) = extable().iter().find(|e| e.instruction == frame.rip) {
        let record = &crate::percpu::current().probe;
        record
            .handler_rflags
            .store(crate::cpu::rflags(), Ordering::Relaxed);
        record.error_code.store(frame.error_code, Ordering::Relaxed);
        record
            .address
            .store(if vector == 14 { cr2() } else { 0 }, Ordering::Relaxed);
        record.vector.store(vector, Ordering::Relaxed);
        frame.rip = fixup.continuation;
        return;
    }
    if vector == 2 {
        log::warn!(
            "NMI on CPU {} at {:#x}",
            crate::percpu::cpu_index(),
            frame.rip
        );
        return;
    }
    crate::console::force_unlock();
    crate::println!("\nkernel exception:");
    dump(frame);
    if vector == 14 {
        crate::println!(
            "diagnosis: page fault at {:#x} ({})",
            cr2(),
            page_fault_cause(frame.error_code)
        );
    }
    panic!(
        "{} in kernel mode at {:#x}",
        exception_name(vector),
        frame.rip
    );
}

/// A page-fault error code in words.
pub fn page_fault_cause(error_code: u64) -> &'static str {
    match (
        error_code & 1 != 0,
        error_code & 2 != 0,
        error_code & 16 != 0,
    ) {
        (_, _, true) => "instruction fetch",
        (false, false, _) => "read of a not-present page",
        (false, true, _) => "write to a not-present page",
        (true, false, _) => "read protection violation",
        (true, true, _) => "write protection violation",
    }
}

/// Test support for the paranoid entry: runs a window in kernel mode with IA32_GS_BASE
/// = `foreign` (as right after SYSCALL, before SWAPGS, with a user's base), sends this
/// CPU an NMI and waits for it inside the window. Returns (NMIs taken in the window,
/// paranoid entries that saw a foreign GS base). The kernel GS base is back afterwards.
pub fn nmi_in_foreign_gs_window(foreign: u64) -> (u64, u64) {
    let area = crate::percpu::current();
    let me = area.apic_id;
    let nmis = crate::percpu::event_count(crate::percpu::Event::Nmi);
    let seen = area.paranoid_user_gs.load(Ordering::SeqCst);
    // SAFETY: interrupts are disabled; between the two SWAPGS only code that does not
    // use GS runs (the APIC write and a counted loop); the kernel GS base is saved in
    // IA32_KERNEL_GS_BASE by the first SWAPGS and restored by the second, and the
    // original IA32_KERNEL_GS_BASE is written back at the end. An NMI in the window
    // exercises the paranoid entry; a broken one would crash the kernel here.
    unsafe {
        let saved = x86::msr::rdmsr(x86::msr::IA32_KERNEL_GSBASE);
        x86::msr::wrmsr(x86::msr::IA32_KERNEL_GSBASE, foreign);
        core::arch::asm!("swapgs", options(nostack, preserves_flags));
        crate::apic::send_nmi(me);
        for _ in 0..20_000 {
            core::hint::spin_loop();
        }
        core::arch::asm!("swapgs", options(nostack, preserves_flags));
        x86::msr::wrmsr(x86::msr::IA32_KERNEL_GSBASE, saved);
    }
    (
        crate::percpu::event_count(crate::percpu::Event::Nmi) - nmis,
        area.paranoid_user_gs.load(Ordering::SeqCst) - seen,
    )
}

/// A byte copy of a CPU's [`crate::percpu::PerCpu`] at a kernel address: the foreign
/// GS base of [`decoy_gs_base`].
struct DecoyArea(core::cell::UnsafeCell<core::mem::MaybeUninit<crate::percpu::PerCpu>>);

// SAFETY: written only by `decoy_gs_base`, which the in-kernel tests call from one CPU
// at a time; otherwise only reached through GS while it is some CPU's foreign base.
unsafe impl Sync for DecoyArea {}

static DECOY: DecoyArea = DecoyArea(core::cell::UnsafeCell::new(core::mem::MaybeUninit::uninit()));

/// Test support for the paranoid entry: a kernel-looking (negative) GS base that makes
/// a broken paranoid entry fail visibly instead of crashing. It is a fresh byte copy of
/// this CPU's `PerCpu` (so `gs:[0]` still names the real area and nothing faults), but
/// GS-relative updates through it (the NMI event counter) land in the copy. An entry
/// that trusts the sign of IA32_GS_BASE keeps this base, so the NMI is not counted in
/// the real area and no foreign base is seen; the RDGSBASE method loads the real base.
pub fn decoy_gs_base() -> u64 {
    let area = crate::percpu::current();
    let decoy = DECOY.0.get();
    // SAFETY: the copy is plain bytes of a live `PerCpu` into storage of the same type
    // and size that no Rust reference points into (the decoy is only ever a GS base);
    // one CPU at a time runs the in-kernel tests.
    unsafe {
        core::ptr::copy_nonoverlapping(
            area as *const crate::percpu::PerCpu as *const u8,
            decoy as *mut u8,
            core::mem::size_of::<crate::percpu::PerCpu>(),
        );
    }
    decoy as u64
}

/// Test support: single-steps a few kernel instructions with no injection armed (a
/// stray TF in kernel mode). Returns the kernel #DB traps dropped meanwhile.
pub fn kernel_single_step() -> u64 {
    let before = KERNEL_DEBUG_TRAPS.load(Ordering::SeqCst);
    // SAFETY: sets TF; the IST #DB handler drops the first kernel-mode single-step trap
    // and clears TF in the interrupted flags, so execution continues normally.
    unsafe {
        core::arch::asm!(
            "pushfq",
            "or qword ptr [rsp], 0x100",
            "popfq",
            "nop",
            "nop",
            "nop",
        )
    };
    KERNEL_DEBUG_TRAPS.load(Ordering::SeqCst) - before
}
