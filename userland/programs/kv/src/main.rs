//! The key-value store server program: runs `keel_server_kv::main` in the address
//! space init builds for it from this program's boot module.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

keel_servers::server_program!(keel_server_kv::main);
