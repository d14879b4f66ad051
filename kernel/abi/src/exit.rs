//! Exit statuses of QEMU's isa-debug-exit device, as the kernel writes them and the
//! runner reads them.
//!
//! The device sits at I/O port [`PORT`]; writing byte `v` exits QEMU with status
//! `(v << 1) | 1`, so every status the kernel can produce is odd. Status 0 (QEMU's
//! exit after a triple fault under `-no-reboot`) and every even status are failures.

/// I/O port of the isa-debug-exit device (`-device isa-debug-exit,iobase=0xf4,iosize=4`).
pub const PORT: u16 = 0xf4;

/// Value written for "every test passed" / "the image finished its work".
pub const SUCCESS: u8 = 0x10;
/// Value written when at least one on-target test failed.
pub const TESTS_FAILED: u8 = 0x11;
/// Value written by the kernel's panic handler.
pub const KERNEL_PANIC: u8 = 0x12;
/// Value written by the DebugHalt system call.
pub const HALTED: u8 = 0x13;

/// The process exit status QEMU reports for a value written to the device.
pub const fn qemu_status(value: u8) -> i32 {
    ((value as i32) << 1) | 1
}

/// What a QEMU exit status means, as the runner reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel wrote [`SUCCESS`].
    Success,
    /// The kernel wrote [`TESTS_FAILED`].
    TestsFailed,
    /// The kernel panicked.
    KernelPanic,
    /// A user program asked to halt.
    Halted,
    /// QEMU exited with status 0: a triple fault under `-no-reboot`, or a shutdown.
    TripleFaultOrShutdown,
    /// Any other status: QEMU itself failed.
    Other(i32),
}

/// Classifies a QEMU exit status.
pub const fn classify(status: i32) -> Outcome {
    match status {
        s if s == qemu_status(SUCCESS) => Outcome::Success,
        s if s == qemu_status(TESTS_FAILED) => Outcome::TestsFailed,
        s if s == qemu_status(KERNEL_PANIC) => Outcome::KernelPanic,
        s if s == qemu_status(HALTED) => Outcome::Halted,
        0 => Outcome::TripleFaultOrShutdown,
        s => Outcome::Other(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_odd_and_distinct() {
        let all = [SUCCESS, TESTS_FAILED, KERNEL_PANIC, HALTED];
        for (i, a) in all.iter().enumerate() {
            assert_eq!(qemu_status(*a) & 1, 1);
            for b in &all[i + 1..] {
                assert_ne!(qemu_status(*a), qemu_status(*b));
            }
        }
    }

    #[test]
    fn zero_is_never_success() {
        assert_eq!(classify(0), Outcome::TripleFaultOrShutdown);
        assert_eq!(classify(33), Outcome::Success);
        assert_eq!(classify(35), Outcome::TestsFailed);
        assert_eq!(classify(1), Outcome::Other(1));
    }
}
