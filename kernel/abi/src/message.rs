//! The shape of a message: the message-info word, the message registers, the IPC
//! buffer and capability rights (seL4 x86-64, non-MCS).
//!
//! This module owns the bit layout of `seL4_MessageInfo`, the limits on message length
//! and extra capabilities, which message registers travel in CPU registers, the
//! `seL4_IPCBuffer` layout and the `seL4_CapRights` bits. Message register `i` for
//! `i < MSG_REGISTERS_IN_CPU` travels in a CPU register (see [`crate::syscall`]); the
//! rest live in [`IpcBuffer::msg`]`[i]`. The IPC buffer's slots `msg[0..4]` exist but
//! are not used for a message that fits the CPU registers.

/// Number of bits of [`MessageInfo::length`].
pub const MSG_LENGTH_BITS: u32 = 7;
/// Number of bits of [`MessageInfo::extra_caps`].
pub const MSG_EXTRA_CAP_BITS: u32 = 2;
/// Number of bits of [`MessageInfo::caps_unwrapped`].
pub const MSG_CAPS_UNWRAPPED_BITS: u32 = 3;
/// Number of bits of [`MessageInfo::label`].
pub const MSG_LABEL_BITS: u32 = 52;
/// seL4_MsgMaxLength: the most message registers a message can have.
pub const MSG_MAX_LENGTH: usize = 120;
/// seL4_MsgMaxExtraCaps: the most capabilities one message can carry (2^2 - 1).
pub const MSG_MAX_EXTRA_CAPS: usize = (1 << MSG_EXTRA_CAP_BITS) - 1;
/// seL4_FastMessageRegisters: message registers carried in CPU registers on x86-64.
pub const MSG_REGISTERS_IN_CPU: usize = 4;

/// seL4_MessageInfo: the word in RSI describing a message.
///
/// Bits, most significant first: `label` 63..12 (52 bits), `capsUnwrapped` 11..9
/// (3 bits), `extraCaps` 8..7 (2 bits), `length` 6..0 (7 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct MessageInfo(pub u64);

impl MessageInfo {
    /// Bit position of `length`.
    pub const LENGTH_SHIFT: u32 = 0;
    /// Bit position of `extraCaps`.
    pub const EXTRA_CAPS_SHIFT: u32 = 7;
    /// Bit position of `capsUnwrapped`.
    pub const CAPS_UNWRAPPED_SHIFT: u32 = 9;
    /// Bit position of `label`.
    pub const LABEL_SHIFT: u32 = 12;

    const LENGTH_MASK: u64 = (1 << MSG_LENGTH_BITS) - 1;
    const EXTRA_CAPS_MASK: u64 = (1 << MSG_EXTRA_CAP_BITS) - 1;
    const CAPS_UNWRAPPED_MASK: u64 = (1 << MSG_CAPS_UNWRAPPED_BITS) - 1;
    const LABEL_MASK: u64 = (1 << MSG_LABEL_BITS) - 1;

    /// Builds a message info; each field is cut to its width (as seL4's generated
    /// constructor does in a release build).
    pub const fn new(label: u64, caps_unwrapped: u64, extra_caps: u64, length: u64) -> Self {
        Self(
            (label & Self::LABEL_MASK) << Self::LABEL_SHIFT
                | (caps_unwrapped & Self::CAPS_UNWRAPPED_MASK) << Self::CAPS_UNWRAPPED_SHIFT
                | (extra_caps & Self::EXTRA_CAPS_MASK) << Self::EXTRA_CAPS_SHIFT
                | (length & Self::LENGTH_MASK) << Self::LENGTH_SHIFT,
        )
    }

    /// The raw word.
    pub const fn to_word(self) -> u64 {
        self.0
    }

    /// Wraps a raw word (every bit pattern is a valid message info).
    pub const fn from_word(word: u64) -> Self {
        Self(word)
    }

    /// The label: an invocation label on a request, an error code on a kernel reply, a
    /// fault type on a fault message, or anything the sender chose on plain IPC.
    pub const fn label(self) -> u64 {
        (self.0 >> Self::LABEL_SHIFT) & Self::LABEL_MASK
    }

    /// Bit mask, over the extra capabilities, of those delivered as badges because they
    /// were badged capabilities to the receiving endpoint itself (bit `i` = cap `i`).
    pub const fn caps_unwrapped(self) -> u64 {
        (self.0 >> Self::CAPS_UNWRAPPED_SHIFT) & Self::CAPS_UNWRAPPED_MASK
    }

    /// Number of extra capabilities (0..=3) named in [`IpcBuffer::caps_or_badges`].
    pub const fn extra_caps(self) -> u64 {
        (self.0 >> Self::EXTRA_CAPS_SHIFT) & Self::EXTRA_CAPS_MASK
    }

    /// Number of message registers (0..=127 encodable; the kernel clamps to
    /// [`MSG_MAX_LENGTH`]).
    pub const fn length(self) -> u64 {
        (self.0 >> Self::LENGTH_SHIFT) & Self::LENGTH_MASK
    }

    /// The same message info with another label.
    pub const fn with_label(self, label: u64) -> Self {
        Self::new(
            label,
            self.caps_unwrapped(),
            self.extra_caps(),
            self.length(),
        )
    }

    /// The same message info with another length.
    pub const fn with_length(self, length: u64) -> Self {
        Self::new(
            self.label(),
            self.caps_unwrapped(),
            self.extra_caps(),
            length,
        )
    }

    /// The same message info with another extra-capability count.
    pub const fn with_extra_caps(self, extra_caps: u64) -> Self {
        Self::new(
            self.label(),
            self.caps_unwrapped(),
            extra_caps,
            self.length(),
        )
    }
}

/// seL4_IPCBuffer: the per-thread frame area the kernel reads message registers 4 and
/// up, extra capabilities and the receive slot from. 1024 bytes, aligned to its size
/// (seL4_IPCBufferSizeBits = 10).
#[derive(Clone, Debug)]
#[repr(C, align(1024))]
pub struct IpcBuffer {
    /// Word 0: `tag`, the message info (filled by the kernel on receive).
    pub tag: MessageInfo,
    /// Words 1..=120: `msg`, message registers 0..=119.
    pub msg: [u64; MSG_MAX_LENGTH],
    /// Word 121: `userData`, free for the thread's runtime (seL4 runtimes keep the
    /// buffer's own address here).
    pub user_data: u64,
    /// Words 122..=124: `caps_or_badges`; on send, capability pointers of the extra
    /// capabilities; on receive, the badges of unwrapped capabilities.
    pub caps_or_badges: [u64; MSG_MAX_EXTRA_CAPS],
    /// Word 125: `receiveCNode`, CNode (capability pointer) holding the receive slot.
    pub receive_cnode: u64,
    /// Word 126: `receiveIndex`, index of the receive slot within that CNode.
    pub receive_index: u64,
    /// Word 127: `receiveDepth`, number of bits of `receiveIndex` to resolve.
    pub receive_depth: u64,
}

/// seL4_IPCBufferSizeBits: log2 of the IPC buffer's size and alignment.
pub const IPC_BUFFER_SIZE_BITS: u32 = 10;
const _: () = assert!(core::mem::size_of::<IpcBuffer>() == 1 << IPC_BUFFER_SIZE_BITS);
const _: () = assert!(core::mem::align_of::<IpcBuffer>() == 1 << IPC_BUFFER_SIZE_BITS);
const _: () = assert!(core::mem::offset_of!(IpcBuffer, msg) == 8);
const _: () = assert!(core::mem::offset_of!(IpcBuffer, user_data) == 121 * 8);
const _: () = assert!(core::mem::offset_of!(IpcBuffer, caps_or_badges) == 122 * 8);
const _: () = assert!(core::mem::offset_of!(IpcBuffer, receive_cnode) == 125 * 8);
const _: () = assert!(core::mem::offset_of!(IpcBuffer, receive_index) == 126 * 8);
const _: () = assert!(core::mem::offset_of!(IpcBuffer, receive_depth) == 127 * 8);

impl IpcBuffer {
    /// An all-zero buffer.
    pub const ZERO: Self = Self {
        tag: MessageInfo(0),
        msg: [0; MSG_MAX_LENGTH],
        user_data: 0,
        caps_or_badges: [0; MSG_MAX_EXTRA_CAPS],
        receive_cnode: 0,
        receive_index: 0,
        receive_depth: 0,
    };
}

/// seL4_CapRightsBits: number of rights bits.
pub const CAP_RIGHTS_BITS: u32 = 4;

/// seL4_CapRights: the rights word given to Mint, Map and friends.
///
/// Bits: 0 write, 1 read, 2 grant, 3 grant-reply; bits 4..63 are zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct CapRights(pub u64);

impl CapRights {
    /// capAllowWrite (bit 0).
    pub const WRITE: Self = Self(1 << 0);
    /// capAllowRead (bit 1).
    pub const READ: Self = Self(1 << 1);
    /// capAllowGrant (bit 2).
    pub const GRANT: Self = Self(1 << 2);
    /// capAllowGrantReply (bit 3).
    pub const GRANT_REPLY: Self = Self(1 << 3);
    /// seL4_NoRights.
    pub const NONE: Self = Self(0);
    /// seL4_AllRights.
    pub const ALL: Self = Self(0b1111);
    /// seL4_ReadWrite.
    pub const READ_WRITE: Self = Self(0b0011);
    /// seL4_NoWrite: everything but write.
    pub const NO_WRITE: Self = Self(0b1110);
    /// seL4_NoRead: everything but read.
    pub const NO_READ: Self = Self(0b1101);

    /// seL4_CapRights_new, in seL4's argument order.
    pub const fn new(grant_reply: bool, grant: bool, read: bool, write: bool) -> Self {
        Self((grant_reply as u64) << 3 | (grant as u64) << 2 | (read as u64) << 1 | write as u64)
    }

    /// The four rights bits of a word (other bits dropped).
    pub const fn from_word(word: u64) -> Self {
        Self(word & Self::ALL.0)
    }

    /// Whether every right in `other` is also in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The rights in both.
    pub const fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The rights in either.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Write right.
    pub const fn write(self) -> bool {
        self.contains(Self::WRITE)
    }

    /// Read right.
    pub const fn read(self) -> bool {
        self.contains(Self::READ)
    }

    /// Grant right.
    pub const fn grant(self) -> bool {
        self.contains(Self::GRANT)
    }

    /// Grant-reply right.
    pub const fn grant_reply(self) -> bool {
        self.contains(Self::GRANT_REPLY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_info_bit_positions() {
        assert_eq!(MessageInfo::new(1, 0, 0, 0).0, 1 << 12);
        assert_eq!(MessageInfo::new(0, 1, 0, 0).0, 1 << 9);
        assert_eq!(MessageInfo::new(0, 0, 1, 0).0, 1 << 7);
        assert_eq!(MessageInfo::new(0, 0, 0, 1).0, 1);
        assert_eq!(MessageInfo::new(u64::MAX, 7, 3, 127).0, u64::MAX);
    }

    #[test]
    fn message_info_round_trips() {
        let samples = [
            (0, 0, 0, 0),
            (1, 2, 3, 4),
            ((1 << 52) - 1, 7, 3, 127),
            (0x1234_5678_9abc, 5, 1, 120),
            (57, 0, 2, 3),
        ];
        for (label, unwrapped, extra, length) in samples {
            let info = MessageInfo::new(label, unwrapped, extra, length);
            assert_eq!(info.label(), label);
            assert_eq!(info.caps_unwrapped(), unwrapped);
            assert_eq!(info.extra_caps(), extra);
            assert_eq!(info.length(), length);
            assert_eq!(MessageInfo::from_word(info.to_word()), info);
        }
        let info = MessageInfo::new(9, 1, 2, 3);
        assert_eq!(info.with_label(4), MessageInfo::new(4, 1, 2, 3));
        assert_eq!(info.with_length(100), MessageInfo::new(9, 1, 2, 100));
        assert_eq!(info.with_extra_caps(0), MessageInfo::new(9, 1, 0, 3));
    }

    #[test]
    fn message_info_truncates_wide_fields() {
        let info = MessageInfo::new(1 << 52, 8, 4, 128);
        assert_eq!(info.0, 0);
    }

    #[test]
    fn limits() {
        assert_eq!(MSG_MAX_EXTRA_CAPS, 3);
        assert_eq!(
            MSG_LABEL_BITS + MSG_CAPS_UNWRAPPED_BITS + MSG_EXTRA_CAP_BITS + MSG_LENGTH_BITS,
            64
        );
        const { assert!(MSG_MAX_LENGTH < 1 << MSG_LENGTH_BITS) };
    }

    #[test]
    fn rights_match_sel4_macros() {
        assert_eq!(
            CapRights::new(false, false, true, true),
            CapRights::READ_WRITE
        );
        assert_eq!(CapRights::new(true, true, true, true), CapRights::ALL);
        assert_eq!(CapRights::new(false, false, true, false), CapRights::READ);
        assert_eq!(CapRights::new(false, false, false, true), CapRights::WRITE);
        assert_eq!(CapRights::new(false, true, false, false), CapRights::GRANT);
        assert_eq!(
            CapRights::new(true, false, false, false),
            CapRights::GRANT_REPLY
        );
        assert_eq!(CapRights::new(true, true, true, false), CapRights::NO_WRITE);
        assert_eq!(CapRights::new(true, true, false, true), CapRights::NO_READ);
        assert!(CapRights::ALL.contains(CapRights::GRANT));
        assert!(!CapRights::READ_WRITE.grant());
        assert_eq!(CapRights::from_word(u64::MAX), CapRights::ALL);
    }
}
