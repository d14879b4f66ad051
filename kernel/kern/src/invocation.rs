//! System calls and capability invocations: the entry points the trusted core calls.
//!
//! Every invocation is *look up → decode (every check, may fail, changes nothing) →
//! perform (cannot fail)*, as in seL4. Errors become a reply whose label is the
//! `keel_abi::error::Error` code and whose message registers carry its details; a
//! failed lookup of the invoked capability itself is a capability fault instead.

use keel_abi::error::Error;
use keel_abi::invocation::InvocationLabel;
use keel_abi::message::{MSG_MAX_LENGTH, MessageInfo};
use keel_abi::syscall;

use crate::kernel::{Hardware, Kernel};
use crate::object::cap::{Cap, Rights, raw};
use crate::object::cspace::{self, LookupFault};
use crate::object::tcb::{self, Fault, ThreadState};

/// The arguments of one invocation, read before decoding.
pub struct Args {
    /// The invoking thread.
    pub thread: u64,
    /// Its IPC buffer.
    pub buffer: Option<u64>,
    /// The message's length (clamped to what the thread can send).
    pub length: usize,
    /// The first [`Args::EAGER`] message registers, read before decoding.
    mrs: [u64; Args::EAGER],
    /// Extra capabilities: (slot, the capability's two words as the slot holds them),
    /// decoded only by the decoders that use them (a decoded `Cap` is five words).
    extra: [Option<(u64, [u64; 2])>; 3],
    /// The slot of the invoked capability.
    pub slot: u64,
}

impl Args {
    /// How many message registers are read before decoding: the most any decoder takes
    /// by [`Args::mr`] (CNode Rotate, eight). Decoders of longer messages (LDT entries,
    /// WriteRegisters) read the others with `message_register`. Each one costs every
    /// kernel-object invocation a store.
    pub const EAGER: usize = 8;

    /// Message register `i` (0 beyond the message; `i` must be below [`Args::EAGER`]).
    pub fn mr(&self, i: usize) -> u64 {
        debug_assert!(i < Self::EAGER, "message register {i} is not read eagerly");
        self.mrs.get(i).copied().unwrap_or(0)
    }
    /// Extra capability `i`.
    pub fn extra_cap(&self, i: usize) -> Option<Cap> {
        self.extra[i].map(|(_, words)| Cap::decode(words))
    }
    /// Extra capability `i` as its slot's two words (see [`crate::object::cap::raw`]).
    pub fn extra_words(&self, i: usize) -> Option<[u64; 2]> {
        self.extra[i].map(|(_, words)| words)
    }
    /// Slot of extra capability `i`.
    pub fn extra_slot(&self, i: usize) -> Option<u64> {
        self.extra[i].map(|(s, _)| s)
    }
}

/// Scheduling domains: one, as in seL4's default configuration (`NUM_DOMAINS`).
pub const NUM_DOMAINS: u64 = 1;

/// seL4_DomainSet Set (MR0 the domain, extra capability 0 a TCB), with seL4's checks in
/// seL4's order. With one domain every thread is in domain 0 already, so a valid call
/// changes nothing.
fn invoke_domain(label: InvocationLabel, args: &Args) -> Invoked {
    if label != InvocationLabel::DomainSetSet {
        return Err(InvocationError::simple(Error::IllegalOperation));
    }
    if args.length < 1 {
        return Err(InvocationError::simple(Error::TruncatedMessage));
    }
    if args.mr(0) >= NUM_DOMAINS {
        return Err(InvocationError::argument(0));
    }
    match args.extra_cap(0) {
        None => Err(InvocationError::simple(Error::TruncatedMessage)),
        Some(Cap::Tcb { .. }) => Ok(0),
        Some(_) => Err(InvocationError::argument(1)),
    }
}

/// A failed invocation: the error code and its detail words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvocationError {
    /// The error code (the reply's label).
    pub error: Error,
    /// Detail words.
    pub words: [u64; 6],
    /// How many detail words.
    pub length: usize,
}

impl InvocationError {
    /// An error without details.
    pub fn simple(error: Error) -> Self {
        Self {
            error,
            words: [0; 6],
            length: 0,
        }
    }
    /// InvalidArgument for argument `index`.
    pub fn argument(index: u64) -> Self {
        Self {
            error: Error::InvalidArgument,
            words: [index, 0, 0, 0, 0, 0],
            length: 1,
        }
    }
    /// InvalidCapability for capability `index` (0 = the invoked one).
    pub fn capability(index: u64) -> Self {
        Self {
            error: Error::InvalidCapability,
            words: [index, 0, 0, 0, 0, 0],
            length: 1,
        }
    }
    /// RangeError with the allowed range.
    pub fn range(min: u64, max: u64) -> Self {
        Self {
            error: Error::RangeError,
            words: [min, max, 0, 0, 0, 0],
            length: 2,
        }
    }
    /// NotEnoughMemory with the bytes available.
    pub fn memory(available: u64) -> Self {
        Self {
            error: Error::NotEnoughMemory,
            words: [available, 0, 0, 0, 0, 0],
            length: 1,
        }
    }
    /// FailedLookup (`source`: it was the source of a two-slot operation).
    pub fn failed_lookup(source: bool, fault: LookupFault) -> Self {
        let mut words = [0; 6];
        words[0] = source as u64;
        let n = crate::fault::lookup_failure_words(fault, &mut words[1..]);
        Self {
            error: Error::FailedLookup,
            words,
            length: 1 + n,
        }
    }
}

/// The result of a successful invocation: how many reply message registers it set.
pub type Invoked = Result<usize, InvocationError>;

impl<H: Hardware> Kernel<H> {
    /// A system call by `t`, the current thread of this CPU (Running); `number` is the
    /// value of RDX. (Kept out of line: the fastpath's caller must stay small.)
    #[inline(never)]
    pub fn handle_syscall(&mut self, t: u64, number: u64) {
        debug_assert_eq!(t, self.current());
        // (The entry code saved the context with the SYSCALL marker as its vector.)
        match number as i64 {
            syscall::CALL => self.handle_invocation(t, true, true),
            syscall::SEND => self.handle_invocation(t, false, true),
            syscall::NB_SEND => self.handle_invocation(t, false, false),
            syscall::RECV => self.handle_receive(t, true),
            syscall::NB_RECV => self.handle_receive(t, false),
            syscall::REPLY => self.handle_reply(t),
            syscall::REPLY_RECV => {
                self.handle_reply(t);
                self.handle_receive(t, true);
            }
            syscall::YIELD => {
                let here = self.hw.current_cpu();
                self.cpus[here].current = 0;
                self.enqueue(t, false);
                self.reschedule_required();
            }
            n if (syscall::KEEL_DEBUG_BASE - 16..=syscall::DEBUG_PUT_CHAR).contains(&n) => {
                self.handle_debug(t, n)
            }
            _ => self.handle_fault(t, Fault::UnknownSyscall { number }),
        }
    }

    /// An exception in user mode by the current thread.
    pub fn handle_user_exception(&mut self, vector: u64, code: u64, address: u64) {
        let t = self.current();
        // Stopped by another CPU while this one waited for the lock: resumed, it
        // re-executes the instruction. Its registers rewritten meanwhile (Restart): it
        // goes on from them, and the exception, which the old ones raised, is dropped.
        if t == 0 || self.tcb(t).state != ThreadState::Running {
            return;
        }
        self.tcb_mut(t).context.vector = vector;
        let fault = match vector {
            14 => Fault::VmFault {
                address,
                fsr: code,
                instruction: code & 16 != 0,
            },
            // #DB: `code` is DR6.
            1 => match self.debug_exception(t, code) {
                Some(f) => f,
                None => return,
            },
            3 => Fault::Debug {
                reason: keel_abi::fault::BreakpointType::SoftwareBreakRequest as u64,
                address: 0,
                breakpoint: 0,
            },
            _ => Fault::UserException {
                number: vector,
                code,
            },
        };
        self.handle_fault(t, fault);
    }

    fn handle_receive(&mut self, t: u64, blocking: bool) {
        let cptr = self.tcb(t).context.rdi;
        let cap = match self.lookup_cap(t, cptr) {
            Ok((_, cap)) => cap,
            Err(lookup) => {
                self.handle_fault(
                    t,
                    Fault::Capability {
                        address: cptr,
                        in_receive: true,
                        lookup,
                    },
                );
                return;
            }
        };
        match cap {
            Cap::Endpoint { ptr, rights, .. } if rights.contains(Rights::READ) => {
                self.delete_caller_cap(t);
                self.receive_ipc(t, ptr, rights.contains(Rights::GRANT), blocking);
            }
            Cap::Notification { ptr, rights, .. } if rights.contains(Rights::READ) => {
                let bound = self
                    .hw
                    .get::<crate::object::endpoint::Notification>(ptr)
                    .bound();
                if bound != 0 && bound != t {
                    let lookup = LookupFault::MissingCapability { bits_left: 0 };
                    self.handle_fault(
                        t,
                        Fault::Capability {
                            address: cptr,
                            in_receive: true,
                            lookup,
                        },
                    );
                    return;
                }
                self.receive_signal(t, ptr, blocking);
            }
            _ => {
                let lookup = LookupFault::MissingCapability { bits_left: 0 };
                self.handle_fault(
                    t,
                    Fault::Capability {
                        address: cptr,
                        in_receive: true,
                        lookup,
                    },
                );
            }
        }
    }

    fn handle_reply(&mut self, t: u64) {
        let caller = tcb::slot(t, tcb::SLOT_CALLER);
        if let Cap::Reply {
            tcb: receiver,
            master: false,
            can_grant,
        } = cspace::cap(&self.hw, caller)
        {
            self.do_reply(t, receiver, caller, can_grant);
        }
    }

    /// Looks up the extra capabilities `info` names in `t`'s IPC buffer into `out`;
    /// false if a lookup failed (then a blocking invocation got a capability fault).
    #[inline(always)]
    fn lookup_extra_caps(
        &mut self,
        t: u64,
        buffer: Option<u64>,
        info: MessageInfo,
        blocking: bool,
        out: &mut [Option<(u64, [u64; 2])>; 3],
    ) -> bool {
        let Some(b) = buffer else {
            return true;
        };
        for (i, e) in out.iter_mut().enumerate().take(info.extra_caps() as usize) {
            let c = self.hw.read(b + crate::ipc::buffer::caps_or_badges(i));
            let Some(slot) = self.lookup_or_fault(t, c, blocking) else {
                return false;
            };
            *e = Some((slot, cspace::words(&self.hw, slot)));
        }
        true
    }

    /// Looks `cptr` up in `t`'s CSpace for an invocation (the invoked capability or an
    /// extra one); a failed lookup is a capability fault of a blocking invocation (send
    /// phase), nothing for a non-blocking one, and `None` either way.
    #[inline(always)]
    fn lookup_or_fault(&mut self, t: u64, cptr: u64, blocking: bool) -> Option<u64> {
        match self.lookup_slot(t, cptr) {
            Ok(slot) => Some(slot),
            Err(lookup) => {
                if blocking {
                    self.handle_fault(
                        t,
                        Fault::Capability {
                            address: cptr,
                            in_receive: false,
                            lookup,
                        },
                    );
                }
                None
            }
        }
    }

    fn handle_invocation(&mut self, t: u64, is_call: bool, blocking: bool) {
        let (cptr, info) = {
            let c = &self.tcb(t).context;
            (c.rdi, MessageInfo::from_word(c.rsi))
        };
        let Some(slot) = self.lookup_or_fault(t, cptr, blocking) else {
            return;
        };
        // Read as words, decoded below by kind (a decoded `Cap` is five words, copied
        // through memory at each step).
        let words = cspace::words(&self.hw, slot);
        let buffer = self.ipc_buffer(t);
        let w0 = words[0];
        let ipc_object = raw::endpoint_with(w0, Rights::WRITE.0)
            || raw::notification_with(w0, Rights::WRITE.0)
            || (raw::tag(w0) == raw::REPLY && !raw::reply_is_master(w0));
        if ipc_object {
            // The extra capabilities are looked up (a failed lookup is a fault, as in
            // seL4's handleInvocation) but not kept: `transfer` reads them again.
            let mut unused = [None; 3];
            if !self.lookup_extra_caps(t, buffer, info, blocking, &mut unused) {
                return;
            }
            match Cap::decode(words) {
                // An endpoint or notification without the write right, like an empty
                // slot, is an invalid capability: an error reply to a Call, nothing for a
                // Send (seL4 decodeInvocation), not a fault.
                Cap::Endpoint { ptr, badge, rights } => {
                    let grant = rights.contains(Rights::GRANT);
                    let grant_reply = rights.contains(Rights::GRANT_REPLY);
                    self.send_ipc(t, ptr, badge, blocking, is_call, grant, grant_reply);
                }
                Cap::Notification { ptr, badge, .. } => {
                    self.signal(ptr, badge);
                    // The invoker did not block: a Call gets seL4's empty success reply
                    // (handleInvocation's replyFromKernel_success_empty).
                    if is_call {
                        self.reply_to_invocation(t, buffer, Ok(0));
                    }
                }
                Cap::Reply {
                    tcb: receiver,
                    can_grant,
                    ..
                } => {
                    self.do_reply(t, receiver, slot, can_grant);
                    if is_call {
                        self.reply_to_invocation(t, buffer, Ok(0));
                    }
                }
                _ => {}
            }
            return;
        }
        // Map and Unmap of a frame called the usual way: routes without the general
        // argument record (below), which would cost each about a hundred instructions.
        if is_call && raw::tag(w0) == raw::FRAME {
            const MAP: u64 = InvocationLabel::X86PageMap as u64;
            const UNMAP: u64 = InvocationLabel::X86PageUnmap as u64;
            match (info.label(), info.extra_caps(), buffer) {
                (MAP, 1, Some(b)) if info.length() >= 3 => {
                    self.map_frame_call(t, slot, words, b);
                    return;
                }
                (UNMAP, 0, _) => {
                    self.unmap_frame(words, slot);
                    self.reply_to_invocation(t, buffer, Ok(0));
                    return;
                }
                _ => {}
            }
        }
        // Built in place (it is large: moving it costs tens of instructions).
        let mut args = Args {
            thread: t,
            buffer,
            length: 0,
            mrs: [0; Args::EAGER],
            extra: [None; 3],
            slot,
        };
        if !self.lookup_extra_caps(t, buffer, info, blocking, &mut args.extra) {
            return;
        }
        // A kernel-object invocation: its arguments (IPC objects above take the message
        // as it is, in `transfer`).
        let max = if buffer.is_some() { MSG_MAX_LENGTH } else { 4 };
        args.length = (info.length() as usize).min(max);
        for i in 0..args.length.min(args.mrs.len()) {
            args.mrs[i] = self.message_register(t, buffer, i);
        }
        // A label no object has is seL4's InvalidInvocation (0): the capability decides
        // first (InvalidCapability 0 for one that cannot be invoked, as seL4), then each
        // object's decoder refuses it with IllegalOperation.
        let label =
            InvocationLabel::from_u64(info.label()).unwrap_or(InvocationLabel::InvalidInvocation);
        let result = if raw::tag(w0) == raw::FRAME {
            // A frame is decoded inline, in registers (Map and Unmap are the common
            // invocations); the other kinds out of line.
            self.invoke_frame(words, label, &args)
        } else {
            self.invoke_object(Cap::decode(words), label, &args)
        };
        // The thread may have been deleted or suspended by its own invocation.
        if !self.thread_alive(t) {
            self.preempted = false;
            return;
        }
        if core::mem::take(&mut self.preempted) {
            // A long operation stopped at a preemption point: no reply; the thread
            // redoes the system call (the scheduler moves RIP back onto SYSCALL) after
            // the pending interrupt, and the operation continues.
            if self.tcb(t).state == ThreadState::Running {
                self.tcb_mut(t).state = ThreadState::Restart;
            }
            return;
        }
        if !is_call {
            if self.tcb(t).state == ThreadState::Running
                || self.tcb(t).state == ThreadState::Restart
            {
                self.tcb_mut(t).state = ThreadState::Running;
            }
            return;
        }
        self.reply_to_invocation(t, buffer, result);
    }

    /// The reply to a Call of a kernel object: the result's message (no capabilities,
    /// badge 0) in `t`'s registers and IPC buffer.
    #[inline(always)]
    fn reply_to_invocation(&mut self, t: u64, buffer: Option<u64>, result: Invoked) {
        let (label, length) = match result {
            Ok(n) => (0, n),
            Err(e) => {
                for (i, w) in e.words[..e.length].iter().enumerate() {
                    self.set_message_register(t, buffer, i, *w);
                }
                (e.error as u64, e.length)
            }
        };
        let c = &mut self.tcb_mut(t).context;
        c.rsi = MessageInfo::new(label, 0, 0, length as u64).to_word();
        c.rdi = 0;
    }

    /// X86PageMap called the usual way (Call, MR0-MR2 in registers, the address space as
    /// the one extra capability, an IPC buffer): what the general path does for it
    /// (the extra capability's lookup, a fault if it fails; [`Self::map_frame`]; the
    /// reply) without its argument record. `frame` is the invoked slot's words.
    #[inline(never)]
    fn map_frame_call(&mut self, t: u64, slot: u64, frame: [u64; 2], buffer: u64) {
        let cptr = self.hw.read(buffer + crate::ipc::buffer::caps_or_badges(0));
        let Some(vspace) = self.lookup_or_fault(t, cptr, true) else {
            return;
        };
        let vspace = cspace::words(&self.hw, vspace);
        let c = &self.tcb(t).context;
        let (vaddr, requested, attributes) = (c.r10, Rights::from_word(c.r8), c.r9);
        let result = self.map_frame(frame, slot, vaddr, requested, attributes, Some(vspace));
        self.reply_to_invocation(t, Some(buffer), result);
    }

    /// Whether `t` is still a live TCB (not deleted by the invocation it made).
    fn thread_alive(&self, t: u64) -> bool {
        self.hw.exists::<tcb::Tcb>(tcb::record(t))
    }

    /// Dispatches a kernel-object invocation to the object's decoder.
    fn invoke_object(&mut self, cap: Cap, label: InvocationLabel, args: &Args) -> Invoked {
        match cap {
            Cap::CNode { .. } => self.invoke_cnode(cap, label, args),
            Cap::Untyped { .. } => self.invoke_untyped(cap, label, args),
            Cap::Tcb { ptr } => self.invoke_tcb(ptr, label, args),
            Cap::IrqControl | Cap::IrqHandler { .. } => self.invoke_irq(cap, label, args),
            Cap::IoPortControl | Cap::IoPort { .. } => self.invoke_io_port(cap, label, args),
            Cap::Frame { .. }
            | Cap::PageTable { .. }
            | Cap::PageDirectory { .. }
            | Cap::Pdpt { .. }
            | Cap::Pml4 { .. }
            | Cap::AsidControl
            | Cap::AsidPool { .. } => self.invoke_vspace(cap, label, args),
            Cap::FsGsBaseControl => self.invoke_fsgsbase_control(label, args),
            Cap::Ldt { .. } => self.invoke_ldt(cap, label, args),
            Cap::Domain => invoke_domain(label, args),
            _ => Err(InvocationError::capability(0)),
        }
    }

    /// A Keel debug system call. Out of line and cold: `debug_put_string`'s 4 KiB
    /// buffer would otherwise give `handle_syscall` (every general-path system call) a
    /// stack-probed 4 KiB frame.
    #[cold]
    #[inline(never)]
    fn handle_debug(&mut self, t: u64, number: i64) {
        // Only the two argument registers are read (a copy of the whole context would put
        // every user register on the kernel stack, which KeelDebugKernelStackCount looks
        // at).
        let (rdi, rsi) = {
            let c = &self.tcb(t).context;
            (c.rdi, c.rsi)
        };
        match number {
            syscall::DEBUG_PUT_CHAR => self.hw.console_write(&[rdi as u8]),
            syscall::DEBUG_HALT => self.hw.halt(),
            syscall::DEBUG_PUT_STRING => {
                let result = self.debug_put_string(t, rdi, rsi);
                self.tcb_mut(t).context.rax = result;
            }
            syscall::DEBUG_THREAD_EXIT => {
                self.set_state(t, ThreadState::Inactive);
                self.hw.thread_exited(t, rdi);
            }
            syscall::DEBUG_TEST_REPORT => self.hw.test_report(rdi, rsi),
            syscall::DEBUG_CAP_IDENTIFY => {
                let tag = self.lookup_cap(t, rdi).map_or(0, |(_, cap)| cap.tag());
                self.tcb_mut(t).context.rdi = tag;
            }
            syscall::DEBUG_SET_FASTPATH => self.set_fastpath(rdi != 0),
            syscall::DEBUG_PLATFORM_FLAGS => {
                let flags = self.platform_flags;
                self.tcb_mut(t).context.rax = flags;
            }
            syscall::DEBUG_KERNEL_STACK_COUNT => match self.hw.kernel_stack_count(rdi) {
                Some(count) => self.tcb_mut(t).context.rax = count,
                None => self.handle_fault(
                    t,
                    Fault::UnknownSyscall {
                        number: number as u64,
                    },
                ),
            },
            syscall::DEBUG_TICKS => {
                let ticks = self.hw.ticks();
                self.tcb_mut(t).context.rax = ticks;
            }
            syscall::DEBUG_NAME_THREAD => {
                // RDI: the TCB capability; the name is in the IPC buffer's message words.
                if let (Ok((_, Cap::Tcb { ptr })), Some(b)) =
                    (self.lookup_cap(t, rdi), self.ipc_buffer(t))
                {
                    let mut name = [0u8; 16];
                    for (i, chunk) in name.chunks_mut(8).enumerate() {
                        chunk.copy_from_slice(
                            &self
                                .hw
                                .read(b + crate::ipc::buffer::message(i))
                                .to_le_bytes(),
                        );
                    }
                    self.tcb_mut(ptr).name = name;
                }
            }
            _ => self.handle_fault(
                t,
                Fault::UnknownSyscall {
                    number: number as u64,
                },
            ),
        }
    }

    /// Prints `length` bytes at user address `address` of thread `t`'s address space.
    fn debug_put_string(&mut self, t: u64, address: u64, length: u64) -> u64 {
        if length > syscall::DEBUG_PUT_STRING_MAX {
            return syscall::ERROR_BAD_ADDRESS;
        }
        let Cap::Pml4 { base, .. } = cspace::cap(&self.hw, tcb::slot(t, tcb::SLOT_VSPACE)) else {
            return syscall::ERROR_BAD_ADDRESS;
        };
        let mut bytes = [0u8; syscall::DEBUG_PUT_STRING_MAX as usize];
        for i in 0..length {
            let Some(va) = address.checked_add(i) else {
                return syscall::ERROR_BAD_ADDRESS;
            };
            let Some(pa) = crate::object::vspace::translate_user(&self.hw, base, va) else {
                return syscall::ERROR_BAD_ADDRESS;
            };
            let word = self.hw.read(pa & !7);
            bytes[i as usize] = (word >> (8 * (pa & 7))) as u8;
        }
        self.hw.console_write(&bytes[..length as usize]);
        length
    }
}
