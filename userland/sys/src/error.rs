//! Typed invocation errors: seL4's error codes (`keel_abi::error::Error`) with the
//! detail words the kernel's error reply carries.

use core::fmt;

use keel_abi::error::{Error as Code, LookupFailure};

/// How a capability lookup failed (the lookup-failure words of a FailedLookup error or
/// a capability fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The root was not a CNode.
    InvalidRoot,
    /// An empty slot or a non-CNode was reached with `bits_left` bits unresolved.
    MissingCapability {
        /// Bits not yet resolved.
        bits_left: u64,
    },
    /// The depth ran out inside a CNode, or resolved too many bits.
    DepthMismatch {
        /// Bits not yet resolved.
        bits_left: u64,
        /// Bits the level would have resolved.
        bits_found: u64,
    },
    /// A guard did not match.
    GuardMismatch {
        /// Bits not yet resolved.
        bits_left: u64,
        /// The CNode's guard.
        guard_found: u64,
        /// The guard's size in bits.
        guard_size: u64,
    },
    /// A failure type this library does not know.
    Other(u64),
}

impl Lookup {
    /// Decodes the lookup-failure words (type first).
    pub fn from_words(w: &[u64]) -> Self {
        let at = |i: usize| w.get(i).copied().unwrap_or(0);
        match LookupFailure::from_u64(at(0)) {
            Some(LookupFailure::InvalidRoot) => Self::InvalidRoot,
            Some(LookupFailure::MissingCapability) => Self::MissingCapability { bits_left: at(1) },
            Some(LookupFailure::DepthMismatch) => Self::DepthMismatch {
                bits_left: at(1),
                bits_found: at(2),
            },
            Some(LookupFailure::GuardMismatch) => Self::GuardMismatch {
                bits_left: at(1),
                guard_found: at(2),
                guard_size: at(3),
            },
            _ => Self::Other(at(0)),
        }
    }

    /// The failure type.
    pub fn kind(&self) -> Option<LookupFailure> {
        match self {
            Self::InvalidRoot => Some(LookupFailure::InvalidRoot),
            Self::MissingCapability { .. } => Some(LookupFailure::MissingCapability),
            Self::DepthMismatch { .. } => Some(LookupFailure::DepthMismatch),
            Self::GuardMismatch { .. } => Some(LookupFailure::GuardMismatch),
            Self::Other(_) => None,
        }
    }
}

/// A failed invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// seL4_InvalidArgument: argument `index` (counting message-register arguments).
    InvalidArgument {
        /// Index of the bad argument.
        index: u64,
    },
    /// seL4_InvalidCapability: capability `index` (0 = invoked, i + 1 = extra cap i).
    InvalidCapability {
        /// Which capability.
        index: u64,
    },
    /// seL4_IllegalOperation.
    IllegalOperation,
    /// seL4_RangeError: the allowed range.
    RangeError {
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// seL4_AlignmentError.
    AlignmentError,
    /// seL4_FailedLookup.
    FailedLookup {
        /// Whether the source of a two-slot operation failed.
        source: bool,
        /// How.
        lookup: Lookup,
    },
    /// seL4_TruncatedMessage.
    TruncatedMessage,
    /// seL4_DeleteFirst.
    DeleteFirst,
    /// seL4_RevokeFirst.
    RevokeFirst,
    /// seL4_NotEnoughMemory: bytes still free in the untyped.
    NotEnoughMemory {
        /// Bytes available.
        available: u64,
    },
    /// A reply label that is no seL4 error code.
    UnknownLabel(u64),
}

impl Error {
    /// Decodes an error reply: `label` and its message words (`words[i]` = MR i).
    pub fn from_reply(label: u64, words: &[u64]) -> Self {
        let at = |i: usize| words.get(i).copied().unwrap_or(0);
        match Code::from_u64(label) {
            Some(Code::InvalidArgument) => Self::InvalidArgument { index: at(0) },
            Some(Code::InvalidCapability) => Self::InvalidCapability { index: at(0) },
            Some(Code::IllegalOperation) => Self::IllegalOperation,
            Some(Code::RangeError) => Self::RangeError {
                min: at(0),
                max: at(1),
            },
            Some(Code::AlignmentError) => Self::AlignmentError,
            Some(Code::FailedLookup) => Self::FailedLookup {
                source: at(0) != 0,
                lookup: Lookup::from_words(words.get(1..).unwrap_or(&[])),
            },
            Some(Code::TruncatedMessage) => Self::TruncatedMessage,
            Some(Code::DeleteFirst) => Self::DeleteFirst,
            Some(Code::RevokeFirst) => Self::RevokeFirst,
            Some(Code::NotEnoughMemory) => Self::NotEnoughMemory { available: at(0) },
            Some(Code::NoError) | None => Self::UnknownLabel(label),
        }
    }

    /// seL4's code of this error (`None` for an unknown label).
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::InvalidCapability { .. } => Code::InvalidCapability,
            Self::IllegalOperation => Code::IllegalOperation,
            Self::RangeError { .. } => Code::RangeError,
            Self::AlignmentError => Code::AlignmentError,
            Self::FailedLookup { .. } => Code::FailedLookup,
            Self::TruncatedMessage => Code::TruncatedMessage,
            Self::DeleteFirst => Code::DeleteFirst,
            Self::RevokeFirst => Code::RevokeFirst,
            Self::NotEnoughMemory { .. } => Code::NotEnoughMemory,
            Self::UnknownLabel(_) => return None,
        })
    }

    /// Whether this error has code `code`.
    pub fn is(&self, code: Code) -> bool {
        self.code() == Some(code)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code() {
            Some(c) => write!(f, "{} ({self:?})", c.name()),
            None => write!(f, "{self:?}"),
        }
    }
}

/// The result of an invocation.
pub type Result<T> = core::result::Result<T, Error>;
