//! The root task of the bench image: measures system-call paths and prints one JSON
//! object per result. Under `--icount` the unit is instructions (RDTSC counts executed
//! instructions exactly); otherwise TSC cycles.
#![no_std]
#![no_main]

use keel_rt::println;

keel_sys::entry_point!(main);

const ROUNDS: usize = 101;
const ITERATIONS: u64 = 1000;

fn main(_cpus: u64) -> u64 {
    let mut samples = [0u64; ROUNDS];
    // An unknown system-call number: entry, dispatch, exit, nothing else.
    for s in samples.iter_mut() {
        let start = keel_sys::rdtsc();
        for _ in 0..ITERATIONS {
            keel_sys::raw_syscall(-1000);
        }
        *s = (keel_sys::rdtsc() - start) / ITERATIONS;
    }
    report("null_syscall", &mut samples);
    0
}

fn report(name: &str, samples: &mut [u64]) {
    samples.sort_unstable();
    println!(
        "{{\"name\":\"{name}\",\"median\":{},\"min\":{},\"max\":{},\"iterations\":{},\"unit\":\"tsc\"}}",
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1],
        samples.len() as u64 * ITERATIONS
    );
}
