//! System-call numbers and the register convention of the `syscall` instruction
//! (seL4 x86-64, non-MCS).
//!
//! This module owns every number that selects a system call and every rule about which
//! CPU register carries what across the `syscall` instruction. seL4 numbers its calls
//! with negative values counting down from -1: the eight API calls first, then the
//! debug and benchmark calls. The debug numbers are assigned whether or not the kernel
//! is built with them, so each keeps its number in every configuration; see
//! [`SEL4_SYSCALLS`] for the whole list. Keel's own debug calls count down from
//! [`KEEL_DEBUG_BASE`], far below seL4's lowest number ([`SEL4_LOWEST`]).
//!
//! Register convention (the kernel reads and writes these; everything else except
//! RCX, R11 and RSP is preserved):
//!
//! | register | on entry | on return |
//! |---|---|---|
//! | RDX | system-call number (sign-extended) | unchanged for the API calls |
//! | RDI | capability pointer (Send, Call, Recv …); first argument of debug calls | badge of the sender (Recv, Call, ReplyRecv); result of some debug calls |
//! | RSI | message info ([`crate::message::MessageInfo`]) | message info of the received message |
//! | R10, R8, R9, R15 | message registers 0–3 | message registers 0–3 |
//! | RCX, R11 | destroyed by `syscall` (RCX ← RIP, R11 ← RFLAGS) | user RIP / RFLAGS for `sysret` |
//! | RSP | not saved by seL4's `syscall` entry | restored from the thread's saved context |
//!
//! seL4's kernel does not record RSP on `syscall` entry, so libsel4 copies RSP to RBX
//! before the instruction and back afterwards; seL4 programs therefore treat RBX as
//! clobbered and rely on nothing about RSP. Keel may preserve both; a program written
//! for seL4 runs either way.

/// A system-call number as passed in RDX (sign-extended).
pub type SyscallNumber = i64;

/// seL4_SysCall: send a message and wait for the reply on a one-time reply capability.
pub const CALL: SyscallNumber = -1;
/// seL4_SysReplyRecv: reply to the last caller, then wait on an endpoint/notification.
pub const REPLY_RECV: SyscallNumber = -2;
/// seL4_SysSend: blocking send on an endpoint, or signal on a notification.
pub const SEND: SyscallNumber = -3;
/// seL4_SysNBSend: send that gives up (silently) when no receiver is waiting.
pub const NB_SEND: SyscallNumber = -4;
/// seL4_SysRecv: blocking receive on an endpoint, or wait on a notification.
pub const RECV: SyscallNumber = -5;
/// seL4_SysReply: reply to the last caller through the thread's reply capability.
pub const REPLY: SyscallNumber = -6;
/// seL4_SysYield: give up the rest of the time slice.
pub const YIELD: SyscallNumber = -7;
/// seL4_SysNBRecv: receive that returns at once when nothing is pending (poll).
pub const NB_RECV: SyscallNumber = -8;

/// The lowest (most negative) API call number; numbers from -1 down to this one are
/// the API calls, anything lower is handled as a debug call or an unknown system call.
pub const API_LOWEST: SyscallNumber = NB_RECV;

/// seL4_SysDebugPutChar (CONFIG_PRINTING): RDI holds the byte to print on the kernel
/// console.
pub const DEBUG_PUT_CHAR: SyscallNumber = -9;
/// seL4_SysDebugDumpScheduler (CONFIG_PRINTING): print the scheduler's queues.
pub const DEBUG_DUMP_SCHEDULER: SyscallNumber = -10;
/// seL4_SysDebugHalt (CONFIG_DEBUG_BUILD): stop the system (Keel: exit QEMU with
/// [`crate::exit::HALTED`]).
pub const DEBUG_HALT: SyscallNumber = -11;
/// seL4_SysDebugCapIdentify (CONFIG_DEBUG_BUILD): RDI holds a capability pointer; on
/// return RDI holds the kernel's type tag of that capability
/// ([`crate::object::cap_tag`]), 0 for an empty slot.
pub const DEBUG_CAP_IDENTIFY: SyscallNumber = -12;
/// seL4_SysDebugSnapshot (CONFIG_DEBUG_BUILD): print a capDL description of the system.
pub const DEBUG_SNAPSHOT: SyscallNumber = -13;
/// seL4_SysDebugNameThread (CONFIG_DEBUG_BUILD): RDI holds a TCB capability pointer;
/// the NUL-terminated name starts at the caller's IPC buffer word 1 (message register 0)
/// and is shorter than 120 × 8 bytes.
pub const DEBUG_NAME_THREAD: SyscallNumber = -14;
/// seL4_SysDebugSendIPI (CONFIG_DEBUG_BUILD and SMP): Arm only; seL4 on x86 halts.
/// Keel treats it as an unknown system call.
pub const DEBUG_SEND_IPI: SyscallNumber = -15;
/// seL4_SysDebugGetThreadAffinity (CONFIG_DEBUG_BUILD and SMP): RDI holds a TCB
/// capability pointer; on return RDI holds the CPU the thread is bound to.
pub const DEBUG_GET_THREAD_AFFINITY: SyscallNumber = -16;

/// The most negative number seL4 assigns ([`SEL4_SYSCALLS`]' last entry).
pub const SEL4_LOWEST: SyscallNumber = -30;

/// Whether a seL4 call is part of Keel's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// An API call: always present.
    Api,
    /// A debug call present in Keel's debug builds.
    Debug,
    /// Numbered by seL4 but not built in this configuration: the number is reserved,
    /// and the kernel answers it with an unknown-syscall fault.
    Absent,
}

/// Every system call seL4 16.0.0 numbers, in order, with seL4's name, the condition
/// under which seL4 builds it, and whether Keel's configuration has it.
pub const SEL4_SYSCALLS: &[(SyscallNumber, &str, &str, Presence)] = &[
    (CALL, "Call", "always", Presence::Api),
    (REPLY_RECV, "ReplyRecv", "always", Presence::Api),
    (SEND, "Send", "always", Presence::Api),
    (NB_SEND, "NBSend", "always", Presence::Api),
    (RECV, "Recv", "always", Presence::Api),
    (REPLY, "Reply", "always", Presence::Api),
    (YIELD, "Yield", "always", Presence::Api),
    (NB_RECV, "NBRecv", "always", Presence::Api),
    (
        DEBUG_PUT_CHAR,
        "DebugPutChar",
        "CONFIG_PRINTING",
        Presence::Debug,
    ),
    (
        DEBUG_DUMP_SCHEDULER,
        "DebugDumpScheduler",
        "CONFIG_PRINTING",
        Presence::Debug,
    ),
    (
        DEBUG_HALT,
        "DebugHalt",
        "CONFIG_DEBUG_BUILD",
        Presence::Debug,
    ),
    (
        DEBUG_CAP_IDENTIFY,
        "DebugCapIdentify",
        "CONFIG_DEBUG_BUILD",
        Presence::Debug,
    ),
    (
        DEBUG_SNAPSHOT,
        "DebugSnapshot",
        "CONFIG_DEBUG_BUILD",
        Presence::Debug,
    ),
    (
        DEBUG_NAME_THREAD,
        "DebugNameThread",
        "CONFIG_DEBUG_BUILD",
        Presence::Debug,
    ),
    (
        DEBUG_SEND_IPI,
        "DebugSendIPI",
        "CONFIG_DEBUG_BUILD && CONFIG_ENABLE_SMP_SUPPORT",
        Presence::Debug,
    ),
    (
        DEBUG_GET_THREAD_AFFINITY,
        "DebugGetThreadAffinity",
        "CONFIG_DEBUG_BUILD && CONFIG_ENABLE_SMP_SUPPORT",
        Presence::Debug,
    ),
    (
        -17,
        "DebugRun",
        "CONFIG_DANGEROUS_CODE_INJECTION",
        Presence::Absent,
    ),
    (
        -18,
        "BenchmarkFlushCaches",
        "CONFIG_ENABLE_BENCHMARKS",
        Presence::Absent,
    ),
    (
        -19,
        "BenchmarkResetLog",
        "CONFIG_ENABLE_BENCHMARKS",
        Presence::Absent,
    ),
    (
        -20,
        "BenchmarkFinalizeLog",
        "CONFIG_ENABLE_BENCHMARKS",
        Presence::Absent,
    ),
    (
        -21,
        "BenchmarkSetLogBuffer",
        "CONFIG_ENABLE_BENCHMARKS",
        Presence::Absent,
    ),
    (
        -22,
        "BenchmarkNullSyscall",
        "CONFIG_ENABLE_BENCHMARKS",
        Presence::Absent,
    ),
    (
        -23,
        "BenchmarkGetThreadUtilisation",
        "CONFIG_BENCHMARK_TRACK_UTILISATION",
        Presence::Absent,
    ),
    (
        -24,
        "BenchmarkResetThreadUtilisation",
        "CONFIG_BENCHMARK_TRACK_UTILISATION",
        Presence::Absent,
    ),
    (
        -25,
        "BenchmarkDumpAllThreadsUtilisation",
        "CONFIG_DEBUG_BUILD && CONFIG_BENCHMARK_TRACK_UTILISATION",
        Presence::Absent,
    ),
    (
        -26,
        "BenchmarkResetAllThreadsUtilisation",
        "CONFIG_DEBUG_BUILD && CONFIG_BENCHMARK_TRACK_UTILISATION",
        Presence::Absent,
    ),
    (
        -27,
        "X86DangerousWRMSR",
        "CONFIG_KERNEL_X86_DANGEROUS_MSR",
        Presence::Absent,
    ),
    (
        -28,
        "X86DangerousRDMSR",
        "CONFIG_KERNEL_X86_DANGEROUS_MSR",
        Presence::Absent,
    ),
    (-29, "VMEnter", "CONFIG_VTX", Presence::Absent),
    (
        SEL4_LOWEST,
        "SetTLSBase",
        "CONFIG_SET_TLS_BASE_SELF (off on x86)",
        Presence::Absent,
    ),
];

/// First number of Keel's own debug calls; they count downwards from here. Well below
/// [`SEL4_LOWEST`], so seL4 can add calls without a collision.
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

/// Keel: switch the IPC fastpath on (RDI = 1) or off (RDI = 0), for benchmarks that
/// measure the general path.
pub const DEBUG_SET_FASTPATH: SyscallNumber = KEEL_DEBUG_BASE - 4;
/// Keel: platform facts for benchmark reports, in RAX: bit 0 = QEMU counts
/// instructions (`-icount`: the TSC counts instructions), bit 1 = hardware KVM.
pub const DEBUG_PLATFORM_FLAGS: SyscallNumber = KEEL_DEBUG_BASE - 5;
/// Keel, test images only (elsewhere an unknown system call): RDI is the complement of a
/// value; RAX returns how many 8-byte words of this CPU's kernel stack, above the
/// handler's own frame, equal the value. The register-clearing test (doc/entry.md)
/// puts the value in every register the call does not use: with the entry's clearing
/// on, none of them may reach the kernel stack.
pub const DEBUG_KERNEL_STACK_COUNT: SyscallNumber = KEEL_DEBUG_BASE - 6;
/// [`DEBUG_PLATFORM_FLAGS`]: the TSC counts instructions.
pub const PLATFORM_ICOUNT: u64 = 1;
/// [`DEBUG_PLATFORM_FLAGS`]: running under hardware KVM.
pub const PLATFORM_KVM: u64 = 2;

/// Keel's own debug calls, with their names (for the kernel's dispatcher and the docs).
pub const KEEL_DEBUG_SYSCALLS: &[(SyscallNumber, &str)] = &[
    (DEBUG_PUT_STRING, "KeelDebugPutString"),
    (DEBUG_THREAD_EXIT, "KeelDebugThreadExit"),
    (DEBUG_TEST_REPORT, "KeelDebugTestReport"),
    (DEBUG_TICKS, "KeelDebugTicks"),
    (DEBUG_SET_FASTPATH, "KeelDebugSetFastpath"),
    (DEBUG_PLATFORM_FLAGS, "KeelDebugPlatformFlags"),
    (DEBUG_KERNEL_STACK_COUNT, "KeelDebugKernelStackCount"),
];

/// Largest string [`DEBUG_PUT_STRING`] accepts in one call.
pub const DEBUG_PUT_STRING_MAX: u64 = 4096;

/// Value returned in RAX for an unknown system-call number (until fault delivery exists).
pub const ERROR_UNKNOWN_SYSCALL: u64 = u64::MAX;
/// Value returned in RAX when a user buffer is not mapped or not user-accessible.
pub const ERROR_BAD_ADDRESS: u64 = u64::MAX - 1;

/// The CPU registers of the convention, by role.
pub mod reg {
    /// Register holding the system-call number on entry.
    pub const NUMBER: &str = "rdx";
    /// Register holding the capability pointer on entry and the badge on return.
    pub const CAP_OR_BADGE: &str = "rdi";
    /// Register holding the message info in both directions.
    pub const MESSAGE_INFO: &str = "rsi";
    /// Registers holding message registers 0, 1, 2 and 3, in that order.
    pub const MESSAGE: [&str; crate::message::MSG_REGISTERS_IN_CPU] = ["r10", "r8", "r9", "r15"];
    /// Registers the `syscall` instruction itself destroys.
    pub const DESTROYED_BY_SYSCALL: [&str; 2] = ["rcx", "r11"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sel4_numbers_are_contiguous_from_minus_one() {
        for (i, (number, _, _, _)) in SEL4_SYSCALLS.iter().enumerate() {
            assert_eq!(*number, -(i as i64) - 1);
        }
        assert_eq!(SEL4_SYSCALLS.last().unwrap().0, SEL4_LOWEST);
        assert!(SEL4_SYSCALLS[..8].iter().all(|s| s.3 == Presence::Api));
        assert!(SEL4_SYSCALLS[8..].iter().all(|s| s.3 != Presence::Api));
        assert_eq!(SEL4_SYSCALLS[7].0, API_LOWEST);
    }

    #[test]
    fn keel_debug_calls_do_not_collide_with_sel4() {
        for (number, _) in KEEL_DEBUG_SYSCALLS {
            assert!(*number < SEL4_LOWEST);
            assert!(SEL4_SYSCALLS.iter().all(|s| s.0 != *number));
        }
        let mut numbers = [0i64; 16];
        let numbers = &mut numbers[..KEEL_DEBUG_SYSCALLS.len()];
        for (i, (n, _)) in KEEL_DEBUG_SYSCALLS.iter().enumerate() {
            numbers[i] = *n;
        }
        numbers.sort_unstable();
        assert!(numbers.windows(2).all(|w| w[0] != w[1]));
    }
}
