//! The root task of the default image. For now it proves ring 3 works: it prints a
//! greeting through the debug system call and exits with 0.
#![no_std]
#![no_main]

use keel_rt::println;

keel_sys::entry_point!(main);

fn main(bootinfo: u64) -> u64 {
    println!("init: hello from ring 3 (boot info at {bootinfo:#x})");
    0
}
