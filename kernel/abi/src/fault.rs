//! Fault messages, their replies, and the register context of TCB ReadRegisters /
//! WriteRegisters (seL4 x86-64, non-MCS, hardware debug API on).
//!
//! This module owns the fault type numbers (the label of a fault message sent to a
//! thread's fault endpoint), the message-register layout and length of every fault
//! message, what a reply to each fault writes back, the `seL4_UserContext` order and
//! the rules the kernel applies to user-supplied register values.
//!
//! A fault message's badge is the fault endpoint capability's badge. Its label is the
//! [`FaultType`]. A reply with label 0 resumes the thread (with the registers the reply
//! carries, for the fault types that take them); a reply with any other label leaves
//! the thread inactive, except after a capability fault or a VM fault, whose replies
//! always resume and carry no registers (the faulting instruction runs again).

/// seL4_FaultType: the label of a fault message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum FaultType {
    /// seL4_Fault_NullFault: no fault (never sent).
    NullFault = 0,
    /// seL4_Fault_CapFault: the capability of a system call could not be looked up.
    CapFault = 1,
    /// seL4_Fault_UnknownSyscall: a `syscall` with a number the kernel does not have.
    UnknownSyscall = 2,
    /// seL4_Fault_UserException: a processor exception other than a page fault or a
    /// debug exception (#DE, #UD, #GP, #NM with FPU disabled, …).
    UserException = 3,
    /// seL4_Fault_DebugException (CONFIG_HARDWARE_DEBUG_API): breakpoint, watchpoint,
    /// single step or INT3.
    DebugException = 4,
    /// seL4_Fault_VMFault: a page fault (number 5 without MCS; MCS puts Timeout at 5).
    VmFault = 5,
}

impl FaultType {
    /// The fault type for a message label, if it is one.
    pub const fn from_u64(value: u64) -> Option<Self> {
        match value {
            0 => Some(Self::NullFault),
            1 => Some(Self::CapFault),
            2 => Some(Self::UnknownSyscall),
            3 => Some(Self::UserException),
            4 => Some(Self::DebugException),
            5 => Some(Self::VmFault),
            _ => None,
        }
    }
}

/// Capability fault: MRs and length. The lookup failure words start at
/// [`cap_fault::LOOKUP_FAILURE_TYPE`] and are laid out as in
/// [`crate::error::lookup_failure`]; the message length is 3 + the failure's length
/// (4 to 7). Reply: always resumes; nothing is written back.
pub mod cap_fault {
    /// seL4_CapFault_IP: address of the faulting instruction (the `syscall`).
    pub const IP: usize = 0;
    /// seL4_CapFault_Addr: the capability pointer that failed.
    pub const ADDR: usize = 1;
    /// seL4_CapFault_InRecvPhase: 1 if the fault happened in the receive phase of a
    /// Call/ReplyRecv (looking up the receive endpoint), else 0.
    pub const IN_RECV_PHASE: usize = 2;
    /// seL4_CapFault_LookupFailureType: a [`crate::error::LookupFailure`].
    pub const LOOKUP_FAILURE_TYPE: usize = 3;
    /// seL4_CapFault_BitsLeft.
    pub const BITS_LEFT: usize = 4;
    /// seL4_CapFault_DepthMismatch_BitsFound.
    pub const DEPTH_MISMATCH_BITS_FOUND: usize = 5;
    /// seL4_CapFault_GuardMismatch_GuardFound.
    pub const GUARD_MISMATCH_GUARD_FOUND: usize = 5;
    /// seL4_CapFault_GuardMismatch_BitsFound.
    pub const GUARD_MISMATCH_BITS_FOUND: usize = 6;
}

/// Unknown system call: the faulting thread's registers, then the number.
/// Reply with label 0: the first `min(length, 18)` MRs are written back to the
/// registers in the same order ([`unknown_syscall::REPLY_REGISTERS`]), then the thread
/// resumes at FaultIP, which is the `syscall` instruction itself: a handler that
/// emulates the call replies with FaultIP + 2 to continue after it.
pub mod unknown_syscall {
    /// seL4_UnknownSyscall_RAX … seL4_UnknownSyscall_FLAGS: MR `i` holds register
    /// `REGISTERS[i]`. `rip` (FaultIP) is the address of the `syscall` instruction.
    pub const REGISTERS: [&str; 18] = [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
        "r14", "r15", "rip", "rsp", "rflags",
    ];
    /// seL4_UnknownSyscall_RAX.
    pub const RAX: usize = 0;
    /// seL4_UnknownSyscall_RBX.
    pub const RBX: usize = 1;
    /// seL4_UnknownSyscall_RCX.
    pub const RCX: usize = 2;
    /// seL4_UnknownSyscall_RDX.
    pub const RDX: usize = 3;
    /// seL4_UnknownSyscall_RSI.
    pub const RSI: usize = 4;
    /// seL4_UnknownSyscall_RDI.
    pub const RDI: usize = 5;
    /// seL4_UnknownSyscall_RBP.
    pub const RBP: usize = 6;
    /// seL4_UnknownSyscall_R8.
    pub const R8: usize = 7;
    /// seL4_UnknownSyscall_R9.
    pub const R9: usize = 8;
    /// seL4_UnknownSyscall_R10.
    pub const R10: usize = 9;
    /// seL4_UnknownSyscall_R11.
    pub const R11: usize = 10;
    /// seL4_UnknownSyscall_R12.
    pub const R12: usize = 11;
    /// seL4_UnknownSyscall_R13.
    pub const R13: usize = 12;
    /// seL4_UnknownSyscall_R14.
    pub const R14: usize = 13;
    /// seL4_UnknownSyscall_R15.
    pub const R15: usize = 14;
    /// seL4_UnknownSyscall_FaultIP.
    pub const FAULT_IP: usize = 15;
    /// seL4_UnknownSyscall_SP.
    pub const SP: usize = 16;
    /// seL4_UnknownSyscall_FLAGS.
    pub const FLAGS: usize = 17;
    /// seL4_UnknownSyscall_Syscall: the number from RDX.
    pub const SYSCALL: usize = 18;
    /// seL4_UnknownSyscall_Length.
    pub const LENGTH: usize = 19;
    /// Registers a label-0 reply writes back (MR0..MR17, [`REGISTERS`] order).
    pub const REPLY_REGISTERS: usize = 18;
}

/// User exception. Reply with label 0: the first `min(length, 3)` MRs are written back
/// to RIP, RSP and RFLAGS, then the thread resumes at RIP.
pub mod user_exception {
    /// seL4_UserException_FaultIP: address of the faulting instruction.
    pub const FAULT_IP: usize = 0;
    /// seL4_UserException_SP.
    pub const SP: usize = 1;
    /// seL4_UserException_FLAGS.
    pub const FLAGS: usize = 2;
    /// seL4_UserException_Number: the CPU exception vector (0 #DE, 6 #UD, 13 #GP, …).
    pub const NUMBER: usize = 3;
    /// seL4_UserException_Code: the exception's error code (0 if it has none).
    pub const CODE: usize = 4;
    /// seL4_UserException_Length.
    pub const LENGTH: usize = 5;
    /// Registers a label-0 reply writes back (RIP, RSP, RFLAGS).
    pub const REPLY_REGISTERS: usize = 3;
}

/// VM fault (page fault). Reply: always resumes; nothing is written back.
pub mod vm_fault {
    /// seL4_VMFault_IP: address of the faulting instruction.
    pub const IP: usize = 0;
    /// seL4_VMFault_Addr: the faulting address (CR2).
    pub const ADDR: usize = 1;
    /// seL4_VMFault_PrefetchFault: 1 for an instruction fetch, 0 for a data access.
    pub const PREFETCH_FAULT: usize = 2;
    /// seL4_VMFault_FSR: the page-fault error code pushed by the CPU.
    pub const FSR: usize = 3;
    /// seL4_VMFault_Length.
    pub const LENGTH: usize = 4;
    /// seL4_DataFault: value of `PREFETCH_FAULT` for a data access.
    pub const DATA_FAULT: u64 = 0;
    /// seL4_InstructionFault: value of `PREFETCH_FAULT` for an instruction fetch.
    pub const INSTRUCTION_FAULT: u64 = 1;
}

/// Debug exception (hardware debug API). For a breakpoint or watchpoint the message has
/// 4 MRs; for a single step or a software break request (INT3) only the first 2.
/// Reply with label 0 resumes; after a single step, MR0 of the reply (if present) is
/// the number of instructions to run before the next single-step fault (default 1).
pub mod debug_exception {
    /// seL4_DebugException_FaultIP: the instruction address of the event.
    pub const FAULT_IP: usize = 0;
    /// seL4_DebugException_ExceptionReason: a [`super::BreakpointType`].
    pub const EXCEPTION_REASON: usize = 1;
    /// seL4_DebugException_TriggerAddress: the breakpoint's or watchpoint's address.
    pub const TRIGGER_ADDRESS: usize = 2;
    /// seL4_DebugException_BreakpointNumber: which debug register (0..=3) fired.
    pub const BREAKPOINT_NUMBER: usize = 3;
    /// seL4_DebugException_Length: length for breakpoints and watchpoints.
    pub const LENGTH: usize = 4;
    /// Length for single-step and software-break-request messages.
    pub const SHORT_LENGTH: usize = 2;
    /// Reply MR: instructions to skip before the next single-step fault.
    pub const REPLY_INSTRUCTIONS_TO_SKIP: usize = 0;
    /// Number of x86 hardware breakpoints (DR0..DR3).
    pub const HARDWARE_BREAKPOINTS: u64 = 4;
}

/// seL4_BreakpointType: the `type` argument of TCBSetBreakpoint and the exception
/// reason of a debug-exception message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum BreakpointType {
    /// seL4_DataBreakpoint (watchpoint).
    Data = 0,
    /// seL4_InstructionBreakpoint.
    Instruction = 1,
    /// seL4_SingleStep.
    SingleStep = 2,
    /// seL4_SoftwareBreakRequest (INT3).
    SoftwareBreakRequest = 3,
}

/// seL4_BreakpointAccess: what a data breakpoint triggers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum BreakpointAccess {
    /// seL4_BreakOnRead.
    Read = 0,
    /// seL4_BreakOnWrite.
    Write = 1,
    /// seL4_BreakOnReadWrite.
    ReadWrite = 2,
}

/// seL4_UserContext (x86-64): the registers of TCB ReadRegisters, WriteRegisters and
/// CopyRegisters, in message order. The first 18 are seL4's "frame registers", the last
/// two its "general-purpose registers"; ReadRegisters/WriteRegisters take a count and
/// transfer that many from the start of this order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UserContext {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags (sanitised on write, see [`sanitise_rflags`]).
    pub rflags: u64,
    /// RAX.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// FS base (the TLS base).
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
}

/// Number of words in [`UserContext`] (the largest ReadRegisters count).
pub const USER_CONTEXT_WORDS: usize = 20;
/// Number of seL4 "frame registers" (rip … r15).
pub const FRAME_REGISTERS: usize = 18;
/// Number of seL4 "general-purpose registers" (fs_base, gs_base).
pub const GP_REGISTERS: usize = 2;
const _: () = assert!(core::mem::size_of::<UserContext>() == USER_CONTEXT_WORDS * 8);
const _: () = assert!(FRAME_REGISTERS + GP_REGISTERS == USER_CONTEXT_WORDS);

/// Names of the [`UserContext`] words, in order.
pub const USER_CONTEXT_ORDER: [&str; USER_CONTEXT_WORDS] = [
    "rip", "rsp", "rflags", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10",
    "r11", "r12", "r13", "r14", "r15", "fs_base", "gs_base",
];

impl UserContext {
    /// The context as message words, in [`USER_CONTEXT_ORDER`].
    pub const fn to_words(&self) -> [u64; USER_CONTEXT_WORDS] {
        [
            self.rip,
            self.rsp,
            self.rflags,
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.rbp,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
            self.fs_base,
            self.gs_base,
        ]
    }

    /// The context from message words in [`USER_CONTEXT_ORDER`].
    pub const fn from_words(w: &[u64; USER_CONTEXT_WORDS]) -> Self {
        Self {
            rip: w[0],
            rsp: w[1],
            rflags: w[2],
            rax: w[3],
            rbx: w[4],
            rcx: w[5],
            rdx: w[6],
            rsi: w[7],
            rdi: w[8],
            rbp: w[9],
            r8: w[10],
            r9: w[11],
            r10: w[12],
            r11: w[13],
            r12: w[14],
            r13: w[15],
            r14: w[16],
            r15: w[17],
            fs_base: w[18],
            gs_base: w[19],
        }
    }
}

/// TCBReadRegisters arguments: MR0 = flags word, whose bit 0 (`suspend_source`)
/// suspends the thread first; bits 8 and up are architecture flags (none on x86).
/// MR1 = number of registers (1..=20). Reply: that many words of [`UserContext`].
/// TCBWriteRegisters: MR0 = flags (bit 0 `resume_target`), MR1 = count, MR2.. = the
/// words. TCBCopyRegisters: extra cap 0 = source TCB, MR0 = flags: bit 0
/// `suspend_source`, bit 1 `resume_target`, bit 2 `transfer_frame`, bit 3
/// `transfer_integer`.
pub mod tcb_registers {
    /// ReadRegisters/CopyRegisters flag: suspend the source first.
    pub const SUSPEND_SOURCE: u64 = 1 << 0;
    /// WriteRegisters flag: resume the target afterwards.
    pub const WRITE_RESUME_TARGET: u64 = 1 << 0;
    /// CopyRegisters flag: resume the target afterwards.
    pub const COPY_RESUME_TARGET: u64 = 1 << 1;
    /// CopyRegisters flag: copy the frame registers (rip … r15).
    pub const COPY_TRANSFER_FRAME: u64 = 1 << 2;
    /// CopyRegisters flag: copy the general-purpose registers (fs_base, gs_base).
    pub const COPY_TRANSFER_INTEGER: u64 = 1 << 3;
}

/// RFLAGS bits the kernel forces to 1 in a user-supplied value: bit 1 (always one)
/// and IF.
pub const RFLAGS_FORCED_ONE: u64 = (1 << 1) | (1 << 9);
/// RFLAGS bits the kernel forces to 0: bits 3 and 5 (reserved) and TF (bit 8).
pub const RFLAGS_FORCED_ZERO: u64 = (1 << 3) | (1 << 5) | (1 << 8);
/// Only bits 0..=11 of a user-supplied RFLAGS survive.
pub const RFLAGS_USER_MASK: u64 = (1 << 12) - 1;

/// What seL4 makes of an RFLAGS value written by WriteRegisters or a fault reply.
pub const fn sanitise_rflags(value: u64) -> u64 {
    ((value | RFLAGS_FORCED_ONE) & !RFLAGS_FORCED_ZERO) & RFLAGS_USER_MASK
}

/// What seL4 makes of a RIP, FS base or GS base written by the user: a non-canonical
/// value becomes 0.
pub const fn sanitise_address(value: u64) -> u64 {
    if value > 0x0000_7fff_ffff_ffff && value < 0xffff_8000_0000_0000 {
        0
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_types() {
        for v in 0..6 {
            assert_eq!(FaultType::from_u64(v).unwrap() as u64, v);
        }
        assert_eq!(FaultType::from_u64(6), None);
        assert_eq!(FaultType::VmFault as u64, 5);
    }

    #[test]
    fn user_context_order() {
        let mut words = [0u64; USER_CONTEXT_WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            *w = i as u64 + 100;
        }
        let ctx = UserContext::from_words(&words);
        assert_eq!(ctx.rip, 100);
        assert_eq!(ctx.rflags, 102);
        assert_eq!(ctx.r15, 117);
        assert_eq!(ctx.gs_base, 119);
        assert_eq!(ctx.to_words(), words);
        assert_eq!(core::mem::offset_of!(UserContext, fs_base), 18 * 8);
    }

    #[test]
    fn unknown_syscall_layout() {
        assert_eq!(unknown_syscall::REGISTERS[unknown_syscall::R15], "r15");
        assert_eq!(unknown_syscall::REGISTERS[unknown_syscall::FAULT_IP], "rip");
        assert_eq!(unknown_syscall::REGISTERS[unknown_syscall::FLAGS], "rflags");
        assert_eq!(unknown_syscall::SYSCALL + 1, unknown_syscall::LENGTH);
    }

    #[test]
    fn sanitising() {
        assert_eq!(sanitise_rflags(0), 0x202);
        assert_eq!(sanitise_rflags(u64::MAX), 0xfff & !0x128);
        assert_eq!(sanitise_address(0x8000_0000_0000), 0);
        assert_eq!(
            sanitise_address(0xffff_8000_0000_0000),
            0xffff_8000_0000_0000
        );
        assert_eq!(sanitise_address(0x1000), 0x1000);
    }
}
