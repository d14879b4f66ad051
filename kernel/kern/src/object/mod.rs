//! Kernel objects: capabilities and the objects they name.
//!
//! Layout constants follow seL4 x86-64 (non-MCS): a TCB is 2^11 bytes, an endpoint
//! 2^4, a notification 2^5, a slot 2^5.

pub mod cap;
pub mod cspace;

/// log2 of a TCB object's size.
pub const TCB_BITS: u32 = 11;
/// log2 of an endpoint object's size.
pub const ENDPOINT_BITS: u32 = 4;
/// log2 of a notification object's size.
pub const NOTIFICATION_BITS: u32 = 5;
