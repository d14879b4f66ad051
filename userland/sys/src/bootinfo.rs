//! A safe reader of the boot-info frame (seL4_BootInfo) and of the extra boot-info
//! records after it.
//!
//! The kernel maps the frame read-only into the root task and passes its address in
//! RDI; `_start` keeps that value ([`crate::thread::boot_argument`]). [`BootInfo::get`]
//! checks it looks like a frame address (a kernel from before the object model passed
//! the CPU count instead) and gives a `'static` view of the frame.

use keel_abi::bootinfo::{self as abi, BootInfoHeader, SlotRegion, UntypedDesc};
use keel_abi::object::PAGE_BITS;

/// The boot-info frame.
#[derive(Clone, Copy)]
pub struct BootInfo {
    info: &'static abi::BootInfo,
}

impl core::fmt::Debug for BootInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BootInfo")
            .field("address", &self.address())
            .field("empty", &self.info.empty)
            .field("untyped", &self.info.untyped)
            .finish()
    }
}

/// One untyped capability and its description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UntypedRegion {
    /// The capability's slot in the root CNode.
    pub slot: u64,
    /// Its description.
    pub desc: UntypedDesc,
}

impl UntypedRegion {
    /// log2 of its size.
    pub fn size_bits(&self) -> u32 {
        self.desc.size_bits as u32
    }

    /// Whether it is device memory.
    pub fn is_device(&self) -> bool {
        self.desc.is_device != 0
    }
}

impl BootInfo {
    /// The frame whose address the kernel passed to `_start` in RDI, if it passed one;
    /// else (a server program) the copy whose address init passed in RSI, if any.
    pub fn get() -> Option<Self> {
        Self::at(crate::thread::boot_argument())
            .or_else(|| Self::at(crate::thread::second_argument()))
    }

    /// The frame at `address`, if `address` is page-aligned and not in the first page.
    /// It must be the address the kernel passed: the frame stays mapped read-only for
    /// the root task's lifetime.
    pub fn at(address: u64) -> Option<Self> {
        if address < 1 << PAGE_BITS || !address.is_multiple_of(1 << PAGE_BITS) {
            return None;
        }
        if address >= keel_abi::object::USER_TOP {
            return None;
        }
        // SAFETY: the kernel maps the boot-info frame (4 KiB, page-aligned, large enough
        // for `abi::BootInfo`, checked in keel-abi) read-only at this address for the
        // whole life of the root task and never changes it; every bit pattern is a valid
        // `abi::BootInfo` (integers only).
        let info = unsafe { &*(address as *const abi::BootInfo) };
        Some(Self { info })
    }

    /// The frame's address.
    pub fn address(&self) -> u64 {
        self.info as *const abi::BootInfo as u64
    }

    /// The raw structure.
    pub fn raw(&self) -> &'static abi::BootInfo {
        self.info
    }

    /// User address of the root task's IPC buffer.
    pub fn ipc_buffer(&self) -> u64 {
        self.info.ipc_buffer
    }

    /// The root CNode's free slots.
    pub fn empty(&self) -> SlotRegion {
        self.info.empty
    }

    /// Number of CPUs.
    pub fn num_nodes(&self) -> u64 {
        self.info.num_nodes
    }

    /// log2 of the root CNode's slot count.
    pub fn cnode_size_bits(&self) -> u64 {
        self.info.init_thread_cnode_size_bits
    }

    /// Frame capabilities of the root task's image.
    pub fn user_image_frames(&self) -> SlotRegion {
        self.info.user_image_frames
    }

    /// Paging-structure capabilities of the root task's image.
    pub fn user_image_paging(&self) -> SlotRegion {
        self.info.user_image_paging
    }

    /// Frame capabilities of the extra boot-info pages.
    pub fn extra_bi_pages(&self) -> SlotRegion {
        self.info.extra_bi_pages
    }

    /// The untyped capabilities' slots.
    pub fn untyped(&self) -> SlotRegion {
        self.info.untyped
    }

    /// The untyped capabilities with their descriptions.
    pub fn untypeds(&self) -> impl Iterator<Item = UntypedRegion> + 'static {
        let region = self.info.untyped;
        let list = &self.info.untyped_list;
        let count = (region.len() as usize).min(list.len());
        list[..count]
            .iter()
            .enumerate()
            .map(move |(i, desc)| UntypedRegion {
                slot: region.start + i as u64,
                desc: *desc,
            })
    }

    /// Bytes of extra boot-info records.
    pub fn extra_len(&self) -> u64 {
        self.info.extra_len
    }

    /// Keel's ACPI power-control record ([`abi::KeelAcpiPower`]), if the kernel wrote
    /// one.
    pub fn acpi_power(&self) -> Option<abi::KeelAcpiPower> {
        self.extra_records()
            .find(|(header, _)| header.id == abi::extra_id::KEEL_ACPI_POWER)
            .and_then(|(_, body)| abi::KeelAcpiPower::from_bytes(body))
    }

    /// The body of the first extra record `id`, if the kernel wrote one.
    pub fn extra_record(&self, id: u64) -> Option<&'static [u8]> {
        self.extra_records()
            .find(|(header, _)| header.id == id)
            .map(|(_, body)| body)
    }

    /// The firmware memory map (seL4's X86_MBMMAP record: multiboot entries, at most
    /// 50, types as the firmware gave them).
    pub fn memory_map(&self) -> impl Iterator<Item = abi::X86MmapEntry> {
        abi::x86_mbmmap_entries(self.extra_record(abi::extra_id::X86_MBMMAP).unwrap_or(&[]))
    }

    /// The ACPI RSDP the bootloader found (seL4's X86_ACPI_RSDP record) and its 36
    /// bytes, if it gave one.
    pub fn acpi_rsdp(&self) -> Option<(abi::AcpiRsdp, [u8; 36])> {
        let body = self.extra_record(abi::extra_id::X86_ACPI_RSDP)?;
        let rsdp = abi::AcpiRsdp::from_bytes(body)?;
        let mut bytes = [0u8; 36];
        bytes.copy_from_slice(&body[..36]);
        Some((rsdp, bytes))
    }

    /// The framebuffer the bootloader set up (seL4's X86_FRAMEBUFFER record), if any.
    pub fn framebuffer(&self) -> Option<abi::X86Framebuffer> {
        abi::X86Framebuffer::from_bytes(self.extra_record(abi::extra_id::X86_FRAMEBUFFER)?)
    }

    /// The TSC frequency in MHz (seL4's X86_TSC_FREQ record), if the kernel wrote it.
    pub fn tsc_mhz(&self) -> Option<u32> {
        let body = self.extra_record(abi::extra_id::X86_TSC_FREQ)?;
        Some(u32::from_le_bytes(body.get(..4)?.try_into().ok()?))
    }

    /// The boot modules after the root task's own, as the kernel mapped them
    /// (read-only, [`abi::MODULE_REGION_START`] on): each one's record and bytes. Only
    /// in the root task (the frame the kernel passed in RDI): a copy of the boot info
    /// that init maps into a server comes without the modules, and gives none.
    pub fn modules(&self) -> impl Iterator<Item = (abi::KeelModule, &'static [u8])> {
        let root_task = self.address() == crate::thread::boot_argument();
        self.extra_records()
            .filter(move |_| root_task)
            .filter(|(header, _)| header.id == abi::extra_id::KEEL_MODULE)
            .filter_map(|(_, body)| abi::KeelModule::from_bytes(body))
            .filter(|m| {
                m.vaddr >= abi::MODULE_REGION_START
                    && m.size <= abi::MODULE_REGION_END - m.vaddr
                    && m.vaddr <= abi::MODULE_REGION_END
            })
            .map(|m| {
                // SAFETY: this is the root task (checked above): the kernel maps each
                // module's `size` bytes read-only at `vaddr` (inside the module region,
                // checked above) for the root task's lifetime and nothing writes them; nothing else is mapped
                // there (keel_abi::bootinfo::MODULE_REGION_START).
                let bytes =
                    unsafe { core::slice::from_raw_parts(m.vaddr as *const u8, m.size as usize) };
                (m, bytes)
            })
    }

    /// The boot module named `name`, if the kernel mapped one.
    pub fn module(&self, name: &str) -> Option<&'static [u8]> {
        self.modules()
            .find(|(m, _)| m.name() == name)
            .map(|(_, bytes)| bytes)
    }

    /// The extra records as (header, body bytes), in order.
    pub fn extra_records(&self) -> ExtraRecords {
        let start = self.address() + (1 << PAGE_BITS);
        let len = self.info.extra_len.min(64 << PAGE_BITS);
        let bytes: &'static [u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: the kernel maps `extra_len` bytes of records read-only right after
            // the boot-info frame (keel_abi::bootinfo), for the root task's lifetime.
            unsafe { core::slice::from_raw_parts(start as *const u8, len as usize) }
        };
        ExtraRecords { bytes }
    }
}

/// Iterator over the extra boot-info records.
#[derive(Clone, Debug)]
pub struct ExtraRecords {
    bytes: &'static [u8],
}

impl Iterator for ExtraRecords {
    type Item = (BootInfoHeader, &'static [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let header_len = core::mem::size_of::<BootInfoHeader>();
        if self.bytes.len() < header_len {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.bytes[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let header = BootInfoHeader {
            id: word(0),
            len: word(8),
        };
        let len = header.len as usize;
        if len < header_len || len > self.bytes.len() {
            self.bytes = &[];
            return None;
        }
        let body = &self.bytes[header_len..len];
        self.bytes = &self.bytes[len..];
        Some((header, body))
    }
}
