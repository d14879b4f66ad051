//! Building the root task at boot, seL4-style.
//!
//! The root task gets: a root CNode of 2^12 slots (guard filling the remaining 52 bits)
//! with the initial capabilities at seL4's slot numbers (plus Keel's FsGsBaseControl),
//! an address space (PML4 with ASID 1 from the initial ASID pool) holding its ELF image,
//! an IPC buffer, the BootInfo frame, one page of extra boot-info records (read-only,
//! its capability in the `extra_bi_pages` region; the glue adds records with
//! [`RootTask::add_extra_record`]) and a stack, a TCB at priority 255, capabilities to
//! every frame and paging structure of its image, and Untyped capabilities to all the
//! memory left. The BootInfo frame (address in RDI at entry) describes the slot regions
//! and the untyped list.
//!
//! Memory for these objects comes from the boot allocator (the frame allocator of the
//! trusted core), which hands over whatever is left as Untyped afterwards; from then on
//! the kernel allocates nothing.

use keel_abi::bootinfo::{self, BootInfo, SlotRegion};
use keel_abi::object::MAX_UNTYPED_BITS;

use crate::elf;
use crate::kernel::{Hardware, Kernel};
use crate::object::cap::{Cap, FrameSize, Mapping, Rights, VmRights};
use crate::object::cspace;
use crate::object::tcb::{self, Tcb, ThreadState};

/// log2 of the root CNode's slots.
pub const ROOT_RADIX: u8 = bootinfo::ROOT_CNODE_SIZE_BITS as u8;
/// The root task's ASID.
pub const ROOT_ASID: u16 = 1;
/// Pages of the root task's stack.
pub const STACK_PAGES: u64 = 16;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const USER: u64 = 4;
const NO_EXECUTE: u64 = 1 << 63;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// Why the root task could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// The root task image is not a usable ELF executable.
    BadImage(elf::ElfError),
    /// The root CNode is too small for the capabilities the root task needs.
    OutOfSlots,
}

/// The root task under construction.
pub struct RootTask {
    /// Its TCB.
    pub tcb: u64,
    cnode: u64,
    pml4: u64,
    bootinfo_frame: u64,
    extra_frame: u64,
    extra_len: u64,
    extra_pages: SlotRegion,
    next_slot: u64,
    image_frames: SlotRegion,
    image_paging_start: u64,
    untyped_start: u64,
    untyped_count: usize,
    nx: bool,
    /// User addresses where the extra boot modules are mapped (0: not mapped), in the
    /// order of `create_root_task`'s `modules`.
    pub module_vaddrs: [u64; MAX_MODULES],
}

/// Most extra boot modules the root task is given.
pub const MAX_MODULES: usize = 16;

impl RootTask {
    fn slot(&self, index: u64) -> u64 {
        self.cnode + index * cspace::SLOT_BYTES
    }
}

/// Builds the root task from `image`. `allocate(bits)` returns zeroed, naturally aligned
/// physical memory of 2^bits bytes (bits ≥ 12). `nx`: the CPU supports no-execute.
/// `modules` are the physical ranges `[start, end)` of the other boot modules: each is
/// mapped read-only and not executable from [`bootinfo::MODULE_REGION_START`] on (its
/// frames stay reserved: they are never untyped), at [`RootTask::module_vaddrs`].
pub fn create_root_task<H: Hardware>(
    k: &mut Kernel<H>,
    image: &[u8],
    modules: &[(u64, u64)],
    allocate: &mut dyn FnMut(u32) -> u64,
    nx: bool,
) -> Result<RootTask, BootError> {
    let plan = elf::plan(image).map_err(BootError::BadImage)?;
    let cnode = allocate(ROOT_RADIX as u32 + cspace::SLOT_BITS);
    let pml4 = allocate(12);
    let pool = allocate(12);
    let tcb_object = allocate(12);
    crate::object::vspace::copy_kernel_mappings(&mut k.hw, pml4);
    k.boot_assign_asid(pool, pml4, ROOT_ASID);

    let mut root = RootTask {
        tcb: tcb_object,
        cnode,
        pml4,
        bootinfo_frame: 0,
        extra_frame: 0,
        extra_len: 0,
        extra_pages: SlotRegion::default(),
        next_slot: bootinfo::cap::KEEL_NUM_INITIAL_CAPS,
        image_frames: SlotRegion::default(),
        image_paging_start: 0,
        untyped_start: 0,
        untyped_count: 0,
        nx,
        module_vaddrs: [0; MAX_MODULES],
    };
    let cnode_cap = Cap::CNode {
        ptr: cnode,
        radix: ROOT_RADIX,
        guard_size: 64 - ROOT_RADIX,
        guard: 0,
    };
    let put = |k: &mut Kernel<H>, root: &RootTask, index: u64, cap: Cap| {
        cspace::insert_root(&mut k.hw, 0, root.slot(index), cap, true);
    };
    put(k, &root, bootinfo::cap::INIT_THREAD_CNODE, cnode_cap);
    put(
        k,
        &root,
        bootinfo::cap::INIT_THREAD_VSPACE,
        Cap::Pml4 {
            base: pml4,
            asid: Some(ROOT_ASID),
        },
    );
    put(
        k,
        &root,
        bootinfo::cap::INIT_THREAD_ASID_POOL,
        Cap::AsidPool {
            base: pool,
            asid_base: 0,
        },
    );
    put(k, &root, bootinfo::cap::IRQ_CONTROL, Cap::IrqControl);
    put(k, &root, bootinfo::cap::ASID_CONTROL, Cap::AsidControl);
    put(k, &root, bootinfo::cap::IO_PORT_CONTROL, Cap::IoPortControl);
    put(k, &root, bootinfo::cap::DOMAIN, Cap::Domain);
    put(
        k,
        &root,
        bootinfo::cap::KEEL_FS_GS_BASE_CONTROL,
        Cap::FsGsBaseControl,
    );

    // The image, page by page; paging structures are created as needed. Frame caps
    // first (their region), then the paging caps collected on the way.
    let mut paging: [(u64, u64, u8); 64] = [(0, 0, 0); 64]; // (object, vaddr, level)
    let mut paging_count = 0;
    root.image_frames.start = root.next_slot;
    let mut top = 0;
    for segment in plan.segments() {
        let first = segment.vaddr & !0xfff;
        let end = segment.vaddr + segment.mem_size;
        top = top.max(end);
        let mut page = first;
        while page < end {
            let existing = crate::object::vspace::translate_user(&k.hw, pml4, page);
            let frame = match existing {
                Some(phys) => phys & !0xfff,
                None => allocate(12),
            };
            let (file_start, file_end) = (segment.vaddr, segment.vaddr + segment.file_size);
            let (copy_start, copy_end) = (page.max(file_start), (page + 4096).min(file_end));
            let mut offset = copy_start;
            while offset < copy_end {
                let src = (segment.file_offset + offset - file_start) as usize;
                let word_addr = frame + ((offset - page) & !7);
                let mut word = k.hw.read(word_addr).to_le_bytes();
                let start_byte = ((offset - page) & 7) as usize;
                let n = (8 - start_byte).min((copy_end - offset) as usize);
                word[start_byte..start_byte + n].copy_from_slice(&image[src..src + n]);
                k.hw.write(word_addr, u64::from_le_bytes(word));
                offset += n as u64;
            }
            if existing.is_none() {
                root.map(
                    k,
                    page,
                    frame,
                    segment.writable,
                    segment.executable,
                    allocate,
                    &mut paging,
                    &mut paging_count,
                )?;
            } else if segment.writable || segment.executable {
                root.upgrade(k, page, segment.writable, segment.executable);
            }
            page += 4096;
        }
    }
    // IPC buffer, BootInfo frame, a guard page, then the stack.
    let ipc_vaddr = (top + 0xfff) & !0xfff;
    let ipc_frame = allocate(12);
    root.map(
        k,
        ipc_vaddr,
        ipc_frame,
        true,
        false,
        allocate,
        &mut paging,
        &mut paging_count,
    )?;
    let bootinfo_vaddr = ipc_vaddr + 0x1000;
    root.bootinfo_frame = allocate(12);
    let bootinfo_frame = root.bootinfo_frame;
    root.map_quiet(
        k,
        bootinfo_vaddr,
        bootinfo_frame,
        false,
        allocate,
        &mut paging,
        &mut paging_count,
    )?;
    // One page of extra boot-info records, read-only, right after the BootInfo frame.
    let extra_vaddr = bootinfo_vaddr + 0x1000;
    root.extra_frame = allocate(12);
    let extra_frame = root.extra_frame;
    root.map_quiet(
        k,
        extra_vaddr,
        extra_frame,
        false,
        allocate,
        &mut paging,
        &mut paging_count,
    )?;
    let stack_bottom = extra_vaddr + 0x2000;
    for i in 0..STACK_PAGES {
        let frame = allocate(12);
        root.map(
            k,
            stack_bottom + i * 4096,
            frame,
            true,
            false,
            allocate,
            &mut paging,
            &mut paging_count,
        )?;
    }
    root.image_frames.end = root.next_slot;
    // The other boot modules, read-only, page by page (their frames are the module's
    // own physical pages; no capability to them).
    let mut module_vaddr = bootinfo::MODULE_REGION_START;
    for (i, &(start, end)) in modules.iter().take(MAX_MODULES).enumerate() {
        let first = start & !0xfff;
        let pages = (end.max(start) - first).div_ceil(0x1000);
        if module_vaddr + pages * 0x1000 > bootinfo::MODULE_REGION_END {
            break;
        }
        for p in 0..pages {
            root.map_quiet(
                k,
                module_vaddr + p * 0x1000,
                first + p * 0x1000,
                false,
                allocate,
                &mut paging,
                &mut paging_count,
            )?;
        }
        root.module_vaddrs[i] = module_vaddr + (start - first);
        // The next one after a page left unmapped.
        module_vaddr += (pages + 1) * 0x1000;
    }
    root.image_paging_start = root.next_slot;
    for &(object, vaddr, level) in &paging[..paging_count] {
        let mapping = Some(Mapping {
            asid: ROOT_ASID,
            vaddr,
        });
        let cap = match level {
            1 => Cap::PageTable {
                base: object,
                mapping,
            },
            2 => Cap::PageDirectory {
                base: object,
                mapping,
            },
            _ => Cap::Pdpt {
                base: object,
                mapping,
            },
        };
        root.push(k, cap)?;
    }
    root.extra_pages.start = root.next_slot;
    root.push(k, frame_cap(extra_frame, extra_vaddr))?;
    root.extra_pages.end = root.next_slot;
    put(
        k,
        &root,
        bootinfo::cap::BOOT_INFO_FRAME,
        frame_cap(bootinfo_frame, bootinfo_vaddr),
    );
    put(
        k,
        &root,
        bootinfo::cap::INIT_THREAD_IPC_BUFFER,
        frame_cap(ipc_frame, ipc_vaddr),
    );

    // The thread.
    let cap = k.create_object(
        keel_abi::object::ObjectType::Tcb,
        tcb_object,
        crate::object::TCB_BITS,
        0,
        false,
    );
    put(k, &root, bootinfo::cap::INIT_THREAD_TCB, cap);
    for (index, source) in [
        (tcb::SLOT_CSPACE, bootinfo::cap::INIT_THREAD_CNODE),
        (tcb::SLOT_VSPACE, bootinfo::cap::INIT_THREAD_VSPACE),
        (tcb::SLOT_IPC_BUFFER, bootinfo::cap::INIT_THREAD_IPC_BUFFER),
    ] {
        let src = root.slot(source);
        let c = cspace::cap(&k.hw, src);
        let c = crate::object::cnode::derive(k, src, c).unwrap_or(c);
        cspace::insert_child(&mut k.hw, src, tcb::slot(tcb_object, index), c);
    }
    {
        let r: &mut Tcb = k.tcb_mut(tcb_object);
        r.priority = 255;
        r.mcp = 255;
        r.affinity = 0;
        r.ipc_buffer = ipc_vaddr;
        r.context.rip = plan.entry;
        r.context.rsp = stack_bottom + STACK_PAGES * 4096;
        r.context.rdi = bootinfo_vaddr;
        r.name[..4].copy_from_slice(b"root");
    }
    k.hw.write(
        bootinfo_frame + core::mem::offset_of!(BootInfo, ipc_buffer) as u64,
        ipc_vaddr,
    );
    root.untyped_start = root.next_slot;
    Ok(root)
}

fn frame_cap(base: u64, vaddr: u64) -> Cap {
    Cap::Frame {
        base,
        size: FrameSize::Small,
        rights: VmRights::ReadWrite,
        device: false,
        mapping: Some(Mapping {
            asid: ROOT_ASID,
            vaddr,
        }),
    }
}

impl RootTask {
    fn push<H: Hardware>(&mut self, k: &mut Kernel<H>, cap: Cap) -> Result<u64, BootError> {
        if self.next_slot >= 1 << ROOT_RADIX {
            return Err(BootError::OutOfSlots);
        }
        let index = self.next_slot;
        cspace::insert_root(&mut k.hw, 0, self.slot(index), cap, true);
        self.next_slot += 1;
        Ok(index)
    }

    #[allow(clippy::too_many_arguments)]
    fn map<H: Hardware>(
        &mut self,
        k: &mut Kernel<H>,
        vaddr: u64,
        frame: u64,
        writable: bool,
        executable: bool,
        allocate: &mut dyn FnMut(u32) -> u64,
        paging: &mut [(u64, u64, u8); 64],
        paging_count: &mut usize,
    ) -> Result<(), BootError> {
        self.map_quiet(k, vaddr, frame, writable, allocate, paging, paging_count)?;
        if executable {
            self.upgrade(k, vaddr, writable, true);
        }
        self.push(k, frame_cap(frame, vaddr))?;
        Ok(())
    }

    /// Maps without recording a frame capability (the BootInfo frame has its own slot).
    #[allow(clippy::too_many_arguments)]
    fn map_quiet<H: Hardware>(
        &mut self,
        k: &mut Kernel<H>,
        vaddr: u64,
        frame: u64,
        writable: bool,
        allocate: &mut dyn FnMut(u32) -> u64,
        paging: &mut [(u64, u64, u8); 64],
        paging_count: &mut usize,
    ) -> Result<(), BootError> {
        let mut table = self.pml4;
        for level in (2..=4u32).rev() {
            let entry = table + 8 * ((vaddr >> (12 + 9 * (level - 1))) & 0x1ff);
            let e = k.hw.read(entry);
            table = if e & PRESENT != 0 {
                e & ADDRESS
            } else {
                let new = allocate(12);
                k.hw.write(entry, new | PRESENT | WRITABLE | USER);
                if *paging_count == paging.len() {
                    return Err(BootError::OutOfSlots);
                }
                let span = 1u64 << (12 + 9 * (level - 1));
                paging[*paging_count] = (new, vaddr & !(span - 1), (level - 1) as u8);
                *paging_count += 1;
                new
            };
        }
        let entry = table + 8 * ((vaddr >> 12) & 0x1ff);
        let nx = if self.nx { NO_EXECUTE } else { 0 };
        k.hw.write(
            entry,
            frame | PRESENT | USER | nx | if writable { WRITABLE } else { 0 },
        );
        Ok(())
    }

    /// Adds rights to an existing 4 KiB mapping (two segments sharing a page).
    fn upgrade<H: Hardware>(
        &mut self,
        k: &mut Kernel<H>,
        vaddr: u64,
        writable: bool,
        executable: bool,
    ) {
        let mut table = self.pml4;
        for level in (2..=4u32).rev() {
            let e =
                k.hw.read(table + 8 * ((vaddr >> (12 + 9 * (level - 1))) & 0x1ff));
            table = e & ADDRESS;
        }
        let entry = table + 8 * ((vaddr >> 12) & 0x1ff);
        let mut e = k.hw.read(entry);
        if writable {
            e |= WRITABLE;
        }
        if executable {
            e &= !NO_EXECUTE;
        }
        k.hw.write(entry, e);
    }

    /// Gives the root task Untyped capabilities covering `[start, end)` (split into
    /// aligned power-of-two blocks), as device memory if `device`.
    pub fn add_untyped<H: Hardware>(
        &mut self,
        k: &mut Kernel<H>,
        mut start: u64,
        end: u64,
        device: bool,
    ) {
        while start < end {
            let align = if start == 0 {
                63
            } else {
                start.trailing_zeros()
            };
            let fit = 63 - (end - start).leading_zeros();
            let bits = align.min(fit).min(MAX_UNTYPED_BITS);
            if bits < 12 || self.untyped_count >= bootinfo::MAX_BOOT_INFO_UNTYPED_CAPS {
                return;
            }
            // Boot memory is not known to be zero: RAM untypeds start all used, so
            // their first Retype zeroes them (with preemption points) and memory
            // above the free index is zero from then on (`object::untyped`).
            let cap = Cap::Untyped {
                base: start,
                size_bits: bits as u8,
                free_index: if device { 0 } else { 1 << bits },
                device,
            };
            if self.push(k, cap).is_err() {
                return;
            }
            let desc = self.bootinfo_frame
                + core::mem::offset_of!(BootInfo, untyped_list) as u64
                + 16 * self.untyped_count as u64;
            k.hw.write(desc, start);
            k.hw.write(desc + 8, bits as u64 | ((device as u64) << 8));
            self.untyped_count += 1;
            start += 1 << bits;
        }
    }

    /// Appends an extra boot-info record `id` with `body` (words) to the extra page;
    /// a record that does not fit is left out.
    pub fn add_extra_record<H: Hardware>(&mut self, k: &mut Kernel<H>, id: u64, body: &[u64]) {
        let bytes = body.iter().flat_map(|w| w.to_le_bytes());
        self.append_extra_record(k, id, 8 * body.len() as u64, bytes);
    }

    /// Appends an extra boot-info record `id` with `body` (bytes: seL4's x86 records are
    /// packed, so a record's length, and the next record's start, need not be a
    /// multiple of 8); a record that does not fit is left out.
    pub fn add_extra_record_bytes<H: Hardware>(&mut self, k: &mut Kernel<H>, id: u64, body: &[u8]) {
        self.append_extra_record(k, id, body.len() as u64, body.iter().copied());
    }

    fn append_extra_record<H: Hardware>(
        &mut self,
        k: &mut Kernel<H>,
        id: u64,
        body_len: u64,
        body: impl Iterator<Item = u8>,
    ) {
        let len = 16 + body_len;
        if self.extra_len + len > 0x1000 {
            return;
        }
        let at = self.extra_frame + self.extra_len;
        let header = id.to_le_bytes().into_iter().chain(len.to_le_bytes());
        // Byte by byte into the (word-accessed) frame: records need not be aligned.
        for (i, byte) in header.chain(body).enumerate() {
            let address = at + i as u64;
            let word = address & !7;
            let shift = 8 * (address & 7);
            let old = k.hw.read(word);
            k.hw.write(word, (old & !(0xff << shift)) | (byte as u64) << shift);
        }
        self.extra_len += len;
    }

    /// Writes the BootInfo frame and makes the root task runnable on CPU 0.
    pub fn finish<H: Hardware>(self, k: &mut Kernel<H>, cpus: usize) {
        let bi = self.bootinfo_frame;
        let put =
            |k: &mut Kernel<H>, offset: usize, value: u64| k.hw.write(bi + offset as u64, value);
        put(
            k,
            core::mem::offset_of!(BootInfo, extra_len),
            self.extra_len,
        );
        put(k, core::mem::offset_of!(BootInfo, node_id), 0);
        put(k, core::mem::offset_of!(BootInfo, num_nodes), cpus as u64);
        put(k, core::mem::offset_of!(BootInfo, num_io_pt_levels), 0);
        let regions = [
            (
                core::mem::offset_of!(BootInfo, empty),
                SlotRegion {
                    start: self.next_slot,
                    end: 1 << ROOT_RADIX,
                },
            ),
            (
                core::mem::offset_of!(BootInfo, shared_frames),
                SlotRegion::default(),
            ),
            (
                core::mem::offset_of!(BootInfo, user_image_frames),
                self.image_frames,
            ),
            (
                core::mem::offset_of!(BootInfo, user_image_paging),
                SlotRegion {
                    start: self.image_paging_start,
                    end: self.extra_pages.start,
                },
            ),
            (
                core::mem::offset_of!(BootInfo, io_space_caps),
                SlotRegion::default(),
            ),
            (
                core::mem::offset_of!(BootInfo, extra_bi_pages),
                self.extra_pages,
            ),
            (
                core::mem::offset_of!(BootInfo, untyped),
                SlotRegion {
                    start: self.untyped_start,
                    end: self.untyped_start + self.untyped_count as u64,
                },
            ),
        ];
        for (offset, region) in regions {
            put(k, offset, region.start);
            put(k, offset + 8, region.end);
        }
        put(
            k,
            core::mem::offset_of!(BootInfo, init_thread_cnode_size_bits),
            ROOT_RADIX as u64,
        );
        put(k, core::mem::offset_of!(BootInfo, init_thread_domain), 0);
        k.tcb_mut(self.tcb).state = ThreadState::Running;
        k.enqueue(self.tcb, false);
        let _ = Rights::ALL;
    }
}
