//! Instruction sequences for the hostile entry tests (DESIGN §5.3): system calls with
//! TF or NT set, MOV SS followed by a kernel entry (the pending-#DB hazard), a 16-bit
//! stack in compatibility mode (espfix64), a raw thread entry that records the
//! registers it starts with, privileged instructions, and execution from the stack or
//! writes to the program's own text. Each one is a complete, self-restoring sequence
//! (or one that ends in a fault its caller expects); the kernel must survive it and
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

/// Instructions of [`step_probe`] after its SYSCALL (each exactly one step under TF):
/// two NOPs, PUSHFQ, the AND that clears TF in the pushed image, POPFQ.
pub const STEP_PROBE_STEPS: usize = 5;

core::arch::global_asm!(
    r#"
    .section .text.keel_step_probe, "ax"
    .code64
    .global keel_step_probe
keel_step_probe:
    /* (number RDI, capability RSI, set TF RDX) */
    push r15
    mov rax, rdx
    mov rdx, rdi
    mov rdi, rsi
    xor esi, esi
    test rax, rax
    jz 1f
    pushfq
    or qword ptr [rsp], {tf}
    popfq
1:
    syscall
    .global keel_step_probe_return
keel_step_probe_return:
    nop
    .global keel_step_probe_1
keel_step_probe_1:
    nop
    .global keel_step_probe_2
keel_step_probe_2:
    pushfq
    .global keel_step_probe_3
keel_step_probe_3:
    and qword ptr [rsp], {not_tf}
    .global keel_step_probe_4
keel_step_probe_4:
    popfq
    .global keel_step_probe_5
keel_step_probe_5:
    pop r15
    ret
    .text
"#,
    tf = const TF,
    not_tf = const !TF as i64,
);

unsafe extern "C" {
    fn keel_step_probe(number: i64, capability: u64, set_tf: u64);
    static keel_step_probe_return: u8;
    static keel_step_probe_1: u8;
    static keel_step_probe_2: u8;
    static keel_step_probe_3: u8;
    static keel_step_probe_4: u8;
    static keel_step_probe_5: u8;
}

/// Makes system call `number` (RDI = `capability`, RSI = message info 0, no message
/// registers) from a probe whose return address is [`step_probe_return`], followed by
/// [`STEP_PROBE_STEPS`] instructions and then clearing TF (the last of them is the
/// POPFQ that clears it). With `set_tf` the probe sets TF itself (POPFQ) right before
/// the SYSCALL; without it, TF is whatever the kernel gives back (a debugger's
/// ConfigureSingleStepping while the thread waits in the call). Either way the thread
/// single-steps from the return of the call until that POPFQ: a fault handler must
/// resume its debug faults.
pub fn step_probe(number: i64, capability: u64, set_tf: bool) {
    // SAFETY: the probe saves R15 (a message register a receive may write) and
    // restores it; everything else it or the system call changes (RAX, RCX, RDX, RSI,
    // RDI, R8-R11) is caller-saved in the C ABI; TF is cleared again before it
    // returns (its handler resumes the debug faults TF raises); the stack is balanced.
    unsafe { keel_step_probe(number, capability, set_tf as u64) }
}

/// The return address of [`step_probe`]'s SYSCALL: the RIP a thread waiting in that
/// call has in its saved registers.
pub fn step_probe_return() -> u64 {
    (&raw const keel_step_probe_return) as u64
}

/// The RIPs after each of the [`STEP_PROBE_STEPS`] instructions of [`step_probe`] that
/// follow its SYSCALL, in order: where the single-step faults of a thread stepping
/// through them are reported, one per instruction run.
pub fn step_probe_steps() -> [u64; STEP_PROBE_STEPS] {
    [
        (&raw const keel_step_probe_1) as u64,
        (&raw const keel_step_probe_2) as u64,
        (&raw const keel_step_probe_3) as u64,
        (&raw const keel_step_probe_4) as u64,
        (&raw const keel_step_probe_5) as u64,
    ]
}

/// Puts `value` in every general register a KeelDebugKernelStackCount call leaves
/// free (RAX, RBX, RBP, RSI, R8, R9, R10, R12 to R15; RDI carries its complement, RDX
/// the number, RCX and R11 are SYSCALL's) and makes the call: returns how many words of
/// the kernel stack above the handler's frame equal `value` (test images only). With
/// the entry's register clearing on, none of these registers reaches the kernel stack.
pub fn kernel_stack_count_of_registers(value: u64) -> u64 {
    let count: u64;
    // SAFETY: RBX and RBP (which cannot be operands) are saved on the user stack and
    // restored; every other register written is declared; the call changes RAX only
    // (and RCX, R11 as SYSCALL does).
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "mov rbx, r10",
            "mov rbp, r10",
            "mov rax, r10",
            "mov rsi, r10",
            "mov r8, r10",
            "mov r9, r10",
            "mov r12, r10",
            "mov r13, r10",
            "mov r14, r10",
            "mov r15, r10",
            "syscall",
            "pop rbp",
            "pop rbx",
            inout("r10") value => _,
            inout("rdi") !value => _,
            inout("rdx") number::DEBUG_KERNEL_STACK_COUNT => _,
            lateout("rax") count,
            lateout("rsi") _,
            lateout("r8") _,
            lateout("r9") _,
            lateout("r12") _,
            lateout("r13") _,
            lateout("r14") _,
            lateout("r15") _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    count
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

/// Loads DS and ES with `selector` (a null selector, the flat user data selector or an
/// LDT data selector the thread owns; anything else is a #GP fault).
pub fn load_ds_es(selector: u16) {
    // SAFETY: 64-bit code ignores DS and ES bases and limits, so Rust code here is not
    // affected; a bad selector faults before anything changes.
    unsafe {
        core::arch::asm!(
            "mov ds, {0:e}",
            "mov es, {0:e}",
            in(reg) selector as u32,
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// The DS and ES selectors.
pub fn ds_es() -> (u16, u16) {
    let (ds, es): (u16, u16);
    // SAFETY: reading segment registers has no side effects.
    unsafe {
        core::arch::asm!(
            "mov {0:x}, ds",
            "mov {1:x}, es",
            out(reg) ds,
            out(reg) es,
            options(nomem, nostack, preserves_flags)
        )
    };
    (ds, es)
}

/// The current SS selector.
pub fn current_ss() -> u16 {
    let ss: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe { core::arch::asm!("mov {:x}, ss", out(reg) ss, options(nomem, nostack)) };
    ss
}

/// Shared state of [`compat16_probe`]; must lie below 4 GiB (32-bit code addresses it).
#[repr(C)]
#[derive(Debug, Default)]
pub struct Compat16Block {
    /// ESP the probe runs with (its SP part addresses nothing: no stack is used).
    pub esp: u32,
    /// The 16-bit stack segment selector (an LDT selector).
    pub ss: u32,
    /// ESP right after the INT3 came back.
    pub esp_after_trap: u32,
    /// OR of (ESP xor `esp`) over the spin loop (interrupts return there).
    pub esp_changed: u32,
    /// Far pointer back to 64-bit code (offset, selector), filled in by the probe.
    pub back: [u32; 2],
    /// Spin-loop iterations.
    pub spins: u32,
    /// Address of [`COMPAT16_STOP`] (below 4 GiB): the spin loop ends early once it
    /// is non-zero.
    pub stop: u32,
    /// The 64-bit RSP, saved across the probe.
    pub saved_rsp: u64,
    /// Far pointer into the 32-bit code (offset, selector), filled in by the probe.
    pub enter: [u32; 2],
}

core::arch::global_asm!(
    r#"
    .section .text.keel_compat16_probe, "ax"
    .code64
    .global keel_compat16_probe
keel_compat16_probe:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rdi + 32], rsp
    mov rbx, rdi
    lea rax, [rip + 2f]
    mov [rbx + 16], eax
    mov dword ptr [rbx + 20], {user_code}
    lea rax, [rip + 1f]
    mov [rbx + 40], eax
    mov [rbx + 44], esi
    /* jmp far [rbx + 40] (m16:32; a far jump, not a far return: some emulators
       read the stack of a far return with supervisor rights, which SMAP refuses) */
    .byte 0xff, 0x6b, 0x28
    .code32
1:
    mov eax, {user_data}
    mov ds, eax
    mov es, eax
    mov eax, [ebx + 4]
    mov ss, eax
    mov esp, [ebx]
    int3
    mov [ebx + 8], esp
    xor edx, edx
    mov ecx, [ebx + 24]
3:
    mov eax, esp
    xor eax, [ebx]
    or edx, eax
    mov eax, [ebx + 28]
    cmp dword ptr [eax], 0
    jne 4f
    dec ecx
    jnz 3b
4:
    mov [ebx + 12], edx
    mov eax, {user_data}
    mov ss, eax
    .byte 0xff, 0x6b, 0x10
    .code64
2:
    mov ebx, ebx
    mov rsp, [rbx + 32]
    xor eax, eax
    mov ds, eax
    mov es, eax
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
    .text
"#,
    user_code = const 0x23,
    user_data = const 0x1b,
);

unsafe extern "C" {
    fn keel_compat16_probe(block: *mut Compat16Block, code_selector: u64);
}

/// What [`compat16_probe`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compat16Result {
    /// ESP right after the INT3 came back.
    pub esp_after_trap: u32,
    /// OR of (ESP xor the ESP set) over the spin loop.
    pub esp_changed: u32,
}

struct BlockCell(core::cell::UnsafeCell<Compat16Block>);
// SAFETY: used by one probe at a time (`PROBE_BUSY`).
unsafe impl Sync for BlockCell {}
static BLOCK: BlockCell = BlockCell(core::cell::UnsafeCell::new(Compat16Block {
    esp: 0,
    ss: 0,
    esp_after_trap: 0,
    esp_changed: 0,
    back: [0; 2],
    spins: 0,
    stop: 0,
    saved_rsp: 0,
    enter: [0; 2],
}));
static PROBE_BUSY: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
/// Non-zero: the running [`compat16_probe`]'s spin loop ends at its next iteration.
static COMPAT16_STOP: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Ends the spin loop of the running [`compat16_probe`] early (from another thread);
/// the next probe starts with the flag clear.
pub fn compat16_stop() {
    COMPAT16_STOP.store(1, core::sync::atomic::Ordering::SeqCst);
}

/// Switches to the 32-bit code segment `code_selector` (an LDT selector), loads SS with
/// `ss` (a 16-bit data segment from the LDT) and ESP with `esp`, executes INT3 (the
/// fault handler must resume it), records ESP, spins `spins` times (or until
/// [`compat16_stop`]) recording any change of ESP (interrupts and preemption return
/// there), and comes back to 64-bit mode with
/// the flat selectors. With a 16-bit SS the probe never touches the stack, so ESP may
/// point anywhere. One probe runs at a time (a second one panics).
pub fn compat16_probe(code_selector: u16, ss: u16, esp: u32, spins: u32) -> Compat16Result {
    use core::sync::atomic::Ordering;
    assert!(
        !PROBE_BUSY.swap(true, Ordering::Acquire),
        "compat16_probe already running"
    );
    let block = BLOCK.0.get();
    assert!((block as u64) < 1 << 32, "probe block above 4 GiB");
    // SAFETY: `PROBE_BUSY` makes this the only user of the block. The probe saves and
    // restores every callee-saved register and RSP (in the block), touches only the
    // block and reads the stop flag (through the flat user data segment), and returns to 64-bit mode with SS,
    // DS and ES as a 64-bit thread has them (0x1b, null, null); the code in between uses
    // no stack. A bad selector faults, and the thread's fault handler decides.
    let result = unsafe {
        (*block).esp = esp;
        (*block).ss = ss as u32;
        (*block).spins = spins.max(1);
        COMPAT16_STOP.store(0, Ordering::SeqCst);
        let stop = COMPAT16_STOP.as_ptr() as u64;
        assert!(stop < 1 << 32, "probe stop flag above 4 GiB");
        (*block).stop = stop as u32;
        (*block).esp_after_trap = 0;
        (*block).esp_changed = 0;
        core::arch::asm!(
            "call {probe}",
            probe = sym keel_compat16_probe,
            in("rdi") block,
            in("rsi") code_selector as u64,
            clobber_abi("C"),
        );
        Compat16Result {
            esp_after_trap: (*block).esp_after_trap,
            esp_changed: (*block).esp_changed,
        }
    };
    PROBE_BUSY.store(false, Ordering::Release);
    result
}

/// Whether `selector` names an accessible descriptor (LAR sets ZF).
pub fn selector_accessible(selector: u16) -> bool {
    let ok: u8;
    // SAFETY: LAR only reads the descriptor tables; it never faults in user mode.
    unsafe {
        core::arch::asm!(
            "lar {tmp:e}, {sel:e}",
            "setz {ok}",
            sel = in(reg) selector as u32,
            tmp = out(reg) _,
            ok = out(reg_byte) ok,
            options(nomem, nostack),
        );
    }
    ok != 0
}

// ---- The registers a new thread starts with ----

/// Words of the block [`initial_state_entry`] fills: RAX, RBX, RCX, RDX, RSI, RDI, RBP,
/// RSP, R8–R15, RFLAGS, CS, SS, DS, ES, FS, GS, then 1 once complete; the rest of the
/// block is the probe's own stack (RSP may be anything when the thread starts).
const INITIAL_STATE_WORDS: usize = 32;
/// Index of the "complete" word.
const INITIAL_STATE_DONE: usize = 23;

static INITIAL_STATE: [core::sync::atomic::AtomicU64; INITIAL_STATE_WORDS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; INITIAL_STATE_WORDS];

core::arch::global_asm!(
    r#"
    .section .text.keel_initial_state_probe, "ax"
    .code64
    .global keel_initial_state_probe
keel_initial_state_probe:
    mov [rip + {block}], rax
    mov [rip + {block} + 8], rbx
    mov [rip + {block} + 16], rcx
    mov [rip + {block} + 24], rdx
    mov [rip + {block} + 32], rsi
    mov [rip + {block} + 40], rdi
    mov [rip + {block} + 48], rbp
    mov [rip + {block} + 56], rsp
    mov [rip + {block} + 64], r8
    mov [rip + {block} + 72], r9
    mov [rip + {block} + 80], r10
    mov [rip + {block} + 88], r11
    mov [rip + {block} + 96], r12
    mov [rip + {block} + 104], r13
    mov [rip + {block} + 112], r14
    mov [rip + {block} + 120], r15
    /* RSP is whatever the thread was given (0 for a fresh TCB): use the block's tail
       as the stack for PUSHFQ. */
    lea rsp, [rip + {block} + {stack_top}]
    pushfq
    pop rax
    mov [rip + {block} + 128], rax
    mov eax, cs
    mov [rip + {block} + 136], rax
    mov eax, ss
    mov [rip + {block} + 144], rax
    mov eax, ds
    mov [rip + {block} + 152], rax
    mov eax, es
    mov [rip + {block} + 160], rax
    mov eax, fs
    mov [rip + {block} + 168], rax
    mov eax, gs
    mov [rip + {block} + 176], rax
    mov qword ptr [rip + {block} + {done}], 1
    /* The thread's handler gets a #UD here and never resumes it. */
    .global keel_initial_state_probe_end
keel_initial_state_probe_end:
    ud2
    .text
"#,
    block = sym INITIAL_STATE,
    stack_top = const INITIAL_STATE_WORDS * 8,
    done = const INITIAL_STATE_DONE * 8,
);

unsafe extern "C" {
    static keel_initial_state_probe: u8;
    static keel_initial_state_probe_end: u8;
}

/// The registers seen by the first instruction of [`initial_state_entry`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// RAX, RBX, RCX, RDX, RSI, RDI, RBP, RSP, R8–R15, in that order.
    pub gprs: [u64; 16],
    /// RFLAGS.
    pub rflags: u64,
    /// CS, SS, DS, ES, FS, GS selectors.
    pub selectors: [u64; 6],
}

/// Names of [`InitialState::gprs`], in order.
pub const GPR_NAMES: [&str; 16] = [
    "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11", "R12", "R13",
    "R14", "R15",
];

/// Address of an entry point for a thread started with raw registers (WriteRegisters
/// RIP): its first instruction stores every general-purpose register, then RFLAGS and
/// the segment selectors, into a static block (read with [`initial_state`]), and it
/// ends with a UD2 at [`initial_state_ud2`] (the fault handler must not resume it).
/// It needs no valid RSP. One such thread at a time.
pub fn initial_state_entry() -> u64 {
    (&raw const keel_initial_state_probe) as u64
}

/// Address of the UD2 that ends [`initial_state_entry`].
pub fn initial_state_ud2() -> u64 {
    (&raw const keel_initial_state_probe_end) as u64
}

/// Clears the block of [`initial_state_entry`].
pub fn initial_state_reset() {
    for w in &INITIAL_STATE {
        w.store(0, core::sync::atomic::Ordering::SeqCst);
    }
}

/// What the probe thread of [`initial_state_entry`] recorded, once it has finished.
pub fn initial_state() -> Option<InitialState> {
    use core::sync::atomic::Ordering::SeqCst;
    if INITIAL_STATE[INITIAL_STATE_DONE].load(SeqCst) != 1 {
        return None;
    }
    let mut s = InitialState::default();
    for (i, g) in s.gprs.iter_mut().enumerate() {
        *g = INITIAL_STATE[i].load(SeqCst);
    }
    s.rflags = INITIAL_STATE[16].load(SeqCst);
    for (i, sel) in s.selectors.iter_mut().enumerate() {
        *sel = INITIAL_STATE[17 + i].load(SeqCst);
    }
    Some(s)
}

// ---- Privileged instructions and protection of the thread's own memory ----

/// An instruction ring 3 may not execute with IOPL 0 and no I/O permission bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privileged {
    /// CLI (0xfa).
    Cli,
    /// STI (0xfb).
    Sti,
    /// `in al, dx` (0xec), DX = 0x80.
    InDx,
    /// `out dx, al` (0xee), DX = 0x80.
    OutDx,
    /// `in al, 0x80` (0xe4 0x80).
    InImmediate,
    /// `out 0x80, al` (0xe6 0x80).
    OutImmediate,
    /// `insb` (0x6c), DX = 0x80, RDI = a scratch byte.
    InString,
    /// `outsb` (0x6e), DX = 0x80, RSI = a scratch byte.
    OutString,
}

impl Privileged {
    /// Every variant.
    pub const ALL: [Privileged; 8] = [
        Privileged::Cli,
        Privileged::Sti,
        Privileged::InDx,
        Privileged::OutDx,
        Privileged::InImmediate,
        Privileged::OutImmediate,
        Privileged::InString,
        Privileged::OutString,
    ];

    /// Length of the instruction in bytes (what a handler adds to FaultIP to skip it).
    pub const fn length(self) -> u64 {
        match self {
            Privileged::InImmediate | Privileged::OutImmediate => 2,
            _ => 1,
        }
    }
}

/// Executes the instruction `which` once; in ring 3 it must raise #GP (vector 13, error
/// code 0), and the fault handler resumes the thread past it (FaultIP +
/// [`Privileged::length`]). Had it executed, it would have changed IF or touched port
/// 0x80 (the POST diagnostic port) and at most one byte of a local.
pub fn privileged(which: Privileged) {
    let mut scratch = 0u8;
    let byte = &raw mut scratch;
    // SAFETY: each variant is one instruction that faults in ring 3 (see above); RAX,
    // RDX, RSI and RDI are declared clobbered (the string forms may advance RSI/RDI),
    // and the only memory they could touch is `scratch`.
    unsafe {
        match which {
            Privileged::Cli => core::arch::asm!("cli", options(nostack)),
            Privileged::Sti => core::arch::asm!("sti", options(nostack)),
            Privileged::InDx => {
                core::arch::asm!("in al, dx", in("dx") 0x80u16, out("al") _, options(nostack))
            }
            Privileged::OutDx => {
                core::arch::asm!("out dx, al", in("dx") 0x80u16, in("al") 0u8, options(nostack))
            }
            Privileged::InImmediate => {
                core::arch::asm!("in al, 0x80", out("al") _, options(nostack))
            }
            Privileged::OutImmediate => {
                core::arch::asm!("out 0x80, al", in("al") 0u8, options(nostack))
            }
            Privileged::InString => core::arch::asm!(
                "insb",
                in("dx") 0x80u16,
                inout("rdi") byte => _,
                options(nostack)
            ),
            Privileged::OutString => core::arch::asm!(
                "outsb",
                in("dx") 0x80u16,
                inout("rsi") byte => _,
                options(nostack)
            ),
        }
    }
    core::hint::black_box(scratch);
}

/// POPF with IOPL 3 and IF 0 requested, then PUSHF: returns the RFLAGS that resulted.
/// In ring 3 with IOPL 0 the CPU ignores both changes silently (no fault), so IOPL must
/// still be 0 and IF still 1. The original flags are restored afterwards.
pub fn popf_iopl3_if0() -> u64 {
    let after: u64;
    // SAFETY: only RFLAGS is written, and it is restored from the saved copy; the stack
    // is balanced. Had the CPU honoured the request, IF would be 0 only until the
    // restoring POPF.
    unsafe {
        core::arch::asm!(
            "pushfq",
            "pushfq",
            "or qword ptr [rsp], 0x3000",
            "and qword ptr [rsp], -0x201",
            "popfq",
            "pushfq",
            "pop {after}",
            "popfq",
            after = out(reg) after,
        );
    }
    after
}

/// Fills a 16-byte buffer on the stack with RET (0xc3), passes its address to
/// `address`, and calls it. With the stack mapped no-execute the fetch faults (a
/// VmFault at that address) and the thread must not be resumed: the handler destroys
/// it. Returns normally only if the stack is executable.
pub fn call_on_stack(address: impl FnOnce(u64)) {
    let mut buffer = [0xc3u8; 16];
    let at = core::hint::black_box(&raw mut buffer) as u64;
    address(at);
    // SAFETY: the buffer holds only RET instructions, so if the fetch succeeds the call
    // returns at once; every caller-saved register is declared clobbered, as for a call
    // to unknown code.
    unsafe {
        core::arch::asm!("call {a}", a = in(reg) at, clobber_abi("sysv64"));
    }
    core::hint::black_box(buffer);
}

/// Stores a byte of this function's own machine code back over itself (the same
/// value, so a successful write would change nothing), after passing its address to
/// `address`. With the program's text mapped read-only this is a VmFault (a write to a
/// present page) at that address; the handler must not resume the thread.
pub fn write_own_text(address: impl FnOnce(u64)) {
    let target: u64;
    // SAFETY: LEA only computes the address of the label.
    unsafe {
        core::arch::asm!("lea {t}, [rip + 2f]", "2:", t = out(reg) target, options(nomem, nostack))
    };
    address(target);
    // SAFETY: the byte written is the byte read from the same address (our own code):
    // if the text were writable, nothing would change.
    unsafe {
        core::arch::asm!(
            "mov al, byte ptr [{t}]",
            "mov byte ptr [{t}], al",
            t = in(reg) target,
            out("al") _,
            options(nostack)
        )
    };
}
