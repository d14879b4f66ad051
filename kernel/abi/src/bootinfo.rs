//! What the root task finds at start: its initial capabilities, the boot-info frame and
//! the extra boot-info records (seL4 `seL4_BootInfo`, x86-64).
//!
//! This module owns the root CNode's initial slot numbers, the `seL4_BootInfo` layout,
//! the untyped descriptors, and the extra boot-info record format with its x86 records.
//! The root task starts with RDI = the user address of the [`BootInfo`] frame. The
//! kernel maps, in this order after the user image: the IPC buffer frame (4 KiB), the
//! boot-info frame (4 KiB), then the extra boot-info pages; `BootInfo::extra_len`
//! bytes of records start at the first extra page (boot-info address + 4096).

/// Root CNode slots of the initial capabilities (seL4_RootCNodeCapSlots).
pub mod cap {
    /// seL4_CapNull: always empty.
    pub const NULL: u64 = 0;
    /// seL4_CapInitThreadTCB: the root task's TCB.
    pub const INIT_THREAD_TCB: u64 = 1;
    /// seL4_CapInitThreadCNode: the root CNode itself.
    pub const INIT_THREAD_CNODE: u64 = 2;
    /// seL4_CapInitThreadVSpace (= seL4_CapInitThreadPD): the root task's PML4.
    pub const INIT_THREAD_VSPACE: u64 = 3;
    /// seL4_CapIRQControl.
    pub const IRQ_CONTROL: u64 = 4;
    /// seL4_CapASIDControl.
    pub const ASID_CONTROL: u64 = 5;
    /// seL4_CapInitThreadASIDPool: the pool holding the root task's ASID.
    pub const INIT_THREAD_ASID_POOL: u64 = 6;
    /// seL4_CapIOPortControl (present on x86).
    pub const IO_PORT_CONTROL: u64 = 7;
    /// seL4_CapIOSpace: empty without an IOMMU (Keel: empty).
    pub const IO_SPACE: u64 = 8;
    /// seL4_CapBootInfoFrame.
    pub const BOOT_INFO_FRAME: u64 = 9;
    /// seL4_CapInitThreadIPCBuffer.
    pub const INIT_THREAD_IPC_BUFFER: u64 = 10;
    /// seL4_CapDomain: the DomainSet capability.
    pub const DOMAIN: u64 = 11;
    /// seL4_CapSMMUSIDControl: Arm only; empty on x86.
    pub const SMMU_SID_CONTROL: u64 = 12;
    /// seL4_CapSMMUCBControl: Arm only; empty on x86.
    pub const SMMU_CB_CONTROL: u64 = 13;
    /// seL4_CapInitThreadSC: MCS only; empty here.
    pub const INIT_THREAD_SC: u64 = 14;
    /// seL4_CapSMC: Arm only; empty on x86.
    pub const SMC: u64 = 15;
    /// seL4_NumInitialCaps: first slot after seL4's initial capabilities.
    pub const NUM_INITIAL_CAPS: u64 = 16;

    /// Keel: the FsGsBaseControl capability, in the first slot after seL4's fixed ones.
    /// seL4 programs find free slots through `BootInfo::empty`, which starts after
    /// this slot and the other boot-time regions.
    pub const KEEL_FS_GS_BASE_CONTROL: u64 = 16;
    /// Keel: first slot after all fixed initial capabilities, Keel's included.
    pub const KEEL_NUM_INITIAL_CAPS: u64 = 17;
}

/// CONFIG_MAX_NUM_BOOTINFO_UNTYPED_CAPS (seL4's default).
pub const MAX_BOOT_INFO_UNTYPED_CAPS: usize = 230;
/// CONFIG_ROOT_CNODE_SIZE_BITS (seL4's default): the root CNode has 4096 slots.
pub const ROOT_CNODE_SIZE_BITS: u64 = 12;

/// seL4_SlotRegion: slots `start..end` of the root CNode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SlotRegion {
    /// First slot of the region.
    pub start: u64,
    /// First slot after the region.
    pub end: u64,
}

impl SlotRegion {
    /// Number of slots.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the region has no slots.
    pub const fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// seL4_UntypedDesc: one untyped capability's description, in the order of
/// `BootInfo::untyped`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UntypedDesc {
    /// Physical address of the untyped.
    pub paddr: u64,
    /// log2 of its size in bytes.
    pub size_bits: u8,
    /// 1 for device memory (may only become frames), 0 for RAM.
    pub is_device: u8,
    /// Zero.
    pub padding: [u8; 6],
}

/// seL4_BootInfo: the boot-info frame's contents (non-MCS: no `schedcontrol` region).
#[derive(Clone, Debug)]
#[repr(C)]
pub struct BootInfo {
    /// `extraLen`: bytes of extra boot-info records after this frame.
    pub extra_len: u64,
    /// `nodeID`: this node's index (0; one kernel image runs all CPUs).
    pub node_id: u64,
    /// `numNodes`: number of CPUs running.
    pub num_nodes: u64,
    /// `numIOPTLevels`: IOMMU page-table levels (0 without IOMMU).
    pub num_io_pt_levels: u64,
    /// `ipcBuffer`: user address of the root task's IPC buffer.
    pub ipc_buffer: u64,
    /// `empty`: the free slots of the root CNode.
    pub empty: SlotRegion,
    /// `sharedFrames`: frames shared between nodes (empty).
    pub shared_frames: SlotRegion,
    /// `userImageFrames`: frame capabilities of the root task's image, in address order.
    pub user_image_frames: SlotRegion,
    /// `userImagePaging`: page-table capabilities built for the root task's image.
    pub user_image_paging: SlotRegion,
    /// `ioSpaceCaps`: Arm SMMU I/O spaces (empty).
    pub io_space_caps: SlotRegion,
    /// `extraBIPages`: frame capabilities of the extra boot-info pages.
    pub extra_bi_pages: SlotRegion,
    /// `initThreadCNodeSizeBits`: log2 of the root CNode's slot count.
    pub init_thread_cnode_size_bits: u64,
    /// `initThreadDomain`: the root task's scheduling domain.
    pub init_thread_domain: u64,
    /// `untyped`: the untyped capabilities, described by `untyped_list` in order.
    pub untyped: SlotRegion,
    /// `untypedList`: one entry per slot of `untyped`.
    pub untyped_list: [UntypedDesc; MAX_BOOT_INFO_UNTYPED_CAPS],
}

const _: () = assert!(core::mem::size_of::<SlotRegion>() == 16);
const _: () = assert!(core::mem::size_of::<UntypedDesc>() == 16);
const _: () = assert!(core::mem::offset_of!(BootInfo, empty) == 40);
const _: () = assert!(core::mem::offset_of!(BootInfo, init_thread_cnode_size_bits) == 136);
const _: () = assert!(core::mem::offset_of!(BootInfo, untyped) == 152);
const _: () = assert!(core::mem::offset_of!(BootInfo, untyped_list) == 168);
const _: () = assert!(core::mem::size_of::<BootInfo>() == 168 + 16 * MAX_BOOT_INFO_UNTYPED_CAPS);
const _: () = assert!(core::mem::size_of::<BootInfo>() <= 4096);

/// seL4_BootInfoHeader: starts every extra boot-info record. `len` counts the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BootInfoHeader {
    /// One of [`extra_id`].
    pub id: u64,
    /// Bytes of the record, this header included.
    pub len: u64,
}
const _: () = assert!(core::mem::size_of::<BootInfoHeader>() == 16);

/// seL4_BootInfoID: the `id` of an extra boot-info record.
pub mod extra_id {
    /// SEL4_BOOTINFO_HEADER_PADDING: skip `len` bytes.
    pub const PADDING: u64 = 0;
    /// SEL4_BOOTINFO_HEADER_X86_VBE: [`super::X86BootInfoVbe`].
    pub const X86_VBE: u64 = 1;
    /// SEL4_BOOTINFO_HEADER_X86_MBMMAP: [`super::X86BootInfoMmap`].
    pub const X86_MBMMAP: u64 = 2;
    /// SEL4_BOOTINFO_HEADER_X86_ACPI_RSDP: header + [`super::AcpiRsdp`].
    pub const X86_ACPI_RSDP: u64 = 3;
    /// SEL4_BOOTINFO_HEADER_X86_FRAMEBUFFER: header + [`super::X86Framebuffer`].
    pub const X86_FRAMEBUFFER: u64 = 4;
    /// SEL4_BOOTINFO_HEADER_X86_TSC_FREQ: header + a `u32`, the TSC frequency in MHz.
    pub const X86_TSC_FREQ: u64 = 5;
    /// SEL4_BOOTINFO_HEADER_FDT: header + a flattened device tree (not on x86).
    pub const FDT: u64 = 6;
    /// SEL4_BOOTINFO_HEADER_NUM: number of ids.
    pub const NUM: u64 = 7;
    /// Keel: header + [`super::KeelAcpiPower`], the firmware's power controls (ids from
    /// `0x4b00` on are Keel's; seL4 has no such record).
    pub const KEEL_ACPI_POWER: u64 = 0x4b00;
    /// Keel: header + [`super::KeelModule`], one boot module after the root task's
    /// (one record per module, in the bootloader's order).
    pub const KEEL_MODULE: u64 = 0x4b01;
}

/// Order in which seL4 writes the x86 records (each present only when known; the
/// memory map and TSC frequency always are).
pub const X86_RECORD_ORDER: [u64; 5] = [
    extra_id::X86_VBE,
    extra_id::X86_ACPI_RSDP,
    extra_id::X86_FRAMEBUFFER,
    extra_id::X86_MBMMAP,
    extra_id::X86_TSC_FREQ,
];

/// SEL4_MULTIBOOT_MAX_MMAP_ENTRIES.
pub const MULTIBOOT_MAX_MMAP_ENTRIES: usize = 50;
/// SEL4_MULTIBOOT_RAM_REGION_TYPE: `X86MmapEntry::region_type` of usable RAM.
pub const MULTIBOOT_RAM_REGION_TYPE: u32 = 1;

/// seL4_X86_mb_mmap_t: one memory-map entry (multiboot layout, packed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct X86MmapEntry {
    /// Size of the rest of the entry in bytes (20), as multiboot counts it.
    pub size: u32,
    /// Physical start address.
    pub base_addr: u64,
    /// Length in bytes.
    pub length: u64,
    /// Region type; [`MULTIBOOT_RAM_REGION_TYPE`] is usable RAM.
    pub region_type: u32,
}
const _: () = assert!(core::mem::size_of::<X86MmapEntry>() == 24);

/// seL4_X86_BootInfo_mmap_t: the memory-map record; `header.len` is the whole
/// structure's size even when fewer entries are used.
#[derive(Clone, Copy, Debug)]
#[repr(C, packed)]
pub struct X86BootInfoMmap {
    /// Record header, id [`extra_id::X86_MBMMAP`].
    pub header: BootInfoHeader,
    /// Bytes of `mmap` in use (entries × 24).
    pub mmap_length: u32,
    /// The entries.
    pub mmap: [X86MmapEntry; MULTIBOOT_MAX_MMAP_ENTRIES],
}
const _: () = assert!(core::mem::size_of::<X86BootInfoMmap>() == 16 + 4 + 24 * 50);

/// seL4_X86_BootInfo_VBE: the VESA record. The two blocks are the VBE controller
/// information block (512 bytes) and mode information block (256 bytes) in the VESA
/// BIOS Extensions' own layout; seL4 copies them unchanged from the boot loader.
#[derive(Clone, Copy, Debug)]
#[repr(C, packed)]
pub struct X86BootInfoVbe {
    /// Record header, id [`extra_id::X86_VBE`], len 800.
    pub header: BootInfoHeader,
    /// VBE controller information block.
    pub vbe_info_block: [u8; 512],
    /// VBE mode information block.
    pub vbe_mode_info_block: [u8; 256],
    /// VBE mode number.
    pub vbe_mode: u32,
    /// Protected-mode interface segment.
    pub vbe_interface_seg: u32,
    /// Protected-mode interface offset.
    pub vbe_interface_off: u32,
    /// Protected-mode interface length.
    pub vbe_interface_len: u32,
}
const _: () = assert!(core::mem::size_of::<X86BootInfoVbe>() == 800);

/// The RSDP record's body: the ACPI 2.0 Root System Description Pointer (36 bytes,
/// packed), copied from firmware.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct AcpiRsdp {
    /// "RSD PTR ".
    pub signature: [u8; 8],
    /// Checksum of the first 20 bytes.
    pub checksum: u8,
    /// OEM identifier.
    pub oem_id: [u8; 6],
    /// ACPI revision (2 or more for the extended fields).
    pub revision: u8,
    /// Physical address of the RSDT.
    pub rsdt_address: u32,
    /// Length of this table.
    pub length: u32,
    /// Physical address of the XSDT.
    pub xsdt_address: u64,
    /// Checksum of the whole table.
    pub extended_checksum: u8,
    /// Zero.
    pub reserved: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AcpiRsdp>() == 36);

/// The framebuffer record's body (seL4_X86_BootInfo_fb_t, the multiboot 2 framebuffer
/// tag's common part, packed, 22 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed)]
pub struct X86Framebuffer {
    /// Physical address of the framebuffer.
    pub addr: u64,
    /// Bytes per line.
    pub pitch: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bits per pixel.
    pub bpp: u8,
    /// Multiboot 2 framebuffer type (0 indexed, 1 RGB, 2 EGA text).
    pub fb_type: u8,
}
const _: () = assert!(core::mem::size_of::<X86Framebuffer>() == 22);

/// Length of the TSC-frequency record (header + u32 MHz).
pub const X86_TSC_FREQ_RECORD_LEN: u64 = 16 + 4;

/// Bytes of the memory-map record's body (`mmap_length` and all 50 entries: seL4's
/// `header.len` is the whole structure's size).
pub const X86_MBMMAP_BODY_BYTES: usize = 4 + 24 * MULTIBOOT_MAX_MMAP_ENTRIES;

/// Little-endian field reader over a packed record body.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.at..self.at + N]);
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

impl X86MmapEntry {
    /// A multiboot entry for `base_addr`..`base_addr + length` of type `region_type`.
    pub const fn new(base_addr: u64, length: u64, region_type: u32) -> Self {
        Self {
            size: 20,
            base_addr,
            length,
            region_type,
        }
    }

    /// The packed bytes.
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..4].copy_from_slice(&{ self.size }.to_le_bytes());
        out[4..12].copy_from_slice(&{ self.base_addr }.to_le_bytes());
        out[12..20].copy_from_slice(&{ self.length }.to_le_bytes());
        out[20..].copy_from_slice(&{ self.region_type }.to_le_bytes());
        out
    }

    /// Reads packed bytes; `None` if fewer than 24.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 24 {
            return None;
        }
        let mut f = Fields { bytes, at: 0 };
        Some(Self {
            size: f.u32(),
            base_addr: f.u64(),
            length: f.u64(),
            region_type: f.u32(),
        })
    }
}

/// The body of an [`extra_id::X86_MBMMAP`] record for `entries` (at most
/// [`MULTIBOOT_MAX_MMAP_ENTRIES`] are kept, as seL4 keeps them).
pub fn x86_mbmmap_body(entries: &[X86MmapEntry]) -> [u8; X86_MBMMAP_BODY_BYTES] {
    let mut body = [0u8; X86_MBMMAP_BODY_BYTES];
    let used = entries.len().min(MULTIBOOT_MAX_MMAP_ENTRIES);
    body[..4].copy_from_slice(&(24 * used as u32).to_le_bytes());
    for (i, e) in entries.iter().take(used).enumerate() {
        body[4 + 24 * i..4 + 24 * (i + 1)].copy_from_slice(&e.to_bytes());
    }
    body
}

/// The entries of an [`extra_id::X86_MBMMAP`] record body (`mmap_length / 24` of
/// them, at most [`MULTIBOOT_MAX_MMAP_ENTRIES`]); empty if the body is malformed.
pub fn x86_mbmmap_entries(body: &[u8]) -> impl Iterator<Item = X86MmapEntry> + '_ {
    let length = if body.len() >= 4 {
        u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize
    } else {
        0
    };
    let count = (length / 24)
        .min(MULTIBOOT_MAX_MMAP_ENTRIES)
        .min(body.len().saturating_sub(4) / 24);
    (0..count).filter_map(move |i| X86MmapEntry::from_bytes(&body[4 + 24 * i..]))
}

impl AcpiRsdp {
    /// Reads the 36 packed bytes (an ACPI 1.0 RSDP: the first 20, the rest 0); `None`
    /// if fewer than 36.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 36 {
            return None;
        }
        let mut f = Fields { bytes, at: 0 };
        Some(Self {
            signature: f.take(),
            checksum: f.u8(),
            oem_id: f.take(),
            revision: f.u8(),
            rsdt_address: f.u32(),
            length: f.u32(),
            xsdt_address: f.u64(),
            extended_checksum: f.u8(),
            reserved: f.take(),
        })
    }

    /// Whether the checksums are right: the first 20 bytes sum to 0, and for revision
    /// 2 or later all `length` (at most 36) bytes too.
    pub fn checksums_valid(bytes: &[u8; 36]) -> bool {
        let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
        if sum(&bytes[..20]) != 0 {
            return false;
        }
        let length = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]) as usize;
        bytes[15] < 2 || (20..=36).contains(&length) && sum(&bytes[..length]) == 0
    }
}

impl X86Framebuffer {
    /// The packed bytes.
    pub fn to_bytes(&self) -> [u8; 22] {
        let mut out = [0u8; 22];
        out[..8].copy_from_slice(&{ self.addr }.to_le_bytes());
        out[8..12].copy_from_slice(&{ self.pitch }.to_le_bytes());
        out[12..16].copy_from_slice(&{ self.width }.to_le_bytes());
        out[16..20].copy_from_slice(&{ self.height }.to_le_bytes());
        out[20] = self.bpp;
        out[21] = self.fb_type;
        out
    }

    /// Reads packed bytes; `None` if fewer than 22.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 22 {
            return None;
        }
        let mut f = Fields { bytes, at: 0 };
        Some(Self {
            addr: f.u64(),
            pitch: f.u32(),
            width: f.u32(),
            height: f.u32(),
            bpp: f.u8(),
            fb_type: f.u8(),
        })
    }
}

/// Where the kernel maps the boot modules after the first (the root task's own image)
/// into the root task's address space: read-only, not executable, one after the other
/// from here, each starting on a page boundary with an unmapped page between two.
pub const MODULE_REGION_START: u64 = 0x8_0000_0000;
/// End of that region (the kernel maps no more modules than fit).
pub const MODULE_REGION_END: u64 = 0x10_0000_0000;
/// Longest module name a [`KeelModule`] record holds (longer ones are cut).
pub const MODULE_NAME_BYTES: usize = 32;

/// The body of a [`extra_id::KEEL_MODULE`] record: a boot module (a program image)
/// that the kernel mapped read-only into the root task's address space, in
/// [`MODULE_REGION_START`]..[`MODULE_REGION_END`]. The root task reads it there; the
/// kernel gives no capability to its frames, which are never retyped (they stay out of
/// every untyped for the machine's life). Six words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KeelModule {
    /// User address of the module's first byte.
    pub vaddr: u64,
    /// Its length in bytes.
    pub size: u64,
    /// Its name (the module's command line in grub.cfg), NUL-padded.
    pub name: [u8; MODULE_NAME_BYTES],
}
const _: () = assert!(core::mem::size_of::<KeelModule>() == 6 * 8);

impl KeelModule {
    /// A record for module `name` (cut to [`MODULE_NAME_BYTES`]) at `vaddr`.
    pub fn new(name: &str, vaddr: u64, size: u64) -> Self {
        let mut record = Self {
            vaddr,
            size,
            name: [0; MODULE_NAME_BYTES],
        };
        let n = name.len().min(MODULE_NAME_BYTES);
        record.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        record
    }

    /// The record body as words.
    pub fn to_words(&self) -> [u64; 6] {
        let mut words = [self.vaddr, self.size, 0, 0, 0, 0];
        for (i, chunk) in self.name.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            words[2 + i] = u64::from_le_bytes(w);
        }
        words
    }

    /// Reads a record body; `None` if it is too short.
    pub fn from_bytes(body: &[u8]) -> Option<Self> {
        if body.len() < core::mem::size_of::<Self>() {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[8 * i..8 * i + 8]);
            u64::from_le_bytes(w)
        };
        let mut name = [0; MODULE_NAME_BYTES];
        name.copy_from_slice(&body[16..16 + MODULE_NAME_BYTES]);
        Some(Self {
            vaddr: word(0),
            size: word(1),
            name,
        })
    }

    /// The name as text (up to the first NUL; empty if it is not UTF-8).
    pub fn name(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MODULE_NAME_BYTES);
        core::str::from_utf8(&self.name[..end]).unwrap_or("")
    }
}

/// The body of the [`extra_id::KEEL_ACPI_POWER`] record: what the kernel read from the
/// ACPI FADT and the DSDT's `\_S5` object, so that the root task can power the machine
/// off (ACPI sleep state S5) or reset it through I/O port capabilities. Seven words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KeelAcpiPower {
    /// [`acpi_power_flags`]: which of the fields below are valid.
    pub flags: u64,
    /// I/O port of the PM1a control block (FADT `PM1a_CNT_BLK`).
    pub pm1a_control: u64,
    /// I/O port of the PM1b control block (0: none).
    pub pm1b_control: u64,
    /// `SLP_TYPa` of S5 (the first element of the DSDT's `\_S5` package).
    pub s5_sleep_type_a: u64,
    /// `SLP_TYPb` of S5 (the second element).
    pub s5_sleep_type_b: u64,
    /// I/O port of the FADT reset register (valid with `RESET_REGISTER`; only a reset
    /// register in system I/O space is reported).
    pub reset_port: u64,
    /// The value to write there (FADT `RESET_VALUE`).
    pub reset_value: u64,
}
const _: () = assert!(core::mem::size_of::<KeelAcpiPower>() == 7 * 8);

impl KeelAcpiPower {
    /// Length of the whole record, header included.
    pub const RECORD_LEN: u64 = 16 + core::mem::size_of::<Self>() as u64;

    /// The record body as words, in field order.
    pub const fn to_words(&self) -> [u64; 7] {
        [
            self.flags,
            self.pm1a_control,
            self.pm1b_control,
            self.s5_sleep_type_a,
            self.s5_sleep_type_b,
            self.reset_port,
            self.reset_value,
        ]
    }

    /// Reads a record body (little-endian words); `None` if it is too short.
    pub fn from_bytes(body: &[u8]) -> Option<Self> {
        if body.len() < core::mem::size_of::<Self>() {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Some(Self {
            flags: word(0),
            pm1a_control: word(1),
            pm1b_control: word(2),
            s5_sleep_type_a: word(3),
            s5_sleep_type_b: word(4),
            reset_port: word(5),
            reset_value: word(6),
        })
    }

    /// Whether S5 can be entered: a PM1a control block and the `\_S5` sleep types.
    pub const fn can_power_off(&self) -> bool {
        self.flags & acpi_power_flags::PM1A_CONTROL != 0
            && self.flags & acpi_power_flags::S5_SLEEP_TYPE != 0
    }
}

/// Bits of [`KeelAcpiPower::flags`].
pub mod acpi_power_flags {
    /// `pm1a_control` (and `pm1b_control`, when not 0) are valid.
    pub const PM1A_CONTROL: u64 = 1 << 0;
    /// `s5_sleep_type_a`/`_b` were found in the DSDT.
    pub const S5_SLEEP_TYPE: u64 = 1 << 1;
    /// `reset_port`/`reset_value` are valid: the FADT says the reset register is
    /// supported and it lies in system I/O space.
    pub const RESET_REGISTER: u64 = 1 << 2;
}

/// Bit offset of `SLP_TYPx` in a PM1 control register.
pub const PM1_CONTROL_SLEEP_TYPE_SHIFT: u32 = 10;
/// `SLP_EN` in a PM1 control register: enter the sleep state written in `SLP_TYPx`.
pub const PM1_CONTROL_SLEEP_ENABLE: u16 = 1 << 13;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmap_record_round_trip_keeps_fifty_entries() {
        let entries: [X86MmapEntry; 60] = core::array::from_fn(|i| {
            X86MmapEntry::new(i as u64 * 0x1000, 0x1000, 1 + i as u32 % 5)
        });
        let body = x86_mbmmap_body(&entries);
        assert_eq!(body.len() + 16, core::mem::size_of::<X86BootInfoMmap>());
        assert_eq!(
            u32::from_le_bytes([body[0], body[1], body[2], body[3]]),
            24 * 50
        );
        let back: [X86MmapEntry; 50] = {
            let mut it = x86_mbmmap_entries(&body);
            core::array::from_fn(|_| it.next().unwrap())
        };
        assert_eq!(back[..], entries[..50]);
        assert_eq!(x86_mbmmap_entries(&body).count(), 50);
        assert_eq!(x86_mbmmap_entries(&body[..100]).count(), 4);
        assert_eq!(x86_mbmmap_entries(&[]).count(), 0);
    }

    #[test]
    fn framebuffer_and_rsdp_bytes() {
        let fb = X86Framebuffer {
            addr: 0xfd00_0000,
            pitch: 4096,
            width: 1024,
            height: 768,
            bpp: 32,
            fb_type: 1,
        };
        assert_eq!(X86Framebuffer::from_bytes(&fb.to_bytes()), Some(fb));
        assert_eq!(X86Framebuffer::from_bytes(&[0; 21]), None);
        let mut raw = [0u8; 36];
        raw[..8].copy_from_slice(b"RSD PTR ");
        raw[15] = 2;
        raw[16..20].copy_from_slice(&0x7fe1_4a6bu32.to_le_bytes());
        raw[20..24].copy_from_slice(&36u32.to_le_bytes());
        raw[24..32].copy_from_slice(&0x7fe1_5000u64.to_le_bytes());
        let sum = |b: &[u8]| b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
        raw[8] = 0u8.wrapping_sub(sum(&raw[..20]));
        raw[32] = 0u8.wrapping_sub(sum(&raw[..36]));
        assert!(AcpiRsdp::checksums_valid(&raw));
        let r = AcpiRsdp::from_bytes(&raw).unwrap();
        assert_eq!(&r.signature, b"RSD PTR ");
        assert_eq!({ r.xsdt_address }, 0x7fe1_5000);
        assert_eq!({ r.length }, 36);
        raw[33] = 1;
        assert!(!AcpiRsdp::checksums_valid(&raw));
    }

    #[test]
    fn module_record_round_trip() {
        let record = KeelModule::new("echo", 0x8_0000_0000, 12345);
        let words = record.to_words();
        let mut bytes = [0u8; 48];
        for (chunk, word) in bytes.chunks_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        let back = KeelModule::from_bytes(&bytes).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.name(), "echo");
        assert!(KeelModule::from_bytes(&bytes[..40]).is_none());
        let long = KeelModule::new("a-name-longer-than-thirty-two-bytes!", 0, 0);
        assert_eq!(long.name().len(), MODULE_NAME_BYTES);
    }

    #[test]
    fn acpi_power_record_round_trip() {
        let record = KeelAcpiPower {
            flags: acpi_power_flags::PM1A_CONTROL | acpi_power_flags::S5_SLEEP_TYPE,
            pm1a_control: 0x604,
            pm1b_control: 0,
            s5_sleep_type_a: 5,
            s5_sleep_type_b: 0,
            reset_port: 0xcf9,
            reset_value: 6,
        };
        let mut bytes = [0u8; 56];
        for (chunk, word) in bytes.chunks_mut(8).zip(record.to_words()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        assert_eq!(KeelAcpiPower::from_bytes(&bytes), Some(record));
        assert_eq!(KeelAcpiPower::from_bytes(&bytes[..55]), None);
        assert!(record.can_power_off());
        assert_eq!(KeelAcpiPower::RECORD_LEN, 72);
    }

    #[test]
    fn initial_caps_in_order() {
        let slots = [
            cap::NULL,
            cap::INIT_THREAD_TCB,
            cap::INIT_THREAD_CNODE,
            cap::INIT_THREAD_VSPACE,
            cap::IRQ_CONTROL,
            cap::ASID_CONTROL,
            cap::INIT_THREAD_ASID_POOL,
            cap::IO_PORT_CONTROL,
            cap::IO_SPACE,
            cap::BOOT_INFO_FRAME,
            cap::INIT_THREAD_IPC_BUFFER,
            cap::DOMAIN,
            cap::SMMU_SID_CONTROL,
            cap::SMMU_CB_CONTROL,
            cap::INIT_THREAD_SC,
            cap::SMC,
        ];
        for (i, s) in slots.iter().enumerate() {
            assert_eq!(*s, i as u64);
        }
        assert_eq!(cap::NUM_INITIAL_CAPS, slots.len() as u64);
        assert_eq!(cap::KEEL_FS_GS_BASE_CONTROL, cap::NUM_INITIAL_CAPS);
        assert_eq!(cap::KEEL_NUM_INITIAL_CAPS, cap::KEEL_FS_GS_BASE_CONTROL + 1);
    }

    #[test]
    fn sizes() {
        assert_eq!(core::mem::size_of::<BootInfo>(), 3848);
        assert_eq!(core::mem::size_of::<X86BootInfoMmap>(), 1220);
        let r = SlotRegion { start: 20, end: 30 };
        assert_eq!(r.len(), 10);
        assert!(!r.is_empty());
        assert_eq!(extra_id::NUM, 7);
    }
}
