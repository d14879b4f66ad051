//! Thread control blocks: a thread's registers, scheduling and IPC state.
//!
//! A TCB object is 2^12 bytes. Its first [`TCB_SLOTS`] 32-byte slots hold the
//! capabilities the thread runs with (CSpace root, VSpace root, its master reply
//! capability, the caller slot and its IPC buffer frame), exactly like seL4's TCB
//! CNode; the thread's x87/SSE/AVX state (the XSAVE or FXSAVE area the trusted core
//! saves and restores) is at [`FPU_OFFSET`], [`FPU_BYTES`] at most; the [`Tcb`] record
//! starts at [`TCB_RECORD_OFFSET`]. The record begins with
//! the [`UserContext`], which the trusted core's entry code fills directly on every
//! trap from user mode, so its layout is fixed (`repr(C)`, checked below).

use crate::memory::Record;

/// Slot index of the thread's CSpace root.
pub const SLOT_CSPACE: u64 = 0;
/// Slot index of the thread's VSpace root.
pub const SLOT_VSPACE: u64 = 1;
/// Slot index of the thread's master reply capability.
pub const SLOT_REPLY: u64 = 2;
/// Slot index of the reply capability to the thread that called this one.
pub const SLOT_CALLER: u64 = 3;
/// Slot index of the thread's IPC buffer frame.
pub const SLOT_IPC_BUFFER: u64 = 4;
/// Slots at the start of a TCB object.
pub const TCB_SLOTS: u64 = 5;
/// Offset of the [`Tcb`] record inside the TCB object.
pub const TCB_RECORD_OFFSET: u64 = 3072;
/// Offset of the FPU state area (XSAVE/FXSAVE format, 64-byte aligned) in the object.
pub const FPU_OFFSET: u64 = 256;
/// Largest FPU state area: the standard-format XSAVE area of x87, SSE, AVX and the
/// three AVX-512 components (opmask, ZMM_Hi256, Hi16_ZMM).
pub const FPU_BYTES: u64 = 2688;
const _: () = assert!(FPU_OFFSET >= TCB_SLOTS * 32 && FPU_OFFSET.is_multiple_of(64));
const _: () = assert!(FPU_OFFSET + FPU_BYTES <= TCB_RECORD_OFFSET);
/// Initial x87 control word (FNINIT's: every exception masked, 64-bit precision).
pub const FPU_INITIAL_FCW: u64 = 0x37f;
/// Initial MXCSR (every SSE exception masked, round to nearest).
pub const FPU_INITIAL_MXCSR: u64 = 0x1f80;

/// Address of the FPU state area of the TCB at `tcb`.
pub const fn fpu_area(tcb: u64) -> u64 {
    tcb + FPU_OFFSET
}

/// Address of slot `index` of the TCB at `tcb`.
pub const fn slot(tcb: u64, index: u64) -> u64 {
    tcb + index * super::cspace::SLOT_BYTES
}

/// Address of the record of the TCB at `tcb`.
pub const fn record(tcb: u64) -> u64 {
    tcb + TCB_RECORD_OFFSET
}

/// A thread's user-mode registers, in the order the entry code pushes them (lowest
/// address first), followed by the FS and GS bases and selectors (doc/fsgsbase.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct UserContext {
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
    /// Vector of the last trap (or the SYSCALL marker).
    pub vector: u64,
    /// Error code of the last exception.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    /// FS (bits 15:0), GS (31:16), DS (47:32) and ES (63:48) selectors as the CPU held
    /// them at the thread's last kernel entry (0 for a new thread). With a non-zero FS
    /// or GS selector the base on restore comes from its descriptor; with 0 it is
    /// `fs_base`/`gs_base`. DS and ES are restored as they were (null if their
    /// descriptor can no longer be loaded).
    pub selectors: u64,
}

/// Words of [`UserContext`] the entry code pushes (everything before `fs_base`).
pub const CONTEXT_PUSHED_WORDS: usize = 22;
const _: () = assert!(core::mem::offset_of!(UserContext, fs_base) == CONTEXT_PUSHED_WORDS * 8);
const _: () =
    assert!(core::mem::offset_of!(UserContext, selectors) == (CONTEXT_PUSHED_WORDS + 2) * 8);
/// Bits of [`UserContext::selectors`] holding the FS selector.
pub const FS_SELECTOR_MASK: u64 = 0xffff;
/// Bits of [`UserContext::selectors`] holding the GS selector.
pub const GS_SELECTOR_MASK: u64 = 0xffff << 16;

/// RFLAGS bits user code may set (seL4, `keel_abi::fault::sanitise_rflags`): CF, PF,
/// AF, ZF, SF, DF, OF (IF is forced on; TF, IOPL, NT, RF, AC, VM, ID and VIF/VIP stay
/// clear).
pub const USER_RFLAGS_MASK: u64 = 0x0000_0000_0000_0cd5;
/// RFLAGS bits always set in user mode: IF and the reserved bit 1.
pub const USER_RFLAGS_SET: u64 = 0x202;

impl UserContext {
    /// Message register `i` (0–3) held in a CPU register (R10, R8, R9, R15).
    pub fn message_register(&self, i: usize) -> u64 {
        match i {
            0 => self.r10,
            1 => self.r8,
            2 => self.r9,
            _ => self.r15,
        }
    }
    /// Sets message register `i` (0–3).
    pub fn set_message_register(&mut self, i: usize, value: u64) {
        match i {
            0 => self.r10 = value,
            1 => self.r8 = value,
            2 => self.r9 = value,
            _ => self.r15 = value,
        }
    }
    /// Replaces a non-canonical FS or GS base with 0 (seL4 sanitises them the same way):
    /// the kernel loads them with WRMSR, which faults in ring 0 on a non-canonical value.
    pub fn sanitise_bases(&mut self) {
        for base in [&mut self.fs_base, &mut self.gs_base] {
            let top = (*base as i64) >> 47;
            if top != 0 && top != -1 {
                *base = 0;
            }
        }
    }

    /// Makes RFLAGS safe for user mode whatever a debugger wrote.
    pub fn sanitise_flags(&mut self) {
        self.rflags = keel_abi::fault::sanitise_rflags(self.rflags);
        debug_assert_eq!(self.rflags & !(USER_RFLAGS_MASK | USER_RFLAGS_SET), 0);
    }
}

/// What a thread is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ThreadState {
    /// Not runnable and not waiting (new or suspended).
    #[default]
    Inactive,
    /// Runnable: continue where it was.
    Running,
    /// Runnable: re-execute the system call it was in (its IPC was aborted).
    Restart,
    /// Waiting to receive on an endpoint.
    BlockedOnReceive { endpoint: u64, can_grant: bool },
    /// Waiting to send on an endpoint (a Call if `is_call`).
    BlockedOnSend {
        endpoint: u64,
        badge: u64,
        can_grant: bool,
        can_grant_reply: bool,
        is_call: bool,
    },
    /// Waiting for a reply.
    BlockedOnReply,
    /// Waiting on a notification.
    BlockedOnNotification { notification: u64 },
}

impl ThreadState {
    /// Whether the scheduler may run the thread.
    pub fn is_runnable(&self) -> bool {
        matches!(self, ThreadState::Running | ThreadState::Restart)
    }
}

/// A fault the thread raised, waiting to be sent to its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    /// None.
    #[default]
    None,
    /// A capability fault: `address` failed to look up (`in_receive` during a receive).
    Capability {
        address: u64,
        in_receive: bool,
        lookup: crate::object::cspace::LookupFault,
    },
    /// A system call number the kernel does not know.
    UnknownSyscall { number: u64 },
    /// A processor exception in user mode.
    UserException { number: u64, code: u64 },
    /// A page fault.
    VmFault {
        address: u64,
        fsr: u64,
        instruction: bool,
    },
    /// A debug exception: `reason` is a `keel_abi::fault::BreakpointType`; for a
    /// breakpoint or watchpoint also its address and number (DR0–DR3).
    Debug {
        reason: u64,
        address: u64,
        breakpoint: u64,
    },
}

/// A thread's hardware debug state: what the trusted core loads into DR0–DR3 and DR7
/// while the thread runs (and clears for threads without breakpoints).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugState {
    /// DR0–DR3: breakpoint addresses (user addresses only).
    pub address: [u64; 4],
    /// DR7 as loaded: only the local enables L0–L3 and the R/W and LEN fields.
    pub dr7: u64,
    /// Single stepping is on (TF in the thread's RFLAGS).
    pub single_step: bool,
    /// Single-step traps still to swallow before the next fault message.
    pub skip: u64,
}

impl DebugState {
    /// Whether any breakpoint is enabled.
    pub fn any_breakpoint(&self) -> bool {
        self.dr7 & 0xff != 0
    }
}

/// The thread record of a TCB object.
#[repr(C)]
#[derive(Clone, Debug, Default)]
pub struct Tcb {
    /// User registers (first: the entry code writes here).
    pub context: UserContext,
    /// What the thread is doing.
    pub state: ThreadState,
    /// Scheduling priority (0–255).
    pub priority: u8,
    /// Maximum controlled priority.
    pub mcp: u8,
    /// CPU the thread runs on.
    pub affinity: u16,
    /// Whether the thread is in its CPU's ready queue.
    pub queued: bool,
    /// Ready-queue links (TCB addresses, 0 = none).
    pub ready_next: u64,
    /// Ready-queue links.
    pub ready_prev: u64,
    /// Endpoint or notification wait-queue links.
    pub wait_next: u64,
    /// Endpoint or notification wait-queue links.
    pub wait_prev: u64,
    /// Notification bound to this thread (0 = none).
    pub bound_notification: u64,
    /// Capability pointer (in the thread's CSpace) of its fault endpoint.
    pub fault_handler: u64,
    /// User address of the IPC buffer.
    pub ipc_buffer: u64,
    /// Pending fault.
    pub fault: Fault,
    /// Timer ticks left in the current time slice.
    pub time_slice: u32,
    /// User-mode RD/WR FS/GS BASE allowed (granted through FsGsBaseControl).
    pub fsgsbase_allowed: bool,
    /// The thread's name (for debugging output), NUL-padded.
    pub name: [u8; 16],
    /// Hardware breakpoints and single stepping (TCB SetBreakpoint & co.).
    pub debug: DebugState,
    /// TCB flags (`keel_abi::object::tcb_flags`, set with TCBSetFlags):
    /// `FPU_DISABLED` makes every x87/SSE/AVX instruction fault (#NM) and spares the
    /// thread's switches the FPU state.
    pub flags: u64,
    /// [`TCB_LIVE`] while the TCB exists (deletion zeroes the record).
    pub live: u64,
    /// User address of the registered rseq area, 0 = none (`crate::rseq`).
    pub rseq_area: u64,
    /// The next return to user mode runs the rseq fix-up (`crate::rseq`).
    pub rseq_pending: bool,
    /// The fastpath's memo of its last capability lookup for this thread.
    pub lookup_cache: LookupCache,
}

/// The fastpath's last one-level lookup for a thread (`crate::fastpath`): which slot
/// `cptr` named when the thread's CSpace root capability was `root` (its two words).
/// The slot is a pure function of those three words (the capability fixes the CNode's
/// address, radix and guard), so the memo needs no invalidation: it is used only while
/// the root capability and the pointer are the same words. The initial `root` is no
/// capability encoding (the type bits of all ones name no type), so it never matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupCache {
    /// The CSpace root capability's words when the lookup was made.
    pub root: [u64; 2],
    /// The capability pointer looked up.
    pub cptr: u64,
    /// The slot it named.
    pub slot: u64,
}

impl Default for LookupCache {
    fn default() -> Self {
        Self {
            root: [u64::MAX; 2],
            cptr: 0,
            slot: 0,
        }
    }
}

impl Tcb {
    /// Whether the thread may use the FPU (TCBSetFlags without `FPU_DISABLED`).
    #[inline(always)]
    pub fn fpu_disabled(&self) -> bool {
        self.flags & keel_abi::object::tcb_flags::FPU_DISABLED != 0
    }
}

impl Record for Tcb {
    fn live(&self) -> bool {
        self.live == TCB_LIVE
    }
}

/// Value of [`Tcb::live`] in a live TCB.
pub const TCB_LIVE: u64 = 0x6b65_656c_5443_4221;

const _: () =
    assert!(TCB_RECORD_OFFSET as usize + core::mem::size_of::<Tcb>() <= 1 << super::TCB_BITS);

/// Default time slice in timer ticks.
pub const TIME_SLICE_TICKS: u32 = 5;

/// `UserContext::vector` of a thread that entered the kernel with SYSCALL.
pub const SYSCALL_VECTOR: u64 = 0x100;
