//! Interrupts and I/O ports as capabilities: IRQControl issues IRQHandler capabilities
//! for I/O APIC pins or MSIs; an IRQHandler delivers its interrupt as a signal to a
//! notification and is acknowledged to unmask it. IOPortControl issues I/O port range
//! capabilities; an IOPort capability is the only way to reach a port.

use keel_abi::error::Error;
use keel_abi::invocation::InvocationLabel as L;

use crate::invocation::{Args, InvocationError, Invoked};
use crate::kernel::{Hardware, Kernel};
use crate::object::cap::{Cap, Rights};
use crate::object::cspace;

/// IRQ numbers the kernel manages (I/O APIC pins 0..=23 on PCs, then MSIs).
pub const MAX_IRQS: usize = 64;

/// What the kernel does with an IRQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqState {
    /// No handler capability was issued.
    Inactive,
    /// A handler exists; signal this notification (0 = none) with this badge.
    Signal { notification: u64, badge: u64 },
    /// Reserved by the kernel (timer, IPIs).
    Reserved,
}

impl<H: Hardware> Kernel<H> {
    /// Decodes and performs an IRQControl or IRQHandler invocation.
    pub fn invoke_irq(&mut self, cap: Cap, label: L, args: &Args) -> Invoked {
        match (cap, label) {
            (
                Cap::IrqControl,
                L::IrqIssueIrqHandler
                | L::X86IrqIssueIrqHandlerIoApic
                | L::X86IrqIssueIrqHandlerMsi,
            ) => {
                // IRQIssueIRQHandler: irq, index, depth; the GetIOAPIC and GetMSI forms
                // carry their routing words after index/depth: the IRQ is chosen as
                // the pin (I/O APIC) or 24 + the vector index (MSI).
                if args.length < 3 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let root = args
                    .extra_cap(0)
                    .ok_or(InvocationError::simple(Error::TruncatedMessage))?;
                let (irq, index, depth) = match label {
                    L::IrqIssueIrqHandler => (args.mr(0), args.mr(1), args.mr(2)),
                    L::X86IrqIssueIrqHandlerIoApic => (args.mr(4), args.mr(0), args.mr(1)),
                    _ => (24 + args.mr(6), args.mr(0), args.mr(1)),
                };
                if irq >= MAX_IRQS as u64 {
                    return Err(InvocationError::range(0, MAX_IRQS as u64 - 1));
                }
                if self.irqs[irq as usize] != IrqState::Inactive {
                    return Err(InvocationError::simple(Error::RevokeFirst));
                }
                let dest = self.target_slot(root, index, depth, false)?;
                if !cspace::cap(&self.hw, dest).is_null() {
                    return Err(InvocationError::simple(Error::DeleteFirst));
                }
                self.irqs[irq as usize] = IrqState::Signal {
                    notification: 0,
                    badge: 0,
                };
                cspace::insert_child(
                    &mut self.hw,
                    args.slot,
                    dest,
                    Cap::IrqHandler { irq: irq as u16 },
                );
                Ok(0)
            }
            (Cap::IrqHandler { irq }, L::IrqAckIrq) => {
                self.hw.irq_enable(irq, true);
                Ok(0)
            }
            (Cap::IrqHandler { irq }, L::IrqSetIrqHandler) => {
                let Some(Cap::Notification { ptr, badge, rights }) = args.extra_cap(0) else {
                    return Err(InvocationError::capability(1));
                };
                if !rights.contains(Rights::WRITE) {
                    return Err(InvocationError::capability(1));
                }
                self.irqs[irq as usize] = IrqState::Signal {
                    notification: ptr,
                    badge,
                };
                self.hw.irq_enable(irq, true);
                Ok(0)
            }
            (Cap::IrqHandler { irq }, L::IrqClearIrqHandler) => {
                self.irqs[irq as usize] = IrqState::Signal {
                    notification: 0,
                    badge: 0,
                };
                self.hw.irq_enable(irq, false);
                Ok(0)
            }
            _ => Err(InvocationError::simple(Error::IllegalOperation)),
        }
    }

    /// The IRQ handler capability of `irq` is gone: stop delivering it.
    pub fn clear_irq(&mut self, irq: u16) {
        if let Some(state) = self.irqs.get_mut(irq as usize) {
            *state = IrqState::Inactive;
            self.hw.irq_enable(irq, false);
        }
    }

    /// A device interrupt arrived: mask it and signal its notification.
    pub fn handle_irq(&mut self, irq: u16) {
        self.hw.irq_enable(irq, false);
        if let Some(IrqState::Signal {
            notification,
            badge,
        }) = self.irqs.get(irq as usize).copied()
            && notification != 0
        {
            self.signal(notification, badge);
        }
    }

    /// Decodes and performs an IOPortControl or IOPort invocation.
    pub fn invoke_io_port(&mut self, cap: Cap, label: L, args: &Args) -> Invoked {
        match (cap, label) {
            (Cap::IoPortControl, L::X86IoPortControlIssue) => {
                if args.length < 4 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let (first, last, index, depth) = (args.mr(0), args.mr(1), args.mr(2), args.mr(3));
                if first > last || last > 0xffff {
                    return Err(InvocationError::range(0, 0xffff));
                }
                let root = args
                    .extra_cap(0)
                    .ok_or(InvocationError::simple(Error::TruncatedMessage))?;
                let dest = self.target_slot(root, index, depth, false)?;
                if !cspace::cap(&self.hw, dest).is_null() {
                    return Err(InvocationError::simple(Error::DeleteFirst));
                }
                cspace::insert_child(
                    &mut self.hw,
                    args.slot,
                    dest,
                    Cap::IoPort {
                        first: first as u16,
                        last: last as u16,
                    },
                );
                Ok(0)
            }
            (Cap::IoPort { first, last }, _) => {
                let (size, write) = match label {
                    L::X86IoPortIn8 => (1, false),
                    L::X86IoPortIn16 => (2, false),
                    L::X86IoPortIn32 => (4, false),
                    L::X86IoPortOut8 => (1, true),
                    L::X86IoPortOut16 => (2, true),
                    L::X86IoPortOut32 => (4, true),
                    _ => return Err(InvocationError::simple(Error::IllegalOperation)),
                };
                if args.length < if write { 2 } else { 1 } {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let port = args.mr(0);
                if port < first as u64 || port + size as u64 - 1 > last as u64 {
                    return Err(InvocationError::range(first as u64, last as u64));
                }
                if write {
                    self.hw.port_write(port as u16, size, args.mr(1) as u32);
                    Ok(0)
                } else {
                    let value = self.hw.port_read(port as u16, size);
                    self.set_message_register(args.thread, args.buffer, 0, value as u64);
                    Ok(1)
                }
            }
            _ => Err(InvocationError::simple(Error::IllegalOperation)),
        }
    }

    /// Decodes and performs a FsGsBaseControl invocation: SetAccess(tcb, enable).
    pub fn invoke_fsgsbase_control(&mut self, label: L, args: &Args) -> Invoked {
        if label != L::FsGsBaseControlSetAccess {
            return Err(InvocationError::simple(Error::IllegalOperation));
        }
        if args.length < 1 {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        }
        let Some(Cap::Tcb { ptr }) = args.extra_cap(0) else {
            return Err(InvocationError::capability(1));
        };
        if !self.fsgsbase_supported {
            return Err(InvocationError::simple(Error::IllegalOperation));
        }
        self.tcb_mut(ptr).fsgsbase_allowed = args.mr(0) != 0;
        Ok(0)
    }
}
