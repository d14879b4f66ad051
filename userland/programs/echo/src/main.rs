//! The echo server program: runs `keel_servers::echo::main` in the address space init
//! builds for it from this program's boot module.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

keel_servers::server_program!(keel_servers::echo::main);
