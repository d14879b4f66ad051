//! The IPC buffer and messages: message registers 4 and up, extra capabilities and
//! unwrapped badges, the receive slot, [`Message`] (a builder for what a thread sends)
//! and [`Received`] (what it got), and the IPC methods of endpoints, notifications and
//! saved reply capabilities.
//!
//! The calling thread's IPC buffer address is per-thread data ([`crate::thread`]): the
//! runtime records it for every thread it creates, and the root task records the one
//! the boot info names. Message registers 0–3 travel in CPU registers; the rest are read
//! from and written to the buffer with volatile accesses.

use keel_abi::message::{
    IpcBuffer, MSG_MAX_EXTRA_CAPS, MSG_MAX_LENGTH, MSG_REGISTERS_IN_CPU, MessageInfo,
};

use crate::cap::{CNode, Cap, CapType, Endpoint, Notification, Reply};
use crate::syscall::{self, CpuMrs, RawReceive};
use crate::thread;

/// User address of the calling thread's IPC buffer (0 if it has none).
pub fn buffer_address() -> u64 {
    thread::current_ipc_buffer()
}

/// Records the calling thread's IPC buffer address (the root task: from the boot info).
pub fn set_buffer_address(address: u64) {
    let mut block = thread::current();
    block.ipc_buffer = address;
    thread::set_current(block);
}

#[inline]
fn buffer() -> *mut IpcBuffer {
    let address = buffer_address();
    assert!(
        address != 0 && address.is_multiple_of(core::mem::align_of::<IpcBuffer>() as u64),
        "this thread has no IPC buffer"
    );
    address as *mut IpcBuffer
}

#[inline]
fn word_pointer(index: usize) -> *mut u64 {
    assert!(index < 128);
    (buffer() as *mut u64).wrapping_add(index)
}

fn read_word(index: usize) -> u64 {
    // SAFETY: the address is the thread's IPC buffer, a mapped, 1 KiB-aligned frame area
    // recorded by the runtime; `index` < 128 stays inside it; the kernel writes it
    // concurrently only while this thread is blocked in a system call.
    unsafe { word_pointer(index).read_volatile() }
}

// Inline: a constant index's bound check folds away, and an invocation's stub writes
// its extra capabilities with no call.
#[inline]
fn write_word(index: usize, value: u64) {
    // SAFETY: as in `read_word`.
    unsafe { word_pointer(index).write_volatile(value) }
}

/// Message register `i` as stored in the IPC buffer (meaningful for `i` ≥ 4).
pub fn buffer_mr(i: usize) -> u64 {
    assert!(i < MSG_MAX_LENGTH);
    read_word(1 + i)
}

/// Sets message register `i` in the IPC buffer (meaningful for `i` ≥ 4).
#[inline]
pub fn set_buffer_mr(i: usize, value: u64) {
    assert!(i < MSG_MAX_LENGTH);
    write_word(1 + i, value)
}

/// `caps_or_badges[i]`: on receive, the badge of unwrapped capability `i`.
pub fn cap_or_badge(i: usize) -> u64 {
    assert!(i < MSG_MAX_EXTRA_CAPS);
    read_word(122 + i)
}

/// Sets `caps_or_badges[i]`: on send, the capability pointer of extra capability `i`.
#[inline]
pub fn set_cap(i: usize, cptr: u64) {
    assert!(i < MSG_MAX_EXTRA_CAPS);
    write_word(122 + i, cptr)
}

/// The buffer's `userData` word.
pub fn user_data() -> u64 {
    read_word(121)
}

/// Sets the buffer's `userData` word.
pub fn set_user_data(value: u64) {
    write_word(121, value)
}

/// Where capabilities sent to this thread go: slot `index` resolved to `depth` bits in
/// the CNode `cnode` (seL4_SetCapReceivePath).
pub fn set_receive_slot(cnode: Cap<CNode>, index: u64, depth: u8) {
    write_word(125, cnode.cptr());
    write_word(126, index);
    write_word(127, depth as u64);
}

/// The receive slot: (CNode, index, depth).
pub fn receive_slot() -> (u64, u64, u64) {
    (read_word(125), read_word(126), read_word(127))
}

/// A message to send: label, words and capabilities.
///
/// Words 0–3 go in CPU registers; the rest, and the capability pointers, are written to
/// the IPC buffer when the message is sent.
#[derive(Clone, Debug)]
pub struct Message {
    label: u64,
    words: [u64; MSG_MAX_LENGTH],
    length: usize,
    caps: [u64; MSG_MAX_EXTRA_CAPS],
    cap_count: usize,
}

impl Message {
    /// An empty message with `label`.
    pub const fn new(label: u64) -> Self {
        Self {
            label,
            words: [0; MSG_MAX_LENGTH],
            length: 0,
            caps: [0; MSG_MAX_EXTRA_CAPS],
            cap_count: 0,
        }
    }

    /// Appends a word (panics beyond 120 words).
    pub fn word(mut self, value: u64) -> Self {
        self.push_word(value);
        self
    }

    /// Appends words.
    pub fn words(mut self, values: &[u64]) -> Self {
        for v in values {
            self.push_word(*v);
        }
        self
    }

    /// Appends a word in place.
    pub fn push_word(&mut self, value: u64) {
        assert!(self.length < MSG_MAX_LENGTH, "message too long");
        self.words[self.length] = value;
        self.length += 1;
    }

    /// Appends a capability to send (panics beyond 3).
    pub fn cap<T: CapType>(mut self, cap: Cap<T>) -> Self {
        self.push_cap(cap.cptr());
        self
    }

    /// Appends a capability pointer in place.
    pub fn push_cap(&mut self, cptr: u64) {
        assert!(self.cap_count < MSG_MAX_EXTRA_CAPS, "too many capabilities");
        self.caps[self.cap_count] = cptr;
        self.cap_count += 1;
    }

    /// The label.
    pub fn label(&self) -> u64 {
        self.label
    }

    /// The words.
    pub fn as_words(&self) -> &[u64] {
        &self.words[..self.length]
    }

    /// Writes words 4.. and the capabilities to the IPC buffer; returns the message info
    /// and the register words. Call right before the system call.
    pub fn prepare(&self) -> (MessageInfo, CpuMrs) {
        for i in MSG_REGISTERS_IN_CPU..self.length {
            set_buffer_mr(i, self.words[i]);
        }
        for (i, c) in self.caps[..self.cap_count].iter().enumerate() {
            set_cap(i, *c);
        }
        let mut regs = [0; MSG_REGISTERS_IN_CPU];
        regs.copy_from_slice(&self.words[..MSG_REGISTERS_IN_CPU]);
        (
            MessageInfo::new(self.label, 0, self.cap_count as u64, self.length as u64),
            regs,
        )
    }
}

/// A received message (or a reply). Words 4 and up are read from the IPC buffer, so
/// read them before the next system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The message info.
    pub info: MessageInfo,
    /// The badge of the capability it came through (0 for replies).
    pub badge: u64,
    /// Message registers 0–3.
    pub regs: CpuMrs,
}

impl Received {
    fn from_raw(raw: RawReceive) -> Self {
        Self {
            info: raw.info,
            badge: raw.badge,
            regs: raw.mrs,
        }
    }

    /// The label.
    pub fn label(&self) -> u64 {
        self.info.label()
    }

    /// Number of words.
    pub fn length(&self) -> usize {
        self.info.length() as usize
    }

    /// Word `i` (registers for 0–3, the IPC buffer beyond).
    pub fn mr(&self, i: usize) -> u64 {
        if i < MSG_REGISTERS_IN_CPU {
            self.regs[i]
        } else {
            buffer_mr(i)
        }
    }

    /// The first `N` words.
    pub fn words<const N: usize>(&self) -> [u64; N] {
        core::array::from_fn(|i| self.mr(i))
    }

    /// Number of capabilities delivered (transferred or unwrapped).
    pub fn extra_caps(&self) -> usize {
        self.info.extra_caps() as usize
    }

    /// Bit mask of the delivered capabilities that were unwrapped into badges.
    pub fn caps_unwrapped(&self) -> u64 {
        self.info.caps_unwrapped()
    }

    /// The badge of unwrapped capability `i`.
    pub fn unwrapped_badge(&self, i: usize) -> u64 {
        cap_or_badge(i)
    }
}

impl Cap<Endpoint> {
    /// seL4_Send: blocks until a receiver takes the message.
    pub fn send(self, message: &Message) {
        let (info, regs) = message.prepare();
        syscall::send(self.cptr(), info, regs);
    }

    /// seL4_NBSend: delivers only if a receiver is waiting.
    pub fn nb_send(self, message: &Message) {
        let (info, regs) = message.prepare();
        syscall::nb_send(self.cptr(), info, regs);
    }

    /// seL4_Call: sends and waits for the reply.
    pub fn call(self, message: &Message) -> Received {
        let (info, regs) = message.prepare();
        Received::from_raw(syscall::call(self.cptr(), info, regs))
    }

    /// seL4_Recv: waits for a message.
    pub fn recv(self) -> Received {
        Received::from_raw(syscall::recv(self.cptr()))
    }

    /// seL4_NBRecv: takes a waiting message, if any (`None` when nothing was pending:
    /// empty message with badge 0 — a real message of that shape reads as `None` too).
    pub fn nb_recv(self) -> Option<Received> {
        let r = Received::from_raw(syscall::nb_recv(self.cptr()));
        (r.badge != 0 || r.info.to_word() != 0).then_some(r)
    }

    /// seL4_NBRecv, returning the raw result whatever it is.
    pub fn nb_recv_raw(self) -> Received {
        Received::from_raw(syscall::nb_recv(self.cptr()))
    }

    /// seL4_ReplyRecv: replies to the last caller, then waits on this endpoint.
    pub fn reply_recv(self, message: &Message) -> Received {
        let (info, regs) = message.prepare();
        Received::from_raw(syscall::reply_recv(self.cptr(), info, regs))
    }
}

impl Cap<Notification> {
    /// seL4_Signal: ORs the capability's badge into the notification word.
    pub fn signal(self) {
        syscall::send_registers(self.cptr(), MessageInfo::new(0, 0, 0, 0), []);
    }

    /// seL4_Wait: blocks until signalled; returns the accumulated badge word.
    pub fn wait(self) -> u64 {
        syscall::recv(self.cptr()).badge
    }

    /// seL4_Poll: the accumulated badge word (0 if not signalled), without blocking.
    pub fn poll(self) -> u64 {
        syscall::nb_recv(self.cptr()).badge
    }
}

impl Cap<Reply> {
    /// Replies through a reply capability saved with CNode SaveCaller (seL4_Send on it).
    pub fn send(self, message: &Message) {
        let (info, regs) = message.prepare();
        syscall::send(self.cptr(), info, regs);
    }
}

/// seL4_Reply: replies to the thread this one last received a Call from.
pub fn reply(message: &Message) {
    let (info, regs) = message.prepare();
    syscall::reply(info, regs);
}

/// seL4_Yield.
pub fn yield_now() {
    syscall::yield_now();
}
