//! Address spaces as capabilities: PML4, PDPT, page directory and page table objects,
//! frames of 4 KiB, 2 MiB and 1 GiB, and ASID pools (x86-64, seL4 semantics).
//!
//! Paging structures are ordinary retyped memory that the object layer reads and writes
//! as words; the trusted core only loads CR3 and flushes TLBs ([`Hardware`]). An
//! address space is usable once its PML4 has an ASID (ASIDPool Assign); every mapping
//! records (ASID, virtual address) in its capability, so Unmap and deletion find and
//! clear exactly the entry they made, and only if it still maps this object.
//!
//! Keel extension: bit 8 of the mapping attributes (`KEEL_EXECUTE_NEVER`) maps a frame
//! no-execute. Rights: a frame is writable only if its capability and the requested
//! rights both allow writing.

use keel_abi::error::Error;
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::object::{ASID_POOL_INDEX_BITS, NUM_ASID_POOLS_BITS, USER_TOP};

use crate::invocation::{Args, InvocationError, Invoked};
use crate::kernel::{Hardware, Kernel};
use crate::memory::Memory;
use crate::object::cap::{Cap, FrameSize, Mapping, Rights, VmRights, raw};
use crate::object::cspace;

/// Number of ASID pools.
pub const ASID_POOLS: usize = 1 << NUM_ASID_POOLS_BITS;
/// ASIDs per pool.
pub const ASIDS_PER_POOL: u64 = 1 << ASID_POOL_INDEX_BITS;
/// The last address of user space, seL4 x86-64's kernel `USER_TOP` (2^47 - 1; the ABI's
/// `seL4_UserTop`, [`USER_TOP`], is the last page's address). A frame's end (its address
/// plus its size) and a table's region must not lie above it, as seL4 compares them.
const LAST_USER_ADDRESS: u64 = (1 << 47) - 1;
/// Mapping attribute: no-execute (Keel extension).
pub const KEEL_EXECUTE_NEVER: u64 = 1 << 8;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const USER: u64 = 4;
const WRITE_THROUGH: u64 = 8;
const CACHE_DISABLE: u64 = 16;
const HUGE: u64 = 1 << 7;
/// The PAT bit of a 4 KiB page's entry.
const PAT_SMALL: u64 = 1 << 7;
/// The PAT bit of a large or huge page's entry.
const PAT_LARGE: u64 = 1 << 12;
const NO_EXECUTE: u64 = 1 << 63;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

fn index(vaddr: u64, level: u32) -> u64 {
    (vaddr >> (12 + 9 * (level - 1))) & 0x1ff
}

fn entry_address(table: u64, vaddr: u64, level: u32) -> u64 {
    table + 8 * index(vaddr, level)
}

/// Copies the kernel half of the kernel's PML4 into a new PML4.
pub fn copy_kernel_mappings<H: Hardware>(hw: &mut H, pml4: u64) {
    let kernel = hw.kernel_pml4();
    for slot in 256..512 {
        let e = hw.read(kernel + 8 * slot);
        hw.write(pml4 + 8 * slot, e);
    }
}

/// The physical address `vaddr` maps to in the user half of `pml4`, if user-accessible.
pub fn translate_user<M: Memory>(m: &M, pml4: u64, vaddr: u64) -> Option<u64> {
    if vaddr >= USER_TOP + 0x1000 {
        return None;
    }
    let mut table = pml4;
    for level in (1..=4).rev() {
        let e = m.read(entry_address(table, vaddr, level));
        if e & PRESENT == 0 || e & USER == 0 {
            return None;
        }
        if level == 1 || (level <= 3 && e & HUGE != 0) {
            let size = 1u64 << (12 + 9 * (level - 1));
            return Some((e & ADDRESS & !(size - 1)) | (vaddr & (size - 1)));
        }
        table = e & ADDRESS;
    }
    None
}

/// The table at `level` - 1 below `table` for `vaddr`, if present (not a large page).
fn next_table<M: Memory>(m: &M, table: u64, vaddr: u64, level: u32) -> Option<u64> {
    let e = m.read(entry_address(table, vaddr, level));
    (e & PRESENT != 0 && e & HUGE == 0).then_some(e & ADDRESS)
}

/// Walks from `pml4` down to the table at `level` (4 = the PML4 itself) for `vaddr`.
fn table_at<M: Memory>(m: &M, pml4: u64, vaddr: u64, level: u32) -> Option<u64> {
    let mut table = pml4;
    let mut l = 4;
    while l > level {
        table = next_table(m, table, vaddr, l)?;
        l -= 1;
    }
    Some(table)
}

/// The memory-type bits of a frame's entry at `level` for seL4_X86_VMAttributes
/// `attributes`, whose three low bits are the entry's PWT (1), PCD (2) and PAT (4) bits
/// as seL4 defines them: with the PAT the trusted core programs (entries 0-3 as at reset,
/// entry 4 write-combining), WriteBack 0, WriteThrough 1, CacheDisabled 2 (UC-),
/// Uncacheable 3 and WriteCombining 4 get those types. The PAT bit is bit 7 of a 4 KiB
/// page's entry and bit 12 of a large or huge page's (bit 7 is PS there).
fn cache_bits(attributes: u64, level: u32) -> u64 {
    const _: () = assert!(WRITE_THROUGH == 1 << 3 && CACHE_DISABLE == 2 << 3);
    const _: () = assert!(PAT_SMALL == 4 << 5 && PAT_LARGE == 4 << 10);
    // Shifts, not tests: PWT and PCD are the attributes' bits 0 and 1 moved to 3 and 4.
    let pat_shift = if level == 1 { 5 } else { 10 };
    ((attributes & 3) << 3) | ((attributes & 4) << pat_shift)
}

/// The address in an entry that maps a frame at `level` (1: 4 KiB; 2, 3: large and
/// huge pages, whose entry's bit 12 is the PAT bit, not an address bit).
fn frame_address(entry: u64, level: u32) -> u64 {
    entry & ADDRESS & !((1u64 << (12 + 9 * (level - 1))) - 1)
}

impl<H: Hardware> Kernel<H> {
    /// The PML4 of ASID `asid`, if assigned.
    pub fn vspace_of_asid(&self, asid: u16) -> Option<u64> {
        let pool = self
            .asid_pools
            .get((asid as u64 >> ASID_POOL_INDEX_BITS) as usize)
            .copied()
            .unwrap_or(0);
        if pool == 0 {
            return None;
        }
        let entry = self
            .hw
            .read(pool + 8 * (asid as u64 & (ASIDS_PER_POOL - 1)));
        (entry != 0).then_some(entry)
    }

    /// Decodes and performs an invocation on a paging structure, frame or ASID cap.
    pub fn invoke_vspace(&mut self, cap: Cap, label: L, args: &Args) -> Invoked {
        match (cap, label) {
            (Cap::Frame { .. }, _) => self.invoke_frame(cap.encode(), label, args),
            (Cap::PageTable { .. }, L::X86PageTableMap)
            | (Cap::PageDirectory { .. }, L::X86PageDirectoryMap)
            | (Cap::Pdpt { .. }, L::X86PdptMap) => self.map_table(cap, args),
            (Cap::PageTable { .. }, L::X86PageTableUnmap)
            | (Cap::PageDirectory { .. }, L::X86PageDirectoryUnmap)
            | (Cap::Pdpt { .. }, L::X86PdptUnmap) => {
                if cspace::is_final(&self.hw, args.slot) {
                    self.unmap_object(cap);
                    self.clear_mapping(args.slot);
                    Ok(0)
                } else {
                    Err(InvocationError::simple(Error::RevokeFirst))
                }
            }
            (Cap::Pml4 { base, asid }, L::X86VSpaceSetLdt) => self.set_vspace_ldt(base, asid, args),
            (Cap::AsidControl, L::X86AsidControlMakePool) => self.make_asid_pool(args),
            (Cap::AsidPool { base, asid_base }, L::X86AsidPoolAssign) => {
                self.assign_asid(base, asid_base, args)
            }
            _ => Err(InvocationError::simple(Error::IllegalOperation)),
        }
    }

    /// Decodes and performs an invocation on a frame capability (`frame`: its slot's
    /// two words). Inline: the general path calls it with the words in registers.
    #[inline(always)]
    pub fn invoke_frame(&mut self, frame: [u64; 2], label: L, args: &Args) -> Invoked {
        match label {
            L::X86PageGetAddress => {
                let Some(Cap::Frame { base, .. }) = Cap::decode_frame(frame) else {
                    return Err(InvocationError::capability(0));
                };
                self.set_message_register(args.thread, args.buffer, 0, base);
                Ok(1)
            }
            L::X86PageMap => {
                if args.length < 3 {
                    return Err(InvocationError::simple(Error::TruncatedMessage));
                }
                let requested = Rights::from_word(args.mr(1));
                let vspace = args.extra_words(0);
                self.map_frame(frame, args.slot, args.mr(0), requested, args.mr(2), vspace)
            }
            L::X86PageUnmap => {
                self.unmap_frame(frame, args.slot);
                Ok(0)
            }
            _ => Err(InvocationError::simple(Error::IllegalOperation)),
        }
    }

    /// X86PageUnmap of the frame capability `frame` (its slot's words) in `slot`: cannot
    /// fail (an unmapped frame, or one whose mapping is gone, stays as it is).
    #[inline(always)]
    pub fn unmap_frame(&mut self, frame: [u64; 2], slot: u64) {
        self.unmap_object(Cap::decode(frame));
        self.clear_mapping(slot);
    }

    fn clear_mapping(&mut self, slot: u64) {
        cspace::set_mapping(&mut self.hw, slot, None);
    }

    /// The address space argument (extra capability 0, as its slot's words) must be a
    /// PML4 with an ASID (tested on the words: decoding the whole capability costs
    /// more): else InvalidCapability 1; none is TruncatedMessage.
    #[inline(always)]
    fn vspace_argument(vspace: Option<[u64; 2]>) -> Result<(u64, u16), InvocationError> {
        let Some(words) = vspace else {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        };
        raw::pml4_with_asid(words).ok_or(InvocationError::capability(1))
    }

    /// The PML4 capability's ASID must still be its own (seL4's findVSpaceForASID and
    /// the comparison after it): an ASID that names no address space (the PML4 was
    /// deleted, or its pool) is FailedLookup (not the source, InvalidRoot); one that
    /// names another PML4 is InvalidCapability 1.
    #[inline(always)]
    fn check_asid(&self, pml4: u64, asid: u16) -> Result<(), InvocationError> {
        if self.vspace_of_asid(asid) == Some(pml4) {
            return Ok(());
        }
        Err(self.stale_asid(asid))
    }

    /// The error for an ASID that is no longer its PML4's (out of line: the map paths
    /// keep only the comparison).
    #[cold]
    #[inline(never)]
    fn stale_asid(&self, asid: u16) -> InvocationError {
        match self.vspace_of_asid(asid) {
            None => InvocationError::failed_lookup(false, cspace::LookupFault::InvalidRoot),
            Some(_) => InvocationError::capability(1),
        }
    }

    /// X86PageMap of the frame capability `frame` (its slot's words; the slot is `slot`)
    /// at `vaddr` with the `requested` rights and `attributes`, in the address space
    /// `vspace` (extra capability 0's words): seL4's checks in seL4's order, then the
    /// mapping. The message's length is checked by the caller. Shared by the general
    /// path ([`Self::invoke_frame`]) and the register route of a Call
    /// (`Kernel::map_frame_call` in invocation.rs).
    #[inline(always)]
    pub fn map_frame(
        &mut self,
        frame: [u64; 2],
        slot: u64,
        vaddr: u64,
        requested: Rights,
        attributes: u64,
        vspace: Option<[u64; 2]>,
    ) -> Invoked {
        let Some(Cap::Frame {
            base,
            size,
            rights,
            mapping,
            ..
        }) = Cap::decode_frame(frame)
        else {
            return Err(InvocationError::capability(0));
        };
        let (pml4, asid) = Self::vspace_argument(vspace)?;
        let bytes = 1u64 << size.bits();
        if let Some(m) = mapping {
            // Mapped already: only a remap at the same place, in the same address
            // space, may follow (it may change rights).
            if m.asid != asid {
                return Err(InvocationError::capability(1));
            }
            if m.vaddr != vaddr {
                return Err(InvocationError::argument(0));
            }
        } else if vaddr
            .checked_add(bytes)
            .is_none_or(|end| end > LAST_USER_ADDRESS)
        {
            return Err(InvocationError::argument(0));
        }
        self.check_asid(pml4, asid)?;
        if !vaddr.is_multiple_of(bytes) {
            return Err(InvocationError::simple(Error::AlignmentError));
        }
        let level = match size {
            FrameSize::Small => 1,
            FrameSize::Large => 2,
            FrameSize::Huge => 3,
        };
        let Some(table) = table_at(&self.hw, pml4, vaddr, level) else {
            let missing = self.missing_level(pml4, vaddr, level);
            return Err(InvocationError::failed_lookup(
                false,
                cspace::LookupFault::MissingCapability { bits_left: missing },
            ));
        };
        let entry_slot = entry_address(table, vaddr, level);
        let old = self.hw.read(entry_slot);
        if old & PRESENT != 0 && mapping.is_none() {
            return Err(InvocationError::simple(Error::DeleteFirst));
        }
        if level > 1 && old & PRESENT != 0 && old & HUGE == 0 {
            return Err(InvocationError::simple(Error::DeleteFirst));
        }
        let writable = rights == VmRights::ReadWrite && requested.contains(Rights::WRITE);
        if !requested.contains(Rights::READ) && !writable {
            return Err(InvocationError::argument(1));
        }
        let mut entry = base | PRESENT | USER | cache_bits(attributes, level);
        if writable {
            entry |= WRITABLE;
        }
        if level > 1 {
            entry |= HUGE;
        }
        if attributes & KEEL_EXECUTE_NEVER != 0 {
            entry |= NO_EXECUTE;
        }
        // Performing.
        self.hw.write(entry_slot, entry);
        cspace::set_mapping(&mut self.hw, slot, Some(Mapping { asid, vaddr }));
        // A TLB never holds a not-present entry: only a remap (rights change) needs a
        // flush.
        if old & PRESENT != 0 {
            self.hw.flush_page(asid, pml4, vaddr);
        }
        Ok(0)
    }

    /// The seL4 "bits left" of the lookup that found no table: 9 bits per missing level.
    fn missing_level(&self, pml4: u64, vaddr: u64, level: u32) -> u32 {
        let mut table = pml4;
        let mut l = 4;
        while l > level {
            match next_table(&self.hw, table, vaddr, l) {
                Some(t) => table = t,
                None => return 12 + 9 * (l - 1),
            }
            l -= 1;
        }
        0
    }

    fn map_table(&mut self, cap: Cap, args: &Args) -> Invoked {
        let (base, mapping, level) = match cap {
            Cap::PageTable { base, mapping } => (base, mapping, 2),
            Cap::PageDirectory { base, mapping } => (base, mapping, 3),
            Cap::Pdpt { base, mapping } => (base, mapping, 4),
            _ => return Err(InvocationError::capability(0)),
        };
        let vspace = args.extra_words(0).filter(|_| args.length >= 2);
        if vspace.is_none() {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        }
        if mapping.is_some() {
            return Err(InvocationError::capability(0));
        }
        // The address is rounded down to the region the table covers (2 MiB, 1 GiB or
        // 512 GiB); a region above seL4's `USER_TOP` is the kernel half (2^47 and up).
        let span = 1u64 << (12 + 9 * (level - 1));
        let vaddr = args.mr(0) & !(span - 1);
        let (pml4, asid) = Self::vspace_argument(vspace)?;
        if vaddr > LAST_USER_ADDRESS {
            return Err(InvocationError::argument(0));
        }
        self.check_asid(pml4, asid)?;
        let Some(table) = table_at(&self.hw, pml4, vaddr, level) else {
            let missing = self.missing_level(pml4, vaddr, level);
            return Err(InvocationError::failed_lookup(
                false,
                cspace::LookupFault::MissingCapability { bits_left: missing },
            ));
        };
        let slot = entry_address(table, vaddr, level);
        if self.hw.read(slot) & PRESENT != 0 {
            return Err(InvocationError::simple(Error::DeleteFirst));
        }
        self.hw.write(slot, base | PRESENT | WRITABLE | USER);
        cspace::set_mapping(&mut self.hw, args.slot, Some(Mapping { asid, vaddr }));
        Ok(0)
    }

    /// Clears the entry a mapped frame or table occupies, if it still points at it.
    fn unmap_object(&mut self, cap: Cap) {
        let (base, mapping, level, is_table) = match cap {
            Cap::Frame {
                base,
                size,
                mapping,
                ..
            } => (
                base,
                mapping,
                match size {
                    FrameSize::Small => 1,
                    FrameSize::Large => 2,
                    FrameSize::Huge => 3,
                },
                false,
            ),
            Cap::PageTable { base, mapping } => (base, mapping, 2, true),
            Cap::PageDirectory { base, mapping } => (base, mapping, 3, true),
            Cap::Pdpt { base, mapping } => (base, mapping, 4, true),
            _ => return,
        };
        let Some(Mapping { asid, vaddr }) = mapping else {
            return;
        };
        if is_table {
            // An unmapped table keeps no mappings (seL4 clears it): otherwise a frame
            // mapped through it stays reachable if the table is mapped again, even
            // after the frame is deleted and its memory reused.
            self.unmap_table_entry(base, asid, vaddr, level);
            self.hw.zero(base, 4096);
            return;
        }
        let Some(pml4) = self.vspace_of_asid(asid) else {
            return;
        };
        let Some(table) = table_at(&self.hw, pml4, vaddr, level) else {
            return;
        };
        let slot = entry_address(table, vaddr, level);
        let e = self.hw.read(slot);
        let points_here =
            e & PRESENT != 0 && frame_address(e, level) == base && (e & HUGE != 0 || level == 1);
        // (A table returned above: this is a frame's entry.)
        if points_here {
            self.hw.write(slot, 0);
            self.hw.flush_page(asid, pml4, vaddr);
        }
    }

    /// Clears the entry that maps the table at `base` (level `level`) in address space
    /// `asid`, if it still does, and flushes the address space.
    fn unmap_table_entry(&mut self, base: u64, asid: u16, vaddr: u64, level: u32) {
        let Some(pml4) = self.vspace_of_asid(asid) else {
            return;
        };
        let Some(table) = table_at(&self.hw, pml4, vaddr, level) else {
            return;
        };
        let slot = entry_address(table, vaddr, level);
        let e = self.hw.read(slot);
        if e & PRESENT != 0 && e & HUGE == 0 && e & ADDRESS == base {
            self.hw.write(slot, 0);
        }
        // Whether or not it was still linked, nothing may stay cached from it.
        self.hw.flush_address_space(asid, pml4);
    }

    fn make_asid_pool(&mut self, args: &Args) -> Invoked {
        if args.length < 2 {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        }
        let (Some(untyped), Some(untyped_slot), Some(root)) =
            (args.extra_cap(0), args.extra_slot(0), args.extra_cap(1))
        else {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        };
        // seL4 looks for a free pool before it looks at the untyped.
        let Some(free) = self.asid_pools.iter().position(|p| *p == 0) else {
            return Err(InvocationError::simple(Error::DeleteFirst));
        };
        let Cap::Untyped {
            base,
            size_bits: 12,
            device: false,
            ..
        } = untyped
        else {
            return Err(InvocationError::capability(1));
        };
        if cspace::has_children(&self.hw, untyped_slot) {
            return Err(InvocationError::simple(Error::RevokeFirst));
        }
        let dest = self.target_slot(root, args.mr(0), args.mr(1), false)?;
        if !cspace::cap(&self.hw, dest).is_null() {
            return Err(InvocationError::simple(Error::DeleteFirst));
        }
        self.hw.zero(base, 4096);
        let asid_base = (free as u64 * ASIDS_PER_POOL) as u16;
        cspace::set_cap(
            &mut self.hw,
            untyped_slot,
            Cap::Untyped {
                base,
                size_bits: 12,
                free_index: 4096,
                device: false,
            },
        );
        cspace::insert_child(
            &mut self.hw,
            untyped_slot,
            dest,
            Cap::AsidPool { base, asid_base },
        );
        self.asid_pools[free] = base;
        Ok(0)
    }

    fn assign_asid(&mut self, pool: u64, asid_base: u16, args: &Args) -> Invoked {
        let (Some(Cap::Pml4 { base, asid: None }), Some(slot)) =
            (args.extra_cap(0), args.extra_slot(0))
        else {
            return Err(InvocationError::capability(1));
        };
        if self.asid_pools[(asid_base as u64 >> ASID_POOL_INDEX_BITS) as usize] != pool {
            return Err(InvocationError::capability(0));
        }
        // ASID 0 is never handed out (it names "no address space").
        let first = if asid_base == 0 { 1 } else { 0 };
        let Some(i) = (first..ASIDS_PER_POOL).find(|i| self.hw.read(pool + 8 * i) == 0) else {
            return Err(InvocationError::simple(Error::DeleteFirst));
        };
        self.hw.write(pool + 8 * i, base);
        cspace::set_cap(
            &mut self.hw,
            slot,
            Cap::Pml4 {
                base,
                asid: Some(asid_base + i as u16),
            },
        );
        Ok(0)
    }

    /// Assigns an ASID to a PML4 at boot (the root task's address space).
    pub fn boot_assign_asid(&mut self, pool: u64, pml4: u64, asid: u16) {
        self.hw
            .write(pool + 8 * (asid as u64 & (ASIDS_PER_POOL - 1)), pml4);
        self.asid_pools[(asid as u64 >> ASID_POOL_INDEX_BITS) as usize] = pool;
    }

    /// The last capability to a paging object or ASID pool is being deleted.
    pub fn finalise_vspace_object(&mut self, cap: Cap) {
        match cap {
            Cap::Frame { .. }
            | Cap::PageTable { .. }
            | Cap::PageDirectory { .. }
            | Cap::Pdpt { .. } => self.unmap_object(cap),
            Cap::Pml4 {
                base,
                asid: Some(asid),
            } if self.vspace_of_asid(asid) == Some(base) => {
                self.detach_ldts(|a| a.asid == asid);
                let pool = self.asid_pools[(asid as u64 >> ASID_POOL_INDEX_BITS) as usize];
                self.hw
                    .write(pool + 8 * (asid as u64 & (ASIDS_PER_POOL - 1)), 0);
                self.hw.address_space_deleted(asid, base);
            }
            Cap::AsidPool { base, asid_base } => {
                self.finalise_asid_pool(base, asid_base, false);
            }
            _ => {}
        }
    }

    /// The last capability to the ASID pool at `base` is being deleted: every address
    /// space assigned from it loses its ASID (its LDT is detached, its pool entry
    /// cleared, and every CPU stops using it: a TLB shootdown each), then the pool
    /// leaves the ASID table. Entries are cleared as they go, so the pool itself
    /// records the progress. With `preemptible`, a preemption point follows each
    /// address space; returns false if it stopped there, and deleting the capability
    /// again rescans the 512 entries (a bounded read-only pass) and goes on. A stop
    /// always follows a deleted address space, so every redo makes progress.
    pub fn finalise_asid_pool(&mut self, base: u64, asid_base: u16, preemptible: bool) -> bool {
        let index = (asid_base as u64 >> ASID_POOL_INDEX_BITS) as usize;
        if self.asid_pools[index] != base {
            return true;
        }
        let first = asid_base as u64;
        self.detach_ldts(|a| (first..first + ASIDS_PER_POOL).contains(&(a.asid as u64)));
        for i in 0..ASIDS_PER_POOL {
            let pml4 = self.hw.read(base + 8 * i);
            if pml4 == 0 {
                continue;
            }
            self.hw.write(base + 8 * i, 0);
            self.hw.address_space_deleted(asid_base + i as u16, pml4);
            if preemptible && i + 1 < ASIDS_PER_POOL && self.preemption_point() {
                return false;
            }
        }
        self.asid_pools[index] = 0;
        true
    }
}
