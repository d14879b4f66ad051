//! Keel's host-side runner: makes GRUB ISO images of the kernel and boots them in QEMU.
//!
//! The binary (`src/main.rs`, `cargo run`) is a thin shell over this library; the host
//! tests in `tests/` use the same library so that a test and a human running one leg by
//! hand get the same verdict. Everything here is safe Rust.

pub mod cli;
pub mod grub;
pub mod host;
pub mod paths;
pub mod qemu;
pub mod run;
pub mod verdict;
