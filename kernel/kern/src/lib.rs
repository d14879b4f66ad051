//! Keel's safe object layer: the kernel logic that needs no `unsafe` and no hardware.
//!
//! Everything here is plain Rust over plain data, so it is unit-tested on the host
//! (`cargo test -p keel-kern`) and used unchanged in the kernel. The trusted core
//! (`keel-hal`) calls into it; it never calls the trusted core.
//!
//! It holds the boot-time pieces (the physical frame allocator, the kernel command-line
//! parser, the ELF loader's plan, the DSDT's S5 sleep types, the root task's
//! construction) and the object model:
//! capabilities and the derivation tree, untyped memory, TCBs and the scheduler, IPC
//! with its fastpath, faults, address spaces, IRQs and I/O ports, LDTs. Kernel objects
//! are reached through the [`memory::Memory`] trait, implemented by the trusted core.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

extern crate alloc;

pub mod aml;
pub mod boot;
pub mod cmdline;
pub mod elf;
pub mod fastpath;
pub mod fault;
pub mod faultpath;
pub mod frames;
pub mod invariants;
pub mod invocation;
pub mod ipc;
pub mod kernel;
pub mod memory;
pub mod object;
pub mod rseq;
pub mod testing;
#[cfg(test)]
pub mod testing_memory;
#[cfg(test)]
mod tests;
