//! Formatted output on the kernel console through Keel's debug string call.

use core::fmt::{self, Write};

/// Collects formatted output and prints it in one system call per 256 bytes, so lines
/// from different threads do not interleave mid-line.
struct LineWriter {
    buffer: [u8; 256],
    len: usize,
}

impl LineWriter {
    fn flush(&mut self) {
        if self.len > 0 {
            keel_sys::debug_put_string(&self.buffer[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buffer.len() {
                self.flush();
            }
            self.buffer[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints formatted text on the kernel console.
pub fn print(args: fmt::Arguments<'_>) {
    let mut w = LineWriter {
        buffer: [0; 256],
        len: 0,
    };
    let _ = w.write_fmt(args);
    w.flush();
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::print(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::print(format_args!("{}\n", format_args!($($arg)*))) };
}
