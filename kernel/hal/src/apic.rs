//! The local APIC (x2APIC when the CPU has it, else xAPIC through the direct map), its
//! timer (TSC-deadline when present, else periodic), IPIs, and the legacy interrupt
//! controllers (8259 PICs and I/O APIC pins masked until drivers claim them).

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;
use x86::msr::{IA32_APIC_BASE, IA32_TSC_DEADLINE, rdmsr, wrmsr};

use crate::acpi::Platform;
use crate::layout;
use crate::trap::{SPURIOUS_VECTOR, TIMER_VECTOR};

/// Timer interrupts per second on each CPU.
pub const TIMER_HZ: u64 = 100;

#[derive(Clone, Copy, Debug)]
enum Mode {
    X2Apic,
    XApic { base: u64 },
}

static MODE: Once<Mode> = Once::new();
/// The I/O APICs and interrupt source overrides, for routing device IRQs.
static ROUTING: Once<Routing> = Once::new();

struct Routing {
    io_apics: alloc::vec::Vec<(u64, u32, u32)>, // (registers, first GSI, pins)
    overrides: alloc::vec::Vec<crate::acpi::InterruptOverride>,
    bootstrap_apic_id: u32,
}

fn io_apic_write(base: u64, reg: u32, value: u32) {
    // SAFETY: IOREGSEL/IOWIN of an I/O APIC from the MADT, mapped by the direct map.
    unsafe {
        core::ptr::write_volatile(base as *mut u32, reg);
        core::ptr::write_volatile((base + 0x10) as *mut u32, value);
    }
}

/// Routes IRQ `irq` to vector `IRQ_VECTOR_BASE + irq` on the bootstrap CPU, masked
/// unless `enabled`: from an I/O APIC pin as given, or for a legacy (ISA) IRQ through
/// the firmware's interrupt source overrides (edge/high unless overridden; GSIs 16 and
/// up level/low). MSIs need no routing here (the driver programs the device).
pub fn route_irq(irq: u16, route: keel_kern::object::irq::IrqRoute, enabled: bool) {
    use keel_kern::object::irq::IrqRoute;
    let Some(routing) = ROUTING.get() else { return };
    let vector = crate::trap::IRQ_VECTOR_BASE as u32 + irq as u32;
    let (apic, pin, level, active_low) = match route {
        IrqRoute::Msi => return,
        IrqRoute::IoApic {
            ioapic,
            pin,
            level,
            active_low,
        } => (ioapic as usize, pin as u32, level, active_low),
        IrqRoute::Legacy => {
            let isa = routing.overrides.iter().find(|o| o.irq as u16 == irq);
            let gsi = isa.map_or(irq as u32, |o| o.gsi);
            let (level, active_low) = match isa {
                Some(o) => (o.flags & 0b1100 == 0b1100, o.flags & 0b11 == 0b11),
                None => (gsi >= 16, gsi >= 16),
            };
            let Some(index) = routing
                .io_apics
                .iter()
                .position(|&(_, first, pins)| gsi >= first && gsi < first + pins)
            else {
                return;
            };
            (index, gsi - routing.io_apics[index].1, level, active_low)
        }
    };
    let Some(&(base, _, pins)) = routing.io_apics.get(apic) else {
        return;
    };
    if pin >= pins {
        return;
    }
    let low =
        vector | ((active_low as u32) << 13) | ((level as u32) << 15) | ((!enabled as u32) << 16);
    io_apic_write(base, 0x11 + 2 * pin, routing.bootstrap_apic_id << 24);
    io_apic_write(base, 0x10 + 2 * pin, low);
}

/// TSC ticks between two timer interrupts (TSC-deadline mode), else 0.
static DEADLINE_PERIOD: AtomicU64 = AtomicU64::new(0);
/// Initial count of the periodic timer (divide-by-16), else 0.
static PERIODIC_COUNT: AtomicU64 = AtomicU64::new(0);

const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SPURIOUS: u32 = 0xf0;
const REG_ESR: u32 = 0x280;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_LVT_ERROR: u32 = 0x370;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

fn mode() -> Mode {
    *MODE.get().expect("local APIC used before init")
}

fn read(reg: u32) -> u32 {
    match mode() {
        // SAFETY: x2APIC registers are MSRs 0x800 + reg/16; reading them has no side
        // effects for the registers Keel reads.
        Mode::X2Apic => unsafe { rdmsr(0x800 + (reg >> 4)) as u32 },
        // SAFETY: the xAPIC page is mapped by the direct map; aligned 32-bit access.
        Mode::XApic { base } => unsafe {
            core::ptr::read_volatile((base + reg as u64) as *const u32)
        },
    }
}

fn write(reg: u32, value: u32) {
    match mode() {
        // SAFETY: writing a local APIC register of this CPU.
        Mode::X2Apic => unsafe { wrmsr(0x800 + (reg >> 4), value as u64) },
        // SAFETY: as in `read`.
        Mode::XApic { base } => unsafe {
            core::ptr::write_volatile((base + reg as u64) as *mut u32, value)
        },
    }
}

/// This CPU's local APIC ID.
pub fn id() -> u32 {
    match mode() {
        Mode::X2Apic => read(REG_ID),
        Mode::XApic { .. } => read(REG_ID) >> 24,
    }
}

fn enable_on_this_cpu() {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; setting EN (and EXTD in x2APIC
    // mode, which the CPU reported) keeps the APIC at its address.
    unsafe {
        let base = rdmsr(IA32_APIC_BASE);
        let extd = if matches!(mode(), Mode::X2Apic) {
            1 << 10
        } else {
            0
        };
        wrmsr(IA32_APIC_BASE, base | (1 << 11) | extd);
    }
    write(REG_TPR, 0);
    write(REG_LVT_ERROR, 1 << 16);
    write(REG_ESR, 0);
    write(REG_SPURIOUS, 0x100 | SPURIOUS_VECTOR as u32);
    crate::percpu::set_apic_id(id());
}

/// Sets up interrupt controllers on the bootstrap CPU: masks the 8259s and every I/O
/// APIC pin, and enables the local APIC.
pub fn init_bootstrap(platform: &Platform) {
    MODE.call_once(|| {
        if crate::cpu::features().x2apic {
            Mode::X2Apic
        } else {
            Mode::XApic {
                base: layout::phys_to_virt(platform.local_apic_address),
            }
        }
    });
    // SAFETY: the 8259 data ports; masking every line has no memory effect.
    unsafe {
        x86::io::outb(0x21, 0xff);
        x86::io::outb(0xa1, 0xff);
    }
    for io_apic in &platform.io_apics {
        let base = layout::phys_to_virt(io_apic.address);
        let io_read = |reg: u32| {
            // SAFETY: IOREGSEL/IOWIN of an I/O APIC from the MADT, mapped by the direct map.
            unsafe {
                core::ptr::write_volatile(base as *mut u32, reg);
                core::ptr::read_volatile((base + 0x10) as *const u32)
            }
        };
        let io_write = |reg: u32, value: u32| {
            // SAFETY: as above.
            unsafe {
                core::ptr::write_volatile(base as *mut u32, reg);
                core::ptr::write_volatile((base + 0x10) as *mut u32, value);
            }
        };
        let pins = ((io_read(1) >> 16) & 0xff) + 1;
        for pin in 0..pins {
            io_write(0x10 + 2 * pin, 1 << 16);
            io_write(0x11 + 2 * pin, 0);
        }
    }
    enable_on_this_cpu();
    ROUTING.call_once(|| Routing {
        io_apics: platform
            .io_apics
            .iter()
            .map(|a| {
                let base = layout::phys_to_virt(a.address);
                // SAFETY: reading the version register of an I/O APIC from the MADT.
                let version = unsafe {
                    core::ptr::write_volatile(base as *mut u32, 1);
                    core::ptr::read_volatile((base + 0x10) as *const u32)
                };
                (base, a.gsi_base, ((version >> 16) & 0xff) + 1)
            })
            .collect(),
        overrides: platform.overrides.clone(),
        bootstrap_apic_id: id(),
    });
    log::info!(
        "{} mode, bootstrap APIC ID {}",
        if matches!(mode(), Mode::X2Apic) {
            "x2APIC"
        } else {
            "xAPIC"
        },
        id()
    );
}

/// Enables the local APIC on an application processor.
pub fn init_application_processor() {
    enable_on_this_cpu();
}

/// Signals end of interrupt.
pub fn end_of_interrupt() {
    write(REG_EOI, 0);
}

/// Starts this CPU's timer at [`TIMER_HZ`]. The bootstrap CPU calibrates it first.
pub fn start_timer(tsc_hz: u64) {
    if crate::cpu::features().tsc_deadline {
        DEADLINE_PERIOD.store(tsc_hz / TIMER_HZ, Ordering::Relaxed);
        write(REG_LVT_TIMER, TIMER_VECTOR as u32 | (0b10 << 17));
        // SAFETY: arming this CPU's TSC deadline.
        unsafe { wrmsr(IA32_TSC_DEADLINE, crate::cpu::rdtsc() + tsc_hz / TIMER_HZ) };
        return;
    }
    if PERIODIC_COUNT.load(Ordering::Relaxed) == 0 {
        // Count the APIC timer (divide by 16) against the TSC for 1 ms.
        write(REG_TIMER_DIVIDE, 0b0011);
        write(REG_LVT_TIMER, 1 << 16);
        write(REG_TIMER_INITIAL, u32::MAX);
        let start = crate::cpu::rdtsc();
        while crate::cpu::rdtsc() - start < tsc_hz / 1000 {
            crate::cpu::relax();
        }
        let per_ms = (u32::MAX - read(REG_TIMER_CURRENT)) as u64;
        write(REG_TIMER_INITIAL, 0);
        PERIODIC_COUNT.store(
            (per_ms * 1000 / TIMER_HZ).clamp(1, u32::MAX as u64),
            Ordering::Relaxed,
        );
    }
    write(REG_TIMER_DIVIDE, 0b0011);
    write(REG_LVT_TIMER, TIMER_VECTOR as u32 | (0b01 << 17));
    write(
        REG_TIMER_INITIAL,
        PERIODIC_COUNT.load(Ordering::Relaxed) as u32,
    );
}

/// Re-arms the timer after a tick (TSC-deadline mode only).
pub fn timer_tick() {
    let period = DEADLINE_PERIOD.load(Ordering::Relaxed);
    if period != 0 {
        // SAFETY: arming this CPU's TSC deadline.
        unsafe { wrmsr(IA32_TSC_DEADLINE, crate::cpu::rdtsc() + period) };
    }
}

/// Which timer mode is in use, for the boot log and tests.
pub fn timer_mode() -> &'static str {
    if DEADLINE_PERIOD.load(Ordering::Relaxed) != 0 {
        "TSC-deadline"
    } else {
        "periodic"
    }
}

fn send_icr(apic_id: u32, low: u32) {
    match mode() {
        // SAFETY: x2APIC ICR is one 64-bit MSR write.
        Mode::X2Apic => unsafe { wrmsr(0x830, ((apic_id as u64) << 32) | low as u64) },
        Mode::XApic { .. } => {
            write(REG_ICR_HIGH, apic_id << 24);
            write(REG_ICR_LOW, low);
            while read(REG_ICR_LOW) & (1 << 12) != 0 {
                crate::cpu::relax();
            }
        }
    }
}

/// Sends a fixed interrupt `vector` to the CPU with `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    send_icr(apic_id, vector as u32 | (1 << 14));
}

/// Sends `vector` to every CPU but this one.
pub fn send_ipi_all_others(vector: u8) {
    send_icr(0, vector as u32 | (1 << 14) | (0b11 << 18));
}

/// INIT IPI (assert, level-triggered).
pub fn send_init(apic_id: u32) {
    send_icr(apic_id, (0b101 << 8) | (1 << 14) | (1 << 15));
}

/// Start-up IPI with the page number of the real-mode entry.
pub fn send_startup(apic_id: u32, page: u8) {
    send_icr(apic_id, page as u32 | (0b110 << 8) | (1 << 14));
}

/// Sends an NMI to the CPU with `apic_id` (this CPU's own included). Touches no
/// per-CPU data, so it may run with any GS base.
pub fn send_nmi(apic_id: u32) {
    send_icr(apic_id, (0b100 << 8) | (1 << 14));
}
