//! System-call numbers and register conventions (seL4 x86-64, non-MCS).
//!
//! The system-call number travels in RDX as a negative number; the capability pointer
//! (or first argument) in RDI, the message info in RSI, and message registers 0–3 in
//! R10, R8, R9 and R15. Keel's debug calls that seL4 does not have take numbers below
//! [`KEEL_DEBUG_BASE`].

/// A system-call number as passed in RDX (sign-extended).
pub type SyscallNumber = i64;

/// seL4_SysCall.
pub const CALL: SyscallNumber = -1;
/// seL4_SysReplyRecv.
pub const REPLY_RECV: SyscallNumber = -2;
/// seL4_SysSend.
pub const SEND: SyscallNumber = -3;
/// seL4_SysNBSend.
pub const NB_SEND: SyscallNumber = -4;
/// seL4_SysRecv.
pub const RECV: SyscallNumber = -5;
/// seL4_SysReply.
pub const REPLY: SyscallNumber = -6;
/// seL4_SysYield.
pub const YIELD: SyscallNumber = -7;
/// seL4_SysNBRecv.
pub const NB_RECV: SyscallNumber = -8;
/// seL4_SysDebugPutChar: RDI holds the byte to print on the kernel console.
pub const DEBUG_PUT_CHAR: SyscallNumber = -9;
/// seL4_SysDebugHalt: stop the system (Keel: exit QEMU with [`crate::exit::HALTED`]).
pub const DEBUG_HALT: SyscallNumber = -11;

/// First number of Keel's own debug calls; they count downwards from here.
pub const KEEL_DEBUG_BASE: SyscallNumber = -64;
/// Keel: print RSI bytes starting at user address RDI on the kernel console.
/// Returns the number of bytes printed in RAX, or a negative value on a bad buffer.
pub const DEBUG_PUT_STRING: SyscallNumber = KEEL_DEBUG_BASE;
/// Keel: the calling thread ends; RDI is its exit value, reported by the kernel.
/// Until the object model exists this ends the root task.
pub const DEBUG_THREAD_EXIT: SyscallNumber = KEEL_DEBUG_BASE - 1;
/// Keel: report the results of an on-target test suite: RDI passed, RSI failed,
/// RDX is reused for the number so the counts go in RDI and RSI only.
pub const DEBUG_TEST_REPORT: SyscallNumber = KEEL_DEBUG_BASE - 2;
/// Keel: read the kernel's tick counter (timer interrupts seen on this CPU) into RAX.
pub const DEBUG_TICKS: SyscallNumber = KEEL_DEBUG_BASE - 3;

/// Largest string [`DEBUG_PUT_STRING`] accepts in one call.
pub const DEBUG_PUT_STRING_MAX: u64 = 4096;

/// Value returned in RAX for an unknown system-call number (until fault delivery exists).
pub const ERROR_UNKNOWN_SYSCALL: u64 = u64::MAX;
/// Value returned in RAX when a user buffer is not mapped or not user-accessible.
pub const ERROR_BAD_ADDRESS: u64 = u64::MAX - 1;
