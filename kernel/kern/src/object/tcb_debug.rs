//! TCB hardware-debug invocations (seL4's CONFIG_HARDWARE_DEBUG_API names):
//! SetBreakpoint, GetBreakpoint, UnsetBreakpoint, ConfigureSingleStepping, and the
//! decoding of a user #DB into a DebugException fault.
//!
//! A breakpoint is validated so that it can only ever match the thread's own user
//! accesses: its whole range lies below the top of user space, it is aligned to its
//! size, and DR7 gets only a local enable plus the condition and length fields (never
//! GD, never a global enable). The trusted core loads DR0–DR3/DR7 only while the
//! thread runs. x86 has no read-only watchpoint, so a data breakpoint on reads watches
//! reads and writes (as seL4 x86 programs it); an instruction breakpoint has size 0 and
//! access BreakOnRead (seL4's x86 convention). SetBreakpoint's checks and their error
//! codes are seL4's, in seL4's order ([`check`]).

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

/// The lowest address a breakpoint may not have: seL4 x86-64's `USER_TOP`, the last
/// address below 2^47 (so an aligned data breakpoint of up to 8 bytes ends below 2^47).
const BREAKPOINT_ADDRESS_LIMIT: u64 = 0x0000_7fff_ffff_ffff;

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

/// Checks SetBreakpoint's arguments (MR1 address, MR2 type, MR3 size, MR4 access) in
/// seL4's order (`decodeSetBreakpoint`): an address at or above seL4's `USER_TOP`
/// InvalidArgument 1; a type other than data or instruction InvalidArgument 2; an
/// instruction breakpoint of a size other than 0 InvalidArgument 3, or whose access is
/// not "read" InvalidArgument 4; a data breakpoint of size 0 InvalidArgument 3; an
/// unknown access InvalidArgument 3 (seL4's number); a size other than 0, 1, 2, 4 or 8
/// InvalidArgument 3; an address not aligned to the size AlignmentError. The slot is
/// checked after these, by the caller.
pub fn check(
    address: u64,
    kind: u64,
    size: u64,
    access: u64,
) -> Result<Breakpoint, InvocationError> {
    if address >= BREAKPOINT_ADDRESS_LIMIT {
        return Err(InvocationError::argument(1));
    }
    let kind = match kind {
        0 => BreakpointType::Data,
        1 => BreakpointType::Instruction,
        _ => return Err(InvocationError::argument(2)),
    };
    if kind == BreakpointType::Instruction {
        if size != 0 {
            return Err(InvocationError::argument(3));
        }
        if access != BreakpointAccess::Read as u64 {
            return Err(InvocationError::argument(4));
        }
    } else if size == 0 {
        return Err(InvocationError::argument(3));
    }
    let access = match access {
        0 => BreakpointAccess::Read,
        1 => BreakpointAccess::Write,
        2 => BreakpointAccess::ReadWrite,
        _ => return Err(InvocationError::argument(3)),
    };
    if !matches!(size, 0 | 1 | 2 | 4 | 8) {
        return Err(InvocationError::argument(3));
    }
    if size > 0 && address & (size - 1) != 0 {
        return Err(InvocationError::simple(Error::AlignmentError));
    }
    Ok(Breakpoint {
        address,
        kind,
        size,
        access,
    })
}

/// The DR7 fields (local enable, R/W, LEN) for a breakpoint [`check`] accepted, in slot
/// `n`. x86 has no read-only watchpoint: a data breakpoint on reads watches reads and
/// writes, as seL4 x86 programs it (GetBreakpoint then reports read-write).
pub fn encode(n: usize, bp: &Breakpoint) -> u64 {
    let (rw, len) = match bp.kind {
        BreakpointType::Data => (
            if bp.access == BreakpointAccess::Write {
                0b01
            } else {
                0b11
            },
            match bp.size {
                1 => 0b00,
                2 => 0b01,
                8 => 0b10,
                _ => 0b11,
            },
        ),
        _ => (0b00, 0b00),
    };
    (1 << (2 * n)) | (rw << (16 + 4 * n)) | (len << (18 + 4 * n))
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
        // seL4 reads the slot number as a 16-bit value.
        let n = args.mr(0) & 0xffff;
        let bad_slot = || InvocationError::range(0, slots - 1);
        let n = match label {
            // ConfigureSingleStepping uses no slot on x86; SetBreakpoint checks its
            // slot after the breakpoint.
            L::TcbConfigureSingleStepping | L::TcbSetBreakpoint => n as usize,
            _ if n >= slots => return Err(bad_slot()),
            _ => n as usize,
        };
        match label {
            L::TcbSetBreakpoint => {
                let bp = check(args.mr(1), args.mr(2), args.mr(3), args.mr(4))?;
                if n as u64 >= slots {
                    return Err(bad_slot());
                }
                let fields = encode(n, &bp);
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
        let f = encode(2, &bp);
        assert_eq!(f, (1 << 4) | (0b11 << 24) | (0b10 << 26));
        let d = DebugState {
            address: [0, 0, 0x1000, 0],
            dr7: f,
            ..Default::default()
        };
        assert_eq!(decode(2, &d), Some(bp));
        assert_eq!(decode(1, &d), None);
        // A data breakpoint on reads is a read-write watchpoint (x86 has no other).
        let d = DebugState {
            address: [0x1000, 0, 0, 0],
            dr7: encode(0, &data(0x1000, 4, BreakpointAccess::Read)),
            ..Default::default()
        };
        assert_eq!(
            decode(0, &d),
            Some(data(0x1000, 4, BreakpointAccess::ReadWrite))
        );
    }

    /// seL4's checks, codes and order (decodeSetBreakpoint).
    #[test]
    fn refuses_kernel_and_bad_breakpoints() {
        use BreakpointAccess::*;
        let code = |r: Result<Breakpoint, InvocationError>| r.map_err(|e| (e.error, e.words[0]));
        let arg = |i| Err((Error::InvalidArgument, i));
        let (data, ins) = (0, 1);
        // The address first: at or above seL4's USER_TOP (2^47 - 1).
        assert_eq!(code(check(0xffff_8000_0000_0000, 7, 3, 9)), arg(1));
        assert_eq!(code(check(0x7fff_ffff_ffff, data, 1, 1)), arg(1));
        assert_eq!(code(check(0x1000, 2, 1, 1)), arg(2));
        assert_eq!(code(check(0x1000, 3, 1, 1)), arg(2));
        // Instruction: size 0, access "read".
        assert_eq!(code(check(0x1000, ins, 1, 0)), arg(3));
        assert_eq!(code(check(0x1000, ins, 0, 1)), arg(4));
        assert_eq!(code(check(0x1000, ins, 0, 9)), arg(4));
        // Data: a size, a known access (numbered 3 by seL4), a known size.
        assert_eq!(code(check(0x1000, data, 0, 1)), arg(3));
        assert_eq!(code(check(0x1000, data, 4, 3)), arg(3));
        assert_eq!(code(check(0x1000, data, 3, 1)), arg(3));
        assert_eq!(code(check(0x1000, data, 16, 1)), arg(3));
        // Misaligned: AlignmentError, after the size.
        assert_eq!(
            code(check(0x1001, data, 2, 1)),
            Err((Error::AlignmentError, 0))
        );
        assert_eq!(
            code(check(0x7fff_ffff_fffc, data, 8, 1)),
            Err((Error::AlignmentError, 0))
        );
        // Accepted: a data breakpoint on reads; the highest aligned 8-byte watchpoint
        // ends below 2^47; an instruction breakpoint anywhere below USER_TOP.
        assert_eq!(check(0x1000, data, 4, 0), Ok(self::data(0x1000, 4, Read)));
        assert_eq!(
            check(0x7fff_ffff_fff8, data, 8, 2),
            Ok(self::data(0x7fff_ffff_fff8, 8, ReadWrite))
        );
        let bp = check(0x7fff_ffff_fffe, ins, 0, 0).unwrap();
        assert_eq!(encode(3, &bp), 1 << 6);
        // Only local enables and condition/length fields, never GD or global enables.
        for n in 0..4 {
            for access in [Read, Write, ReadWrite] {
                let f = encode(n, &self::data(0x2000, 4, access));
                assert_eq!(f & !(0x55 | 0xffff_0000), 0);
            }
        }
    }
}
