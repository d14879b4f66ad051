//! Untyped memory and Retype: where every kernel object comes from.
//!
//! An Untyped capability covers 2^n bytes; its free index says how many bytes from the
//! start are used. Retype carves objects after the free index (each aligned to its
//! size), initialises them, and places a capability to each in consecutive empty slots
//! of a destination CNode, as children of the Untyped. When the Untyped has no children
//! left (everything was revoked), Retype first resets it: it zeroes the used bytes from
//! the free index down to 0 in chunks, with preemption points, and the memory is
//! reused. Device untypeds (MMIO) can only become frames or smaller untypeds, never
//! kernel objects.
//!
//! Invariant (as seL4's): the memory of a RAM untyped above its free index is zero, so
//! new objects need no zeroing. The root task's untypeds start with the free index at
//! the end (nothing is known about boot memory), so their first Retype zeroes them.

use keel_abi::error::Error;
use keel_abi::invocation::InvocationLabel;
use keel_abi::object::{self as abi_object, ObjectType};

use crate::invocation::{Args, InvocationError, Invoked};
use crate::kernel::{Hardware, Kernel};
use crate::object::cap::{Cap, FrameSize, Rights, VmRights};
use crate::object::cspace;
use crate::object::endpoint::{Endpoint, Notification};
use crate::object::tcb::{self, Tcb};

/// log2 of the bytes an untyped reset zeroes between two preemption points (seL4
/// CONFIG_RESET_CHUNK_BITS).
pub const RESET_CHUNK_BITS: u32 = 12;

/// Most objects one Retype may create (seL4 CONFIG_RETYPE_FAN_OUT_LIMIT).
pub const RETYPE_FAN_OUT_LIMIT: u64 = 256;

/// log2 of the size of an object of `kind` with user size `size_bits`, or the error.
pub fn object_size_bits(kind: ObjectType, size_bits: u64) -> Result<u32, InvocationError> {
    // seL4 decodeUntypedInvocation: first the size range (for every type), then the
    // minimum sizes of CNodes and untypeds.
    let max = abi_object::MAX_UNTYPED_BITS as u64;
    let bits = match kind.fixed_size_bits() {
        Some(fixed) => fixed as u64,
        None if kind == ObjectType::CapTable => size_bits.saturating_add(cspace::SLOT_BITS as u64),
        None => size_bits,
    };
    if size_bits >= 64 || bits > max {
        return Err(InvocationError::range(0, max));
    }
    match kind {
        ObjectType::CapTable if size_bits == 0 => Err(InvocationError::argument(1)),
        ObjectType::Untyped if size_bits < abi_object::MIN_UNTYPED_BITS as u64 => {
            Err(InvocationError::argument(1))
        }
        _ => Ok(bits as u32),
    }
}

impl<H: Hardware> Kernel<H> {
    /// Decodes and performs an Untyped invocation (Retype).
    pub fn invoke_untyped(&mut self, cap: Cap, label: InvocationLabel, args: &Args) -> Invoked {
        let Cap::Untyped {
            base,
            size_bits,
            free_index,
            device,
        } = cap
        else {
            return Err(InvocationError::capability(0));
        };
        if label != InvocationLabel::UntypedRetype {
            return Err(InvocationError::simple(Error::IllegalOperation));
        }
        if args.length < 6 {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        }
        let root = args
            .extra_cap(0)
            .ok_or(InvocationError::simple(Error::TruncatedMessage))?;
        let (type_word, user_size, node_index, node_depth, node_offset, count) = (
            args.mr(0),
            args.mr(1),
            args.mr(2),
            args.mr(3),
            args.mr(4),
            args.mr(5),
        );
        let kind = ObjectType::from_u64(type_word).ok_or(InvocationError::argument(0))?;
        let object_bits = object_size_bits(kind, user_size)?;
        // The destination CNode: the root itself (depth 0) or a CNode found in it.
        let node = if node_depth == 0 {
            root
        } else {
            let slot = self.target_slot(root, node_index, node_depth, false)?;
            cspace::cap(&self.hw, slot)
        };
        let Cap::CNode {
            ptr: node_ptr,
            radix,
            ..
        } = node
        else {
            return Err(InvocationError::failed_lookup(
                false,
                cspace::LookupFault::MissingCapability {
                    bits_left: node_depth as u32,
                },
            ));
        };
        let slots = 1u64 << radix;
        if node_offset >= slots {
            return Err(InvocationError::range(0, slots - 1));
        }
        if !(1..=RETYPE_FAN_OUT_LIMIT).contains(&count) {
            return Err(InvocationError::range(1, RETYPE_FAN_OUT_LIMIT));
        }
        if count > slots - node_offset {
            return Err(InvocationError::range(1, slots - node_offset));
        }
        for i in 0..count {
            if !cspace::cap(&self.hw, node_ptr + (node_offset + i) * cspace::SLOT_BYTES).is_null() {
                return Err(InvocationError::simple(Error::DeleteFirst));
            }
        }
        // Reuse from the start if nothing derived from this untyped is left.
        let free = if cspace::has_children(&self.hw, args.slot) {
            free_index
        } else {
            0
        };
        let total = 1u64 << size_bits;
        // As seL4: the objects fit if the free bytes hold `count` of them (then they
        // also fit once the start is aligned up, the untyped being size-aligned).
        let free_bytes = total.saturating_sub(free);
        if object_bits >= 64 || (free_bytes >> object_bits) < count {
            return Err(InvocationError::memory(free_bytes));
        }
        if device && !(kind == ObjectType::Untyped || kind.is_frame()) {
            return Err(InvocationError::argument(1));
        }
        let object_size = 1u64 << object_bits;
        let start = free.next_multiple_of(object_size);
        let needed = count * object_size;
        // Decoding done: nothing below fails.
        let untyped_slot = args.slot;
        if free == 0 && free_index != 0 && !self.reset_untyped(untyped_slot) {
            // Stopped at a preemption point: the thread redoes the Retype, which
            // continues the reset from the lowered free index (`handle_invocation`).
            return Ok(0);
        }
        let new_free = start + needed;
        cspace::set_cap(
            &mut self.hw,
            untyped_slot,
            Cap::Untyped {
                base,
                size_bits,
                free_index: new_free,
                device,
            },
        );
        // Insert the children in reverse so they end up in slot order after the parent.
        for i in (0..count).rev() {
            let object = base + start + i * object_size;
            // The memory is above the free index: already zero.
            let new_cap = self.init_object(kind, object, object_bits, user_size, device, false);
            let dest = node_ptr + (node_offset + i) * cspace::SLOT_BYTES;
            cspace::insert_child(&mut self.hw, untyped_slot, dest, new_cap);
        }
        Ok(0)
    }

    /// Resets the untyped in `slot`, which has no children left: zeroes its used bytes
    /// from the free index down, one [`RESET_CHUNK_BITS`] chunk at a time with a
    /// preemption point after each, lowering the free index as it goes (so memory above
    /// the free index stays zero, and a redone Retype continues from there). Returns
    /// false if it stopped for a pending interrupt. Device memory is not zeroed.
    fn reset_untyped(&mut self, slot: u64) -> bool {
        let Cap::Untyped {
            base,
            size_bits,
            free_index,
            device,
        } = cspace::cap(&self.hw, slot)
        else {
            return true;
        };
        let set = |k: &mut Self, free_index| {
            cspace::set_cap(
                &mut k.hw,
                slot,
                Cap::Untyped {
                    base,
                    size_bits,
                    free_index,
                    device,
                },
            )
        };
        if device {
            set(self, 0);
            return true;
        }
        let mut free = free_index.min(1 << size_bits);
        while free > 0 {
            let chunk_start = (free - 1) & !((1 << RESET_CHUNK_BITS) - 1);
            self.hw.zero(base + chunk_start, free - chunk_start);
            free = chunk_start;
            set(self, free);
            if free > 0 && self.preemption_point() {
                return false;
            }
        }
        true
    }

    /// Zeroes and initialises a new object; returns the capability to it.
    pub fn create_object(
        &mut self,
        kind: ObjectType,
        object: u64,
        object_bits: u32,
        user_size: u64,
        device: bool,
    ) -> Cap {
        self.init_object(kind, object, object_bits, user_size, device, true)
    }

    /// Initialises a new object, zeroing it first if `zero` (Retype's memory is
    /// already zero); returns the capability to it.
    fn init_object(
        &mut self,
        kind: ObjectType,
        object: u64,
        object_bits: u32,
        user_size: u64,
        device: bool,
        zero: bool,
    ) -> Cap {
        let size = 1u64 << object_bits;
        let zero_bytes = |k: &mut Self, bytes: u64| {
            if zero {
                k.hw.zero(object, bytes);
            }
        };
        match kind {
            ObjectType::Untyped => {
                // Memory above the free index must be zero: a new untyped is either
                // all zero (free index 0) or, if it was not zeroed here, all used
                // (its first Retype resets it).
                let free_index = if zero && !device { size } else { 0 };
                Cap::Untyped {
                    base: object,
                    size_bits: object_bits as u8,
                    free_index,
                    device,
                }
            }
            ObjectType::Tcb => {
                zero_bytes(self, tcb::TCB_RECORD_OFFSET);
                // The FPU area starts in the architectural initial state: with the
                // XSAVE header zeroed (XSTATE_BV = 0) every register loads as zero,
                // and FXRSTOR/XRSTOR take FCW and MXCSR from the legacy region.
                let fpu = tcb::fpu_area(object);
                self.hw.write(fpu, tcb::FPU_INITIAL_FCW);
                self.hw.write(fpu + 24, tcb::FPU_INITIAL_MXCSR);
                self.hw.create::<Tcb>(tcb::record(object));
                let cpu = self.hw.current_cpu() as u16;
                {
                    let r = self.tcb_mut(object);
                    r.affinity = cpu;
                    r.time_slice = tcb::TIME_SLICE_TICKS;
                    r.context.cs = 0x23;
                    r.context.ss = 0x1b;
                    r.context.rflags = tcb::USER_RFLAGS_SET;
                    r.live = tcb::TCB_LIVE;
                }
                let master = tcb::slot(object, tcb::SLOT_REPLY);
                cspace::insert_root(
                    &mut self.hw,
                    0,
                    master,
                    Cap::Reply {
                        tcb: object,
                        master: true,
                        can_grant: true,
                    },
                    true,
                );
                Cap::Tcb { ptr: object }
            }
            ObjectType::Endpoint => {
                self.hw.create::<Endpoint>(object);
                Cap::Endpoint {
                    ptr: object,
                    badge: 0,
                    rights: Rights::ALL,
                }
            }
            ObjectType::Notification => {
                self.hw.create::<Notification>(object);
                Cap::Notification {
                    ptr: object,
                    badge: 0,
                    rights: Rights::ALL,
                }
            }
            ObjectType::CapTable => {
                zero_bytes(self, size);
                Cap::CNode {
                    ptr: object,
                    radix: user_size as u8,
                    guard_size: 0,
                    guard: 0,
                }
            }
            ObjectType::X86Page4K | ObjectType::X86LargePage | ObjectType::X64HugePage => {
                if !device {
                    zero_bytes(self, size);
                }
                let size = match kind {
                    ObjectType::X86Page4K => FrameSize::Small,
                    ObjectType::X86LargePage => FrameSize::Large,
                    _ => FrameSize::Huge,
                };
                Cap::Frame {
                    base: object,
                    size,
                    rights: VmRights::ReadWrite,
                    device,
                    mapping: None,
                }
            }
            ObjectType::X86PageTable => {
                zero_bytes(self, size);
                Cap::PageTable {
                    base: object,
                    mapping: None,
                }
            }
            ObjectType::X86PageDirectory => {
                zero_bytes(self, size);
                Cap::PageDirectory {
                    base: object,
                    mapping: None,
                }
            }
            ObjectType::X86Pdpt => {
                zero_bytes(self, size);
                Cap::Pdpt {
                    base: object,
                    mapping: None,
                }
            }
            ObjectType::X64Pml4 => {
                zero_bytes(self, size);
                crate::object::vspace::copy_kernel_mappings(&mut self.hw, object);
                Cap::Pml4 {
                    base: object,
                    asid: None,
                }
            }
            ObjectType::KeelX86Ldt => {
                zero_bytes(self, size);
                Cap::Ldt { base: object }
            }
        }
    }
}
