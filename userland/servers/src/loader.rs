//! init's program loader: builds a server from its ELF image (a boot module) and a
//! memory budget — an untyped capability of the budget's size that the loader owns for
//! the server's lifetime. Every object of the server comes from that untyped: its
//! PML4 and paging structures, a frame per page of its segments (text and read-only
//! data mapped read-only, everything but text not executable), its stack (with
//! unmapped guard pages, `crate::program::STACK_BASE`), its IPC buffer, its
//! CNode ([`ServerCSpace`]) and its TCB. The largest power-of-two block of the budget
//! left after them goes to the server as an untyped capability in
//! [`slot::UNTYPED`], for objects of its own. The capabilities to these objects live in
//! a window of the creator's root CNode given for the budget; revoking the budget
//! untyped deletes all of them and gives its memory back whole (a restart).
//!
//! Segment bytes are copied through `window`, one page of the creator's address space
//! inside `keel_sys::probe::WINDOW` whose page table exists: each new frame is mapped
//! there, filled, unmapped and then mapped into the server. Nothing of the creator's
//! image is shared with the server.

use core::ops::Range;

use keel_abi::fault::{USER_CONTEXT_WORDS, UserContext};
use keel_abi::object::ObjectType;
use keel_rt::elf::{ElfError, Executable};
use keel_rt::{Allocator, SlotAllocator, UntypedAllocator};
use keel_sys::cap::{Cap, Frame, Pml4, Tcb, Untyped, init};
use keel_sys::{CapRights, VmAttributes, probe};

use crate::cspace::{ServerCSpace, slot};
use crate::program::{IPC_BUFFER, STACK_BASE, STACK_PAGES, STACK_TOP};

/// Why a server could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// Its image is not a loadable executable.
    Image(ElfError),
    /// A segment overlaps the IPC buffer's page or the stack, or is not in user space.
    Layout,
    /// The budget (or the slot window) ran out, or the kernel refused an invocation.
    Runtime(keel_rt::Error),
}

impl From<keel_rt::Error> for LoadError {
    fn from(e: keel_rt::Error) -> Self {
        Self::Runtime(e)
    }
}

impl From<keel_sys::Error> for LoadError {
    fn from(e: keel_sys::Error) -> Self {
        Self::Runtime(e.into())
    }
}

/// A budget: an untyped capability in the creator's root CNode and the window of root
/// CNode slots for the capabilities to the objects made from it.
#[derive(Clone, Debug)]
pub struct Budget {
    /// The untyped.
    pub untyped: Cap<Untyped>,
    /// log2 of its size.
    pub bits: u32,
    /// Root CNode slots for the server's objects (empty when a build starts).
    pub slots: Range<u64>,
}

/// How the server's thread starts.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    /// Scheduling priority.
    pub priority: u8,
    /// Its CPU.
    pub cpu: u64,
    /// Free slots of its CSpace after the well-known ones.
    pub free_slots: u64,
    /// RDI: the packed start information its entry receives.
    pub argument: u64,
    /// RSI (0, or the address of a boot-info copy init maps for it).
    pub second: u64,
}

/// A server built by [`load`], not started yet.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Its TCB (in the creator's root CNode).
    pub tcb: Cap<Tcb>,
    /// Its CSpace.
    pub space: ServerCSpace,
    /// Its address space.
    pub vspace: Cap<Pml4>,
    /// Bytes of the budget its objects take.
    pub used: u64,
    /// log2 of the size of the untyped it was given in [`slot::UNTYPED`] (0: none).
    pub spare_bits: u32,
    /// What is left of the budget's slots and memory, for more objects the creator
    /// makes for it (none so far).
    pub alloc: Allocator,
}

/// Builds a server from `image` with the memory of `budget` (see the module doc). Its
/// TCB is configured (fault endpoint [`slot::FAULT`] in its CSpace, which the creator
/// fills) with registers for [`crate::program`], and suspended.
pub fn load(image: &[u8], budget: &Budget, window: u64, start: Start) -> Result<Loaded, LoadError> {
    let exe = Executable::parse(image).map_err(LoadError::Image)?;
    let mut alloc = Allocator::from_parts(
        SlotAllocator::new(budget.slots.start, budget.slots.end),
        UntypedAllocator::single(budget.untyped.cptr(), budget.bits),
    );
    // First, into the window's first slot ([`unload`] deletes it first).
    let vspace = alloc.create::<Pml4>()?;
    init::ASID_POOL.assign(vspace)?;
    // The pages of the segments in ascending order (lld puts each segment on pages of
    // its own; a page two segments share gets both's bytes and rights).
    let segments = exe.segments();
    let mut done_up_to = 0u64;
    for (i, s) in segments.iter().enumerate() {
        let end = s.vaddr + s.mem_size;
        if end > keel_abi::object::USER_TOP || (s.vaddr < IPC_BUFFER + 0x1000 && end > IPC_BUFFER) {
            return Err(LoadError::Layout);
        }
        let mut page = (s.vaddr & !0xfff).max(done_up_to);
        while page < end {
            let frame = alloc.frame(ObjectType::X86Page4K)?;
            let (mut writable, mut executable, mut mapped) = (false, false, false);
            for t in &segments[i..] {
                if t.vaddr >= page + 0x1000 || t.vaddr + t.mem_size <= page {
                    continue;
                }
                writable |= t.writable;
                executable |= t.executable;
                let from = page.max(t.vaddr);
                let to = (page + 0x1000).min(t.vaddr + t.file_size);
                if from < to {
                    // A page with bytes from the file goes through the window; a page
                    // of bss only stays as retyped: zero.
                    if !mapped {
                        frame.map(
                            init::VSPACE,
                            window,
                            CapRights::READ_WRITE,
                            VmAttributes::DEFAULT,
                        )?;
                        mapped = true;
                    }
                    let offset = (t.file_offset + (from - t.vaddr)) as usize;
                    let bytes = &image[offset..offset + (to - from) as usize];
                    copy_to_window(window + (from - page), bytes);
                }
            }
            if mapped {
                frame.unmap()?;
            }
            let rights = if writable {
                CapRights::READ_WRITE
            } else {
                CapRights::READ
            };
            let attributes = if executable {
                VmAttributes::DEFAULT
            } else {
                VmAttributes::DEFAULT.with(VmAttributes::EXECUTE_NEVER)
            };
            alloc.map_frame(vspace, frame, page, rights, attributes, 1)?;
            page += 0x1000;
            done_up_to = page;
        }
    }
    // The stack: its lowest page (the thread block) and its top pages; the pages
    // between and the page below stay unmapped (guards).
    let stack_pages =
        core::iter::once(STACK_BASE).chain((1..=STACK_PAGES).map(|i| STACK_TOP - i * 0x1000));
    for page in stack_pages {
        let frame: Cap<Frame> = alloc.frame(ObjectType::X86Page4K)?;
        alloc.map_frame(
            vspace,
            frame,
            page,
            CapRights::READ_WRITE,
            VmAttributes::DEFAULT.with(VmAttributes::EXECUTE_NEVER),
            1,
        )?;
    }
    let ipc_frame: Cap<Frame> = alloc.frame(ObjectType::X86Page4K)?;
    alloc.map_frame(
        vspace,
        ipc_frame,
        IPC_BUFFER,
        CapRights::READ_WRITE,
        VmAttributes::DEFAULT.with(VmAttributes::EXECUTE_NEVER),
        1,
    )?;
    let space = ServerCSpace::new(&mut alloc, start.free_slots)?;
    let tcb = alloc.create::<Tcb>()?;
    space.copy(slot::TCB, tcb, CapRights::ALL)?;
    tcb.configure(
        slot::FAULT,
        space.cnode,
        0,
        vspace,
        0,
        IPC_BUFFER,
        ipc_frame,
    )?;
    tcb.set_priority(init::TCB, start.priority as u64)?;
    tcb.set_affinity(start.cpu)?;
    let context = UserContext {
        rip: exe.entry,
        rdx: STACK_TOP,
        rflags: 0x202,
        rdi: start.argument,
        rsi: start.second,
        ..UserContext::default()
    };
    tcb.write_registers(false, 0, USER_CONTEXT_WORDS, &context)?;
    // What is left: the largest block that still fits, as an untyped of its own.
    let used = alloc.untyped.used_bytes();
    let total = 1u64 << budget.bits;
    let spare_bits = (12..budget.bits)
        .rev()
        .find(|&b| used.next_multiple_of(1 << b) + (1 << b) <= total)
        .unwrap_or(0);
    if spare_bits != 0 {
        let spare = alloc.untyped(spare_bits as u64)?;
        space.copy(slot::UNTYPED, spare, CapRights::ALL)?;
    }
    Ok(Loaded {
        tcb,
        space,
        vspace,
        used,
        spare_bits,
        alloc,
    })
}

/// Deletes every object made from `budget` (the server's thread, address space, CSpace
/// and whatever it made from its spare untyped): the budget is whole again.
pub fn unload(budget: &Budget) -> keel_rt::Result<()> {
    // The address space first ([`load`] makes its PML4 first, into the window's first
    // slot): with its ASID gone, deleting the frames and tables mapped in it changes
    // no page table and needs no TLB shootdown each (every shootdown interrupts every
    // other CPU).
    init::CNODE.delete(budget.slots.start, keel_rt::ROOT_DEPTH)?;
    init::CNODE.revoke(budget.untyped.cptr(), keel_rt::ROOT_DEPTH)?;
    Ok(())
}

/// Writes `bytes` at `address` (inside the probe window), word by word.
fn copy_to_window(address: u64, bytes: &[u8]) {
    let end = address + bytes.len() as u64;
    let mut word_address = address & !7;
    while word_address < end {
        let mut word = if word_address >= address && word_address + 8 <= end {
            [0u8; 8]
        } else {
            probe::read_u64(word_address).to_le_bytes()
        };
        for (k, byte) in word.iter_mut().enumerate() {
            let at = word_address + k as u64;
            if (address..end).contains(&at) {
                *byte = bytes[(at - address) as usize];
            }
        }
        probe::write_u64(word_address, u64::from_le_bytes(word));
        word_address += 8;
    }
}
