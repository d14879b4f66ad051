//! QEMU's isa-debug-exit device: how the kernel ends a QEMU run with a status.

use keel_abi::exit;

/// Exits QEMU with `(value << 1) | 1`. On a machine without the device the write does
/// nothing, so this then halts the CPU forever.
pub fn exit(value: u8) -> ! {
    // SAFETY: port 0xf4 is the isa-debug-exit device in QEMU and unused on the PCs Keel
    // supports; writing it has no effect on memory safety.
    unsafe { x86::io::outb(exit::PORT, value) };
    crate::cpu::halt_forever()
}
