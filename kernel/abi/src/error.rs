//! Error codes of invocations and the message registers that describe each error
//! (seL4 `seL4_Error`, `seL4_LookupFailureType`).
//!
//! When an invocation fails the kernel replies to the caller with a message whose label
//! is the [`Error`] code; the message registers then hold the details listed on each
//! variant (and in the submodules' constants). A reply with label 0
//! ([`Error::NoError`]) is a success whose registers are the invocation's results.
//! The lookup-failure description ([`LookupFailure`]) is shared with capability fault
//! messages ([`crate::fault::cap_fault`]).

/// seL4_Error, the label of a kernel reply to an invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum Error {
    /// seL4_NoError: success.
    NoError = 0,
    /// seL4_InvalidArgument: an argument is out of its domain. MR0 = index of the bad
    /// argument, counting the invocation's message-register arguments from 0.
    /// Length 1.
    InvalidArgument = 1,
    /// seL4_InvalidCapability: a capability is of the wrong type or lacks rights.
    /// MR0 = which one: 0 for the invoked capability, `i + 1` for extra capability `i`.
    /// Length 1.
    InvalidCapability = 2,
    /// seL4_IllegalOperation: the operation is not allowed on this object in its state.
    /// Length 0.
    IllegalOperation = 3,
    /// seL4_RangeError: a value lies outside an allowed range. MR0 = minimum,
    /// MR1 = maximum allowed. Length 2.
    RangeError = 4,
    /// seL4_AlignmentError: an address or size is not aligned. Length 0.
    AlignmentError = 5,
    /// seL4_FailedLookup: a capability lookup failed. MR0 = 1 if it was the source
    /// capability of a two-capability operation, else 0; MR1.. = the lookup failure
    /// ([`LookupFailure`], starting at [`failed_lookup::FAILURE_TYPE`]). Length 2..=5.
    FailedLookup = 6,
    /// seL4_TruncatedMessage: the message is too short for the invocation. Length 0.
    TruncatedMessage = 7,
    /// seL4_DeleteFirst: the destination slot is not empty. Length 0.
    DeleteFirst = 8,
    /// seL4_RevokeFirst: the object still has derived capabilities (e.g. Retype on an
    /// untyped with children). Length 0.
    RevokeFirst = 9,
    /// seL4_NotEnoughMemory: the untyped has too little room left. MR0 = bytes still
    /// free in the untyped. Length 1.
    NotEnoughMemory = 10,
}

/// seL4_NumErrors: number of error codes, `NoError` included.
pub const NUM_ERRORS: u64 = 11;

impl Error {
    /// Every code, in numeric order.
    pub const ALL: [Error; NUM_ERRORS as usize] = [
        Error::NoError,
        Error::InvalidArgument,
        Error::InvalidCapability,
        Error::IllegalOperation,
        Error::RangeError,
        Error::AlignmentError,
        Error::FailedLookup,
        Error::TruncatedMessage,
        Error::DeleteFirst,
        Error::RevokeFirst,
        Error::NotEnoughMemory,
    ];

    /// The code for a reply label, if it is one.
    pub const fn from_u64(value: u64) -> Option<Self> {
        if value < NUM_ERRORS {
            Some(Self::ALL[value as usize])
        } else {
            None
        }
    }

    /// The numeric code.
    pub const fn to_u64(self) -> u64 {
        self as u64
    }

    /// seL4's name of the code (`seL4_` prefix dropped).
    pub const fn name(self) -> &'static str {
        match self {
            Error::NoError => "NoError",
            Error::InvalidArgument => "InvalidArgument",
            Error::InvalidCapability => "InvalidCapability",
            Error::IllegalOperation => "IllegalOperation",
            Error::RangeError => "RangeError",
            Error::AlignmentError => "AlignmentError",
            Error::FailedLookup => "FailedLookup",
            Error::TruncatedMessage => "TruncatedMessage",
            Error::DeleteFirst => "DeleteFirst",
            Error::RevokeFirst => "RevokeFirst",
            Error::NotEnoughMemory => "NotEnoughMemory",
        }
    }

    /// Number of message registers the kernel's error reply carries, or `None` when it
    /// depends on the lookup failure ([`Error::FailedLookup`]: 1 + [`LookupFailure::length`]).
    pub const fn reply_length(self) -> Option<usize> {
        match self {
            Error::NoError => None,
            Error::InvalidArgument | Error::InvalidCapability | Error::NotEnoughMemory => Some(1),
            Error::RangeError => Some(2),
            Error::FailedLookup => None,
            Error::IllegalOperation
            | Error::AlignmentError
            | Error::TruncatedMessage
            | Error::DeleteFirst
            | Error::RevokeFirst => Some(0),
        }
    }
}

/// Message registers of an [`Error::InvalidArgument`] reply.
pub mod invalid_argument {
    /// MR holding the index of the offending argument.
    pub const ARGUMENT_NUMBER: usize = 0;
}

/// Message registers of an [`Error::InvalidCapability`] reply.
pub mod invalid_capability {
    /// MR holding the index of the offending capability (0 = invoked, `i + 1` = extra
    /// capability `i`).
    pub const CAP_NUMBER: usize = 0;
}

/// Message registers of an [`Error::RangeError`] reply.
pub mod range_error {
    /// MR holding the smallest allowed value.
    pub const MIN: usize = 0;
    /// MR holding the largest allowed value.
    pub const MAX: usize = 1;
}

/// Message registers of an [`Error::NotEnoughMemory`] reply.
pub mod not_enough_memory {
    /// MR holding the bytes still available in the untyped.
    pub const BYTES_AVAILABLE: usize = 0;
}

/// Message registers of an [`Error::FailedLookup`] reply.
pub mod failed_lookup {
    /// MR holding 1 when the source capability's lookup failed, 0 otherwise.
    pub const WAS_SOURCE: usize = 0;
    /// MR holding the [`super::LookupFailure`] type; the failure's further words
    /// follow in the next registers.
    pub const FAILURE_TYPE: usize = 1;
}

/// seL4_LookupFailureType: why a capability lookup failed. As the kernel writes it in
/// a message, the description is: the type, then (only for some types) bits left,
/// then bits found or guard found, then guard bits found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum LookupFailure {
    /// seL4_NoFailure (never sent by the kernel).
    NoFailure = 0,
    /// seL4_InvalidRoot: the root CNode capability is not a CNode. No further words.
    InvalidRoot = 1,
    /// seL4_MissingCapability: the lookup ended at an empty slot or a non-CNode with
    /// bits left. +1: bits left.
    MissingCapability = 2,
    /// seL4_DepthMismatch: the depth runs out in the middle of a CNode, or more bits
    /// were resolved than requested. +1: bits left, +2: bits of this level found.
    DepthMismatch = 3,
    /// seL4_GuardMismatch: a CNode's guard did not match. +1: bits left, +2: guard
    /// found (the CNode's guard value), +3: guard size in bits.
    GuardMismatch = 4,
}

impl LookupFailure {
    /// The type for a message word, if it is one.
    pub const fn from_u64(value: u64) -> Option<Self> {
        match value {
            0 => Some(Self::NoFailure),
            1 => Some(Self::InvalidRoot),
            2 => Some(Self::MissingCapability),
            3 => Some(Self::DepthMismatch),
            4 => Some(Self::GuardMismatch),
            _ => None,
        }
    }

    /// Words the description takes in a message, the type word included.
    pub const fn length(self) -> usize {
        match self {
            Self::NoFailure | Self::InvalidRoot => 1,
            Self::MissingCapability => 2,
            Self::DepthMismatch => 3,
            Self::GuardMismatch => 4,
        }
    }
}

/// Offsets of the lookup-failure words relative to the failure-type word.
pub mod lookup_failure {
    /// The failure type itself.
    pub const TYPE: usize = 0;
    /// Bits of the capability pointer not yet resolved (MissingCapability,
    /// DepthMismatch, GuardMismatch).
    pub const BITS_LEFT: usize = 1;
    /// DepthMismatch: number of bits the level would have resolved.
    pub const DEPTH_MISMATCH_BITS_FOUND: usize = 2;
    /// GuardMismatch: the guard value of the CNode.
    pub const GUARD_MISMATCH_GUARD_FOUND: usize = 2;
    /// GuardMismatch: the guard's size in bits.
    pub const GUARD_MISMATCH_BITS_FOUND: usize = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        for (i, e) in Error::ALL.iter().enumerate() {
            assert_eq!(e.to_u64(), i as u64);
            assert_eq!(Error::from_u64(i as u64), Some(*e));
        }
        assert_eq!(Error::from_u64(NUM_ERRORS), None);
        assert_eq!(Error::from_u64(u64::MAX), None);
        assert_eq!(Error::NotEnoughMemory as u64, 10);
        assert_eq!(Error::FailedLookup.name(), "FailedLookup");
    }

    #[test]
    fn lookup_failures() {
        for v in 0..5 {
            assert_eq!(LookupFailure::from_u64(v).unwrap() as u64, v);
        }
        assert_eq!(LookupFailure::from_u64(5), None);
        assert_eq!(LookupFailure::GuardMismatch.length(), 4);
    }
}
