//! Slots and kernel objects for the root task: a slot allocator over the boot info's
//! empty region of the root CNode, and an untyped allocator that finds an untyped with
//! room and retypes objects into free slots.

use core::fmt;

use keel_abi::object::{ObjectType, WORD_BITS};
use keel_sys::bootinfo::BootInfo;
use keel_sys::cap::{CNode, Cap, CapType, Frame, Untyped, init};

/// Depth that resolves a capability pointer in the root CNode (its guard covers the
/// bits above the radix), and in any CNode guarded the same way (a server's own CSpace,
/// `keel_servers::cspace`).
pub const ROOT_DEPTH: u8 = WORD_BITS as u8;

/// A runtime failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The kernel refused an invocation.
    Kernel(keel_sys::Error),
    /// No free slot is left.
    OutOfSlots,
    /// No untyped has room for the object.
    OutOfMemory,
    /// No thread stack is left.
    OutOfStacks,
    /// The type has no object to retype (e.g. `Cap<IrqControl>`).
    NotAnObject,
}

impl From<keel_sys::Error> for Error {
    fn from(e: keel_sys::Error) -> Self {
        Self::Kernel(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel(e) => write!(f, "{e}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// A runtime result.
pub type Result<T> = core::result::Result<T, Error>;

/// Free slots of the root CNode: a bump pointer over the empty region plus a short list
/// of slots given back.
#[derive(Clone, Debug)]
pub struct SlotAllocator {
    next: u64,
    end: u64,
    freed: [u64; 64],
    freed_count: usize,
}

impl SlotAllocator {
    /// An allocator over slots `start..end`.
    pub const fn new(start: u64, end: u64) -> Self {
        Self {
            next: start,
            end,
            freed: [0; 64],
            freed_count: 0,
        }
    }

    /// One free slot.
    pub fn alloc(&mut self) -> Result<u64> {
        if self.freed_count > 0 {
            self.freed_count -= 1;
            return Ok(self.freed[self.freed_count]);
        }
        self.alloc_range(1)
    }

    /// `count` consecutive free slots; returns the first.
    pub fn alloc_range(&mut self, count: u64) -> Result<u64> {
        if self.end - self.next < count {
            return Err(Error::OutOfSlots);
        }
        let first = self.next;
        self.next += count;
        Ok(first)
    }

    /// Gives an (empty) slot back.
    pub fn free(&mut self, slot: u64) {
        if slot + 1 == self.next {
            self.next -= 1;
        } else if self.freed_count < self.freed.len() {
            self.freed[self.freed_count] = slot;
            self.freed_count += 1;
        }
    }

    /// Slots never handed out yet.
    pub fn remaining(&self) -> u64 {
        self.end - self.next
    }
}

/// One untyped the allocator manages: its slot, size and how much of it is used, by
/// the kernel's rule (each object aligned to its size after the previous ones).
#[derive(Clone, Copy, Debug, Default)]
struct Region {
    slot: u64,
    size_bits: u32,
    used: u64,
}

/// The root task's RAM untypeds.
#[derive(Clone, Debug)]
pub struct UntypedAllocator {
    regions: [Region; keel_abi::bootinfo::MAX_BOOT_INFO_UNTYPED_CAPS],
    count: usize,
}

impl UntypedAllocator {
    /// The non-device untypeds of the boot info.
    pub fn new(info: &BootInfo) -> Self {
        let mut a = Self {
            regions: [Region::default(); keel_abi::bootinfo::MAX_BOOT_INFO_UNTYPED_CAPS],
            count: 0,
        };
        for u in info.untypeds().filter(|u| !u.is_device()) {
            a.regions[a.count] = Region {
                slot: u.slot,
                size_bits: u.size_bits(),
                used: 0,
            };
            a.count += 1;
        }
        a
    }

    /// An allocator over one untyped of 2^`size_bits` bytes in root CNode slot `slot`,
    /// nothing of it used yet (a server's memory budget).
    pub fn single(slot: u64, size_bits: u32) -> Self {
        let mut a = Self {
            regions: [Region::default(); keel_abi::bootinfo::MAX_BOOT_INFO_UNTYPED_CAPS],
            count: 1,
        };
        a.regions[0] = Region {
            slot,
            size_bits,
            used: 0,
        };
        a
    }

    /// Bytes used of all untypeds (by this allocator's count).
    pub fn used_bytes(&self) -> u64 {
        self.regions[..self.count].iter().map(|r| r.used).sum()
    }

    /// Bytes not yet used in all untypeds.
    pub fn free_bytes(&self) -> u64 {
        self.regions[..self.count]
            .iter()
            .map(|r| (1u64 << r.size_bits) - r.used)
            .sum()
    }

    /// Size in bits of the largest untyped.
    pub fn largest_bits(&self) -> u32 {
        self.regions[..self.count]
            .iter()
            .map(|r| r.size_bits)
            .max()
            .unwrap_or(0)
    }

    /// Retypes `count` objects of `kind` (`size_bits` for Untyped and CNode) into root
    /// CNode slots `dest..dest + count`, from the smallest untyped with room.
    pub fn retype(
        &mut self,
        kind: ObjectType,
        size_bits: u64,
        dest: u64,
        count: u64,
    ) -> Result<()> {
        let object_bits = match kind.fixed_size_bits() {
            Some(b) => b as u64,
            None if kind == ObjectType::CapTable => size_bits + keel_abi::object::SLOT_BITS as u64,
            None => size_bits,
        };
        let size = 1u64 << object_bits;
        loop {
            let mut best: Option<usize> = None;
            for (i, r) in self.regions[..self.count].iter().enumerate() {
                if r.size_bits as u64 >= 64 || (r.size_bits as u64) < object_bits {
                    continue;
                }
                let start = r.used.next_multiple_of(size);
                let total = 1u64 << r.size_bits;
                if start <= total && count * size <= total - start {
                    let better = best.is_none_or(|b| self.regions[b].size_bits > r.size_bits);
                    if better {
                        best = Some(i);
                    }
                }
            }
            let i = best.ok_or(Error::OutOfMemory)?;
            let r = self.regions[i];
            let untyped = Cap::<Untyped>::from_cptr(r.slot);
            match untyped.retype(kind, size_bits, init::CNODE, 0, 0, dest, count) {
                Ok(()) => {
                    self.regions[i].used = r.used.next_multiple_of(size) + count * size;
                    return Ok(());
                }
                Err(keel_sys::Error::NotEnoughMemory { .. }) => {
                    // Someone else used it: never try it again.
                    self.regions[i].used = 1 << r.size_bits;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Slots and untyped memory of the root task together.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// Free slots of the root CNode.
    pub slots: SlotAllocator,
    /// Untyped memory.
    pub untyped: UntypedAllocator,
    /// Next free address of the IPC-buffer region ([`crate::IPC_BUFFER_REGION`]).
    pub(crate) next_ipc_buffer: u64,
    /// Next free address of the scratch region ([`crate::SCRATCH_REGION`]).
    pub(crate) next_scratch: u64,
}

impl Allocator {
    /// An allocator over the boot info's empty slots and RAM untypeds.
    pub fn new(info: &BootInfo) -> Self {
        let empty = info.empty();
        Self {
            slots: SlotAllocator::new(empty.start, empty.end),
            untyped: UntypedAllocator::new(info),
            next_ipc_buffer: crate::IPC_BUFFER_REGION.start,
            next_scratch: crate::SCRATCH_REGION.start,
        }
    }

    /// An allocator over `slots` of the root CNode and the memory of `untyped` (init
    /// builds a server from its budget with one), with no IPC-buffer or scratch room.
    pub fn from_parts(slots: SlotAllocator, untyped: UntypedAllocator) -> Self {
        Self {
            slots,
            untyped,
            next_ipc_buffer: crate::IPC_BUFFER_REGION.end,
            next_scratch: crate::SCRATCH_REGION.end,
        }
    }

    /// One free slot of the root CNode.
    pub fn slot(&mut self) -> Result<u64> {
        self.slots.alloc()
    }

    /// Retypes `count` objects of `kind` into fresh consecutive slots; returns the
    /// first slot.
    pub fn retype_many(&mut self, kind: ObjectType, size_bits: u64, count: u64) -> Result<u64> {
        let first = if count == 1 {
            self.slots.alloc()?
        } else {
            self.slots.alloc_range(count)?
        };
        match self.untyped.retype(kind, size_bits, first, count) {
            Ok(()) => Ok(first),
            Err(e) => {
                for s in (first..first + count).rev() {
                    self.slots.free(s);
                }
                Err(e)
            }
        }
    }

    /// A new object of type `T` (a fixed-size type; frames are 4 KiB).
    pub fn create<T: CapType>(&mut self) -> Result<Cap<T>> {
        let kind = T::OBJECT_TYPE.ok_or(Error::NotAnObject)?;
        if kind.fixed_size_bits().is_none() {
            return Err(Error::NotAnObject);
        }
        Ok(Cap::from_cptr(self.retype_many(kind, 0, 1)?))
    }

    /// A new untyped of 2^`size_bits` bytes.
    pub fn untyped(&mut self, size_bits: u64) -> Result<Cap<Untyped>> {
        Ok(Cap::from_cptr(self.retype_many(
            ObjectType::Untyped,
            size_bits,
            1,
        )?))
    }

    /// A new CNode with 2^`radix` slots.
    pub fn cnode(&mut self, radix: u64) -> Result<Cap<CNode>> {
        Ok(Cap::from_cptr(self.retype_many(
            ObjectType::CapTable,
            radix,
            1,
        )?))
    }

    /// A new frame of `kind` (4 KiB, 2 MiB or 1 GiB).
    pub fn frame(&mut self, kind: ObjectType) -> Result<Cap<Frame>> {
        assert!(kind.is_frame());
        Ok(Cap::from_cptr(self.retype_many(kind, 0, 1)?))
    }

    /// Deletes the capability and gives its slot back.
    pub fn delete<T: CapType>(&mut self, cap: Cap<T>) -> Result<()> {
        init::CNODE.delete(cap.cptr(), ROOT_DEPTH)?;
        self.slots.free(cap.cptr());
        Ok(())
    }

    /// A page-aligned address range of `bytes` in the scratch region, never handed out
    /// before (for test mappings).
    pub fn scratch_range(&mut self, bytes: u64, align: u64) -> u64 {
        let start = self.next_scratch.next_multiple_of(align);
        self.next_scratch = start + bytes;
        assert!(self.next_scratch <= crate::SCRATCH_REGION.end);
        start
    }
}
