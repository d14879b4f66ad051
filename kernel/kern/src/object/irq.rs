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

/// IRQ numbers the kernel manages: seL4 x86 numbers an IRQ by the interrupt vector it
/// arrives on, offset by the first user vector; 0..=107 are available.
pub const MAX_IRQS: usize = 108;

/// Where an IRQ comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqRoute {
    /// An ISA/legacy IRQ (the generic IRQControl Get): routed through the I/O APIC using
    /// the firmware's interrupt source overrides.
    Legacy,
    /// I/O APIC `ioapic`, pin `pin`, with its trigger mode and polarity.
    IoApic {
        ioapic: u8,
        pin: u8,
        level: bool,
        active_low: bool,
    },
    /// A message-signalled interrupt (the device is programmed by its driver).
    Msi,
}

/// What the kernel does with an IRQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqState {
    /// No handler capability was issued.
    Inactive,
    /// A handler exists; signal this notification (0 = none) with this badge.
    Signal {
        notification: u64,
        badge: u64,
        route: IrqRoute,
    },
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
                // Get: MR0 irq, MR1 index, MR2 depth. GetIOAPIC: MR0 index, MR1 depth,
                // MR2 ioapic, MR3 pin, MR4 level, MR5 polarity, MR6 vector. GetMSI: MR0
                // index, MR1 depth, MR2..MR5 PCI bus/dev/func/handle, MR6 vector.
                // seL4's order: the message and root, the IRQ, whether it is free, the
                // destination; only then the route's own arguments.
                let need = if label == L::IrqIssueIrqHandler { 3 } else { 7 };
                let Some(root) = args.extra_cap(0).filter(|_| args.length >= need) else {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                };
                let (irq, index, depth) = match label {
                    L::IrqIssueIrqHandler => (args.mr(0), args.mr(1), args.mr(2)),
                    _ => (args.mr(6), args.mr(0), args.mr(1)),
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
                let route = match label {
                    L::IrqIssueIrqHandler => IrqRoute::Legacy,
                    L::X86IrqIssueIrqHandlerIoApic => self.decode_io_apic_route(args)?,
                    _ => {
                        // PCI bus, device and function must exist (the handle is the
                        // driver's business).
                        for (value, max) in [(args.mr(2), 255), (args.mr(3), 31), (args.mr(4), 7)] {
                            if value > max {
                                return Err(InvocationError::range(0, max));
                            }
                        }
                        IrqRoute::Msi
                    }
                };
                self.irqs[irq as usize] = IrqState::Signal {
                    notification: 0,
                    badge: 0,
                    route,
                };
                self.hw.irq_route(irq as u16, route, false);
                cspace::insert_child(
                    &mut self.hw,
                    args.slot,
                    dest,
                    Cap::IrqHandler { irq: irq as u16 },
                );
                Ok(0)
            }
            (Cap::IrqHandler { irq }, L::IrqAckIrq) => {
                if let IrqState::Signal { route, .. } = self.irqs[irq as usize] {
                    self.hw.irq_route(irq, route, true);
                }
                Ok(0)
            }
            (Cap::IrqHandler { irq }, L::IrqSetIrqHandler) => {
                // seL4 numbers this capability 0 (decodeIRQHandlerInvocation).
                let Some(cap) = args.extra_cap(0) else {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                };
                let Cap::Notification { ptr, badge, rights } = cap else {
                    return Err(InvocationError::capability(0));
                };
                if !rights.contains(Rights::WRITE) {
                    return Err(InvocationError::capability(0));
                }
                if let IrqState::Signal { route, .. } = self.irqs[irq as usize] {
                    self.irqs[irq as usize] = IrqState::Signal {
                        notification: ptr,
                        badge,
                        route,
                    };
                    self.hw.irq_route(irq, route, true);
                }
                Ok(0)
            }
            (Cap::IrqHandler { irq }, L::IrqClearIrqHandler) => {
                if let IrqState::Signal { route, .. } = self.irqs[irq as usize] {
                    self.irqs[irq as usize] = IrqState::Signal {
                        notification: 0,
                        badge: 0,
                        route,
                    };
                    self.hw.irq_route(irq, route, false);
                }
                Ok(0)
            }
            _ => Err(InvocationError::simple(Error::IllegalOperation)),
        }
    }

    /// The I/O APIC route of an IRQControl GetIOAPIC (MR2 I/O APIC, MR3 pin, MR4 level,
    /// MR5 polarity), checked in seL4's order: there must be an I/O APIC, the I/O APIC
    /// and pin must exist, and level and polarity must be 0 or 1.
    fn decode_io_apic_route(&self, args: &Args) -> Result<IrqRoute, InvocationError> {
        let (ioapic, pin, level, polarity) = (args.mr(2), args.mr(3), args.mr(4), args.mr(5));
        if self.io_apics == 0 {
            return Err(InvocationError::simple(Error::IllegalOperation));
        }
        if ioapic >= self.io_apics as u64 {
            return Err(InvocationError::range(0, self.io_apics as u64 - 1));
        }
        if pin >= 24 {
            return Err(InvocationError::range(0, 23));
        }
        if level > 1 || polarity > 1 {
            return Err(InvocationError::range(0, 1));
        }
        Ok(IrqRoute::IoApic {
            ioapic: ioapic as u8,
            pin: pin as u8,
            level: level == 1,
            active_low: polarity == 1,
        })
    }

    /// Records I/O ports `first ..= last` as issued (or free again).
    pub fn mark_io_ports(&mut self, first: u16, last: u16, issued: bool) {
        for p in first as usize..=last as usize {
            if issued {
                self.io_ports_issued[p / 64] |= 1 << (p % 64);
            } else {
                self.io_ports_issued[p / 64] &= !(1 << (p % 64));
            }
        }
    }

    /// The IRQ handler capability of `irq` is gone: stop delivering it.
    pub fn clear_irq(&mut self, irq: u16) {
        if let Some(state) = self.irqs.get_mut(irq as usize) {
            if let IrqState::Signal { route, .. } = *state {
                self.hw.irq_route(irq, route, false);
            }
            *state = IrqState::Inactive;
        }
    }

    /// A device interrupt arrived: mask it until the handler acknowledges it, and
    /// signal its notification.
    pub fn handle_irq(&mut self, irq: u16) {
        if let Some(IrqState::Signal {
            notification,
            badge,
            route,
        }) = self.irqs.get(irq as usize).copied()
        {
            self.hw.irq_route(irq, route, false);
            if notification != 0 {
                self.signal(notification, badge);
            }
        }
    }

    /// Decodes and performs an IOPortControl or IOPort invocation.
    pub fn invoke_io_port(&mut self, cap: Cap, label: L, args: &Args) -> Invoked {
        match (cap, label) {
            (Cap::IoPortControl, L::X86IoPortControlIssue) => {
                let Some(root) = args.extra_cap(0).filter(|_| args.length >= 4) else {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                };
                // seL4 takes each port number's low 16 bits: there is no range error.
                let (first, last) = (args.mr(0) & 0xffff, args.mr(1) & 0xffff);
                let (index, depth) = (args.mr(2), args.mr(3));
                if first > last {
                    return Err(InvocationError::argument(1));
                }
                // seL4 hands each port out once: an overlap with an issued range must
                // be revoked first.
                if (first..=last)
                    .any(|p| self.io_ports_issued[(p / 64) as usize] & (1 << (p % 64)) != 0)
                {
                    return Err(InvocationError::simple(Error::RevokeFirst));
                }
                let dest = self.target_slot(root, index, depth, false)?;
                if !cspace::cap(&self.hw, dest).is_null() {
                    return Err(InvocationError::simple(Error::DeleteFirst));
                }
                self.mark_io_ports(first as u16, last as u16, true);
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
                // seL4 takes the port number's low 16 bits; the last port the access
                // touches may be past 0xffff, and then outside every range.
                let port = args.mr(0) & 0xffff;
                if port < first as u64 || port + size as u64 - 1 > last as u64 {
                    return Err(InvocationError::simple(Error::IllegalOperation));
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
        let allow = match args.mr(0) {
            0 => false,
            1 => true,
            _ => return Err(InvocationError::argument(0)),
        };
        if !self.fsgsbase_supported {
            return Err(InvocationError::simple(Error::IllegalOperation));
        }
        self.tcb_mut(ptr).fsgsbase_allowed = allow;
        Ok(0)
    }
}
