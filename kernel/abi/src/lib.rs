//! Keel's user/kernel ABI: the numbers both sides of the system-call boundary agree on.
//!
//! This crate owns every constant that crosses the boundary between the kernel, user
//! programs and the host runner: system-call numbers and the registers they use, the
//! message-info word and IPC buffer, error codes, invocation labels, object types and
//! sizes, the boot-info frame, fault messages and register contexts, Keel's restartable
//! sequence layout, the isa-debug-exit status codes and the serial lines the host
//! harness parses. `doc/abi.md` lists every number with its meaning and source. It has no
//! code with side effects and no `unsafe`; the kernel, `userland/sys` and the runner all
//! depend on it so that each number is written down exactly once.
//!
//! Invariant: numbers shared with seL4 keep seL4's values (release 16.0.0, x86_64 pc99,
//! non-MCS, SMP, hardware debug API; see `doc/abi.md`); numbers that are Keel's own
//! live in ranges seL4 does not use.
#![no_std]

pub mod bootinfo;
pub mod elf;
pub mod error;
pub mod exit;
pub mod fault;
pub mod harness;
pub mod invocation;
pub mod message;
pub mod object;
pub mod rseq;
pub mod syscall;

/// The seL4 release whose numbers this crate follows.
pub const SEL4_RELEASE: &str = "16.0.0";
