//! The root task of the default image. It reads boot info, starts the servers of its
//! [`manifest`] — each a thread in its own address space (a copy of init's image
//! mapping, see `keel_rt::Allocator::clone_image_vspace`) and its own CSpace
//! (`keel_servers::cspace`), which holds exactly the capabilities its entry lists —
//! waits until the boot-stage servers have registered, prints `keel: ready`, starts the
//! shell and then handles faults: it reports a faulting server and restarts it if its
//! entry says so. It also starts its own [`power`] service, the only holder of the
//! machine's power controls, and keeps a [`registry`] of what it started for the
//! shell's `ps` and `caps` (whose questions about other CSpaces it answers).
//!
//! init keeps, in its root CNode, every capability it gives a server (the originals of
//! the copies in the server's CSpace), so a restarted server gets the same ones.
//!
//! Limits of this slice: all servers share init's image (code and data); the power
//! service also runs in init's address space and root CNode.
#![no_std]
#![no_main]

extern crate alloc;

mod manifest;
mod power;
mod registry;
mod shell;

use core::sync::atomic::{AtomicU64, Ordering};

use keel_rt::ROOT_DEPTH;
use keel_rt::{Allocator, Thread, ThreadConfig, println};
use keel_servers::cspace::{ServerCSpace, slot};
use keel_servers::{StartInfo, names};
use keel_sys::CapRights;
use keel_sys::bootinfo::BootInfo;
use keel_sys::cap::{Cap, Endpoint, IoPort, IrqHandler, Notification, Pml4, init};

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

/// CPUs the kernel runs (from the boot info).
static CPUS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

fn main(argument: u64) -> u64 {
    let Some(info) = keel_rt::init(argument) else {
        println!("init: no boot info from the kernel");
        return 1;
    };
    CPUS.store(
        info.num_nodes().max(1),
        core::sync::atomic::Ordering::Relaxed,
    );
    record_memory(&info);
    let mut alloc = Allocator::new(&info);
    match start_all(&mut alloc, &info) {
        Ok(system) => report_faults(&mut alloc, system),
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

/// What init made once for a server and hands again to each instance of it (a
/// restarted server gets the same): capabilities in init's root CNode.
#[derive(Clone, Copy, Debug)]
struct Given {
    /// The endpoint it serves.
    serve: Option<Cap<Endpoint>>,
    /// Its badged capability to the name service.
    names: Option<Cap<Endpoint>>,
    /// Its badged fault endpoint.
    fault: Cap<Endpoint>,
    /// Its I/O port capability.
    io_port: Option<Cap<IoPort>>,
    /// Its IRQ handlers, in manifest order (the first `irqs.len()` entries).
    irq_handlers: [Cap<IrqHandler>; MAX_IRQS],
    /// The notification its IRQs signal, bound to its TCB.
    irq_notification: Option<Cap<Notification>>,
    /// Its address space (a clone of init's image mapping).
    vspace: Cap<Pml4>,
    /// An endpoint to ask init questions (init's fault endpoint, badged
    /// [`registry::QUERY_BADGE`]).
    init: Option<Cap<Endpoint>>,
}

/// Most IRQs a manifest entry may list.
const MAX_IRQS: usize = 4;

/// One running instance of a server: its thread and its CSpace.
struct Instance {
    thread: Thread,
    space: ServerCSpace,
}

/// init's state after boot: what the fault loop needs to report, restart and answer
/// the shell's questions.
struct System {
    fault_ep: Cap<Endpoint>,
    given: [Option<Given>; registry::MAX_THREADS],
    running: [Option<Instance>; registry::MAX_THREADS],
}

/// Mints a badged copy of `ep` into a new slot of init's root CNode.
fn mint(alloc: &mut Allocator, ep: Cap<Endpoint>, badge: u64) -> keel_rt::Result<Cap<Endpoint>> {
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
    Ok(Cap::from_cptr(slot))
}

/// Makes what manifest entry `index` is given (endpoint, badged name-service and fault
/// endpoints, I/O ports, IRQ handlers and their notification, an address space).
fn give(
    alloc: &mut Allocator,
    info: &BootInfo,
    index: usize,
    server: &Server,
    names_ep: Cap<Endpoint>,
    fault_ep: Cap<Endpoint>,
) -> keel_rt::Result<Given> {
    let badge = index as u64 + 1;
    let serve = match server.serves {
        Some(manifest::NAMES) => Some(names_ep),
        Some(_) => Some(alloc.create::<Endpoint>()?),
        None => None,
    };
    let names = if server.serves == Some(manifest::NAMES) {
        None
    } else {
        Some(mint(alloc, names_ep, badge)?)
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
            Some(Cap::from_cptr(slot))
        }
        None => None,
    };
    // IRQ handlers in the first slots of the window, all signalling one notification
    // that is bound to the server's TCB.
    assert!(
        server.irqs.len() as u64 <= server.slots && server.irqs.len() <= MAX_IRQS,
        "{}: IRQs need slots",
        server.name
    );
    let mut irq_handlers = [Cap::from_cptr(0); MAX_IRQS];
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
        for (handler, &irq) in irq_handlers.iter_mut().zip(server.irqs) {
            *handler = Cap::from_cptr(alloc.slot()?);
            init::IRQ_CONTROL.get(irq as u64, init::CNODE, handler.cptr(), ROOT_DEPTH)?;
            handler.set_notification(Cap::from_cptr(badged))?;
        }
        Some(notification)
    };
    Ok(Given {
        serve,
        names,
        fault: mint(alloc, fault_ep, badge)?,
        io_port,
        irq_handlers,
        irq_notification,
        vspace: alloc.clone_image_vspace(info)?,
        init: if server.asks_init {
            Some(mint(alloc, fault_ep, registry::QUERY_BADGE)?)
        } else {
            None
        },
    })
}

/// Makes one instance of manifest entry `index`: a CSpace of its own holding exactly
/// what `given` lists (at the well-known slots of `keel_servers::cspace::slot`), and a
/// thread in its address space with that CSpace, recorded in the registry but not
/// started yet.
fn launch(alloc: &mut Allocator, index: usize, given: &Given) -> keel_rt::Result<Instance> {
    let server = &SERVERS[index];
    let space = ServerCSpace::new(alloc, server.slots)?;
    let mut handed = HandedList::new();
    handed.push(slot::TCB, Role::Tcb);
    handed.push(slot::CNODE, Role::CNode(space.radix));
    space.copy(slot::FAULT, given.fault, CapRights::ALL)?;
    handed.push(slot::FAULT, Role::Fault);
    let mut start = StartInfo {
        slots: slot::FIRST_FREE,
        slot_count: server.slots,
        ..StartInfo::default()
    };
    if let Some(serve) = given.serve {
        space.copy(slot::SERVE, serve, CapRights::ALL)?;
        start.serve = slot::SERVE;
        handed.push(slot::SERVE, Role::Serve);
    }
    if let Some(names) = given.names {
        space.copy(slot::NAMES, names, CapRights::ALL)?;
        start.names = slot::NAMES;
        handed.push(slot::NAMES, Role::Names);
    }
    if let (Some(port), Some((first, last))) = (given.io_port, server.io_ports) {
        space.copy(slot::IO_PORT, port, CapRights::ALL)?;
        start.io_port = slot::IO_PORT;
        handed.push(slot::IO_PORT, Role::IoPort(first, last));
    }
    if let Some(init) = given.init {
        space.copy(slot::INIT, init, CapRights::ALL)?;
        handed.push(slot::INIT, Role::Init);
    }
    for (k, (&handler, &irq)) in given.irq_handlers.iter().zip(server.irqs).enumerate() {
        let slot = slot::FIRST_FREE + k as u64;
        space.copy(slot, handler, CapRights::ALL)?;
        handed.push(slot, Role::IrqHandler(irq));
    }
    if server.slots > 0 {
        handed.push(slot::FIRST_FREE, Role::Slots(server.slots as u16));
    }
    let cpus = CPUS.load(core::sync::atomic::Ordering::Relaxed);
    let cpu = if (server.cpu as u64) < cpus {
        server.cpu
    } else {
        0
    };
    let config = ThreadConfig {
        priority: server.priority,
        fault_ep: slot::FAULT,
        affinity: Some(cpu as u64),
        cspace: Some(space.thread_cspace()),
    };
    let thread = alloc.create_thread_in(given.vspace, server.entry, start.pack(), config)?;
    // The FS/GS BASE right (IllegalOperation without FSGSBASE: the server then uses
    // TCBSetGSBase, as the runtime's fibers do).
    if server.fsgsbase {
        let _ = init::FS_GS_BASE_CONTROL.set_access(thread.tcb, true);
    }
    if let Some(n) = given.irq_notification {
        thread.tcb.bind_notification(n)?;
        handed.push(0, Role::BoundNotification);
    }
    registry::started(
        index,
        thread.tcb.cptr(),
        space.cnode.cptr(),
        config.affinity.unwrap_or(0),
        &handed,
    );
    Ok(Instance { thread, space })
}

/// Stops an instance for good: its thread, its CSpace and everything in it (init's own
/// capabilities to what it was given stay).
fn stop(alloc: &mut Allocator, instance: Instance) -> keel_rt::Result<()> {
    instance.thread.tcb.suspend()?;
    instance.space.destroy(alloc)?;
    instance.thread.destroy(alloc)
}

/// Starts every server; returns what the fault loop needs.
fn start_all(alloc: &mut Allocator, info: &BootInfo) -> keel_rt::Result<System> {
    let fault_ep = alloc.create::<Endpoint>()?;
    let names_ep = alloc.create::<Endpoint>()?;
    let mut system = System {
        fault_ep,
        given: [None; registry::MAX_THREADS],
        running: [const { None }; registry::MAX_THREADS],
    };
    let start = |alloc: &mut Allocator, system: &mut System, index: usize| {
        let server = &SERVERS[index];
        let given = give(alloc, info, index, server, names_ep, fault_ep)?;
        println!(
            "init: starting {} (priority {}, CPU {}, serves {}, uses {:?}, ports {:x?}, irqs {:?}, {} slots of its own{})",
            server.name,
            server.priority,
            server.cpu,
            server.serves.unwrap_or("-"),
            server.uses,
            server.io_ports,
            server.irqs,
            1u64 << ServerCSpace::radix_for(server.slots),
            if server.fsgsbase {
                ", FS/GS BASE right"
            } else {
                ""
            },
        );
        let instance = launch(alloc, index, &given)?;
        instance.thread.start()?;
        system.running[index] = Some(instance);
        system.given[index] = Some(given);
        keel_rt::Result::Ok(())
    };
    for (i, s) in SERVERS.iter().enumerate() {
        if s.stage == Stage::Boot {
            start(alloc, &mut system, i)?;
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
            match names::lookup(mine, name, init::CNODE, slot) {
                Ok(ep) => {
                    // Empty the slot for the next lookup; it stays init's (not given
                    // back to the allocator, which would hand it out twice).
                    init::CNODE.delete(ep.cptr(), ROOT_DEPTH)?;
                    break;
                }
                Err(keel_rt::protocol::Error::NotFound) => {
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
    // From here on init prints through the serial server, like the servers, so its
    // lines (fault reports) never land inside theirs or the shell's.
    if let Ok(serial) = names::lookup(mine, keel_servers::serial::NAME, init::CNODE, slot) {
        keel_servers::serial::install_console(serial);
    }
    println!("{}", keel_abi::harness::READY_LINE);
    for (i, s) in SERVERS.iter().enumerate() {
        if s.stage == Stage::Ready {
            start(alloc, &mut system, i)?;
        }
    }
    Ok(system)
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
        cspace: None,
    };
    let thread = alloc.create_thread(power::main, start.pack(), config)?;
    handed.push(thread.tcb.cptr(), Role::Tcb);
    registry::started(registry::POWER, thread.tcb.cptr(), 0, 0, &handed);
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

/// Reports faulting servers forever, and restarts those whose manifest entry says
/// so: the faulted instance is stopped (thread and CSpace deleted) and a new one is
/// launched with the same capabilities, which registers its name again. Between
/// faults it answers questions sent with [`registry::QUERY_BADGE`] (the shell's).
fn report_faults(alloc: &mut Allocator, mut system: System) -> u64 {
    let mut request = system.fault_ep.recv();
    loop {
        if request.badge == registry::QUERY_BADGE {
            let answer = match request.label() {
                registry::IDENTIFY => {
                    let [index, slot] = request.words::<2>();
                    identify(alloc, index as usize, slot)
                }
                _ => registry::SlotContents::Unknown,
            };
            request = system.fault_ep.reply_recv(&answer.message());
            continue;
        }
        fault(alloc, &mut system, request.badge, request.label());
        request = system.fault_ep.recv();
    }
}

/// What is in `slot` of thread `index`'s CSpace: init copies it into a slot of its own
/// to ask the kernel its type (DebugCapIdentify looks in the caller's CSpace only).
fn identify(alloc: &mut Allocator, index: usize, slot: u64) -> registry::SlotContents {
    use keel_sys::cap::{CNode, Unknown};
    let (Some(cnode), Some(_)) = (registry::cnode(index), registry::tcb(index)) else {
        return registry::SlotContents::Unknown;
    };
    if cnode == 0 {
        // It runs in init's root CNode (the power service).
        return registry::SlotContents::Tag(Cap::<Unknown>::from_cptr(slot).identify());
    }
    let Ok(temporary) = alloc.slot() else {
        return registry::SlotContents::Unknown;
    };
    let contents = match init::CNODE.copy(
        temporary,
        ROOT_DEPTH,
        Cap::<CNode>::from_cptr(cnode),
        slot,
        ROOT_DEPTH,
        CapRights::ALL,
    ) {
        Ok(()) => {
            let tag = Cap::<Unknown>::from_cptr(temporary).identify();
            let _ = init::CNODE.delete(temporary, ROOT_DEPTH);
            registry::SlotContents::Tag(tag)
        }
        Err(keel_sys::Error::FailedLookup { .. }) => {
            registry::SlotContents::Tag(keel_abi::object::cap_tag::NULL)
        }
        Err(keel_sys::Error::IllegalOperation) => registry::SlotContents::Uncopyable,
        Err(_) => registry::SlotContents::Unknown,
    };
    alloc.slots.free(temporary);
    contents
}

/// Handles a fault of the thread with fault badge `badge`: reports it, and restarts the
/// thread if its manifest entry says so.
fn fault(alloc: &mut Allocator, system: &mut System, badge: u64, label: u64) {
    let Some(i) = (badge as usize)
        .checked_sub(1)
        .filter(|&i| i <= registry::POWER)
    else {
        println!("init: a fault with unknown badge {badge:#x}");
        return;
    };
    let name = registry::name(i);
    if name == keel_servers::serial::NAME {
        // A Call to a faulted server would wait for ever: back to the kernel console.
        keel_rt::reset_console();
    }
    registry::faulted(i, label);
    if !SERVERS.get(i).is_some_and(|s| s.restart) {
        println!("init: server {name} faulted (fault label {label}); it stays stopped");
        return;
    }
    println!("init: server {name} faulted (fault label {label}); restarting it");
    let Some(given) = system.given[i] else {
        println!("init: {name} was never started here; it stays stopped");
        return;
    };
    let mut restart = || {
        if let Some(old) = system.running[i].take() {
            stop(alloc, old)?;
        }
        let instance = launch(alloc, i, &given)?;
        registry::restarted(i);
        // Said before it runs: it has a higher priority than init.
        println!("init: server {name} restarted");
        instance.thread.start()?;
        system.running[i] = Some(instance);
        keel_rt::Result::Ok(())
    };
    if let Err(e) = restart() {
        println!("init: cannot restart {name}: {e}");
    }
}
