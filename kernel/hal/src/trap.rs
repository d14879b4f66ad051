//! Interrupts and exceptions: the IDT, the 256 entry stubs, the trap frame, and the
//! dispatcher with its exception fix-up table and register dump.
//!
//! Every vector has a 16-byte stub that pushes a zero error code where the CPU pushes
//! none, then the vector number, and jumps to `trap_common`, which swaps GS when the
//! trap came from user mode, saves the general registers into a [`TrapFrame`] and calls
//! [`trap_dispatch`]. NMI, #DF, #MC and #DB run on their IST stacks. (The paranoid GS
//! handling for the IST vectors arrives with the entry-core work; until then the IST
//! vectors use the same CS test as the others.)
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

/// Registers saved on entry, in stack order (lowest address first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
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

impl TrapFrame {
    /// Whether the trap interrupted user mode.
    pub fn from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

core::arch::global_asm!(
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
    test byte ptr [rsp + 24], 3
    jz 3f
    /* From user mode: the CPU pushed into the current thread's TCB (TSS.RSP0). */
    swapgs
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rsp, gs:[{kernel_stack}]
    cld
    call {from_user}
    jmp keel_return_to_user
3:
    /* From kernel mode: the idle loop, a probe, or a kernel bug. */
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rdi, rsp
    call {dispatch}
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
"#,
    dispatch = sym trap_dispatch,
    from_user = sym crate::entry::trap_from_user,
    kernel_stack = const crate::percpu::OFFSET_KERNEL_STACK_TOP,
);

unsafe extern "C" {
    static trap_stubs: u8;
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
        let handler = stubs + vector * 16;
        let ist: u64 = match vector {
            2 => gdt::IST_NMI,
            8 => gdt::IST_DOUBLE_FAULT,
            18 => gdt::IST_MACHINE_CHECK,
            1 => gdt::IST_DEBUG,
            _ => 0,
        } as u64;
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
}

impl ProbeRecord {
    /// No exception recorded.
    pub const fn new() -> Self {
        Self {
            vector: AtomicU64::new(NONE),
            error_code: AtomicU64::new(0),
            address: AtomicU64::new(0),
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
        })
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
/// and tick count, a TLB-shootdown request. Exceptions need nothing.
pub(crate) fn acknowledge(vector: u64) {
    match vector {
        0..=31 => {}
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
    } else {
        crate::entry::interrupt_in_kernel(vector);
    }
}

fn kernel_exception(frame: &mut TrapFrame) {
    let vector = frame.vector;
    if let Some(fixup) = extable().iter().find(|e| e.instruction == frame.rip) {
        let record = &crate::percpu::current().probe;
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
    if vector == 8 && stack_guard_hit(frame.rsp) {
        crate::println!("diagnosis: kernel stack overflow into a guard page");
    }
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

fn stack_guard_hit(rsp: u64) -> bool {
    let region = crate::layout::KERNEL_STACKS;
    rsp >= region
        && rsp
            < region
                + crate::layout::MAX_CPUS as u64
                    * crate::layout::STACKS_PER_CPU
                    * crate::layout::STACK_SLOT
        && (rsp - region) % crate::layout::STACK_SLOT < crate::layout::STACK_SIZE
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
