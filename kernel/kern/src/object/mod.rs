//! Kernel objects: capabilities and the objects they name.
//!
//! Layout constants follow seL4 x86-64 (non-MCS): a TCB is 2^12 bytes (with the XSAVE area), an endpoint
//! 2^4, a notification 2^5, a slot 2^5.

pub mod cap;
pub mod cnode;
pub mod cspace;
pub mod endpoint;
pub mod irq;
pub mod ldt;
pub mod tcb;
pub mod tcb_debug;
pub mod tcb_ops;
pub mod untyped;
pub mod vspace;

pub use keel_abi::object::{ENDPOINT_BITS, NOTIFICATION_BITS, TCB_BITS};
