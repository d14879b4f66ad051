//! TCB invocations: configuration, registers, scheduling parameters, suspend/resume,
//! notification binding, affinity, TLS base (seL4 x86-64 argument layouts).

use keel_abi::error::Error;
use keel_abi::fault::{USER_CONTEXT_WORDS, UserContext as AbiContext};
use keel_abi::invocation::InvocationLabel as L;

use crate::invocation::{Args, InvocationError, Invoked};
use crate::kernel::{Hardware, Kernel};
use crate::object::cap::Cap;
use crate::object::cnode;
use crate::object::cspace;
use crate::object::endpoint::Notification;
use crate::object::tcb::{self, ThreadState, UserContext};

fn to_abi(c: &UserContext) -> AbiContext {
    AbiContext {
        rip: c.rip,
        rsp: c.rsp,
        rflags: c.rflags,
        rax: c.rax,
        rbx: c.rbx,
        rcx: c.rcx,
        rdx: c.rdx,
        rsi: c.rsi,
        rdi: c.rdi,
        rbp: c.rbp,
        r8: c.r8,
        r9: c.r9,
        r10: c.r10,
        r11: c.r11,
        r12: c.r12,
        r13: c.r13,
        r14: c.r14,
        r15: c.r15,
        fs_base: c.fs_base,
        gs_base: c.gs_base,
    }
}

fn from_abi(c: &mut UserContext, a: &AbiContext, count: usize) {
    let w = a.to_words();
    let fields: [&mut u64; USER_CONTEXT_WORDS] = [
        &mut c.rip,
        &mut c.rsp,
        &mut c.rflags,
        &mut c.rax,
        &mut c.rbx,
        &mut c.rcx,
        &mut c.rdx,
        &mut c.rsi,
        &mut c.rdi,
        &mut c.rbp,
        &mut c.r8,
        &mut c.r9,
        &mut c.r10,
        &mut c.r11,
        &mut c.r12,
        &mut c.r13,
        &mut c.r14,
        &mut c.r15,
        &mut c.fs_base,
        &mut c.gs_base,
    ];
    for (i, f) in fields.into_iter().enumerate().take(count) {
        *f = w[i];
    }
}

/// Whether `address` is canonical and in user space.
fn user_address(address: u64) -> bool {
    address < keel_abi::object::USER_TOP + 0x1000
}

impl<H: Hardware> Kernel<H> {
    /// Decodes and performs a TCB invocation on the TCB at `t`.
    pub fn invoke_tcb(&mut self, t: u64, label: L, args: &Args) -> Invoked {
        // As seL4 does at the start of every TCB invocation: a thread running on another
        // CPU is stopped there first, its registers, bases and FPU state saved to its
        // TCB. So the invocation reads and changes the thread's true state, and that
        // CPU takes every change (registers, bases, roots, IPC buffer, breakpoints,
        // flags) when it goes back to the thread, not at its next kernel entry.
        self.stall_if_running_elsewhere(t);
        match label {
            L::TcbReadRegisters => {
                if args.length < 2 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let count = args.mr(1) as usize;
                if !(1..=USER_CONTEXT_WORDS).contains(&count) {
                    return Err(InvocationError::range(1, USER_CONTEXT_WORDS as u64));
                }
                if t == args.thread {
                    return Err(InvocationError::simple(Error::IllegalOperation));
                }
                if args.mr(0) & 1 != 0 {
                    self.suspend(t);
                }
                let words = to_abi(&self.tcb(t).context).to_words();
                for (i, w) in words.iter().enumerate().take(count) {
                    self.set_message_register(args.thread, args.buffer, i, *w);
                }
                Ok(count)
            }
            L::TcbWriteRegisters => {
                if args.length < 2 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                // seL4: the count may not exceed the words sent; beyond the context's
                // words it is clamped.
                if ((args.length - 2) as u64) < args.mr(1) {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let count = (args.mr(1) as usize).min(USER_CONTEXT_WORDS);
                if t == args.thread {
                    return Err(InvocationError::simple(Error::IllegalOperation));
                }
                let mut words = [0u64; USER_CONTEXT_WORDS];
                for (i, w) in words.iter_mut().enumerate().take(count) {
                    *w = self.message_register(args.thread, args.buffer, 2 + i);
                }
                let new = AbiContext::from_words(&words);
                if count > 0 && !user_address(new.rip) {
                    return Err(InvocationError::argument(2));
                }
                {
                    let tcb = self.tcb_mut(t);
                    let stepping = tcb.debug.single_step;
                    let c = &mut tcb.context;
                    let (fs_before, gs_before) = (c.fs_base, c.gs_base);
                    from_abi(c, &new, count);
                    c.sanitise_flags();
                    c.sanitise_bases();
                    // A base written with a different value takes effect: its selector
                    // becomes 0 (doc/fsgsbase.md); written back unchanged, the state
                    // (selector and base) stays exactly as it was.
                    if c.fs_base != fs_before {
                        c.selectors &= !tcb::FS_SELECTOR_MASK;
                    }
                    if c.gs_base != gs_before {
                        c.selectors &= !tcb::GS_SELECTOR_MASK;
                    }
                    if stepping {
                        c.rflags |= crate::object::tcb_debug::RFLAGS_TF;
                    }
                    // The thread continues at the written RIP, not in a system call.
                    c.vector = 0;
                }
                self.restart_if_current_elsewhere(t);
                if args.mr(0) & 1 != 0 {
                    self.restart(t);
                }
                Ok(0)
            }
            L::TcbCopyRegisters => {
                if args.length < 1 || args.extra_cap(0).is_none() {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let Some(Cap::Tcb { ptr: source }) = args.extra_cap(0) else {
                    return Err(InvocationError::capability(1));
                };
                let flags = args.mr(0);
                if flags & 1 != 0 {
                    self.suspend(source);
                }
                self.stall_if_running_elsewhere(source);
                let src = self.tcb(source).context;
                {
                    let c = &mut self.tcb_mut(t).context;
                    if flags & 4 != 0 {
                        c.rip = src.rip;
                        c.rsp = src.rsp;
                        c.rflags = src.rflags;
                        c.vector = 0;
                    }
                    if flags & 8 != 0 {
                        let (rip, rsp, rflags, vector) = (c.rip, c.rsp, c.rflags, c.vector);
                        *c = UserContext {
                            rip,
                            rsp,
                            rflags,
                            vector,
                            ..src
                        };
                    }
                    c.sanitise_flags();
                    c.sanitise_bases();
                }
                self.restart_if_current_elsewhere(t);
                if flags & 2 != 0 {
                    self.restart(t);
                }
                Ok(0)
            }
            L::TcbConfigure => {
                if args.length < 4 || args.extra_cap(2).is_none() {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let (fault_ep, cspace_data, buffer) = (args.mr(0), args.mr(1), args.mr(3));
                // All of it is decoded before any of it is done, in seL4's order (the
                // buffer, then the roots): a Configure that fails changes nothing.
                let ipc_buffer = self.decode_ipc_buffer(args, buffer, 2)?;
                let space = self.decode_space(args, cspace_data, 0)?;
                if !self.install_space(t, fault_ep, space) {
                    return Ok(0); // redone after the interrupt
                }
                self.install_ipc_buffer(t, buffer, ipc_buffer);
                Ok(0)
            }
            L::TcbSetSpace => {
                if args.length < 3 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let space = self.decode_space(args, args.mr(1), 0)?;
                self.install_space(t, args.mr(0), space);
                Ok(0)
            }
            L::TcbSetIpcBuffer => {
                if args.length < 1 || args.extra_cap(0).is_none() {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let ipc_buffer = self.decode_ipc_buffer(args, args.mr(0), 0)?;
                self.install_ipc_buffer(t, args.mr(0), ipc_buffer);
                Ok(0)
            }
            L::TcbSetPriority | L::TcbSetMcPriority | L::TcbSetSchedParams => {
                let need = if label == L::TcbSetSchedParams { 2 } else { 1 };
                if args.length < need || args.extra_cap(0).is_none() {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let Some(Cap::Tcb { ptr: authority }) = args.extra_cap(0) else {
                    return Err(InvocationError::capability(1));
                };
                let max = self.tcb(authority).mcp as u64;
                let (mcp, prio) = match label {
                    L::TcbSetPriority => (None, Some(args.mr(0))),
                    L::TcbSetMcPriority => (Some(args.mr(0)), None),
                    _ => (Some(args.mr(0)), Some(args.mr(1))),
                };
                for v in [mcp, prio].into_iter().flatten() {
                    if v > max {
                        return Err(InvocationError::range(0, max));
                    }
                }
                if let Some(m) = mcp {
                    self.tcb_mut(t).mcp = m as u8;
                }
                if let Some(p) = prio {
                    self.set_priority(t, p as u8);
                }
                Ok(0)
            }
            L::TcbSuspend => {
                self.suspend(t);
                Ok(0)
            }
            L::TcbResume => {
                self.restart(t);
                Ok(0)
            }
            L::TcbBindNotification => {
                // seL4's checks in its order: the capability is there; the thread has
                // none bound; it is a notification the caller may receive on, with no
                // waiter and no other thread bound. Each refusal is IllegalOperation.
                let Some(cap) = args.extra_cap(0) else {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                };
                if self.tcb(t).bound_notification != 0 {
                    return Err(InvocationError::simple(Error::IllegalOperation));
                }
                let Cap::Notification { ptr, rights, .. } = cap else {
                    return Err(InvocationError::simple(Error::IllegalOperation));
                };
                let n = *self.hw.get::<Notification>(ptr);
                if !rights.contains(crate::object::cap::Rights::READ)
                    || n.bound() != 0
                    || n.head != 0
                {
                    return Err(InvocationError::simple(Error::IllegalOperation));
                }
                self.hw.get_mut::<Notification>(ptr).set_bound(t);
                self.tcb_mut(t).bound_notification = ptr;
                Ok(0)
            }
            L::TcbUnbindNotification => {
                if self.tcb(t).bound_notification == 0 {
                    return Err(InvocationError::simple(Error::IllegalOperation));
                }
                self.unbind_notification(t);
                Ok(0)
            }
            L::TcbSetAffinity => {
                if args.length < 1 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let cpu = args.mr(0);
                if cpu >= self.cpus.len() as u64 {
                    return Err(InvocationError::simple(Error::IllegalOperation));
                }
                self.set_affinity(t, cpu as usize);
                Ok(0)
            }
            L::TcbSetTlsBase => {
                if args.length < 1 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let c = &mut self.tcb_mut(t).context;
                c.fs_base = args.mr(0);
                c.selectors &= !tcb::FS_SELECTOR_MASK;
                c.sanitise_bases();
                Ok(0)
            }
            L::TcbSetGsBase => {
                if args.length < 1 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let c = &mut self.tcb_mut(t).context;
                c.gs_base = args.mr(0);
                c.selectors &= !tcb::GS_SELECTOR_MASK;
                c.sanitise_bases();
                Ok(0)
            }
            L::TcbSetBreakpoint
            | L::TcbGetBreakpoint
            | L::TcbUnsetBreakpoint
            | L::TcbConfigureSingleStepping => self.invoke_tcb_debug(t, label, args),
            L::TcbSetRseq => {
                if args.length < 1 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                self.set_rseq(t, args.mr(0))?;
                Ok(0)
            }
            L::TcbSetFlags => {
                // seL4: flags = (flags & ~clear) | set, within the supported mask; the new
                // flags are returned in MR0.
                use keel_abi::object::tcb_flags;
                if args.length < 2 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let (clear, set) = (args.mr(0), args.mr(1));
                let flags = (self.tcb(t).flags & !clear | set) & tcb_flags::MASK;
                if flags != self.tcb(t).flags {
                    // (Running on another CPU, the thread's FPU state was in that
                    // CPU's registers: the stall above saved it.) The trusted core saves the thread's FPU state where it can and
                    // loads the FPU for it afresh at its next switch.
                    self.hw.fpu_release(t);
                }
                self.tcb_mut(t).flags = flags;
                self.set_message_register(args.thread, args.buffer, 0, flags);
                Ok(1)
            }
            _ => Err(InvocationError::simple(Error::IllegalOperation)),
        }
    }

    /// Makes an inactive or blocked thread run again from its saved registers (a
    /// blocked one redoes its system call); a runnable one is left as it is (seL4's
    /// restart of a thread that `isStopped`: Resume, and WriteRegisters or
    /// CopyRegisters with resume).
    pub fn restart(&mut self, t: u64) {
        if self.tcb(t).state.is_runnable() {
            return;
        }
        self.cancel_ipc(t);
        self.set_state(t, ThreadState::Restart);
        self.possible_switch_to(t);
    }

    /// `t`'s registers were just written while it is current on another CPU (stalled
    /// there: it ran, or that CPU's entry for it waits for the lock). That CPU must not
    /// handle a pending system call or exception of it with the new registers: the
    /// thread restarts (seL4's remote stall does the same), so that CPU takes no call
    /// for it and, choosing it again, lets it go on from its registers (at a written
    /// RIP; with the SYSCALL marker still there, as after an integer-only
    /// CopyRegisters, it makes its system call again with the registers it now has).
    fn restart_if_current_elsewhere(&mut self, t: u64) {
        if self.current_elsewhere(t).is_some() && self.tcb(t).state == ThreadState::Running {
            self.tcb_mut(t).state = ThreadState::Restart;
        }
    }

    /// Changes a thread's priority, moving it between ready queues.
    pub fn set_priority(&mut self, t: u64, priority: u8) {
        let queued = self.tcb(t).queued;
        self.dequeue(t);
        self.tcb_mut(t).priority = priority;
        if queued {
            self.enqueue(t, false);
        }
        self.reschedule_cpu_of(t);
    }

    /// Moves a thread to another CPU. A thread running on another CPU must have been
    /// stalled there first (`invoke_tcb` does it for every TCB invocation).
    pub fn set_affinity(&mut self, t: u64, cpu: usize) {
        let old = self.tcb(t).affinity as usize;
        if cpu == old {
            // Already there: nothing moves (the thread keeps running undisturbed).
            return;
        }
        // A thread running elsewhere has been stalled there by `invoke_tcb` (its
        // registers are in its TCB).
        let queued = self.tcb(t).queued;
        self.dequeue(t);
        self.tcb_mut(t).affinity = cpu as u16;
        self.rseq_migrated(t, cpu as u16);
        if self.cpus[old].current == t {
            self.current_gone(old);
            if self.tcb(t).state.is_runnable() {
                self.enqueue(t, false);
                self.hw.reschedule_cpu(cpu);
            }
        } else if queued {
            self.enqueue(t, false);
            self.hw.reschedule_cpu(cpu);
        }
    }

    /// Decodes the CSpace and VSpace halves of a SetSpace or Configure: the CNode
    /// capability (its guard changed by `cspace_data` when that is not zero) and the PML4
    /// capability in extra capabilities `first_cap` and `first_cap + 1`, each derived
    /// from its slot. As seL4: a root that is not a CNode (also one whose guard change
    /// is refused) or not a PML4 with an ASID is IllegalOperation. No side effects.
    /// (seL4 ignores the VSpace data word on x86-64.)
    fn decode_space(
        &mut self,
        args: &Args,
        cspace_data: u64,
        first_cap: usize,
    ) -> Result<SpaceChange, InvocationError> {
        let (Some(cspace_cap), Some(cspace_slot)) =
            (args.extra_cap(first_cap), args.extra_slot(first_cap))
        else {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        };
        let (Some(vspace_cap), Some(vspace_slot)) = (
            args.extra_cap(first_cap + 1),
            args.extra_slot(first_cap + 1),
        ) else {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        };
        let cspace_new = if cspace_data != 0 {
            cnode::update_data(cspace_cap, cspace_data, false)
        } else {
            Some(cspace_cap)
        };
        let Some(cspace_new @ Cap::CNode { .. }) =
            cspace_new.and_then(|cap| cnode::derive(self, cspace_slot, cap))
        else {
            return Err(InvocationError::simple(Error::IllegalOperation));
        };
        let Some(vspace_new @ Cap::Pml4 { asid: Some(_), .. }) =
            cnode::derive(self, vspace_slot, vspace_cap)
        else {
            return Err(InvocationError::simple(Error::IllegalOperation));
        };
        Ok(SpaceChange {
            cspace: (cspace_slot, cspace_new),
            vspace: (vspace_slot, vspace_new),
        })
    }

    /// Gives thread `t` the fault endpoint pointer and the roots `decode_space` decoded.
    /// False when it stopped at a preemption point (emptying an old root): the thread
    /// redoes the call, which continues the deletion (`handle_invocation`).
    fn install_space(&mut self, t: u64, fault_ep: u64, change: SpaceChange) -> bool {
        self.tcb_mut(t).fault_handler = fault_ep;
        for (index, (source, cap)) in [
            (tcb::SLOT_CSPACE, change.cspace),
            (tcb::SLOT_VSPACE, change.vspace),
        ] {
            let slot = tcb::slot(t, index);
            if slot == source {
                continue; // installing a thread's own root in place
            }
            if !self.delete(slot) {
                return false;
            }
            if cspace::cap(&self.hw, source).is_null() {
                continue; // the source was deleted along with the old root
            }
            cspace::insert_child(&mut self.hw, source, slot, cap);
        }
        true
    }

    /// Decodes an IPC buffer change: none for address 0 (the thread is left without a
    /// buffer), else the frame capability in extra capability `cap_index`, derived from
    /// its slot, and the address. As seL4: not a RAM frame is IllegalOperation, an
    /// address not aligned to the buffer's size AlignmentError. No side effects.
    fn decode_ipc_buffer(
        &mut self,
        args: &Args,
        buffer: u64,
        cap_index: usize,
    ) -> Result<Option<(u64, Cap)>, InvocationError> {
        if buffer == 0 {
            return Ok(None);
        }
        let (Some(frame), Some(frame_slot)) =
            (args.extra_cap(cap_index), args.extra_slot(cap_index))
        else {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        };
        let Some(derived @ Cap::Frame { device: false, .. }) =
            cnode::derive(self, frame_slot, frame)
        else {
            return Err(InvocationError::simple(Error::IllegalOperation));
        };
        if !buffer.is_multiple_of(1 << keel_abi::message::IPC_BUFFER_SIZE_BITS) {
            return Err(InvocationError::simple(Error::AlignmentError));
        }
        Ok(Some((frame_slot, derived)))
    }

    /// Gives thread `t` the IPC buffer at `buffer` that `decode_ipc_buffer` decoded
    /// (the frame's slot and derived capability; none for no buffer).
    fn install_ipc_buffer(&mut self, t: u64, buffer: u64, frame: Option<(u64, Cap)>) {
        let slot = tcb::slot(t, tcb::SLOT_IPC_BUFFER);
        self.delete(slot);
        if let Some((frame_slot, derived)) = frame
            && !cspace::cap(&self.hw, frame_slot).is_null()
        {
            cspace::insert_child(&mut self.hw, frame_slot, slot, derived);
        }
        self.tcb_mut(t).ipc_buffer = buffer;
    }
}

/// A decoded CSpace and VSpace change: each new root's source slot and derived
/// capability.
struct SpaceChange {
    cspace: (u64, Cap),
    vspace: (u64, Cap),
}
