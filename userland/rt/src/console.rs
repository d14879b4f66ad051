//! Formatted output on the thread's console: the kernel's debug console (Keel's debug
//! string call) until the thread names another with [`set_console`] (in practice the
//! serial server's WRITE, `keel_servers::serial::install_console`). Each `print!` is
//! collected and sent in one piece per 256 bytes, so lines from different threads do
//! not interleave mid-line on either console.
//!
//! The choice is per thread (it lives in the thread's `keel_sys::thread::ThreadBlock`),
//! because the endpoint is a capability pointer in the thread's own CSpace.

use core::fmt::{self, Write};

use keel_sys::thread;

/// Collects formatted output and sends it in one piece per 256 bytes.
struct LineWriter {
    buffer: [u8; 256],
    len: usize,
    sink: Sink,
}

/// Where a [`LineWriter`] sends its bytes.
#[derive(Clone, Copy)]
enum Sink {
    Kernel,
    Endpoint(fn(u64, &[u8]) -> bool, u64),
}

impl Sink {
    fn current() -> Self {
        let block = thread::current();
        match block.console {
            Some(write) if block.console_endpoint != 0 => {
                Self::Endpoint(write, block.console_endpoint)
            }
            _ => Self::Kernel,
        }
    }

    fn send(self, bytes: &[u8]) {
        match self {
            // A refused write still reaches the kernel console rather than vanishing.
            Self::Endpoint(write, endpoint) if write(endpoint, bytes) => {}
            _ => {
                keel_sys::debug_put_string(bytes);
            }
        }
    }
}

impl LineWriter {
    fn flush(&mut self) {
        if self.len > 0 {
            self.sink.send(&self.buffer[..self.len]);
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

fn print_to(sink: Sink, args: fmt::Arguments<'_>) {
    let mut w = LineWriter {
        buffer: [0; 256],
        len: 0,
        sink,
    };
    let _ = w.write_fmt(args);
    w.flush();
}

/// Prints formatted text on the thread's console.
pub fn print(args: fmt::Arguments<'_>) {
    print_to(Sink::current(), args)
}

/// Sends this thread's console output to `write(endpoint, bytes)` from now on;
/// `write` returns false if the bytes did not get through (they then go to the kernel
/// console). `endpoint` is a capability pointer in the calling thread's CSpace.
pub fn set_console(endpoint: u64, write: fn(u64, &[u8]) -> bool) {
    let mut block = thread::current();
    block.console = Some(write);
    block.console_endpoint = endpoint;
    thread::set_current(block);
}

/// Sends this thread's console output to the kernel's debug console again.
pub fn reset_console() {
    let mut block = thread::current();
    block.console = None;
    block.console_endpoint = 0;
    thread::set_current(block);
}

/// Whether this thread's console is an endpoint ([`set_console`]) rather than the
/// kernel's debug console.
pub fn console_is_serial() -> bool {
    matches!(Sink::current(), Sink::Endpoint(..))
}

/// Prints a panic message: through the thread's console, which is reset first, so that
/// a panic inside the console's own write path prints on the kernel console instead
/// of recursing.
pub(crate) fn print_panic(args: fmt::Arguments<'_>) {
    let sink = Sink::current();
    reset_console();
    print_to(sink, args);
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
