//! The eight seL4 system calls, one function each, with seL4's x86-64 register
//! convention: RDX = number, RDI = capability pointer in / badge out, RSI = message
//! info in both directions, message registers 0–3 in R10, R8, R9, R15. SYSCALL
//! clobbers RCX and R11. Message registers 4 and up, extra capabilities and the
//! receive slot live in the IPC buffer ([`crate::ipc`]); these functions do not touch
//! it. Most code uses the typed layer ([`crate::Cap`]) instead.

use keel_abi::message::{MSG_REGISTERS_IN_CPU, MessageInfo};
use keel_abi::syscall as number;

/// Message registers 0–3 as they travel in CPU registers.
pub type CpuMrs = [u64; MSG_REGISTERS_IN_CPU];

/// What a receiving system call returns: RSI, RDI and the four register MRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawReceive {
    /// The message info (RSI).
    pub info: MessageInfo,
    /// The badge of the capability the message came through (RDI).
    pub badge: u64,
    /// Message registers 0–3.
    pub mrs: CpuMrs,
}

/// One `syscall` with every register of the convention in and out.
#[inline(always)]
fn raw(number: i64, rdi: u64, rsi: u64, mrs: CpuMrs) -> RawReceive {
    raw_registers::<4>(number, rdi, rsi, mrs)
}

/// One `syscall` with RDX, RDI, RSI and the first `N` message registers set (`N` <= 4);
/// the other message registers are not loaded (the kernel reads only a message's
/// length of them) but are outputs all the same: a reply or a received message may
/// set them.
#[inline(always)]
fn raw_registers<const N: usize>(number: i64, rdi: u64, rsi: u64, mrs: [u64; N]) -> RawReceive {
    const { assert!(N <= MSG_REGISTERS_IN_CPU) };
    let (mut rdi, mut rsi) = (rdi, rsi);
    // Element `i` of `mrs`, used only where `i < N` (so it is `mrs[i]`).
    let mr = |i: usize| mrs.get(i).copied().unwrap_or_default();
    let (m0, m1, m2, m3): (u64, u64, u64, u64);
    // One block per count: input registers are `inlateout`, the rest `lateout`.
    macro_rules! syscall {
        ($($input:tt)*) => {
            // SAFETY: the kernel reads RDX, RDI, RSI and (up to the message's length)
            // R10, R8, R9 and R15, may write RDI, RSI and the four message registers
            // (outputs here), and preserves every other register except RCX and R11,
            // which SYSCALL itself destroys, and RAX, which Keel's debug dispatcher may
            // write. Memory the kernel writes (the IPC buffer) is only read through
            // volatile accesses in `crate::ipc`, after this returns.
            unsafe {
                core::arch::asm!(
                    "syscall",
                    inlateout("rdx") number => _,
                    inlateout("rdi") rdi,
                    inlateout("rsi") rsi,
                    $($input)*
                    lateout("rax") _,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack)
                );
            }
        };
    }
    match N {
        0 => syscall!(
            lateout("r10") m0, lateout("r8") m1, lateout("r9") m2, lateout("r15") m3,
        ),
        1 => syscall!(
            inlateout("r10") mr(0) => m0, lateout("r8") m1, lateout("r9") m2,
            lateout("r15") m3,
        ),
        2 => syscall!(
            inlateout("r10") mr(0) => m0, inlateout("r8") mr(1) => m1, lateout("r9") m2,
            lateout("r15") m3,
        ),
        3 => syscall!(
            inlateout("r10") mr(0) => m0, inlateout("r8") mr(1) => m1,
            inlateout("r9") mr(2) => m2, lateout("r15") m3,
        ),
        _ => syscall!(
            inlateout("r10") mr(0) => m0, inlateout("r8") mr(1) => m1,
            inlateout("r9") mr(2) => m2, inlateout("r15") mr(3) => m3,
        ),
    }
    RawReceive {
        info: MessageInfo::from_word(rsi),
        badge: rdi,
        mrs: [m0, m1, m2, m3],
    }
}

/// seL4_Send: blocking send on an endpoint (or signal on a notification, or an
/// invocation whose reply is dropped).
#[inline]
pub fn send(dest: u64, info: MessageInfo, mrs: CpuMrs) {
    raw(number::SEND, dest, info.to_word(), mrs);
}

/// seL4_NBSend: send that is dropped silently if nobody waits.
#[inline]
pub fn nb_send(dest: u64, info: MessageInfo, mrs: CpuMrs) {
    raw(number::NB_SEND, dest, info.to_word(), mrs);
}

/// seL4_Call: send, then wait for the reply on a one-time reply capability. Returns the
/// reply (its badge word is meaningless).
#[inline]
pub fn call(dest: u64, info: MessageInfo, mrs: CpuMrs) -> RawReceive {
    raw(number::CALL, dest, info.to_word(), mrs)
}

/// [`send`] with only the first `N` message registers loaded (`N` <= 4), as
/// [`call_registers`] (a Signal loads none).
#[inline]
pub fn send_registers<const N: usize>(dest: u64, info: MessageInfo, mrs: [u64; N]) {
    raw_registers(number::SEND, dest, info.to_word(), mrs);
}

/// [`call`] with only the first `N` message registers loaded (`N` <= 4; a message of
/// at most `N` words in registers): like libsel4's stubs for a known length, it loads
/// no register the message does not use. All four come back with the reply.
#[inline]
pub fn call_registers<const N: usize>(dest: u64, info: MessageInfo, mrs: [u64; N]) -> RawReceive {
    raw_registers(number::CALL, dest, info.to_word(), mrs)
}

/// [`reply_recv`] with only the first `N` message registers of the reply loaded
/// (`N` <= 4), as [`call_registers`].
#[inline]
pub fn reply_recv_registers<const N: usize>(
    src: u64,
    info: MessageInfo,
    mrs: [u64; N],
) -> RawReceive {
    raw_registers(number::REPLY_RECV, src, info.to_word(), mrs)
}

/// seL4_Recv: blocking receive on an endpoint or wait on a notification.
#[inline]
pub fn recv(src: u64) -> RawReceive {
    raw_registers(number::RECV, src, 0, [])
}

/// seL4_NBRecv: receive that returns at once (with an empty message, badge 0) when
/// nothing is pending.
#[inline]
pub fn nb_recv(src: u64) -> RawReceive {
    raw_registers(number::NB_RECV, src, 0, [])
}

/// seL4_Reply: reply to the thread this one last received a Call from.
#[inline]
pub fn reply(info: MessageInfo, mrs: CpuMrs) {
    raw(number::REPLY, 0, info.to_word(), mrs);
}

/// seL4_ReplyRecv: reply, then receive on `src`.
#[inline]
pub fn reply_recv(src: u64, info: MessageInfo, mrs: CpuMrs) -> RawReceive {
    raw(number::REPLY_RECV, src, info.to_word(), mrs)
}

/// seL4_Yield: give up the rest of the time slice.
#[inline]
pub fn yield_now() {
    raw_registers(number::YIELD, 0, 0, []);
}

/// A system call with an arbitrary number and every convention register set; returns
/// what the kernel left in them (for tests of unknown numbers and fault replies).
#[inline]
pub fn with_number(number: i64, rdi: u64, info: MessageInfo, mrs: CpuMrs) -> RawReceive {
    raw(number, rdi, info.to_word(), mrs)
}
