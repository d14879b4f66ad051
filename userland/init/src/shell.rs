//! A tiny shell on the serial console: polls COM1's line-status register through an
//! I/O port capability, echoes what is typed and runs `help`, `echo`, `mem`.

use core::sync::atomic::Ordering;

use keel_rt::{print, println};
use keel_servers::{StartInfo, names};
use keel_sys::cap::{Cap, Endpoint, IoPort};

/// COM1's data register.
const COM1: u16 = 0x3f8;
/// COM1's line-status register (bit 0: a byte is waiting).
const LSR: u16 = COM1 + 5;
/// The prompt.
pub const PROMPT: &str = "keel> ";
/// Label of the shell's echo requests.
const ECHO_LABEL: u64 = 0xec;

struct Shell {
    port: Cap<IoPort>,
    echo: Option<Cap<Endpoint>>,
}

/// The shell's thread.
pub fn main(argument: u64) {
    let start = StartInfo::unpack(argument);
    let mut slots = start.slot_allocator();
    let echo = match (start.names, slots.alloc()) {
        (0, _) | (_, Err(_)) => None,
        (ns, Ok(slot)) => names::lookup(Cap::from_cptr(ns), keel_servers::echo::NAME, slot).ok(),
    };
    let shell = Shell {
        port: Cap::from_cptr(start.io_port),
        echo,
    };
    let mut line = [0u8; 128];
    let mut len = 0;
    print!("{PROMPT}");
    loop {
        let byte = shell.read_byte();
        match byte {
            b'\r' | b'\n' => {
                println!();
                shell.run(core::str::from_utf8(&line[..len]).unwrap_or(""));
                len = 0;
                print!("{PROMPT}");
            }
            0x08 | 0x7f if len > 0 => {
                len -= 1;
                print!("\x08 \x08");
            }
            b if (0x20..0x7f).contains(&b) && len < line.len() => {
                line[len] = b;
                len += 1;
                print!("{}", b as char);
            }
            _ => {}
        }
    }
}

impl Shell {
    /// Waits for a byte from COM1 (polling; other threads run between polls).
    fn read_byte(&self) -> u8 {
        loop {
            if let Ok(status) = self.port.in8(LSR)
                && status & 1 != 0
                && let Ok(b) = self.port.in8(COM1)
            {
                return b;
            }
            keel_sys::ipc::yield_now();
        }
    }

    fn run(&self, line: &str) {
        let line = line.trim();
        let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
        match command {
            "" => {}
            "help" => {
                println!("commands:");
                println!("  help        this list");
                println!("  echo TEXT   send TEXT through the echo server and print its answer");
                println!("  mem         untyped memory from boot info");
            }
            "echo" => self.echo(rest.trim_start()),
            "mem" => mem(),
            other => println!("unknown command '{other}' (try help)"),
        }
    }

    fn echo(&self, text: &str) {
        let Some(server) = self.echo else {
            println!("{text} (echo server not found: printed locally)");
            return;
        };
        let mut out = [0u8; (keel_servers::echo::MAX_WORDS - 1) * 8];
        let answer = keel_servers::echo::call_text(server, ECHO_LABEL, text.as_bytes(), &mut out);
        println!("{}", core::str::from_utf8(answer).unwrap_or("(bad utf-8)"));
    }
}

fn mem() {
    let kib = |b: u64| b >> 10;
    let mib = |b: u64| b >> 20;
    println!(
        "untyped: {} KiB RAM in {} caps ({} KiB unused after boot), {} MiB device",
        kib(crate::MEM_RAM.load(Ordering::Relaxed)),
        crate::MEM_RAM_CAPS.load(Ordering::Relaxed),
        kib(crate::MEM_FREE.load(Ordering::Relaxed)),
        mib(crate::MEM_DEVICE.load(Ordering::Relaxed)),
    );
}
