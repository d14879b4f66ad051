//! Time: the TSC, calibrated at boot against the HPET (or the PIT without one).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::acpi::Platform;
use crate::layout;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Length of the calibration window.
const CALIBRATION_MS: u64 = 10;

/// Measures the TSC frequency over a 10 ms window.
pub fn calibrate_tsc(platform: &Platform) -> u64 {
    let start = crate::cpu::rdtsc();
    let (hz, source) = match platform.hpet.and_then(calibrate_with_hpet) {
        Some(hz) => (hz, "HPET"),
        None => (calibrate_with_pit(), "PIT"),
    };
    let cost_ms = (crate::cpu::rdtsc() - start) * 1000 / hz.max(1);
    TSC_HZ.store(hz, Ordering::Relaxed);
    log::info!(
        "TSC {} MHz (calibrated against the {source} in {cost_ms} ms)",
        hz / 1_000_000
    );
    hz
}

fn calibrate_with_hpet(phys: u64) -> Option<u64> {
    let base = layout::phys_to_virt(phys);
    // SAFETY: the HPET register block from ACPI, mapped by the direct map; 64-bit reads
    // of the capabilities and main counter, and setting ENABLE_CNF, have no memory effect.
    unsafe {
        let caps = core::ptr::read_volatile(base as *const u64);
        let period_fs = caps >> 32;
        if period_fs == 0 || period_fs > 100_000_000 {
            return None;
        }
        let config = (base + 0x10) as *mut u64;
        core::ptr::write_volatile(config, core::ptr::read_volatile(config) | 1);
        let counter = (base + 0xf0) as *const u64;
        let ticks = CALIBRATION_MS * 1_000_000_000_000 / period_fs;
        let c0 = core::ptr::read_volatile(counter);
        let t0 = crate::cpu::rdtsc();
        let mut c1 = c0;
        let mut spins = 0u64;
        while c1.wrapping_sub(c0) < ticks {
            c1 = core::ptr::read_volatile(counter);
            spins += 1;
            if spins > 1 << 28 {
                return None; // the counter does not run
            }
        }
        let t1 = crate::cpu::rdtsc();
        let elapsed_fs = c1.wrapping_sub(c0) as u128 * period_fs as u128;
        Some(((t1 - t0) as u128 * 1_000_000_000_000_000 / elapsed_fs) as u64)
    }
}

fn calibrate_with_pit() -> u64 {
    use x86::io::{inb, outb};
    const PIT_HZ: u64 = 1_193_182;
    let count = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
    // SAFETY: PIT channel 2 and the port-0x61 gate belong to the kernel at boot; using
    // them has no memory effect.
    unsafe {
        let gate = inb(0x61);
        outb(0x61, (gate & !0x02) & !0x01); // speaker off, gate low
        outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0
        outb(0x42, count as u8);
        outb(0x42, (count >> 8) as u8);
        outb(0x61, (inb(0x61) & !0x02) | 0x01); // gate high: start counting
        let t0 = crate::cpu::rdtsc();
        while inb(0x61) & 0x20 == 0 {
            crate::cpu::relax();
        }
        let t1 = crate::cpu::rdtsc();
        outb(0x61, gate);
        (t1 - t0) * 1000 / CALIBRATION_MS
    }
}

/// TSC ticks per second.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Busy-waits `micros` microseconds.
pub fn delay_us(micros: u64) {
    let start = crate::cpu::rdtsc();
    let ticks = tsc_hz() / 1_000_000 * micros;
    while crate::cpu::rdtsc() - start < ticks {
        crate::cpu::relax();
    }
}

/// Nanoseconds since `start` (a TSC value).
pub fn nanos_since(start: u64) -> u64 {
    ((crate::cpu::rdtsc() - start) as u128 * 1_000_000_000 / tsc_hz().max(1) as u128) as u64
}
