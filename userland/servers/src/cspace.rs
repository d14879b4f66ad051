//! A server's own CSpace: one CNode, made from untyped memory by whoever starts the
//! server (init, or a test), holding exactly the capabilities the server was given at
//! the well-known slots of [`slot`], plus a window of free slots it may fill.
//!
//! Invariants: the CNode's capability carries a guard of `64 - radix` zero bits, so a
//! 64-bit capability pointer below `2^radix` resolves in one level at depth 64, exactly
//! as in the root CNode (the IPC fastpath needs that). Slot [`slot::CNODE`] holds a copy
//! of that guarded capability, so the server can manage its own slots (receive slots,
//! SaveCaller, Delete) and nothing else. [`ServerCSpace`] keeps the CNode's original
//! (unguarded) capability in the creator's root CNode; every other capability to the
//! CNode derives from it, so [`ServerCSpace::destroy`] removes them all.

use keel_abi::object::CNodeCapData;
use keel_rt::{Allocator, ROOT_DEPTH, Result, ThreadCSpace};
use keel_sys::CapRights;
use keel_sys::cap::{CNode, Cap, CapType, init};

/// The well-known slots of a server's CSpace. A server learns the ones it was given
/// from its [`crate::StartInfo`]; slots 1 and 2 are the same as the root task's, so
/// [`crate::StartInfo::cnode`] is right both in a CSpace of its own and in the root
/// CNode (where the tests run some servers).
pub mod slot {
    /// The server's own TCB (it suspends itself through it when its entry returns).
    pub const TCB: u64 = 1;
    /// The server's own CNode (guarded: resolves at depth 64).
    pub const CNODE: u64 = 2;
    /// Its badged fault endpoint. The kernel looks a thread's fault endpoint up in the
    /// thread's own CSpace when it faults, so it must be here; a server never uses it.
    pub const FAULT: u64 = 3;
    /// The endpoint it serves.
    pub const SERVE: u64 = 4;
    /// Its badged capability to the name service.
    pub const NAMES: u64 = 5;
    /// Its I/O port capability.
    pub const IO_PORT: u64 = 6;
    /// A badged endpoint to its creator, when the manifest gives one (init gives the
    /// shell one, to ask about the other servers' CSpaces).
    pub const INIT: u64 = 7;
    /// What is left of its memory budget, as an untyped capability (a server init
    /// loads from its module; see `crate::loader`).
    pub const UNTYPED: u64 = 8;
    /// First slot of its window of free slots (the first ones hold its IRQ handlers).
    pub const FIRST_FREE: u64 = 9;
}

/// A server's CSpace while its creator builds it.
#[derive(Clone, Copy, Debug)]
pub struct ServerCSpace {
    /// The guarded CNode capability, in the creator's root CNode.
    pub cnode: Cap<CNode>,
    /// The CNode's original capability, in the creator's root CNode.
    original: Cap<CNode>,
    /// log2 of the number of slots.
    pub radix: u8,
}

impl ServerCSpace {
    /// The radix of a CSpace with the well-known slots and `free_slots` more.
    pub fn radix_for(free_slots: u64) -> u8 {
        (slot::FIRST_FREE + free_slots)
            .next_power_of_two()
            .trailing_zeros()
            .max(1) as u8
    }

    /// A new CNode with room for the well-known slots and `free_slots` more, its
    /// guarded capability, and that capability copied into its slot [`slot::CNODE`].
    pub fn new(alloc: &mut Allocator, free_slots: u64) -> Result<Self> {
        let radix = Self::radix_for(free_slots);
        let original = alloc.cnode(radix as u64)?;
        let guarded = alloc.slot()?;
        init::CNODE.mint(
            guarded,
            ROOT_DEPTH,
            init::CNODE,
            original.cptr(),
            ROOT_DEPTH,
            CapRights::ALL,
            CNodeCapData::new(0, ROOT_DEPTH as u64 - radix as u64).0,
        )?;
        let space = Self {
            cnode: Cap::from_cptr(guarded),
            original,
            radix,
        };
        space.copy(slot::CNODE, space.cnode, CapRights::ALL)?;
        Ok(space)
    }

    /// Number of slots.
    pub fn size(&self) -> u64 {
        1 << self.radix
    }

    /// Copies `source` (in the creator's root CNode) into `slot` of this CSpace.
    pub fn copy<T: CapType>(&self, slot: u64, source: Cap<T>, rights: CapRights) -> Result<()> {
        self.cnode.copy(
            slot,
            ROOT_DEPTH,
            init::CNODE,
            source.cptr(),
            ROOT_DEPTH,
            rights,
        )?;
        Ok(())
    }

    /// Mints `source` with `badge` into `slot` of this CSpace.
    pub fn mint<T: CapType>(
        &self,
        slot: u64,
        source: Cap<T>,
        rights: CapRights,
        badge: u64,
    ) -> Result<()> {
        self.cnode.mint(
            slot,
            ROOT_DEPTH,
            init::CNODE,
            source.cptr(),
            ROOT_DEPTH,
            rights,
            badge,
        )?;
        Ok(())
    }

    /// The CSpace as a thread's: its TCB capability goes to [`slot::TCB`].
    pub fn thread_cspace(&self) -> ThreadCSpace {
        ThreadCSpace {
            root: self.cnode,
            tcb_slot: slot::TCB,
        }
    }

    /// Deletes every capability to the CNode and the CNode with all it holds (the
    /// server's thread must be gone first).
    pub fn destroy(self, alloc: &mut Allocator) -> Result<()> {
        init::CNODE.revoke(self.original.cptr(), ROOT_DEPTH)?;
        alloc.slots.free(self.cnode.cptr());
        alloc.delete(self.original)
    }
}
