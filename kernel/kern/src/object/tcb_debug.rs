//! TCB hardware-debug invocations (seL4's CONFIG_HARDWARE_DEBUG_API names):
//! SetBreakpoint, GetBreakpoint, UnsetBreakpoint, ConfigureSingleStepping, and the
//! decoding of a user #DB into a DebugException fault.
//!
//! A breakpoint is validated so that it can only ever match the thread's own user
//! accesses: its whole range lies below the top of user space, it is aligned to its
//! size, and DR7 gets only a local enable plus the condition and length fields (never
//! GD, never a global enable). The trusted core loads DR0–DR3/DR7 only while the
//! thread runs. x86 has no read-only watchpoint, so BreakOnRead is refused for data
//! breakpoints; an instruction breakpoint has size 0 and access BreakOnRead (seL4's
//! x86 convention).

use keel_abi::error::Error;
use keel_abi::fault::{BreakpointAccess, BreakpointType, debug_exception};
use keel_abi::invocation::InvocationLabel as L;

use crate::invocation::{Args, InvocationError, Invoked};
use crate::kernel::{Hardware, Kernel};
use crate::object::tcb::{DebugState, Fault};

/// RFLAGS.TF.
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.RF (resume: the next instruction's breakpoint does not fire).
pub const RFLAGS_RF: u64 = 1 << 16;
/// DR6.BS: the trap was a single step.
pub const DR6_BS: u64 = 1 << 14;

/// First address above user space.
const USER_END: u64 = 0x0000_8000_0000_0000;

/// A breakpoint as the user describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breakpoint {
    /// Its address.
    pub address: u64,
    /// Instruction or data.
    pub kind: BreakpointType,
    /// Bytes watched (0 for an instruction breakpoint).
    pub size: u64,
    /// What a data breakpoint triggers on.
    pub access: BreakpointAccess,
}

/// Validates a breakpoint; returns its DR7 (R/W, LEN) field for slot `n`, or the
/// index of the bad argument (seL4 order: 1 vaddr, 2 type, 3 size, 4 rw).
pub fn encode(n: usize, bp: &Breakpoint) -> Result<u64, u64> {
    let (rw, len, size) = match bp.kind {
        BreakpointType::Instruction => {
            if bp.size != 0 && bp.size != 1 {
                return Err(3);
            }
            if bp.access != BreakpointAccess::Read {
                return Err(4);
            }
            (0b00, 0b00, 1)
        }
        BreakpointType::Data => {
            let len = match bp.size {
                1 => 0b00,
                2 => 0b01,
                4 => 0b11,
                8 => 0b10,
                _ => return Err(3),
            };
            let rw = match bp.access {
                BreakpointAccess::Write => 0b01,
                BreakpointAccess::ReadWrite => 0b11,
                BreakpointAccess::Read => return Err(4),
            };
            (rw, len, bp.size)
        }
        _ => return Err(2),
    };
    if !bp.address.is_multiple_of(size) || bp.address.checked_add(size).is_none_or(|e| e > USER_END)
    {
        return Err(1);
    }
    Ok((1 << (2 * n)) | (rw << (16 + 4 * n)) | (len << (18 + 4 * n)))
}

/// The breakpoint in slot `n` of `d`, if enabled.
pub fn decode(n: usize, d: &DebugState) -> Option<Breakpoint> {
    if d.dr7 & (1 << (2 * n)) == 0 {
        return None;
    }
    let rw = (d.dr7 >> (16 + 4 * n)) & 3;
    let len = (d.dr7 >> (18 + 4 * n)) & 3;
    Some(if rw == 0 {
        Breakpoint {
            address: d.address[n],
            kind: BreakpointType::Instruction,
            size: 0,
            access: BreakpointAccess::Read,
        }
    } else {
        Breakpoint {
            address: d.address[n],
            kind: BreakpointType::Data,
            size: [1, 2, 8, 4][len as usize],
            access: if rw == 1 {
                BreakpointAccess::Write
            } else {
                BreakpointAccess::ReadWrite
            },
        }
    })
}

fn slot_fields(n: usize) -> u64 {
    (3 << (2 * n)) | (0xf << (16 + 4 * n))
}

impl<H: Hardware> Kernel<H> {
    /// Decodes and performs a hardware-debug invocation on the TCB at `t`.
    pub fn invoke_tcb_debug(&mut self, t: u64, label: L, args: &Args) -> Invoked {
        let slots = debug_exception::HARDWARE_BREAKPOINTS;
        let need = match label {
            L::TcbSetBreakpoint => 5,
            L::TcbConfigureSingleStepping => 2,
            _ => 1,
        };
        if args.length < need {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        }
        let n = args.mr(0);
        if label != L::TcbConfigureSingleStepping && n >= slots {
            return Err(InvocationError::range(0, slots - 1));
        }
        let n = n as usize;
        match label {
            L::TcbSetBreakpoint => {
                let kind = match args.mr(2) {
                    0 => BreakpointType::Data,
                    1 => BreakpointType::Instruction,
                    _ => return Err(InvocationError::argument(2)),
                };
                let access = match args.mr(4) {
                    0 => BreakpointAccess::Read,
                    1 => BreakpointAccess::Write,
                    2 => BreakpointAccess::ReadWrite,
                    _ => return Err(InvocationError::argument(4)),
                };
                let bp = Breakpoint {
                    address: args.mr(1),
                    kind,
                    size: args.mr(3),
                    access,
                };
                let fields = encode(n, &bp).map_err(InvocationError::argument)?;
                let d = &mut self.tcb_mut(t).debug;
                d.address[n] = bp.address;
                d.dr7 = (d.dr7 & !slot_fields(n)) | fields;
                Ok(0)
            }
            L::TcbGetBreakpoint => {
                let d = self.tcb(t).debug;
                let words = match decode(n, &d) {
                    Some(bp) => [bp.address, bp.kind as u64, bp.size, bp.access as u64, 1],
                    None => [0; 5],
                };
                for (i, w) in words.iter().enumerate() {
                    self.set_message_register(args.thread, args.buffer, i, *w);
                }
                Ok(5)
            }
            L::TcbUnsetBreakpoint => {
                let d = &mut self.tcb_mut(t).debug;
                d.address[n] = 0;
                d.dr7 &= !slot_fields(n);
                Ok(0)
            }
            L::TcbConfigureSingleStepping => {
                // x86 single-steps with RFLAGS.TF: no breakpoint register is consumed.
                let count = args.mr(1);
                let tcb = self.tcb_mut(t);
                tcb.debug.single_step = count != 0;
                tcb.debug.skip = count.saturating_sub(1);
                if count != 0 {
                    tcb.context.rflags |= RFLAGS_TF;
                } else {
                    tcb.context.rflags &= !RFLAGS_TF;
                }
                self.set_message_register(args.thread, args.buffer, 0, 0);
                Ok(1)
            }
            _ => Err(InvocationError::simple(Error::IllegalOperation)),
        }
    }

    /// A #DB from user mode with `dr6`: the fault to send, or None if the thread just
    /// continues (a single step still being skipped).
    pub fn debug_exception(&mut self, t: u64, dr6: u64) -> Option<Fault> {
        let tcb = self.tcb_mut(t);
        if let Some(n) = (0..4).find(|&n| dr6 & (1 << n) != 0)
            && let Some(bp) = decode(n, &tcb.debug)
        {
            if bp.kind == BreakpointType::Instruction {
                // A fault: resume with RF so the breakpoint lets the instruction run.
                tcb.context.rflags |= RFLAGS_RF;
            }
            return Some(Fault::Debug {
                reason: bp.kind as u64,
                address: bp.address,
                breakpoint: n as u64,
            });
        }
        if dr6 & DR6_BS != 0 && tcb.debug.single_step && tcb.debug.skip > 0 {
            tcb.debug.skip -= 1;
            return None;
        }
        // A single step (configured, or TF set by the thread itself), or INT1/ICEBP.
        Some(Fault::Debug {
            reason: if dr6 & DR6_BS != 0 {
                BreakpointType::SingleStep as u64
            } else {
                BreakpointType::SoftwareBreakRequest as u64
            },
            address: 0,
            breakpoint: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(address: u64, size: u64, access: BreakpointAccess) -> Breakpoint {
        Breakpoint {
            address,
            kind: BreakpointType::Data,
            size,
            access,
        }
    }

    #[test]
    fn encodes_and_decodes() {
        let bp = data(0x1000, 8, BreakpointAccess::ReadWrite);
        let f = encode(2, &bp).unwrap();
        assert_eq!(f, (1 << 4) | (0b11 << 24) | (0b10 << 26));
        let d = DebugState {
            address: [0, 0, 0x1000, 0],
            dr7: f,
            ..Default::default()
        };
        assert_eq!(decode(2, &d), Some(bp));
        assert_eq!(decode(1, &d), None);
    }

    #[test]
    fn refuses_kernel_and_bad_breakpoints() {
        use BreakpointAccess::*;
        assert_eq!(encode(0, &data(0xffff_8000_0000_0000, 1, Write)), Err(1));
        assert_eq!(encode(0, &data(0x7fff_ffff_fffc, 8, Write)), Err(1));
        assert_eq!(encode(0, &data(0x1001, 2, Write)), Err(1));
        assert_eq!(encode(0, &data(0x1000, 3, Write)), Err(3));
        assert_eq!(encode(0, &data(0x1000, 4, Read)), Err(4));
        let ins = Breakpoint {
            address: 0x40_0000,
            kind: BreakpointType::Instruction,
            size: 0,
            access: Read,
        };
        assert_eq!(encode(3, &ins), Ok(1 << 6));
        assert_eq!(encode(3, &Breakpoint { size: 4, ..ins }), Err(3));
        // Only local enables and condition/length fields, never GD or global enables.
        for n in 0..4 {
            let f = encode(n, &data(0x2000, 4, ReadWrite)).unwrap();
            assert_eq!(f & !(0x55 | 0xffff_0000), 0);
        }
    }
}
