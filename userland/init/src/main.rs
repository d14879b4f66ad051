//! The root task of the default image. It reads boot info, starts the servers of its
//! [`manifest`] — each a thread in its own address space (a copy of init's image
//! mapping, see `keel_rt::Allocator::clone_image_vspace`), told about only the
//! capabilities its entry lists — waits until the boot-stage servers have registered,
//! prints `keel: ready`, starts the shell and then reports servers that fault. It also
//! starts its own [`power`] service, the only holder of the machine's power controls,
//! and keeps a [`registry`] of what it started for the shell's `ps` and `caps`.
//!
//! Limits of this first slice: all servers share init's image (code and data) and its
//! root CNode; a server's "own" capabilities are the slots its `StartInfo` names.
#![no_std]
#![no_main]

mod manifest;
mod power;
mod registry;
mod shell;

use core::sync::atomic::{AtomicU64, Ordering};

use keel_rt::ROOT_DEPTH;
use keel_rt::{Allocator, ThreadConfig, println};
use keel_servers::{StartInfo, names};
use keel_sys::CapRights;
use keel_sys::bootinfo::BootInfo;
use keel_sys::cap::{Cap, Endpoint, IoPort, IrqHandler, Notification, init};

use manifest::{SERVERS, Server, Stage};
use registry::{HandedList, Role};

keel_sys::entry_point!(main);

/// init's priority once the servers are started (below all of them).
pub const INIT_PRIORITY: u64 = 10;

/// Boot-info totals for the shell's `mem` (statics are shared: servers run init's
/// image).
pub static MEM_RAM: AtomicU64 = AtomicU64::new(0);
/// Number of RAM untyped capabilities.
pub static MEM_RAM_CAPS: AtomicU64 = AtomicU64::new(0);
/// Device untyped bytes.
pub static MEM_DEVICE: AtomicU64 = AtomicU64::new(0);
/// RAM untyped bytes init has not used once the servers are up.
pub static MEM_FREE: AtomicU64 = AtomicU64::new(0);

/// Badge of init's own capability to the name service.
const INIT_BADGE: u64 = 0x1417;

fn main(argument: u64) -> u64 {
    let Some(info) = keel_rt::init(argument) else {
        println!("init: no boot info from the kernel");
        return 1;
    };
    record_memory(&info);
    let mut alloc = Allocator::new(&info);
    match start_all(&mut alloc, &info) {
        Ok(fault_ep) => report_faults(fault_ep),
        Err(e) => {
            println!("init: cannot start the system: {e}");
            2
        }
    }
}

fn record_memory(info: &BootInfo) {
    for u in info.untypeds() {
        let bytes = 1u64 << u.size_bits();
        if u.is_device() {
            MEM_DEVICE.fetch_add(bytes, Ordering::Relaxed);
        } else {
            MEM_RAM.fetch_add(bytes, Ordering::Relaxed);
            MEM_RAM_CAPS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts every server; returns the fault endpoint.
fn start_all(alloc: &mut Allocator, info: &BootInfo) -> keel_rt::Result<Cap<Endpoint>> {
    let fault_ep = alloc.create::<Endpoint>()?;
    let names_ep = alloc.create::<Endpoint>()?;
    let mint = |alloc: &mut Allocator, ep: Cap<Endpoint>, badge: u64| {
        let slot = alloc.slot()?;
        init::CNODE.mint(
            slot,
            ROOT_DEPTH,
            init::CNODE,
            ep.cptr(),
            ROOT_DEPTH,
            CapRights::ALL,
            badge,
        )?;
        keel_rt::Result::Ok(Cap::<Endpoint>::from_cptr(slot))
    };
    let start = |alloc: &mut Allocator, index: usize, server: &Server| -> keel_rt::Result<()> {
        let badge = index as u64 + 1;
        let serve = match server.serves {
            Some(manifest::NAMES) => names_ep,
            Some(_) => alloc.create::<Endpoint>()?,
            None => Cap::from_cptr(0),
        };
        let names = if server.serves == Some(manifest::NAMES) {
            0
        } else {
            mint(alloc, names_ep, badge)?.cptr()
        };
        let slots = if server.slots > 0 {
            alloc.slots.alloc_range(server.slots)?
        } else {
            0
        };
        let io_port = match server.io_ports {
            Some((first, last)) => {
                let slot = alloc.slot()?;
                init::IO_PORT_CONTROL.issue(
                    first as u64,
                    last as u64,
                    init::CNODE,
                    slot,
                    ROOT_DEPTH,
                )?;
                slot
            }
            None => 0,
        };
        // IRQ handlers in the first slots of the window, all signalling one
        // notification that is bound to the server's TCB.
        assert!(
            server.irqs.len() as u64 <= server.slots,
            "{}: IRQs need slots",
            server.name
        );
        let irq_notification = if server.irqs.is_empty() {
            None
        } else {
            let notification = alloc.create::<Notification>()?;
            let badged = alloc.slot()?;
            init::CNODE.mint(
                badged,
                ROOT_DEPTH,
                init::CNODE,
                notification.cptr(),
                ROOT_DEPTH,
                CapRights::ALL,
                keel_servers::serial::IRQ_BADGE,
            )?;
            for (k, &irq) in server.irqs.iter().enumerate() {
                let handler = Cap::<IrqHandler>::from_cptr(slots + k as u64);
                init::IRQ_CONTROL.get(irq as u64, init::CNODE, handler.cptr(), ROOT_DEPTH)?;
                handler.set_notification(Cap::from_cptr(badged))?;
            }
            Some(notification)
        };
        let fault = mint(alloc, fault_ep, badge)?;
        let mut handed = HandedList::new();
        handed.push(serve.cptr(), Role::Serve);
        handed.push(names, Role::Names);
        handed.push(slots, Role::Slots(server.slots as u16));
        if let Some((first, last)) = server.io_ports {
            handed.push(io_port, Role::IoPort(first, last));
        }
        for (k, &irq) in server.irqs.iter().enumerate() {
            handed.push(slots + k as u64, Role::IrqHandler(irq));
        }
        if let Some(n) = irq_notification {
            handed.push(n.cptr(), Role::BoundNotification);
        }
        handed.push(fault.cptr(), Role::Fault);
        let vspace = alloc.clone_image_vspace(info)?;
        let argument = StartInfo {
            serve: serve.cptr(),
            names,
            slots,
            slot_count: server.slots,
            io_port,
        }
        .pack();
        let config = ThreadConfig {
            priority: server.priority,
            fault_ep: fault.cptr(),
            affinity: None,
        };
        let thread = alloc.create_thread_in(vspace, server.entry, argument, config)?;
        if let Some(n) = irq_notification {
            thread.tcb.bind_notification(n)?;
        }
        registry::started(
            index,
            thread.tcb.cptr(),
            config.affinity.unwrap_or(0),
            &handed,
        );
        println!(
            "init: starting {} (priority {}, serves {}, uses {:?}, ports {:x?}, irqs {:?})",
            server.name,
            server.priority,
            server.serves.unwrap_or("-"),
            server.uses,
            server.io_ports,
            server.irqs,
        );
        thread.start()?;
        Ok(())
    };
    for (i, s) in SERVERS.iter().enumerate() {
        if s.stage == Stage::Boot {
            start(alloc, i, s)?;
        }
    }
    let power_names = mint(alloc, names_ep, registry::POWER as u64 + 1)?;
    let power_fault = mint(alloc, fault_ep, registry::POWER as u64 + 1)?;
    start_power(alloc, info, power_names, power_fault)?;
    // Let the servers run (init goes below them) and wait for their names.
    init::TCB.set_priority(init::TCB, INIT_PRIORITY)?;
    let mine = mint(alloc, names_ep, INIT_BADGE)?;
    let slot = alloc.slot()?;
    let boot_names = SERVERS
        .iter()
        .filter(|s| s.stage == Stage::Boot)
        .filter_map(|s| s.serves.filter(|n| *n != manifest::NAMES))
        .chain([power::NAME]);
    for name in boot_names {
        loop {
            match names::lookup(mine, name, slot) {
                Ok(ep) => {
                    // Empty the slot for the next lookup; it stays init's (not given
                    // back to the allocator, which would hand it out twice).
                    init::CNODE.delete(ep.cptr(), ROOT_DEPTH)?;
                    break;
                }
                Err(names::Error::Refused(names::Status::NotFound)) => {
                    keel_sys::ipc::yield_now();
                }
                Err(e) => {
                    println!("init: {name} did not register: {e:?}");
                    break;
                }
            }
        }
    }
    MEM_FREE.store(alloc.untyped.free_bytes(), Ordering::Relaxed);
    println!("{}", keel_abi::harness::READY_LINE);
    for (i, s) in SERVERS.iter().enumerate() {
        if s.stage == Stage::Ready {
            start(alloc, i, s)?;
        }
    }
    Ok(fault_ep)
}

/// Starts the power service in init's own address space with I/O port capabilities for
/// the ACPI power controls init finds in the boot info.
fn start_power(
    alloc: &mut Allocator,
    info: &BootInfo,
    names: Cap<Endpoint>,
    fault: Cap<Endpoint>,
) -> keel_rt::Result<()> {
    let acpi = info.acpi_power();
    let mut issue = |first: u64, last: u64| -> keel_rt::Result<Cap<IoPort>> {
        let slot = alloc.slot()?;
        init::IO_PORT_CONTROL.issue(first, last, init::CNODE, slot, ROOT_DEPTH)?;
        Ok(Cap::from_cptr(slot))
    };
    let mut handed = HandedList::new();
    let mut start = power::PowerStart::default();
    if let Some(a) = acpi.filter(|a| a.can_power_off()) {
        let pm1a = a.pm1a_control as u16;
        start.pm1a = issue(a.pm1a_control, a.pm1a_control + 1)?.cptr();
        handed.push(start.pm1a, Role::IoPort(pm1a, pm1a + 1));
        if a.pm1b_control != 0 {
            let pm1b = a.pm1b_control as u16;
            start.pm1b = issue(a.pm1b_control, a.pm1b_control + 1)?.cptr();
            handed.push(start.pm1b, Role::IoPort(pm1b, pm1b + 1));
        }
    }
    let (reset_port, _) = power::reset_register(acpi);
    start.reset = issue(reset_port as u64, reset_port as u64)?.cptr();
    handed.push(start.reset, Role::IoPort(reset_port, reset_port));
    start.serve = alloc.create::<Endpoint>()?.cptr();
    handed.push(start.serve, Role::Serve);
    start.names = names.cptr();
    handed.push(start.names, Role::Names);
    handed.push(fault.cptr(), Role::Fault);
    let config = ThreadConfig {
        priority: power::PRIORITY,
        fault_ep: fault.cptr(),
        affinity: None,
    };
    let thread = alloc.create_thread(power::main, start.pack(), config)?;
    registry::started(registry::POWER, thread.tcb.cptr(), 0, &handed);
    println!(
        "init: starting {} (priority {}, serves {}, ports {}, in init's address space)",
        power::NAME,
        power::PRIORITY,
        power::NAME,
        if acpi.is_some_and(|a| a.can_power_off()) {
            "PM1 control and reset"
        } else {
            "reset only (no ACPI S5)"
        },
    );
    thread.start()?;
    Ok(())
}

/// Reports faulting servers forever (they are not restarted yet).
fn report_faults(fault_ep: Cap<Endpoint>) -> u64 {
    loop {
        let r = fault_ep.recv();
        let index = (r.badge as usize).checked_sub(1);
        let name = index
            .filter(|&i| i <= registry::POWER)
            .map_or("?", registry::name);
        if let Some(i) = index {
            registry::faulted(i, r.label());
        }
        println!(
            "init: server {name} faulted (fault label {}); it stays stopped",
            r.label()
        );
    }
}
