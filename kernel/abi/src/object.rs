//! Kernel object types, their sizes, and the numbers that describe capability space and
//! address space (seL4 x86-64, non-MCS, default configuration).
//!
//! This module owns the `seL4_ObjectType` numbers given to Untyped Retype, the size in
//! bits of every object, the word/badge/guard widths, the CNode capability-data layout,
//! page-table geometry, ASID pool geometry, x86 mapping attributes, TCB flags,
//! priorities, and the kernel's capability type tags that DebugCapIdentify reports.
//! Keel's own object type (the LDT) follows seL4's last type.

/// seL4_WordBits.
pub const WORD_BITS: u32 = 64;
/// seL4_WordSizeBits: log2 of the word size in bytes.
pub const WORD_SIZE_BITS: u32 = 3;
/// seL4_BadgeBits: a badge is a full word.
pub const BADGE_BITS: u32 = 64;
/// seL4_GuardBits: width of the guard field in CNode capability data.
pub const GUARD_BITS: u32 = 58;
/// seL4_GuardSizeBits: width of the guard-size field in CNode capability data.
pub const GUARD_SIZE_BITS: u32 = 6;

/// seL4_ObjectType: the type argument of Untyped Retype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u64)]
pub enum ObjectType {
    /// seL4_UntypedObject: size chosen by the caller (MinUntypedBits..=MaxUntypedBits).
    Untyped = 0,
    /// seL4_TCBObject: [`TCB_BITS`].
    Tcb = 1,
    /// seL4_EndpointObject: [`ENDPOINT_BITS`].
    Endpoint = 2,
    /// seL4_NotificationObject: [`NOTIFICATION_BITS`].
    Notification = 3,
    /// seL4_CapTableObject (a CNode): the size argument is log2 of the number of slots;
    /// the object takes `size + SLOT_BITS` bits.
    CapTable = 4,
    /// seL4_X86_PDPTObject: [`PDPT_BITS`].
    X86Pdpt = 5,
    /// seL4_X64_PML4Object: [`PML4_BITS`].
    X64Pml4 = 6,
    /// seL4_X64_HugePageObject (CONFIG_HUGE_PAGE, on by default): a 1 GiB frame.
    X64HugePage = 7,
    /// seL4_X86_4K: a 4 KiB frame.
    X86Page4K = 8,
    /// seL4_X86_LargePageObject: a 2 MiB frame.
    X86LargePage = 9,
    /// seL4_X86_PageTableObject: [`PAGE_TABLE_BITS`].
    X86PageTable = 10,
    /// seL4_X86_PageDirectoryObject: [`PAGE_DIRECTORY_BITS`].
    X86PageDirectory = 11,
    /// Keel: an LDT for one address space ([`LDT_BITS`]); attached with
    /// X86VSpaceSetLDT, filled with X86LDTSetEntries.
    KeelX86Ldt = 12,
}

/// seL4_NonArchObjectTypeCount (non-MCS).
pub const NON_ARCH_OBJECT_TYPE_COUNT: u64 = 5;
/// seL4_ObjectTypeCount: number of seL4 object types in this configuration.
pub const SEL4_OBJECT_TYPE_COUNT: u64 = 12;
/// First of Keel's own object types (= [`SEL4_OBJECT_TYPE_COUNT`]).
pub const KEEL_FIRST_OBJECT_TYPE: u64 = SEL4_OBJECT_TYPE_COUNT;

/// The value libsel4 gives seL4_X86_IOPageTableObject when CONFIG_IOMMU is off.
pub const ABSENT_IO_PAGE_TABLE_OBJECT: u64 = 0xff_ffff;
/// The values libsel4 gives the VT-x object types (VCPU, EPT PML4, EPT PDPT, EPT PD,
/// EPT PT) when CONFIG_VTX is off.
pub const ABSENT_VTX_OBJECTS: [u64; 5] = [0xff_fffe, 0xff_fffd, 0xff_fffc, 0xff_fffb, 0xff_fffa];

impl ObjectType {
    /// Every type, in numeric order.
    pub const ALL: [ObjectType; 13] = [
        ObjectType::Untyped,
        ObjectType::Tcb,
        ObjectType::Endpoint,
        ObjectType::Notification,
        ObjectType::CapTable,
        ObjectType::X86Pdpt,
        ObjectType::X64Pml4,
        ObjectType::X64HugePage,
        ObjectType::X86Page4K,
        ObjectType::X86LargePage,
        ObjectType::X86PageTable,
        ObjectType::X86PageDirectory,
        ObjectType::KeelX86Ldt,
    ];

    /// The type with this number, if there is one.
    pub const fn from_u64(value: u64) -> Option<Self> {
        if value < Self::ALL.len() as u64 {
            Some(Self::ALL[value as usize])
        } else {
            None
        }
    }

    /// seL4's name (Keel's for its own type).
    pub const fn name(self) -> &'static str {
        match self {
            ObjectType::Untyped => "seL4_UntypedObject",
            ObjectType::Tcb => "seL4_TCBObject",
            ObjectType::Endpoint => "seL4_EndpointObject",
            ObjectType::Notification => "seL4_NotificationObject",
            ObjectType::CapTable => "seL4_CapTableObject",
            ObjectType::X86Pdpt => "seL4_X86_PDPTObject",
            ObjectType::X64Pml4 => "seL4_X64_PML4Object",
            ObjectType::X64HugePage => "seL4_X64_HugePageObject",
            ObjectType::X86Page4K => "seL4_X86_4K",
            ObjectType::X86LargePage => "seL4_X86_LargePageObject",
            ObjectType::X86PageTable => "seL4_X86_PageTableObject",
            ObjectType::X86PageDirectory => "seL4_X86_PageDirectoryObject",
            ObjectType::KeelX86Ldt => "keel_X86_LDTObject",
        }
    }

    /// log2 of the object's size in bytes, for fixed-size types; `None` for Untyped and
    /// CapTable, whose size comes from the Retype size argument.
    pub const fn fixed_size_bits(self) -> Option<u32> {
        match self {
            ObjectType::Untyped | ObjectType::CapTable => None,
            ObjectType::Tcb => Some(TCB_BITS),
            ObjectType::Endpoint => Some(ENDPOINT_BITS),
            ObjectType::Notification => Some(NOTIFICATION_BITS),
            ObjectType::X86Pdpt => Some(PDPT_BITS),
            ObjectType::X64Pml4 => Some(PML4_BITS),
            ObjectType::X64HugePage => Some(HUGE_PAGE_BITS),
            ObjectType::X86Page4K => Some(PAGE_BITS),
            ObjectType::X86LargePage => Some(LARGE_PAGE_BITS),
            ObjectType::X86PageTable => Some(PAGE_TABLE_BITS),
            ObjectType::X86PageDirectory => Some(PAGE_DIRECTORY_BITS),
            ObjectType::KeelX86Ldt => Some(LDT_BITS),
        }
    }

    /// Whether the type is a frame (mappable memory).
    pub const fn is_frame(self) -> bool {
        matches!(
            self,
            ObjectType::X86Page4K | ObjectType::X86LargePage | ObjectType::X64HugePage
        )
    }
}

/// seL4_SlotBits: a capability slot is 32 bytes.
pub const SLOT_BITS: u32 = 5;
/// seL4_TCBBits: 4 KiB. seL4 uses 11 with an XSAVE area of FPU+SSE only (576 bytes) and
/// 12 when it is 832 bytes or more (AVX); Keel saves every user state component the CPU
/// has (x87, SSE, AVX, AVX-512: up to 2688 bytes), so a TCB is 2^12 bytes.
pub const TCB_BITS: u32 = 12;
/// seL4_EndpointBits.
pub const ENDPOINT_BITS: u32 = 4;
/// seL4_NotificationBits (non-MCS; 6 with MCS).
pub const NOTIFICATION_BITS: u32 = 5;
/// seL4_PageBits: 4 KiB frame.
pub const PAGE_BITS: u32 = 12;
/// seL4_LargePageBits: 2 MiB frame.
pub const LARGE_PAGE_BITS: u32 = 21;
/// seL4_HugePageBits: 1 GiB frame.
pub const HUGE_PAGE_BITS: u32 = 30;
/// seL4_PageTableBits.
pub const PAGE_TABLE_BITS: u32 = 12;
/// seL4_PageDirBits.
pub const PAGE_DIRECTORY_BITS: u32 = 12;
/// seL4_PDPTBits.
pub const PDPT_BITS: u32 = 12;
/// seL4_PML4Bits (= seL4_VSpaceBits).
pub const PML4_BITS: u32 = 12;
/// seL4_VSpaceBits.
pub const VSPACE_BITS: u32 = PML4_BITS;
/// seL4_PageTableEntryBits (and the same for PD, PDPT, PML4 entries).
pub const PAGE_TABLE_ENTRY_BITS: u32 = 3;
/// seL4_PageTableIndexBits (and the same for PD, PDPT, PML4 indexes).
pub const PAGE_TABLE_INDEX_BITS: u32 = 9;
/// seL4_IOPageTableBits (IOMMU only; recorded for completeness).
pub const IO_PAGE_TABLE_BITS: u32 = 12;
/// seL4_MinUntypedBits: smallest untyped, 16 bytes.
pub const MIN_UNTYPED_BITS: u32 = 4;
/// seL4_MaxUntypedBits: largest untyped, 128 TiB.
pub const MAX_UNTYPED_BITS: u32 = 47;
/// seL4_BootInfoFrameBits.
pub const BOOT_INFO_FRAME_BITS: u32 = PAGE_BITS;
/// seL4_UserTop: first address above the user part of every address space.
pub const USER_TOP: u64 = 0x0000_7fff_ffff_f000;

/// seL4_NumASIDPoolsBits: 8 ASID pools.
pub const NUM_ASID_POOLS_BITS: u32 = 3;
/// seL4_ASIDPoolIndexBits: 512 ASIDs per pool.
pub const ASID_POOL_INDEX_BITS: u32 = 9;
/// seL4_ASIDPoolBits: an ASID pool takes a 4 KiB untyped.
pub const ASID_POOL_BITS: u32 = 12;

/// Keel: log2 of an LDT object's size; 4 KiB = 512 eight-byte descriptors.
pub const LDT_BITS: u32 = 12;
/// Keel: number of descriptors in an LDT object.
pub const LDT_ENTRIES: usize = 1 << (LDT_BITS - 3);

/// seL4_CNode_CapData: the guard word given to CNode Mint/Mutate for a CNode
/// capability. Bits 63..6 guard, bits 5..0 guard size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct CNodeCapData(pub u64);

impl CNodeCapData {
    /// Builds the word; fields are cut to their widths.
    pub const fn new(guard: u64, guard_size: u64) -> Self {
        Self(
            (guard & ((1 << GUARD_BITS) - 1)) << GUARD_SIZE_BITS
                | guard_size & ((1 << GUARD_SIZE_BITS) - 1),
        )
    }
    /// The guard value.
    pub const fn guard(self) -> u64 {
        self.0 >> GUARD_SIZE_BITS
    }
    /// The guard's size in bits.
    pub const fn guard_size(self) -> u64 {
        self.0 & ((1 << GUARD_SIZE_BITS) - 1)
    }
}

/// seL4_X86_VMAttributes: the attribute word of Page/PageTable/PageDirectory/PDPT Map.
pub mod vm_attributes {
    /// seL4_X86_Default_VMAttributes = seL4_X86_WriteBack.
    pub const DEFAULT: u64 = 0;
    /// seL4_X86_WriteBack.
    pub const WRITE_BACK: u64 = 0;
    /// seL4_X86_WriteThrough.
    pub const WRITE_THROUGH: u64 = 1;
    /// seL4_X86_CacheDisabled.
    pub const CACHE_DISABLED: u64 = 2;
    /// seL4_X86_Uncacheable.
    pub const UNCACHEABLE: u64 = 3;
    /// seL4_X86_WriteCombining.
    pub const WRITE_COMBINING: u64 = 4;
}

/// seL4_TCBFlag: the flags of TCBSetFlags.
pub mod tcb_flags {
    /// seL4_TCBFlag_NoFlag.
    pub const NONE: u64 = 0;
    /// seL4_TCBFlag_fpuDisabled: the thread may not use the FPU (a use faults).
    pub const FPU_DISABLED: u64 = 1;
    /// seL4_TCBFlag_MASK with an FPU (CONFIG_HAVE_FPU, always on x86).
    pub const MASK: u64 = FPU_DISABLED;
}

/// seL4_MinPrio.
pub const MIN_PRIORITY: u64 = 0;
/// seL4_MaxPrio (CONFIG_NUM_PRIORITIES = 256).
pub const MAX_PRIORITY: u64 = 255;
/// CONFIG_NUM_PRIORITIES.
pub const NUM_PRIORITIES: u64 = 256;

/// The kernel's capability type tags (x86-64, non-MCS, no IOMMU, no VT-x), as
/// DebugCapIdentify returns them. Generic capabilities have even tags, architecture
/// capabilities odd ones.
pub mod cap_tag {
    /// Empty slot.
    pub const NULL: u64 = 0;
    /// Untyped.
    pub const UNTYPED: u64 = 2;
    /// Endpoint.
    pub const ENDPOINT: u64 = 4;
    /// Notification.
    pub const NOTIFICATION: u64 = 6;
    /// Reply (non-MCS: the one-time reply capability).
    pub const REPLY: u64 = 8;
    /// CNode.
    pub const CNODE: u64 = 10;
    /// TCB.
    pub const THREAD: u64 = 12;
    /// IRQControl.
    pub const IRQ_CONTROL: u64 = 14;
    /// IRQHandler.
    pub const IRQ_HANDLER: u64 = 16;
    /// Zombie (an object being deleted).
    pub const ZOMBIE: u64 = 18;
    /// Domain.
    pub const DOMAIN: u64 = 20;
    /// Frame of any size.
    pub const FRAME: u64 = 1;
    /// Page table.
    pub const PAGE_TABLE: u64 = 3;
    /// Page directory.
    pub const PAGE_DIRECTORY: u64 = 5;
    /// PDPT.
    pub const PDPT: u64 = 7;
    /// PML4.
    pub const PML4: u64 = 9;
    /// ASID control.
    pub const ASID_CONTROL: u64 = 11;
    /// ASID pool.
    pub const ASID_POOL: u64 = 13;
    /// I/O port.
    pub const IO_PORT: u64 = 19;
    /// I/O port control.
    pub const IO_PORT_CONTROL: u64 = 31;
    /// Keel: FsGsBaseControl. Keel's tags are ones no seL4 x86-64 configuration uses
    /// (MCS takes 22 and 24, IOMMU 15 and 17, VT-x 21 to 29); the field is 5 bits.
    pub const KEEL_FS_GS_BASE_CONTROL: u64 = 26;
    /// Keel: LDT object.
    pub const KEEL_LDT: u64 = 28;

    /// A short name of a tag, for people ("?" for a tag no capability has).
    pub const fn name(tag: u64) -> &'static str {
        match tag {
            NULL => "empty",
            UNTYPED => "untyped",
            ENDPOINT => "endpoint",
            NOTIFICATION => "notification",
            REPLY => "reply",
            CNODE => "cnode",
            THREAD => "tcb",
            IRQ_CONTROL => "irq-control",
            IRQ_HANDLER => "irq-handler",
            ZOMBIE => "zombie",
            DOMAIN => "domain",
            FRAME => "frame",
            PAGE_TABLE => "page-table",
            PAGE_DIRECTORY => "page-directory",
            PDPT => "pdpt",
            PML4 => "pml4",
            ASID_CONTROL => "asid-control",
            ASID_POOL => "asid-pool",
            IO_PORT => "io-port",
            IO_PORT_CONTROL => "io-port-control",
            KEEL_FS_GS_BASE_CONTROL => "fsgsbase-control",
            KEEL_LDT => "ldt",
            _ => "?",
        }
    }
}

/// x86 interrupt numbering seen by IRQControl GetIOAPIC / GetMSI: their `vector`
/// argument (MR6) is relative, and the CPU vector is `IRQ_OFFSET + vector`.
pub mod irq {
    /// IRQ_OFFSET: CPU vector of relative vector 0 (0x20 + 16 legacy PIC lines).
    pub const IRQ_OFFSET: u64 = 0x30;
    /// Smallest relative vector (VECTOR_MIN / MSI_MIN).
    pub const VECTOR_MIN: u64 = 0;
    /// Largest relative vector the pc99 kernel accepts (CPU vector 155; the kernel
    /// keeps 156..=159 for its timer and IPIs). Larger values are a RangeError 0..=107.
    pub const VECTOR_MAX: u64 = 107;
    /// VECTOR_MAX / MSI_MAX as libsel4's header states it; the kernel's own check
    /// ([`VECTOR_MAX`]) is stricter.
    pub const LIBSEL4_VECTOR_MAX: u64 = 109;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_types_round_trip() {
        for (i, t) in ObjectType::ALL.iter().enumerate() {
            assert_eq!(*t as u64, i as u64);
            assert_eq!(ObjectType::from_u64(i as u64), Some(*t));
        }
        assert_eq!(ObjectType::from_u64(13), None);
        assert_eq!(ObjectType::X86Pdpt as u64, NON_ARCH_OBJECT_TYPE_COUNT);
        assert_eq!(ObjectType::KeelX86Ldt as u64, KEEL_FIRST_OBJECT_TYPE);
    }

    #[test]
    fn geometry() {
        assert_eq!(
            PAGE_TABLE_ENTRY_BITS + PAGE_TABLE_INDEX_BITS,
            PAGE_TABLE_BITS
        );
        assert_eq!(WORD_SIZE_BITS + ASID_POOL_INDEX_BITS, ASID_POOL_BITS);
        assert_eq!(GUARD_BITS + GUARD_SIZE_BITS, WORD_BITS);
        assert_eq!(PAGE_BITS + PAGE_TABLE_INDEX_BITS, LARGE_PAGE_BITS);
        assert_eq!(LARGE_PAGE_BITS + PAGE_TABLE_INDEX_BITS, HUGE_PAGE_BITS);
        assert_eq!(LDT_ENTRIES, 512);
        let data = CNodeCapData::new(0x1234, 18);
        assert_eq!(data.guard(), 0x1234);
        assert_eq!(data.guard_size(), 18);
        assert_eq!(CNodeCapData::new(1, 0).0, 1 << 6);
    }
}
