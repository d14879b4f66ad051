//! Mappings in the root task's address space: the regions the runtime uses, and
//! mapping a frame with whatever PDPT, page directory and page table it needs created.

use core::ops::Range;

use keel_abi::message::CapRights;
use keel_sys::cap::{Cap, Frame, PageDirectory, PageTable, Pdpt, Pml4};
use keel_sys::{Error as SysError, VmAttributes};

use crate::alloc::{Allocator, Result};

/// Where the runtime maps the IPC buffers of the threads it creates (inside
/// `keel_sys::probe::WINDOW`, far above the program image).
pub const IPC_BUFFER_REGION: Range<u64> = 0x20_0000_0000..0x20_4000_0000;
/// Where tests map frames of their own.
pub const SCRATCH_REGION: Range<u64> = 0x40_0000_0000..0x60_0000_0000;

impl Allocator {
    /// Makes sure the paging structures above `vaddr` exist for a mapping of
    /// `frame_level` (1: 4 KiB page, 2: 2 MiB, 3: 1 GiB), creating PDPT, page
    /// directory and page table as needed.
    pub fn ensure_tables(&mut self, vspace: Cap<Pml4>, vaddr: u64, frame_level: u32) -> Result<()> {
        if frame_level <= 3 {
            self.ensure::<Pdpt>(vspace, vaddr, |c, v, a| c.map(vspace, v, a))?;
        }
        if frame_level <= 2 {
            self.ensure::<PageDirectory>(vspace, vaddr, |c, v, a| c.map(vspace, v, a))?;
        }
        if frame_level <= 1 {
            self.ensure::<PageTable>(vspace, vaddr, |c, v, a| c.map(vspace, v, a))?;
        }
        Ok(())
    }

    fn ensure<T: keel_sys::CapType>(
        &mut self,
        _vspace: Cap<Pml4>,
        vaddr: u64,
        map: impl Fn(Cap<T>, u64, VmAttributes) -> keel_sys::error::Result<()>,
    ) -> Result<()> {
        let table = self.create::<T>()?;
        match map(table, vaddr, VmAttributes::DEFAULT) {
            Ok(()) => Ok(()),
            Err(SysError::DeleteFirst) => {
                // Already there: this one is not needed.
                self.delete(table)?;
                Ok(())
            }
            Err(e) => {
                let _ = self.delete(table);
                Err(e.into())
            }
        }
    }

    /// Maps `frame` (of `frame_level`, 1 = 4 KiB) at `vaddr` of `vspace`, creating
    /// missing paging structures.
    pub fn map_frame(
        &mut self,
        vspace: Cap<Pml4>,
        frame: Cap<Frame>,
        vaddr: u64,
        rights: CapRights,
        attr: VmAttributes,
        frame_level: u32,
    ) -> Result<()> {
        match frame.map(vspace, vaddr, rights, attr) {
            Err(SysError::FailedLookup { .. }) => {
                self.ensure_tables(vspace, vaddr, frame_level)?;
                Ok(frame.map(vspace, vaddr, rights, attr)?)
            }
            other => Ok(other?),
        }
    }
}

impl Allocator {
    /// A new address space (PML4 with an ASID from the root task's pool) that maps the
    /// root task's ELF image at the same addresses, sharing its frames: threads created
    /// in it with [`Allocator::create_thread_in`] run the same code on the same data.
    pub fn clone_image_vspace(&mut self, info: &keel_sys::bootinfo::BootInfo) -> Result<Cap<Pml4>> {
        let vspace = self.create::<Pml4>()?;
        keel_sys::cap::init::ASID_POOL.assign(vspace)?;
        let frames = info.user_image_frames();
        for (i, page) in keel_sys::image::pages().enumerate() {
            let source = frames.start + i as u64;
            if source >= frames.end {
                break;
            }
            let copy = self.slot()?;
            keel_sys::cap::init::CNODE.copy(
                copy,
                crate::alloc::ROOT_DEPTH,
                keel_sys::cap::init::CNODE,
                source,
                crate::alloc::ROOT_DEPTH,
                CapRights::ALL,
            )?;
            self.map_frame(
                vspace,
                Cap::from_cptr(copy),
                page,
                CapRights::READ_WRITE,
                VmAttributes::DEFAULT,
                1,
            )?;
        }
        Ok(vspace)
    }
}
