//! Fault messages: what a faulting thread's handler receives, and how its reply
//! changes the thread (seL4 x86-64 layouts).

use keel_abi::message::MessageInfo;

use crate::kernel::{Hardware, Kernel};
use crate::object::cspace::LookupFault;
use crate::object::tcb::{Fault, UserContext};

/// Fault type labels.
pub mod label {
    /// seL4_Fault_CapFault.
    pub const CAP_FAULT: u64 = 1;
    /// seL4_Fault_UnknownSyscall.
    pub const UNKNOWN_SYSCALL: u64 = 2;
    /// seL4_Fault_UserException.
    pub const USER_EXCEPTION: u64 = 3;
    /// seL4_Fault_DebugException (hardware debug API).
    pub const DEBUG_EXCEPTION: u64 = 4;
    /// seL4_Fault_VMFault.
    pub const VM_FAULT: u64 = 5;
}

/// Longest fault message.
pub const MAX_FAULT_WORDS: usize = 19;

fn lookup_words(l: LookupFault, out: &mut [u64]) -> usize {
    match l {
        LookupFault::InvalidRoot => {
            out[0] = 1;
            1
        }
        LookupFault::MissingCapability { bits_left } => {
            out[0] = 2;
            out[1] = bits_left as u64;
            2
        }
        LookupFault::DepthMismatch {
            bits_left,
            bits_found,
        } => {
            out[0] = 3;
            out[1] = bits_left as u64;
            out[2] = bits_found as u64;
            3
        }
        LookupFault::GuardMismatch {
            bits_left,
            guard_found,
            guard_size,
        } => {
            out[0] = 4;
            out[1] = bits_left as u64;
            out[2] = guard_found;
            out[3] = guard_size as u64;
            4
        }
    }
}

/// Writes a lookup-failure description into `out`; returns the words used.
pub fn lookup_failure_words(l: LookupFault, out: &mut [u64]) -> usize {
    lookup_words(l, out)
}

/// The registers of the UnknownSyscall message and reply, in order.
fn syscall_registers(c: &UserContext) -> [u64; 18] {
    [
        c.rax, c.rbx, c.rcx, c.rdx, c.rsi, c.rdi, c.rbp, c.r8, c.r9, c.r10, c.r11, c.r12, c.r13,
        c.r14, c.r15, c.rip, c.rsp, c.rflags,
    ]
}

/// (label, words, length) of the fault message for `fault` raised by thread `t`.
pub fn message<H: Hardware>(
    k: &Kernel<H>,
    t: u64,
    fault: Fault,
) -> (u64, [u64; MAX_FAULT_WORDS], usize) {
    let c = &k.tcb(t).context;
    let mut w = [0u64; MAX_FAULT_WORDS];
    match fault {
        Fault::None => (0, w, 0),
        Fault::Capability {
            address,
            in_receive,
            lookup,
        } => {
            // Capability faults come from system calls: seL4 reports the address of the
            // SYSCALL instruction (its restart PC), not the one after it.
            w[0] = c.rip.wrapping_sub(2);
            w[1] = address;
            w[2] = in_receive as u64;
            let n = lookup_words(lookup, &mut w[3..]);
            (label::CAP_FAULT, w, 3 + n)
        }
        Fault::UnknownSyscall { number } => {
            w[..18].copy_from_slice(&syscall_registers(c));
            // FaultIP is the address of the SYSCALL instruction (2 bytes) itself.
            w[15] = c.rip.wrapping_sub(2);
            w[18] = number;
            (label::UNKNOWN_SYSCALL, w, 19)
        }
        Fault::UserException { number, code } => {
            w[0] = c.rip;
            w[1] = c.rsp;
            w[2] = c.rflags;
            w[3] = number;
            w[4] = code;
            (label::USER_EXCEPTION, w, 5)
        }
        Fault::VmFault {
            address,
            fsr,
            instruction,
        } => {
            w[0] = c.rip;
            w[1] = address;
            w[2] = instruction as u64;
            w[3] = fsr;
            (label::VM_FAULT, w, 4)
        }
        Fault::Debug {
            reason,
            address,
            breakpoint,
        } => {
            w[0] = c.rip;
            w[1] = reason;
            if reason <= keel_abi::fault::BreakpointType::Instruction as u64 {
                w[2] = address;
                w[3] = breakpoint;
                (label::DEBUG_EXCEPTION, w, 4)
            } else {
                (label::DEBUG_EXCEPTION, w, 2)
            }
        }
    }
}

impl<H: Hardware> Kernel<H> {
    /// Writes the fault message for `fault` raised by `sender` into `receiver`'s message
    /// registers (`buffer` = its IPC buffer; words beyond the registers are dropped
    /// without one); returns its (label, length). The same words as [`message`]: the
    /// short messages go word by word to their registers, without building the array.
    pub(crate) fn write_fault_message(
        &mut self,
        sender: u64,
        receiver: u64,
        buffer: Option<u64>,
        fault: Fault,
    ) -> (u64, usize) {
        let (rip, rsp, rflags) = {
            let c = &self.tcb(sender).context;
            (c.rip, c.rsp, c.rflags)
        };
        let (label, words, len) = match fault {
            Fault::UserException { number, code } => {
                self.set_message_register(receiver, buffer, 4, code);
                (label::USER_EXCEPTION, [rip, rsp, rflags, number], 5)
            }
            Fault::VmFault {
                address,
                fsr,
                instruction,
            } => (label::VM_FAULT, [rip, address, instruction as u64, fsr], 4),
            _ => {
                let (label, words, len) = message(self, sender, fault);
                for (i, w) in words[..len].iter().enumerate() {
                    self.set_message_register(receiver, buffer, i, *w);
                }
                return (label, len);
            }
        };
        let c = &mut self.tcb_mut(receiver).context;
        (c.r10, c.r8, c.r9, c.r15) = (words[0], words[1], words[2], words[3]);
        (label, len)
    }

    /// Applies the handler's reply (from `sender`) to the faulted thread `t`. Returns
    /// whether `t` resumes.
    pub fn apply_fault_reply(&mut self, sender: u64, t: u64, fault: Fault) -> bool {
        let info = MessageInfo::from_word(self.tcb(sender).context.rsi);
        // Capability, VM and debug faults always resume (re-executing the instruction
        // or system call); the others only with label 0.
        if !matches!(
            fault,
            Fault::UnknownSyscall { .. } | Fault::UserException { .. }
        ) {
            if let Fault::Debug { reason, .. } = fault
                && reason == keel_abi::fault::BreakpointType::SingleStep as u64
                && info.length() >= 1
            {
                // MR0: instructions to run before the next single-step fault.
                let buffer = self.ipc_buffer(sender);
                let n = self.message_register(sender, buffer, 0);
                self.tcb_mut(t).debug.skip = n.saturating_sub(1);
            }
            return true;
        }
        // As seL4's handleFaultReply, the registers are written back whatever the
        // label; the label only decides whether the thread resumes.
        let length = info.length() as usize;
        if let Fault::UserException { .. } = fault {
            // RIP, RSP, RFLAGS: message registers 0-2, all in the sender's registers.
            let (r10, r8, r9) = {
                let c = &self.tcb(sender).context;
                (c.r10, c.r8, c.r9)
            };
            let c = &mut self.tcb_mut(t).context;
            if length > 0 {
                c.rip = r10;
                if length > 1 {
                    c.rsp = r8;
                    if length > 2 {
                        c.rflags = r9;
                    }
                }
            }
            return self.finish_fault_reply(t, info);
        }
        let buffer = self.ipc_buffer(sender);
        let count = 18.min(length);
        let words: [u64; 18] = core::array::from_fn(|i| {
            if i < count {
                self.message_register(sender, buffer, i)
            } else {
                0
            }
        });
        // UnknownSyscall (the only fault left): the thread resumes at FaultIP (the
        // SYSCALL instruction, re-executing it) unless the reply gives another RIP.
        let c = &mut self.tcb_mut(t).context;
        c.rip = c.rip.wrapping_sub(2);
        let regs = [
            &mut c.rax, &mut c.rbx, &mut c.rcx, &mut c.rdx, &mut c.rsi, &mut c.rdi, &mut c.rbp,
            &mut c.r8, &mut c.r9, &mut c.r10, &mut c.r11, &mut c.r12, &mut c.r13, &mut c.r14,
            &mut c.r15,
        ];
        for (i, r) in regs.into_iter().enumerate().take(count) {
            *r = words[i];
        }
        if count > 15 {
            c.rip = words[15];
        }
        if count > 16 {
            c.rsp = words[16];
        }
        if count > 17 {
            c.rflags = words[17];
        }
        self.finish_fault_reply(t, info)
    }

    /// The end of a reply that wrote registers back: RFLAGS and the bases made safe,
    /// TF kept while single-stepping; returns whether the thread resumes (label 0).
    fn finish_fault_reply(&mut self, t: u64, info: MessageInfo) -> bool {
        let r = self.tcb_mut(t);
        r.context.sanitise_flags();
        r.context.sanitise_bases();
        if r.debug.single_step {
            r.context.rflags |= crate::object::tcb_debug::RFLAGS_TF;
        }
        info.label() == 0
    }
}

/// Logs a fault nobody handles (the thread is then stopped).
pub fn report_unhandled<H: Hardware>(k: &mut Kernel<H>, t: u64, fault: Fault) {
    let c = k.tcb(t).context;
    let name = k.tcb(t).name;
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    let mut line = crate::testing::alloc_free::Message::new(format_args!(
        "keel: thread {} ({t:#x}) stopped: unhandled {:?} at {:#x}\n",
        core::str::from_utf8(&name[..end]).unwrap_or("?"),
        fault,
        c.rip
    ));
    let text = core::mem::replace(
        &mut line,
        crate::testing::alloc_free::Message::new(format_args!("")),
    );
    k.hw.console_write(text.as_str().as_bytes());
}
