//! The kernel console: COM1 when present, else the multiboot2 framebuffer; the `log`
//! backend and the `print!`/`println!` macros.
//!
//! Output from several CPUs is serialised by a lock that remembers its owner CPU: a CPU
//! that re-enters the console while holding it (an exception or NMI in the middle of a
//! print, a panic) writes without waiting, so the console can never deadlock the
//! kernel. Lines may then interleave, which is the right trade for a crash report.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, Ordering};

use spin::Once;

use crate::serial::Serial;

static SERIAL: Once<Option<Serial>> = Once::new();
static FRAMEBUFFER: Once<spin::Mutex<Framebuffer>> = Once::new();
static OWNER: AtomicU32 = AtomicU32::new(NO_OWNER);
const NO_OWNER: u32 = u32::MAX;

/// Probes COM1. Call once, first thing at boot.
pub fn init_serial() {
    SERIAL.call_once(Serial::probe);
}

/// Whether the console has a serial port.
pub fn has_serial() -> bool {
    matches!(SERIAL.get(), Some(Some(_)))
}

/// A linear framebuffer as the bootloader left it.
#[derive(Clone, Copy, Debug)]
pub struct FramebufferInfo {
    /// Physical address of the first pixel.
    pub phys: u64,
    /// Bytes per line.
    pub pitch: u32,
    /// Width in pixels (or characters for EGA text).
    pub width: u32,
    /// Height in pixels (or characters for EGA text).
    pub height: u32,
    /// Bits per pixel.
    pub bpp: u8,
    /// EGA text mode instead of pixels.
    pub text: bool,
}

struct Framebuffer {
    info: FramebufferInfo,
    base: *mut u8,
    column: u32,
    row: u32,
}

// SAFETY: the framebuffer memory is only touched under the console lock.
unsafe impl Send for Framebuffer {}

const GLYPH_W: u32 = 8;
const GLYPH_H: u32 = 16;

impl Framebuffer {
    fn columns(&self) -> u32 {
        if self.info.text {
            self.info.width
        } else {
            self.info.width / GLYPH_W
        }
    }
    fn rows(&self) -> u32 {
        if self.info.text {
            self.info.height
        } else {
            self.info.height / GLYPH_H
        }
    }

    fn put(&mut self, byte: u8) {
        match byte {
            b'\n' => self.newline(),
            b'\r' => self.column = 0,
            _ => {
                if self.column >= self.columns() {
                    self.newline();
                }
                self.draw(self.column, self.row, byte);
                self.column += 1;
            }
        }
    }

    fn newline(&mut self) {
        self.column = 0;
        if self.row + 1 < self.rows() {
            self.row += 1;
            return;
        }
        let line_bytes = if self.info.text {
            self.info.pitch
        } else {
            self.info.pitch * GLYPH_H
        };
        let total = line_bytes * (self.rows() - 1);
        // SAFETY: both ranges lie inside the mapped framebuffer (rows() lines of
        // line_bytes each); `copy` handles the overlap.
        unsafe {
            core::ptr::copy(
                self.base.add(line_bytes as usize),
                self.base,
                total as usize,
            );
            core::ptr::write_bytes(self.base.add(total as usize), 0, line_bytes as usize);
        }
    }

    fn draw(&mut self, column: u32, row: u32, byte: u8) {
        if self.info.text {
            let offset = (row * self.info.pitch + column * 2) as usize;
            // SAFETY: offset is inside the text buffer (column < width, row < height).
            unsafe {
                core::ptr::write_volatile(self.base.add(offset) as *mut u16, 0x0700 | byte as u16)
            };
            return;
        }
        let glyph = font8x8::legacy::BASIC_LEGACY
            .get(byte as usize)
            .copied()
            .unwrap_or([0; 8]);
        let bytes_pp = (self.info.bpp as u32).div_ceil(8);
        for y in 0..GLYPH_H {
            let bits = glyph[(y / 2) as usize];
            for x in 0..GLYPH_W {
                let on = bits & (1 << x) != 0;
                let offset = ((row * GLYPH_H + y) * self.info.pitch
                    + (column * GLYPH_W + x) * bytes_pp) as usize;
                let value: u32 = if on { 0x00c0_c0c0 } else { 0 };
                for b in 0..bytes_pp as usize {
                    // SAFETY: the pixel lies inside the framebuffer: row < rows(),
                    // column < columns().
                    unsafe {
                        core::ptr::write_volatile(
                            self.base.add(offset + b),
                            (value >> (8 * b)) as u8,
                        )
                    };
                }
            }
        }
    }
}

/// Uses the framebuffer as the console when there is no serial port.
///
/// # Safety
/// `info` must describe a framebuffer reachable through the direct map.
pub unsafe fn init_framebuffer(info: FramebufferInfo) {
    if has_serial() || info.bpp == 0 {
        return;
    }
    let base = crate::layout::phys_to_virt(info.phys) as *mut u8;
    FRAMEBUFFER.call_once(|| {
        spin::Mutex::new(Framebuffer {
            info,
            base,
            column: 0,
            row: 0,
        })
    });
}

struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

fn write_bytes(bytes: &[u8]) {
    if let Some(Some(serial)) = SERIAL.get() {
        for &b in bytes {
            if b == b'\n' {
                serial.write_byte(b'\r');
            }
            serial.write_byte(b);
        }
    } else if let Some(fb) = FRAMEBUFFER.get() {
        // The console lock is held; the framebuffer mutex is only taken here.
        // SAFETY-free path: if re-entered on this CPU we skip rather than deadlock.
        if let Some(mut fb) = fb.try_lock() {
            for &b in bytes {
                fb.put(b);
            }
        }
    }
}

/// Runs `f` with the console lock held (re-entrant on the owning CPU).
fn locked<R>(f: impl FnOnce() -> R) -> R {
    let me = current_cpu_id();
    if OWNER.load(Ordering::Relaxed) == me {
        return f();
    }
    while OWNER
        .compare_exchange_weak(NO_OWNER, me, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        crate::cpu::relax();
    }
    let result = f();
    OWNER.store(NO_OWNER, Ordering::Release);
    result
}

fn current_cpu_id() -> u32 {
    crate::percpu::current().cpu_index
}

/// Writes formatted text to the console as one unit.
pub fn print(args: fmt::Arguments<'_>) {
    locked(|| {
        let _ = Console.write_fmt(args);
    });
}

/// Writes raw bytes (from a user program) to the console as one unit.
pub fn print_bytes(bytes: &[u8]) {
    locked(|| write_bytes(bytes));
}

/// Prints to the kernel console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// Prints a line to the kernel console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let cpu = current_cpu_id();
            let target = record.target();
            let module = target.rsplit("::").next().unwrap_or(target);
            print(format_args!(
                "[{cpu}] {:5} {module}: {}\n",
                record.level(),
                record.args()
            ));
        }
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the console as the `log` backend with the given level.
pub fn init_logger(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Forgets the lock owner: for the panic path, where the owner may never release it.
pub fn force_unlock() {
    OWNER.store(NO_OWNER, Ordering::Release);
}
