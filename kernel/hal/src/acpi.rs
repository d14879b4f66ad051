//! ACPI: the platform description Keel needs at boot (CPUs, I/O APICs, interrupt
//! source overrides, HPET) and the FADT's power controls (PM1 control blocks, reset
//! register, where the DSDT is), read with the `acpi` crate through the direct map.

use alloc::vec::Vec;
use core::ptr::NonNull;

use acpi::address::{AddressSpace, GenericAddress};
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, HpetInfo, PhysicalMapping};

use crate::layout;

/// Where the bootloader found the ACPI root table.
#[derive(Clone, Copy, Debug)]
pub struct RootPointer {
    /// RSDP revision (0 = ACPI 1.0: `table` is the RSDT; else the XSDT).
    pub revision: u8,
    /// Physical address of the RSDT or XSDT.
    pub table: u64,
}

/// A processor from the MADT.
#[derive(Clone, Copy, Debug)]
pub struct Processor {
    /// Local APIC ID.
    pub apic_id: u32,
    /// Usable now (enabled) rather than only hot-pluggable.
    pub enabled: bool,
}

/// An I/O APIC.
#[derive(Clone, Copy, Debug)]
pub struct IoApic {
    /// Its ID.
    pub id: u8,
    /// Physical address of its registers.
    pub address: u64,
    /// First global system interrupt it handles.
    pub gsi_base: u32,
}

/// An ISA IRQ routed to a different global system interrupt.
#[derive(Clone, Copy, Debug)]
pub struct InterruptOverride {
    /// ISA IRQ.
    pub irq: u8,
    /// Global system interrupt.
    pub gsi: u32,
    /// MPS INTI flags (polarity, trigger mode).
    pub flags: u16,
}

/// The FADT's power controls, for the root task (the kernel does not use them).
#[derive(Clone, Copy, Debug, Default)]
pub struct PowerControls {
    /// I/O port of the PM1a control block, if it is in system I/O space.
    pub pm1a_control: Option<u16>,
    /// I/O port of the PM1b control block, if there is one in system I/O space.
    pub pm1b_control: Option<u16>,
    /// The reset register's I/O port and the value to write, when the FADT says reset
    /// through it is supported and it is in system I/O space.
    pub reset: Option<(u16, u8)>,
    /// Physical address and length of the DSDT's AML (the table after its header).
    pub dsdt: Option<(u64, u32)>,
}

/// What the kernel knows about the platform.
#[derive(Clone, Debug, Default)]
pub struct Platform {
    /// Whether ACPI tables were found and parsed.
    pub acpi: bool,
    /// Processors in MADT order.
    pub processors: Vec<Processor>,
    /// I/O APICs.
    pub io_apics: Vec<IoApic>,
    /// Interrupt source overrides.
    pub overrides: Vec<InterruptOverride>,
    /// Physical address of the HPET registers.
    pub hpet: Option<u64>,
    /// Physical address of the local APIC (xAPIC mode).
    pub local_apic_address: u64,
    /// The machine also has dual 8259 PICs.
    pub has_8259: bool,
    /// The FADT's power controls.
    pub power: PowerControls,
}

impl Platform {
    /// Processors the kernel can start (enabled ones).
    pub fn usable_processors(&self) -> impl Iterator<Item = &Processor> {
        self.processors.iter().filter(|p| p.enabled)
    }
}

/// The `acpi` crate's view of physical memory: the direct map.
#[derive(Clone, Copy, Debug)]
struct DirectMap;

impl AcpiHandler for DirectMap {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let virt = layout::phys_to_virt(physical_address as u64) as *mut T;
        // SAFETY: the direct map covers all RAM and the first 4 GiB, where firmware puts
        // ACPI tables; the mapping is permanent, so "unmapping" is a no-op.
        unsafe {
            PhysicalMapping::new(
                physical_address,
                NonNull::new_unchecked(virt),
                size,
                size,
                *self,
            )
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Reads the platform description; without ACPI, a single-CPU PC is assumed.
pub fn parse(root: Option<RootPointer>) -> Platform {
    let fallback = Platform {
        acpi: false,
        processors: alloc::vec![Processor {
            apic_id: 0,
            enabled: true
        }],
        local_apic_address: 0xfee0_0000,
        has_8259: true,
        ..Platform::default()
    };
    let Some(root) = root else {
        log::warn!("no RSDP from the bootloader; assuming one CPU");
        return fallback;
    };
    // SAFETY: the bootloader's RSDP copy named this RSDT/XSDT address; the handler maps
    // it through the direct map.
    let tables =
        match unsafe { AcpiTables::from_rsdt(DirectMap, root.revision, root.table as usize) } {
            Ok(t) => t,
            Err(e) => {
                log::warn!(
                    "bad root table at {:#x}: {e:?}; assuming one CPU",
                    root.table
                );
                return fallback;
            }
        };
    let mut platform = Platform {
        acpi: true,
        local_apic_address: 0xfee0_0000,
        ..Platform::default()
    };
    match tables.find_table::<Madt>() {
        Ok(madt) => {
            platform.local_apic_address = madt.get().local_apic_address as u64;
            platform.has_8259 = madt.get().supports_8259();
            for entry in madt.get().entries() {
                match entry {
                    MadtEntry::LocalApic(e) => {
                        let flags = e.flags;
                        platform.processors.push(Processor {
                            apic_id: e.apic_id as u32,
                            enabled: flags & 1 != 0,
                        });
                    }
                    MadtEntry::LocalX2Apic(e) => {
                        let (id, flags) = (e.x2apic_id, e.flags);
                        platform.processors.push(Processor {
                            apic_id: id,
                            enabled: flags & 1 != 0,
                        });
                    }
                    MadtEntry::IoApic(e) => platform.io_apics.push(IoApic {
                        id: e.io_apic_id,
                        address: e.io_apic_address as u64,
                        gsi_base: e.global_system_interrupt_base,
                    }),
                    MadtEntry::InterruptSourceOverride(e) => {
                        platform.overrides.push(InterruptOverride {
                            irq: e.irq,
                            gsi: e.global_system_interrupt,
                            flags: e.flags,
                        })
                    }
                    MadtEntry::LocalApicAddressOverride(e) => {
                        platform.local_apic_address = e.local_apic_address
                    }
                    _ => {}
                }
            }
        }
        Err(e) => log::warn!("no MADT ({e:?})"),
    }
    if platform.processors.is_empty() {
        platform.processors = fallback.processors.clone();
    }
    platform.hpet = HpetInfo::new(&tables).ok().map(|h| h.base_address as u64);
    platform.power = power_controls(&tables);
    log::info!(
        "{} CPUs, {} I/O APICs, {} overrides, HPET {}",
        platform.usable_processors().count(),
        platform.io_apics.len(),
        platform.overrides.len(),
        if platform.hpet.is_some() {
            "present"
        } else {
            "absent"
        }
    );
    platform
}

/// The FADT's PM1 control blocks and reset register, and the DSDT's location.
fn power_controls(tables: &AcpiTables<DirectMap>) -> PowerControls {
    let io_port = |a: GenericAddress| match a.address_space {
        AddressSpace::SystemIo if a.address != 0 && a.address <= 0xffff => Some(a.address as u16),
        _ => None,
    };
    let Ok(fadt) = tables.find_table::<Fadt>() else {
        return PowerControls::default();
    };
    let fadt = fadt.get();
    let flags = fadt.flags;
    PowerControls {
        pm1a_control: fadt.pm1a_control_block().ok().and_then(io_port),
        pm1b_control: fadt.pm1b_control_block().ok().flatten().and_then(io_port),
        reset: if flags.supports_system_reset_via_fadt() {
            let value = fadt.reset_value;
            fadt.reset_register()
                .ok()
                .and_then(io_port)
                .map(|port| (port, value))
        } else {
            None
        },
        dsdt: tables.dsdt().ok().map(|t| (t.address as u64, t.length)),
    }
}

/// The DSDT's AML at `dsdt` (from [`PowerControls::dsdt`]), read through the direct
/// map.
pub fn dsdt_bytes(dsdt: (u64, u32)) -> &'static [u8] {
    let (address, length) = dsdt;
    let virt = layout::phys_to_virt(address) as *const u8;
    // SAFETY: the `acpi` crate found a DSDT whose AML is `length` bytes at `address`
    // (signature and length checked); ACPI tables lie below 4 GiB, which the direct map covers
    // for the kernel's lifetime, and firmware tables are never written after boot.
    unsafe { core::slice::from_raw_parts(virt, length as usize) }
}
