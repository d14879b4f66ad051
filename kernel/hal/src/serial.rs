//! The COM1 16550 UART, polled: the kernel console on QEMU and on PCs with a serial port.

use x86::io::{inb, outb};

const COM1: u16 = 0x3f8;

/// COM1, once [`Serial::probe`] found it.
#[derive(Debug)]
pub struct Serial {
    base: u16,
}

impl Serial {
    /// Looks for a 16550 at COM1 (scratch register and loopback test) and programs it for
    /// 115200 8N1 with FIFOs. Returns `None` when there is no UART.
    pub fn probe() -> Option<Serial> {
        let base = COM1;
        // SAFETY: COM1's eight ports belong to the UART or to nothing on a PC; probing
        // them has no effect on memory.
        unsafe {
            outb(base + 7, 0x5a);
            if inb(base + 7) != 0x5a {
                return None;
            }
            outb(base + 1, 0x00); // no interrupts
            outb(base + 3, 0x80); // DLAB
            outb(base, 0x01); // divisor 1: 115200 baud
            outb(base + 1, 0x00);
            outb(base + 3, 0x03); // 8N1
            outb(base + 2, 0xc7); // FIFOs on, cleared, 14-byte threshold
            outb(base + 4, 0x1e); // loopback, OUT1/OUT2/RTS
            outb(base, 0xae);
            if inb(base) != 0xae {
                return None;
            }
            outb(base + 4, 0x0f); // normal operation, DTR/RTS/OUT1/OUT2
        }
        Some(Serial { base })
    }

    /// Sends one byte, waiting for room in the transmitter (bounded, so a dead UART
    /// cannot hang the kernel).
    pub fn write_byte(&self, byte: u8) {
        for _ in 0..100_000 {
            // SAFETY: reading the line status register of our UART.
            if unsafe { inb(self.base + 5) } & 0x20 != 0 {
                break;
            }
            crate::cpu::relax();
        }
        // SAFETY: writing the transmit register of our UART.
        unsafe { outb(self.base, byte) };
    }
}
