//! Capabilities: what a slot holds, and its two-word encoding.
//!
//! A capability slot is 32 bytes, as in seL4 (seL4_SlotBits = 5): two words of
//! capability and two words of derivation-tree links (see [`super::cspace`]). [`Cap`]
//! is the decoded form the object layer works with; [`Cap::encode`] and
//! [`Cap::decode`] convert. The type tag is in bits 63..59 of the first word; physical
//! addresses fit in 52 bits.

/// Access rights on a capability (seL4_CapRights: write, read, grant, grant-reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rights(pub u8);

impl Rights {
    /// Write (send on endpoints, signal on notifications).
    pub const WRITE: Rights = Rights(1);
    /// Read (receive / wait).
    pub const READ: Rights = Rights(2);
    /// Grant: transfer capabilities through IPC.
    pub const GRANT: Rights = Rights(4);
    /// Grant-reply: the receiver of a Call may get a reply capability that can grant.
    pub const GRANT_REPLY: Rights = Rights(8);
    /// Every right.
    pub const ALL: Rights = Rights(15);
    /// No right.
    pub const NONE: Rights = Rights(0);

    /// Whether every right in `other` is present.
    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }
    /// Rights present in both.
    pub const fn intersect(self, other: Rights) -> Rights {
        Rights(self.0 & other.0)
    }
    /// From the seL4_CapRights word (bits: 0 write, 1 read, 2 grant, 3 grant-reply).
    pub const fn from_word(word: u64) -> Rights {
        Rights((word & 15) as u8)
    }
}

/// Page sizes of frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameSize {
    /// 4 KiB.
    Small = 0,
    /// 2 MiB.
    Large = 1,
    /// 1 GiB.
    Huge = 2,
}

impl FrameSize {
    /// log2 of the size in bytes.
    pub const fn bits(self) -> u32 {
        match self {
            FrameSize::Small => 12,
            FrameSize::Large => 21,
            FrameSize::Huge => 30,
        }
    }
    /// From its two encoded bits (3, never written, reads as Huge). A table, not a
    /// match: one load instead of a compare-and-select chain in every frame decode.
    fn from_bits(v: u64) -> FrameSize {
        const SIZES: [FrameSize; 4] = [
            FrameSize::Small,
            FrameSize::Large,
            FrameSize::Huge,
            FrameSize::Huge,
        ];
        SIZES[(v & 3) as usize]
    }
}

/// Rights of a frame mapping (seL4_X86_VMAttributes aside): read-only or read-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmRights {
    /// Read-only.
    ReadOnly = 2,
    /// Read and write.
    ReadWrite = 3,
}

impl VmRights {
    /// From its two encoded bits: 2 is read-only, 3 read-write (0 and 1, never
    /// written, read as read-write). A table, as in [`FrameSize::from_bits`].
    fn from_bits(v: u64) -> VmRights {
        const RIGHTS: [VmRights; 4] = [
            VmRights::ReadWrite,
            VmRights::ReadWrite,
            VmRights::ReadOnly,
            VmRights::ReadWrite,
        ];
        RIGHTS[(v & 3) as usize]
    }
}

/// Where a frame or paging structure is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The address space's ASID.
    pub asid: u16,
    /// Virtual address of the mapping (aligned to the object's size).
    pub vaddr: u64,
}

/// A decoded capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Cap {
    /// An empty slot.
    #[default]
    Null,
    /// Untyped memory: `base .. base + 2^size_bits`, of which `free_index` bytes are used.
    Untyped {
        base: u64,
        size_bits: u8,
        free_index: u64,
        device: bool,
    },
    /// An endpoint.
    Endpoint {
        ptr: u64,
        badge: u64,
        rights: Rights,
    },
    /// A notification.
    Notification {
        ptr: u64,
        badge: u64,
        rights: Rights,
    },
    /// A reply capability to `tcb` (the master reply cap lives in the TCB itself).
    Reply {
        tcb: u64,
        master: bool,
        can_grant: bool,
    },
    /// A CNode of 2^radix slots with a guard.
    CNode {
        ptr: u64,
        radix: u8,
        guard_size: u8,
        guard: u64,
    },
    /// A thread control block.
    Tcb { ptr: u64 },
    /// The authority to create IRQ handlers.
    IrqControl,
    /// The authority to handle one IRQ.
    IrqHandler { irq: u16 },
    /// A frame of memory.
    Frame {
        base: u64,
        size: FrameSize,
        rights: VmRights,
        device: bool,
        mapping: Option<Mapping>,
    },
    /// A page table (level 1).
    PageTable { base: u64, mapping: Option<Mapping> },
    /// A page directory (level 2).
    PageDirectory { base: u64, mapping: Option<Mapping> },
    /// A page-directory-pointer table (level 3).
    Pdpt { base: u64, mapping: Option<Mapping> },
    /// A PML4: the root of an address space; `asid` once assigned to an ASID pool.
    Pml4 { base: u64, asid: Option<u16> },
    /// The authority to create ASID pools.
    AsidControl,
    /// An ASID pool covering `asid_base .. asid_base + 512`.
    AsidPool { base: u64, asid_base: u16 },
    /// The authority to create I/O port capabilities.
    IoPortControl,
    /// I/O ports `first ..= last`.
    IoPort { first: u16, last: u16 },
    /// The scheduling-domain authority (kept for seL4 compatibility).
    Domain,
    /// Keel: the authority to let threads use RD/WR FS/GS BASE.
    FsGsBaseControl,
    /// The last capability to an object in the middle of deletion: a CNode or TCB
    /// being emptied, or an endpoint or notification whose waiters are being woken.
    /// `scan`: a CNode's or TCB's emptying progress, kept between system calls when a
    /// preemption point stopped it: the object's slots below index `scan` are empty
    /// (except the slot holding this Zombie, if the object holds it). An endpoint or
    /// notification keeps no position (0): its wait queue is what is left to do.
    Zombie {
        ptr: u64,
        kind: ZombieKind,
        scan: u64,
    },
    /// Keel: an LDT object (4 KiB, 512 descriptors) at `base`.
    Ldt { base: u64 },
}

/// What a Zombie stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZombieKind {
    /// A CNode of 2^radix slots.
    CNode { radix: u8 },
    /// A TCB.
    Tcb,
    /// An endpoint: no thread can join its queue, and its waiters are being restarted.
    Endpoint,
    /// A notification: likewise; it is already unbound and no IRQ handler signals it.
    Notification,
}

impl ZombieKind {
    /// Whether the Zombie's object is emptied slot by slot (a CNode or a TCB).
    pub fn has_slots(self) -> bool {
        matches!(self, ZombieKind::CNode { .. } | ZombieKind::Tcb)
    }
}

const TYPE_SHIFT: u32 = 59;
const ADDR_MASK: u64 = (1 << 52) - 1;

#[repr(u64)]
enum Tag {
    Untyped = 1,
    Endpoint,
    Notification,
    Reply,
    CNode,
    Tcb,
    IrqControl,
    IrqHandler,
    Frame,
    PageTable,
    PageDirectory,
    Pdpt,
    Pml4,
    AsidControl,
    AsidPool,
    IoPortControl,
    IoPort,
    Domain,
    FsGsBaseControl,
    Zombie,
    Ldt,
}

fn tagged(tag: Tag, rest: u64) -> u64 {
    ((tag as u64) << TYPE_SHIFT) | rest
}

fn encode_mapping(mapping: Option<Mapping>) -> (u64, u64) {
    match mapping {
        Some(m) => (1 << 58, (m.vaddr >> 12) | ((m.asid as u64) << 48)),
        None => (0, 0),
    }
}

/// The two words of a paging-object capability (frame, page table, page directory or
/// PDPT) encoded as `[w0, w1]` with its mapping record replaced by `mapping`: the same
/// words [`Cap::encode`] gives for that capability with `mapping`. The mapping record
/// is bit 58 of the first word and all of the second; nothing else changes.
pub fn with_mapping([w0, _]: [u64; 2], mapping: Option<Mapping>) -> [u64; 2] {
    let (m0, m1) = encode_mapping(mapping);
    [(w0 & !(1 << 58)) | m0, m1]
}

/// Whether a capability's first word is that of a frame, page table, page directory or
/// PDPT (the capabilities with a mapping record).
pub fn has_mapping_record(w0: u64) -> bool {
    matches!(w0 >> TYPE_SHIFT, 9..=12)
}

/// A frame capability from its first word without the type tag (`rest`) and its second.
#[inline(always)]
fn frame(rest: u64, w1: u64) -> Cap {
    Cap::Frame {
        base: (rest & ((1 << 40) - 1)) << 12,
        size: FrameSize::from_bits(rest >> 52),
        rights: VmRights::from_bits(rest >> 54),
        device: rest & (1 << 56) != 0,
        mapping: decode_mapping(rest, w1),
    }
}

fn decode_mapping(w0: u64, w1: u64) -> Option<Mapping> {
    (w0 & (1 << 58) != 0).then_some(Mapping {
        vaddr: (w1 & ((1 << 48) - 1)) << 12,
        asid: (w1 >> 48) as u16,
    })
}

impl Cap {
    /// The two-word encoding stored in a slot.
    pub fn encode(self) -> [u64; 2] {
        match self {
            Cap::Null => [0, 0],
            Cap::Untyped {
                base,
                size_bits,
                free_index,
                device,
            } => [
                tagged(
                    Tag::Untyped,
                    base | ((size_bits as u64 & 63) << 52) | ((device as u64) << 58),
                ),
                free_index,
            ],
            Cap::Endpoint { ptr, badge, rights } => [
                tagged(Tag::Endpoint, ptr | ((rights.0 as u64) << 52)),
                badge,
            ],
            Cap::Notification { ptr, badge, rights } => [
                tagged(Tag::Notification, ptr | ((rights.0 as u64) << 52)),
                badge,
            ],
            Cap::Reply {
                tcb,
                master,
                can_grant,
            } => [
                tagged(
                    Tag::Reply,
                    tcb | ((master as u64) << 52) | ((can_grant as u64) << 53),
                ),
                0,
            ],
            Cap::CNode {
                ptr,
                radix,
                guard_size,
                guard,
            } => [
                tagged(
                    Tag::CNode,
                    (ptr >> 4)
                        | ((radix as u64 & 63) << 48)
                        | (((radix as u64 & 63) + (guard_size as u64 & 63) == 64) as u64) << 54,
                ),
                (guard & ((1 << 58) - 1)) | ((guard_size as u64 & 63) << 58),
            ],
            Cap::Tcb { ptr } => [tagged(Tag::Tcb, ptr), 0],
            Cap::IrqControl => [tagged(Tag::IrqControl, 0), 0],
            Cap::IrqHandler { irq } => [tagged(Tag::IrqHandler, irq as u64), 0],
            Cap::Frame {
                base,
                size,
                rights,
                device,
                mapping,
            } => {
                let (m0, m1) = encode_mapping(mapping);
                [
                    tagged(
                        Tag::Frame,
                        (base >> 12)
                            | ((size as u64) << 52)
                            | ((rights as u64) << 54)
                            | ((device as u64) << 56)
                            | m0,
                    ),
                    m1,
                ]
            }
            Cap::PageTable { base, mapping } => {
                let (m0, m1) = encode_mapping(mapping);
                [tagged(Tag::PageTable, (base >> 12) | m0), m1]
            }
            Cap::PageDirectory { base, mapping } => {
                let (m0, m1) = encode_mapping(mapping);
                [tagged(Tag::PageDirectory, (base >> 12) | m0), m1]
            }
            Cap::Pdpt { base, mapping } => {
                let (m0, m1) = encode_mapping(mapping);
                [tagged(Tag::Pdpt, (base >> 12) | m0), m1]
            }
            Cap::Pml4 { base, asid } => [
                // The base as it is (not >> 12 like the other tables): the thread
                // switch reads it with one mask (`raw::pml4_address`).
                tagged(Tag::Pml4, base | ((asid.is_some() as u64) << 58)),
                asid.unwrap_or(0) as u64,
            ],
            Cap::AsidControl => [tagged(Tag::AsidControl, 0), 0],
            Cap::AsidPool { base, asid_base } => {
                [tagged(Tag::AsidPool, base >> 12), asid_base as u64]
            }
            Cap::IoPortControl => [tagged(Tag::IoPortControl, 0), 0],
            Cap::IoPort { first, last } => {
                [tagged(Tag::IoPort, first as u64 | ((last as u64) << 16)), 0]
            }
            Cap::Domain => [tagged(Tag::Domain, 0), 0],
            Cap::FsGsBaseControl => [tagged(Tag::FsGsBaseControl, 0), 0],
            Cap::Zombie { ptr, kind, scan } => {
                // Bit 52 clear: a CNode with the radix in bits 53..58; set: bits 53..58
                // say which other kind.
                let (not_cnode, field) = match kind {
                    ZombieKind::CNode { radix } => (0, radix as u64 & 63),
                    ZombieKind::Tcb => (1, 0),
                    ZombieKind::Endpoint => (1, 1),
                    ZombieKind::Notification => (1, 2),
                };
                [
                    tagged(Tag::Zombie, ptr | (not_cnode << 52) | (field << 53)),
                    scan,
                ]
            }
            Cap::Ldt { base } => [tagged(Tag::Ldt, base >> 12), 0],
        }
    }

    /// Decodes a frame capability's two words, inline (`None` for any other kind): the
    /// general path decodes an invoked frame this way, so only the fields its invocation
    /// uses are computed and nothing goes through memory.
    #[inline(always)]
    pub fn decode_frame([w0, w1]: [u64; 2]) -> Option<Cap> {
        (w0 >> TYPE_SHIFT == Tag::Frame as u64).then(|| frame(w0 & ((1 << TYPE_SHIFT) - 1), w1))
    }

    /// Decodes a slot's two words.
    pub fn decode([w0, w1]: [u64; 2]) -> Cap {
        let rest = w0 & ((1 << TYPE_SHIFT) - 1);
        let addr = rest & ADDR_MASK;
        let page = (rest & ((1 << 40) - 1)) << 12;
        match w0 >> TYPE_SHIFT {
            1 => Cap::Untyped {
                base: addr,
                size_bits: ((rest >> 52) & 63) as u8,
                free_index: w1,
                device: rest & (1 << 58) != 0,
            },
            2 => Cap::Endpoint {
                ptr: addr,
                badge: w1,
                rights: Rights(((rest >> 52) & 15) as u8),
            },
            3 => Cap::Notification {
                ptr: addr,
                badge: w1,
                rights: Rights(((rest >> 52) & 15) as u8),
            },
            4 => Cap::Reply {
                tcb: addr,
                master: rest & (1 << 52) != 0,
                can_grant: rest & (1 << 53) != 0,
            },
            5 => Cap::CNode {
                ptr: (rest & ((1 << 48) - 1)) << 4,
                radix: ((rest >> 48) & 63) as u8,
                guard_size: (w1 >> 58) as u8,
                guard: w1 & ((1 << 58) - 1),
            },
            6 => Cap::Tcb { ptr: addr },
            7 => Cap::IrqControl,
            8 => Cap::IrqHandler { irq: rest as u16 },
            9 => frame(rest, w1),
            10 => Cap::PageTable {
                base: page,
                mapping: decode_mapping(rest, w1),
            },
            11 => Cap::PageDirectory {
                base: page,
                mapping: decode_mapping(rest, w1),
            },
            12 => Cap::Pdpt {
                base: page,
                mapping: decode_mapping(rest, w1),
            },
            13 => Cap::Pml4 {
                base: addr,
                asid: (rest & (1 << 58) != 0).then_some(w1 as u16),
            },
            14 => Cap::AsidControl,
            15 => Cap::AsidPool {
                base: page,
                asid_base: w1 as u16,
            },
            16 => Cap::IoPortControl,
            17 => Cap::IoPort {
                first: rest as u16,
                last: (rest >> 16) as u16,
            },
            18 => Cap::Domain,
            19 => Cap::FsGsBaseControl,
            20 => {
                let field = ((rest >> 53) & 63) as u8;
                let kind = match (rest & (1 << 52) != 0, field) {
                    (false, radix) => ZombieKind::CNode { radix },
                    (true, 1) => ZombieKind::Endpoint,
                    (true, 2) => ZombieKind::Notification,
                    (true, _) => ZombieKind::Tcb,
                };
                Cap::Zombie {
                    ptr: addr,
                    kind,
                    scan: w1,
                }
            }
            21 => Cap::Ldt { base: page },
            _ => Cap::Null,
        }
    }

    /// The seL4 capability type tag (`keel_abi::object::cap_tag`), as DebugCapIdentify
    /// reports it.
    pub fn tag(&self) -> u64 {
        use keel_abi::object::cap_tag as t;
        match self {
            Cap::Null => t::NULL,
            Cap::Untyped { .. } => t::UNTYPED,
            Cap::Endpoint { .. } => t::ENDPOINT,
            Cap::Notification { .. } => t::NOTIFICATION,
            Cap::Reply { .. } => t::REPLY,
            Cap::CNode { .. } => t::CNODE,
            Cap::Tcb { .. } => t::THREAD,
            Cap::IrqControl => t::IRQ_CONTROL,
            Cap::IrqHandler { .. } => t::IRQ_HANDLER,
            Cap::Frame { .. } => t::FRAME,
            Cap::PageTable { .. } => t::PAGE_TABLE,
            Cap::PageDirectory { .. } => t::PAGE_DIRECTORY,
            Cap::Pdpt { .. } => t::PDPT,
            Cap::Pml4 { .. } => t::PML4,
            Cap::AsidControl => t::ASID_CONTROL,
            Cap::AsidPool { .. } => t::ASID_POOL,
            Cap::IoPortControl => t::IO_PORT_CONTROL,
            Cap::IoPort { .. } => t::IO_PORT,
            Cap::Domain => t::DOMAIN,
            Cap::FsGsBaseControl => t::KEEL_FS_GS_BASE_CONTROL,
            Cap::Zombie { .. } => t::ZOMBIE,
            Cap::Ldt { .. } => t::KEEL_LDT,
        }
    }

    /// Whether the slot is empty.
    pub fn is_null(&self) -> bool {
        matches!(self, Cap::Null)
    }

    /// The kernel object this capability names, if it names one: (address, size in bytes).
    /// Two capabilities to the same object have the same answer.
    pub fn object(&self) -> Option<(u64, u64)> {
        match *self {
            Cap::Untyped {
                base, size_bits, ..
            } => Some((base, 1 << size_bits)),
            Cap::Endpoint { ptr, .. } => Some((ptr, 16)),
            Cap::Notification { ptr, .. } => Some((ptr, 32)),
            Cap::CNode { ptr, radix, .. } => Some((ptr, 1 << (radix as u64 + 5))),
            Cap::Tcb { ptr } => Some((ptr, 1 << super::TCB_BITS)),
            Cap::Frame { base, size, .. } => Some((base, 1 << size.bits())),
            Cap::PageTable { base, .. }
            | Cap::PageDirectory { base, .. }
            | Cap::Pdpt { base, .. } => Some((base, 4096)),
            Cap::Pml4 { base, .. } | Cap::AsidPool { base, .. } | Cap::Ldt { base } => {
                Some((base, 4096))
            }
            Cap::Zombie { ptr, kind, .. } => Some((
                ptr,
                match kind {
                    ZombieKind::CNode { radix } => 1 << (radix as u64 + 5),
                    ZombieKind::Tcb => 1 << super::TCB_BITS,
                    ZombieKind::Endpoint => 16,
                    ZombieKind::Notification => 32,
                },
            )),
            _ => None,
        }
    }

    /// Whether this is a physical-memory capability (as opposed to an authority such as
    /// IRQControl or an I/O port range).
    pub fn is_physical(&self) -> bool {
        self.object().is_some()
    }

    /// The badge of an endpoint or notification capability (0 = unbadged).
    pub fn badge(&self) -> u64 {
        match *self {
            Cap::Endpoint { badge, .. } | Cap::Notification { badge, .. } => badge,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_to_call_is_write_and_a_grant_right() {
        for high in 0u64..4096 {
            let w0 = high << 52 | 0x1234_5000;
            let expected = raw::endpoint_with(w0, Rights::WRITE.0)
                && raw::rights(w0) & (Rights::GRANT.0 | Rights::GRANT_REPLY.0) != 0;
            assert_eq!(raw::endpoint_to_call(w0), expected, "{high:#x}");
        }
    }

    #[test]
    fn endpoint_with_checks_type_and_every_right() {
        let ep = |rights: Rights| {
            Cap::Endpoint {
                ptr: 0x12_3000,
                badge: 9,
                rights,
            }
            .encode()[0]
        };
        for bits in 0..16u8 {
            let w0 = ep(Rights(bits));
            for want in 0..16u8 {
                assert_eq!(raw::endpoint_with(w0, want), bits & want == want);
            }
        }
        let notification = Cap::Notification {
            ptr: 0x12_3000,
            badge: 9,
            rights: Rights::ALL,
        }
        .encode()[0];
        assert!(!raw::endpoint_with(notification, 0));
        assert!(!raw::endpoint_with(0, 0));
        assert!(raw::notification_with(notification, Rights::ALL.0));
        assert!(!raw::notification_with(ep(Rights::ALL), 0));
        for bits in 0..16u8 {
            let w0 = Cap::Notification {
                ptr: 0x12_3000,
                badge: 9,
                rights: Rights(bits),
            }
            .encode()[0];
            for want in 0..16u8 {
                assert_eq!(raw::notification_with(w0, want), bits & want == want);
            }
        }
    }

    /// One capability of every kind (mapped and unmapped paging objects, PML4s with
    /// and without an ASID, every Zombie kind).
    fn sample_caps() -> Vec<Cap> {
        let m = Some(Mapping {
            asid: 7,
            vaddr: 0x7fff_f000,
        });
        vec![
            Cap::Null,
            Cap::Untyped {
                base: 0x1234_0000,
                size_bits: 16,
                free_index: 0x800,
                device: true,
            },
            Cap::Endpoint {
                ptr: 0x9_0000_0010,
                badge: u64::MAX,
                rights: Rights(0b1011),
            },
            Cap::Notification {
                ptr: 0x20,
                badge: 5,
                rights: Rights::ALL,
            },
            Cap::Reply {
                tcb: 0x80_0000,
                master: true,
                can_grant: false,
            },
            Cap::CNode {
                ptr: 0x4000,
                radix: 12,
                guard_size: 52,
                guard: 0x3_ffff_ffff_ffff,
            },
            Cap::Tcb { ptr: 0xf_ffff_f800 },
            Cap::IrqControl,
            Cap::IrqHandler { irq: 255 },
            Cap::Frame {
                base: 0x4000_0000,
                size: FrameSize::Huge,
                rights: VmRights::ReadOnly,
                device: false,
                mapping: m,
            },
            Cap::Frame {
                base: 0x1000,
                size: FrameSize::Small,
                rights: VmRights::ReadWrite,
                device: true,
                mapping: None,
            },
            Cap::PageTable {
                base: 0x5000,
                mapping: m,
            },
            Cap::PageDirectory {
                base: 0x6000,
                mapping: None,
            },
            Cap::Pdpt {
                base: 0x7000,
                mapping: m,
            },
            Cap::Pml4 {
                base: 0x8000,
                asid: Some(513),
            },
            Cap::Pml4 {
                base: 0x8000,
                asid: None,
            },
            Cap::AsidControl,
            Cap::AsidPool {
                base: 0x9000,
                asid_base: 1024,
            },
            Cap::IoPortControl,
            Cap::IoPort {
                first: 0x3f8,
                last: 0x3ff,
            },
            Cap::Domain,
            Cap::FsGsBaseControl,
            Cap::Zombie {
                ptr: 0x10000,
                kind: ZombieKind::CNode { radix: 8 },
                scan: 17,
            },
            Cap::Zombie {
                ptr: 0x10000,
                kind: ZombieKind::CNode { radix: 58 },
                scan: 0,
            },
            Cap::Zombie {
                ptr: 0x9_0000_0400,
                kind: ZombieKind::Tcb,
                scan: 30,
            },
            Cap::Zombie {
                ptr: 0x9_0000_0010,
                kind: ZombieKind::Endpoint,
                scan: 0,
            },
            Cap::Zombie {
                ptr: 0x9_0000_0020,
                kind: ZombieKind::Notification,
                scan: 0,
            },
            Cap::Ldt {
                base: 0xf_ffff_f000,
            },
        ]
    }

    /// The general path's raw readers give what decoding the whole capability gives,
    /// for every kind (a wrong type reads as `None`).
    #[test]
    fn raw_readers_match_decode() {
        for cap in sample_caps() {
            let words = cap.encode();
            let pml4 = match cap {
                Cap::Pml4 {
                    base,
                    asid: Some(asid),
                } => Some((base, asid)),
                _ => None,
            };
            assert_eq!(raw::pml4_with_asid(words), pml4, "{cap:?}");
            let frame = matches!(cap, Cap::Frame { .. }).then_some(cap);
            assert_eq!(Cap::decode_frame(words), frame, "{cap:?}");
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let caps = sample_caps();
        for cap in caps {
            assert_eq!(Cap::decode(cap.encode()), cap, "{cap:?}");
        }
        // The fastpath's raw accessors agree with the encoding.
        let [w0, w1] = Cap::Endpoint {
            ptr: 0x9_0000_0010,
            badge: 7,
            rights: Rights(0b1011),
        }
        .encode();
        assert_eq!(
            (raw::tag(w0), raw::address(w0), raw::rights(w0), w1),
            (raw::ENDPOINT, 0x9_0000_0010, 0b1011, 7)
        );
        let [w0, w1] = Cap::CNode {
            ptr: 0x4000,
            radix: 12,
            guard_size: 52,
            guard: 0x3ff,
        }
        .encode();
        assert_eq!(raw::tag(w0), raw::CNODE);
        assert_eq!(raw::one_level_cnode(w0, w1), Some((0x4000, 12, 0x3ff)));
        assert_eq!(Cap::decode([w0, w1]).encode(), [w0, w1]);
        let two_level = Cap::CNode {
            ptr: 0x4000,
            radix: 12,
            guard_size: 0,
            guard: 0,
        }
        .encode();
        assert_eq!(raw::one_level_cnode(two_level[0], two_level[1]), None);
        let reply = Cap::Reply {
            tcb: 0x80_0000,
            master: false,
            can_grant: true,
        };
        assert_eq!(raw::reply(0x80_0000, true), reply.encode()[0]);
        assert!(!raw::reply_is_master(reply.encode()[0]));
        assert_eq!(
            raw::assigned_pml4(
                Cap::Pml4 {
                    base: 0x8000,
                    asid: Some(3)
                }
                .encode()[0]
            ),
            Some(0x8000)
        );
        assert_eq!(
            raw::assigned_pml4(
                Cap::Pml4 {
                    base: 0x8000,
                    asid: None
                }
                .encode()[0]
            ),
            None
        );
    }
}

/// Direct access to the two-word encoding, for the IPC fastpath: each function reads
/// one field of a capability of a known type without decoding the whole capability.
/// Callers check [`raw::tag`] first. (Kept next to [`Cap::encode`], which defines the
/// layout; the round-trip tests cover both.)
pub mod raw {
    use super::{ADDR_MASK, TYPE_SHIFT, Tag};

    /// Type tag of an endpoint capability.
    pub const ENDPOINT: u64 = Tag::Endpoint as u64;
    /// Type tag of a notification capability.
    pub const NOTIFICATION: u64 = Tag::Notification as u64;
    /// Type tag of a reply capability.
    pub const REPLY: u64 = Tag::Reply as u64;
    /// Type tag of a CNode capability.
    pub const CNODE: u64 = Tag::CNode as u64;
    /// Type tag of a PML4 capability.
    pub const PML4: u64 = Tag::Pml4 as u64;

    /// The type tag of a capability's first word.
    #[inline(always)]
    pub const fn tag(w0: u64) -> u64 {
        w0 >> TYPE_SHIFT
    }
    /// Object address of an endpoint, notification, reply (its TCB) or TCB capability.
    #[inline(always)]
    pub const fn address(w0: u64) -> u64 {
        w0 & ADDR_MASK
    }
    /// Rights bits of an endpoint or notification capability.
    #[inline(always)]
    pub const fn rights(w0: u64) -> u8 {
        ((w0 >> 52) & 15) as u8
    }
    /// Whether `w0` is an endpoint capability with every right in `rights` (one mask
    /// and one compare over the type and rights bits).
    #[inline(always)]
    pub const fn endpoint_with(w0: u64, rights: u8) -> bool {
        tagged_with(w0, ENDPOINT, rights)
    }
    /// Whether `w0` is an endpoint capability that can Call: Write, and Grant or
    /// GrantReply (to give the receiver a reply capability). One condition, so that it
    /// compiles to one branch: the type and those three rights (top 12 bits, masked)
    /// minus the smallest valid value (endpoint, Write, Grant) leaves 0, 4 or 8 exactly
    /// for the valid ones (Grant, GrantReply, both), which a rotation by 2 maps to 0..=2
    /// and every other value (low bits set, or beyond 8) above 2. (Host test
    /// `endpoint_to_call_is_write_and_a_grant_right` checks all 4096 values.)
    #[inline(always)]
    pub const fn endpoint_to_call(w0: u64) -> bool {
        use super::Rights;
        const TYPE: u32 = 0x1f << (TYPE_SHIFT - 52);
        const WRITE: u32 = Rights::WRITE.0 as u32;
        const GRANT: u32 = Rights::GRANT.0 as u32;
        const GRANT_REPLY: u32 = Rights::GRANT_REPLY.0 as u32;
        const SMALLEST: u32 = ((ENDPOINT as u32) << (TYPE_SHIFT - 52)) | WRITE | GRANT;
        let high = (w0 >> 52) as u32 & (TYPE | WRITE | GRANT | GRANT_REPLY);
        high.wrapping_sub(SMALLEST).rotate_right(2) <= 2
    }
    /// Whether `w0` is a notification capability with every right in `rights`.
    #[inline(always)]
    pub const fn notification_with(w0: u64, rights: u8) -> bool {
        tagged_with(w0, NOTIFICATION, rights)
    }
    /// Whether `w0` has type tag `tag` and every right in `rights` (endpoint and
    /// notification capabilities keep their rights in bits 52–55).
    #[inline(always)]
    const fn tagged_with(w0: u64, tag: u64, rights: u8) -> bool {
        let high = w0 >> 52;
        let mask = (0x1f << (TYPE_SHIFT - 52)) | rights as u64;
        high & mask == (tag << (TYPE_SHIFT - 52)) | rights as u64
    }
    /// Whether a reply capability is the master one.
    #[inline(always)]
    pub const fn reply_is_master(w0: u64) -> bool {
        w0 & (1 << 52) != 0
    }
    /// First word of a (non-master) reply capability to `tcb`.
    #[inline(always)]
    pub const fn reply(tcb: u64, can_grant: bool) -> u64 {
        (REPLY << TYPE_SHIFT) | tcb | ((can_grant as u64) << 53)
    }
    /// (slots address, radix, guard) of a CNode capability whose guard and radix
    /// resolve all 64 bits of a capability pointer in one level (the encoding's bit 54,
    /// derived from the fields when the capability is written), else `None`.
    #[inline(always)]
    pub const fn one_level_cnode(w0: u64, w1: u64) -> Option<(u64, u32, u64)> {
        if w0 >> 54 != (CNODE << (TYPE_SHIFT - 54)) | 1 {
            return None;
        }
        Some((
            (w0 & ((1 << 48) - 1)) << 4,
            ((w0 >> 48) & 63) as u32,
            w1 & ((1 << 58) - 1),
        ))
    }
    /// Type tag of a frame capability.
    pub const FRAME: u64 = Tag::Frame as u64;

    /// (base, log2 size) of a RAM (non-device) frame capability, else `None`.
    #[inline(always)]
    pub const fn ram_frame(w0: u64) -> Option<(u64, u32)> {
        if tag(w0) != FRAME || w0 & (1 << 56) != 0 {
            return None;
        }
        // A table, not a match: one load instead of a compare-and-select chain (the
        // general path reads the IPC buffer capability on every invocation).
        const BITS: [u32; 4] = [12, 21, 30, 30];
        Some((
            (w0 & ((1 << 40) - 1)) << 12,
            BITS[((w0 >> 52) & 3) as usize],
        ))
    }

    /// The PML4 address of a PML4 capability (its type not checked).
    #[inline(always)]
    pub const fn pml4_address(w0: u64) -> u64 {
        w0 & ADDR_MASK
    }

    /// The ASID of a PML4 capability that has one (its second word; below 4096).
    #[inline(always)]
    pub const fn pml4_asid(w1: u64) -> u64 {
        w1 & 0xfff
    }

    /// (PML4 address, ASID) of a PML4 capability that has an ASID, else `None`: what
    /// [`Cap::decode`](super::Cap::decode) gives as `Cap::Pml4 { base, asid: Some(asid) }`.
    #[inline(always)]
    pub const fn pml4_with_asid([w0, w1]: [u64; 2]) -> Option<(u64, u16)> {
        if w0 >> 58 == (PML4 << 1) | 1 {
            Some((pml4_address(w0), w1 as u16))
        } else {
            None
        }
    }

    /// The PML4 address of a PML4 capability that has an ASID, else `None`.
    #[inline(always)]
    pub const fn assigned_pml4(w0: u64) -> Option<u64> {
        if tag(w0) == PML4 && w0 & (1 << 58) != 0 {
            Some(pml4_address(w0))
        } else {
            None
        }
    }
}
