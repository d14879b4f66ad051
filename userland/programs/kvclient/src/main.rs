//! A client of the key-value store server: looks `serial` and `kv` up, prints through
//! the serial server, and exercises every request once: values round-trip, a missing
//! key, a full table.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

keel_servers::server_program!(main);

use keel_rt::println;
use keel_server_kv as kv;
use keel_servers::{StartInfo, serial};

/// The client's thread.
pub fn main(argument: u64) {
    let start = StartInfo::unpack(argument);
    let mut slots = start.slot_allocator();
    if let Some(serial) = start.look_up(&mut slots, serial::NAME) {
        serial::install_console(serial);
    }
    let Some(server) = start.look_up(&mut slots, kv::NAME) else {
        println!("kvclient: no kv server");
        return;
    };
    println!("kvclient: put 1 = 100: {:?}", kv::put(server, 1, 100));
    println!("kvclient: put 2 = 200: {:?}", kv::put(server, 2, 200));
    println!("kvclient: get 1: {:?}", kv::get(server, 1));
    println!("kvclient: get 3: {:?}", kv::get(server, 3));
    println!("kvclient: remove 2: {:?}", kv::remove(server, 2));
    println!("kvclient: remove 2: {:?}", kv::remove(server, 2));
    // Fill the table: the put after the last free entry gets `Full`.
    let mut filled = 0;
    let last = loop {
        let result = kv::put(server, 1000 + filled, filled);
        if result.is_err() || filled > kv::CAPACITY as u64 {
            break result;
        }
        filled += 1;
    };
    println!("kvclient: {filled} more puts fit, the next one: {last:?}");
}
