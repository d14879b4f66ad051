//! The root task of the default image. It reads boot info, starts the servers of its
//! [`manifest`] — each a program of its own, loaded from its boot module into an
//! address space, a CSpace (`keel_servers::cspace`) and a memory budget of its own
//! (`keel_servers::loader`); the CSpace holds exactly the capabilities its entry lists
//! — waits until the boot-stage servers have registered, prints `keel: ready`, starts
//! the shell (a server program too) and then handles faults: it reports a faulting server and restarts it if its entry says
//! so, from its module again, after revoking its budget (which returns all of its
//! memory). It keeps a [`registry`] of what it started and answers the shell's
//! questions about it (`keel_servers::init_query`: `ps`, `mem`, `caps`). A manifest
//! entry may also name an entry function of init's own image instead of a program
//! (`Program::InInit`: a thread in an address space that maps init's image; none of
//! the default manifest's does).
//!
//! init keeps, in its root CNode, every capability it gives a server (the originals of
//! the copies in the server's CSpace), so a restarted server gets the same ones. The
//! objects built from a server's budget have their capabilities in a window of init's
//! root CNode of the server's own; revoking the budget empties it.
#![no_std]
#![no_main]

extern crate alloc;

mod manifest;
mod registry;

use core::sync::atomic::{AtomicU64, Ordering};

use keel_rt::ROOT_DEPTH;
use keel_rt::{Allocator, Thread, ThreadConfig, println};
use keel_servers::cspace::{ServerCSpace, slot};
use keel_servers::init_query;
use keel_servers::loader::{self, Budget, Loaded};
use keel_servers::power::{self, PowerStart};
use keel_servers::{StartInfo, names};
use keel_sys::bootinfo::BootInfo;
use keel_sys::cap::{Cap, Endpoint, Frame, IoPort, IrqHandler, Notification, Pml4, init};
use keel_sys::{CapRights, VmAttributes};

use manifest::{SERVERS, Server, Stage};
use registry::{HandedList, Role};

keel_sys::entry_point!(main);

/// init's priority once the servers are started (below all of them).
pub const INIT_PRIORITY: u64 = 10;

/// Boot-info totals for the shell's `mem` (init answers its `init_query::SYSTEM`).
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
#[derive(Clone, Debug)]
struct Given {
    /// The endpoint it serves.
    serve: Option<Cap<Endpoint>>,
    /// Its badged capability to the name service.
    names: Option<Cap<Endpoint>>,
    /// Its badged fault endpoint.
    fault: Cap<Endpoint>,
    /// Its I/O port capability.
    io_port: Option<Cap<IoPort>>,
    /// The ACPI power controls' I/O ports (PM1a, PM1b, reset) with their ranges.
    power_ports: [Option<(Cap<IoPort>, u16, u16)>; 3],
    /// Its IRQ handlers, in manifest order (the first `irqs.len()` entries).
    irq_handlers: [Cap<IrqHandler>; MAX_IRQS],
    /// The notification its IRQs signal, bound to its TCB.
    irq_notification: Option<Cap<Notification>>,
    /// An endpoint to ask init questions (init's fault endpoint, badged
    /// [`registry::QUERY_BADGE`]).
    init: Option<Cap<Endpoint>>,
    /// How it runs.
    program: Program,
}

/// How a server runs.
#[derive(Clone, Debug)]
enum Program {
    /// A program of its own: its image (a boot module), its budget, and copies of the
    /// boot-info frame and of the extra boot-info page when it is given them.
    Module {
        image: &'static [u8],
        budget: Budget,
        boot_info: Option<(Cap<Frame>, Cap<Frame>)>,
    },
    /// A thread of init's image, in this address space (a clone of init's image
    /// mapping).
    InInit { entry: fn(u64), vspace: Cap<Pml4> },
}

/// Most IRQs a manifest entry may list.
const MAX_IRQS: usize = 4;

/// One running instance of a server: its TCB and CSpace, and for a thread of init's
/// image its thread (stack, IPC buffer).
struct Instance {
    tcb: Cap<keel_sys::cap::Tcb>,
    space: ServerCSpace,
    thread: Option<Thread>,
}

/// init's state after boot: what the fault loop needs to report, restart and answer
/// the shell's questions.
struct System {
    fault_ep: Cap<Endpoint>,
    /// The page of init's address space through which the loader fills frames.
    window: u64,
    /// The boot-info address (servers given a copy see it there too).
    boot_info: u64,
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

/// A copy of `source` (in init's root CNode) in a new slot.
fn copy_cap<T: keel_sys::CapType>(
    alloc: &mut Allocator,
    source: Cap<T>,
) -> keel_rt::Result<Cap<T>> {
    let slot = alloc.slot()?;
    init::CNODE.copy(
        slot,
        ROOT_DEPTH,
        init::CNODE,
        source.cptr(),
        ROOT_DEPTH,
        CapRights::ALL,
    )?;
    Ok(Cap::from_cptr(slot))
}

/// An I/O port capability for ports `first..=last`.
fn issue_ports(alloc: &mut Allocator, first: u64, last: u64) -> keel_rt::Result<Cap<IoPort>> {
    let slot = alloc.slot()?;
    init::IO_PORT_CONTROL.issue(first, last, init::CNODE, slot, ROOT_DEPTH)?;
    Ok(Cap::from_cptr(slot))
}

/// Makes what manifest entry `index` is given (endpoint, badged name-service and fault
/// endpoints, I/O ports, IRQ handlers and their notification, its budget, or an
/// address space of init's image).
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
        Some((first, last)) => Some(issue_ports(alloc, first as u64, last as u64)?),
        None => None,
    };
    let mut power_ports = [None; 3];
    if server.acpi_power {
        let acpi = info.acpi_power();
        if let Some(a) = acpi.filter(|a| a.can_power_off()) {
            let pm1a = a.pm1a_control as u16;
            power_ports[0] = Some((
                issue_ports(alloc, a.pm1a_control, a.pm1a_control + 1)?,
                pm1a,
                pm1a + 1,
            ));
            if a.pm1b_control != 0 {
                let pm1b = a.pm1b_control as u16;
                power_ports[1] = Some((
                    issue_ports(alloc, a.pm1b_control, a.pm1b_control + 1)?,
                    pm1b,
                    pm1b + 1,
                ));
            }
        }
        let (reset, _) = power::reset_register(acpi);
        power_ports[2] = Some((
            issue_ports(alloc, reset as u64, reset as u64)?,
            reset,
            reset,
        ));
    }
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
    let program = match server.entry {
        Some(entry) => Program::InInit {
            entry,
            vspace: alloc.clone_image_vspace(info)?,
        },
        None => {
            let Some(image) = info.module(server.name) else {
                println!("init: no boot module '{}'", server.name);
                return Err(keel_rt::Error::NotAnObject);
            };
            // A window of root CNode slots for the objects of its budget: a slot per
            // page of its image, and some for paging structures, IPC buffer, CNode,
            // TCB and the spare untyped.
            let pages = keel_rt::elf::Executable::parse(image).map_or(0, |e| e.pages());
            let count = pages + 32;
            let first = alloc.slots.alloc_range(count)?;
            let budget = Budget {
                untyped: alloc.untyped(server.budget_bits as u64)?,
                bits: server.budget_bits,
                slots: first..first + count,
            };
            let boot_info = if server.acpi_power {
                let extra = info.raw().extra_bi_pages.start;
                Some((
                    copy_cap(alloc, init::BOOT_INFO_FRAME)?,
                    copy_cap(alloc, Cap::<Frame>::from_cptr(extra))?,
                ))
            } else {
                None
            };
            Program::Module {
                image,
                budget,
                boot_info,
            }
        }
    };
    Ok(Given {
        serve,
        names,
        fault: mint(alloc, fault_ep, badge)?,
        io_port,
        power_ports,
        irq_handlers,
        irq_notification,
        init: if server.asks_init {
            Some(mint(alloc, fault_ep, registry::QUERY_BADGE)?)
        } else {
            None
        },
        program,
    })
}

/// The argument word of manifest entry `index`: capability pointers at the well-known
/// slots of `keel_servers::cspace::slot` (the power service: a `PowerStart`).
fn start_word(index: usize, given: &Given) -> u64 {
    let server = &SERVERS[index];
    if server.acpi_power {
        let at = |i: usize, slot: u64| {
            if given.power_ports[i].is_some() {
                slot
            } else {
                0
            }
        };
        return PowerStart {
            serve: if given.serve.is_some() {
                slot::SERVE
            } else {
                0
            },
            names: if given.names.is_some() {
                slot::NAMES
            } else {
                0
            },
            pm1a: at(0, slot::IO_PORT),
            pm1b: at(1, slot::FIRST_FREE),
            reset: at(2, slot::FIRST_FREE + 1),
        }
        .pack();
    }
    StartInfo {
        serve: if given.serve.is_some() {
            slot::SERVE
        } else {
            0
        },
        names: if given.names.is_some() {
            slot::NAMES
        } else {
            0
        },
        slots: slot::FIRST_FREE,
        slot_count: server.slots,
        io_port: if given.io_port.is_some() {
            slot::IO_PORT
        } else {
            0
        },
    }
    .pack()
}

/// Makes one instance of manifest entry `index`: a CSpace of its own holding exactly
/// what `given` lists (at the well-known slots of `keel_servers::cspace::slot`), and a
/// thread — a program loaded from its module into a new address space built from its
/// budget, or a thread of init's image — with that CSpace, recorded in the registry but
/// not started yet.
fn launch(
    alloc: &mut Allocator,
    system: &System,
    index: usize,
    given: &Given,
) -> keel_rt::Result<Instance> {
    let server = &SERVERS[index];
    let cpus = CPUS.load(core::sync::atomic::Ordering::Relaxed);
    let cpu = if (server.cpu as u64) < cpus {
        server.cpu
    } else {
        0
    } as u64;
    let argument = start_word(index, given);
    let mut handed = HandedList::new();
    let (tcb, space, thread, spare_bits) = match &given.program {
        Program::Module {
            image,
            budget,
            boot_info,
        } => {
            let start = loader::Start {
                priority: server.priority,
                cpu,
                free_slots: server.slots,
                argument,
                second: if boot_info.is_some() {
                    system.boot_info
                } else {
                    0
                },
            };
            let mut loaded: Loaded = match loader::load(image, budget, system.window, start) {
                Ok(loaded) => loaded,
                Err(loader::LoadError::Runtime(e)) => return Err(e),
                Err(e) => {
                    println!("init: cannot load {}: {e:?}", server.name);
                    return Err(keel_rt::Error::NotAnObject);
                }
            };
            if let Some((frame, extra)) = boot_info {
                for (k, f) in [frame, extra].into_iter().enumerate() {
                    let _ = f.unmap();
                    loaded.alloc.map_frame(
                        loaded.vspace,
                        *f,
                        system.boot_info + 0x1000 * k as u64,
                        CapRights::READ,
                        VmAttributes::DEFAULT.with(VmAttributes::EXECUTE_NEVER),
                        1,
                    )?;
                }
            }
            registry::set_budget(index, 1 << budget.bits, loaded.used);
            (loaded.tcb, loaded.space, None, loaded.spare_bits)
        }
        Program::InInit { entry, vspace } => {
            let space = ServerCSpace::new(alloc, server.slots)?;
            let config = ThreadConfig {
                priority: server.priority,
                fault_ep: slot::FAULT,
                affinity: Some(cpu),
                cspace: Some(space.thread_cspace()),
            };
            let thread = alloc.create_thread_in(*vspace, *entry, argument, config)?;
            (thread.tcb, space, Some(thread), 0)
        }
    };
    handed.push(slot::TCB, Role::Tcb);
    handed.push(slot::CNODE, Role::CNode(space.radix));
    space.copy(slot::FAULT, given.fault, CapRights::ALL)?;
    handed.push(slot::FAULT, Role::Fault);
    if let Some(serve) = given.serve {
        space.copy(slot::SERVE, serve, CapRights::ALL)?;
        handed.push(slot::SERVE, Role::Serve);
    }
    if let Some(names) = given.names {
        space.copy(slot::NAMES, names, CapRights::ALL)?;
        handed.push(slot::NAMES, Role::Names);
    }
    if let (Some(port), Some((first, last))) = (given.io_port, server.io_ports) {
        space.copy(slot::IO_PORT, port, CapRights::ALL)?;
        handed.push(slot::IO_PORT, Role::IoPort(first, last));
    }
    for (&port, at) in
        given
            .power_ports
            .iter()
            .zip([slot::IO_PORT, slot::FIRST_FREE, slot::FIRST_FREE + 1])
    {
        if let Some((port, first, last)) = port {
            space.copy(at, port, CapRights::ALL)?;
            handed.push(at, Role::IoPort(first, last));
        }
    }
    if let Some(init) = given.init {
        space.copy(slot::INIT, init, CapRights::ALL)?;
        handed.push(slot::INIT, Role::Init);
    }
    if spare_bits != 0 {
        handed.push(slot::UNTYPED, Role::Untyped(spare_bits as u8));
    }
    for (k, (&handler, &irq)) in given.irq_handlers.iter().zip(server.irqs).enumerate() {
        let slot = slot::FIRST_FREE + k as u64;
        space.copy(slot, handler, CapRights::ALL)?;
        handed.push(slot, Role::IrqHandler(irq));
    }
    if server.slots > 0 {
        handed.push(slot::FIRST_FREE, Role::Slots(server.slots as u16));
    }
    // The FS/GS BASE right (IllegalOperation without FSGSBASE: the server then uses
    // TCBSetGSBase, as the runtime's fibers do).
    if server.fsgsbase {
        let _ = init::FS_GS_BASE_CONTROL.set_access(tcb, true);
    }
    if let Some(n) = given.irq_notification {
        tcb.bind_notification(n)?;
        handed.push(0, Role::BoundNotification);
    }
    registry::started(index, tcb.cptr(), space.cnode.cptr(), cpu, &handed);
    Ok(Instance { tcb, space, thread })
}

/// Stops an instance for good: its thread, its CSpace and everything in it — for a
/// program of its own, every object of its budget, by revoking the budget (init's own
/// capabilities to what it was given stay).
fn stop(alloc: &mut Allocator, given: &Given, instance: Instance) -> keel_rt::Result<()> {
    instance.tcb.suspend()?;
    match (&given.program, instance.thread) {
        (Program::Module { budget, .. }, _) => loader::unload(budget),
        (Program::InInit { .. }, Some(thread)) => {
            instance.space.destroy(alloc)?;
            thread.destroy(alloc)
        }
        (Program::InInit { .. }, None) => instance.space.destroy(alloc),
    }
}

/// Starts every server; returns what the fault loop needs.
fn start_all(alloc: &mut Allocator, info: &BootInfo) -> keel_rt::Result<System> {
    let fault_ep = alloc.create::<Endpoint>()?;
    let names_ep = alloc.create::<Endpoint>()?;
    let window = alloc.scratch_range(0x1000, 0x1000);
    alloc.ensure_tables(init::VSPACE, window, 1)?;
    let mut system = System {
        fault_ep,
        window,
        boot_info: info.address(),
        given: [const { None }; registry::MAX_THREADS],
        running: [const { None }; registry::MAX_THREADS],
    };
    let start = |alloc: &mut Allocator, system: &mut System, index: usize| {
        let server = &SERVERS[index];
        let given = give(alloc, info, index, server, names_ep, fault_ep)?;
        let budget = match &given.program {
            Program::Module { budget, .. } => BudgetLine(Some(1 << budget.bits)),
            Program::InInit { .. } => BudgetLine(None),
        };
        println!(
            "init: starting {} (priority {}, CPU {}, serves {}, uses {:?}, ports {:x?}, irqs {:?}, {} slots of its own{}, {budget})",
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
            } else if server.acpi_power {
                ", ACPI power ports"
            } else {
                ""
            },
        );
        let instance = launch(alloc, system, index, &given)?;
        instance.tcb.resume()?;
        system.running[index] = Some(instance);
        system.given[index] = Some(given);
        keel_rt::Result::Ok(())
    };
    for (i, s) in SERVERS.iter().enumerate() {
        if s.stage == Stage::Boot {
            start(alloc, &mut system, i)?;
        }
    }
    // Let the servers run (init goes below them) and wait for their names.
    init::TCB.set_priority(init::TCB, INIT_PRIORITY)?;
    let mine = mint(alloc, names_ep, INIT_BADGE)?;
    let slot = alloc.slot()?;
    // TSC ticks after which init says which name it is still waiting for (10 s; the
    // kernel writes the frequency record on every machine it boots on).
    let patience = u64::from(info.tsc_mhz().unwrap_or(1000)) * 10_000_000;
    let boot_names = SERVERS
        .iter()
        .enumerate()
        .filter(|(_, s)| s.stage == Stage::Boot)
        .filter_map(|(i, s)| Some((i, s.serves.filter(|n| *n != manifest::NAMES)?)));
    for (index, name) in boot_names {
        let since = keel_sys::rdtsc();
        let mut said = false;
        let mut faults = 0;
        loop {
            match names::lookup(mine, name, init::CNODE, slot) {
                Ok(ep) => {
                    // Empty the slot for the next lookup; it stays init's (not given
                    // back to the allocator, which would hand it out twice).
                    init::CNODE.delete(ep.cptr(), ROOT_DEPTH)?;
                    break;
                }
                Err(keel_rt::protocol::Error::NotFound) => {}
                Err(e) => {
                    println!("init: {name} did not register: {e:?}");
                    break;
                }
            }
            // A boot server that faults before it registers (a panic in its setup, say)
            // is reported now, and restarted if its entry says so, up to three times
            // while init waits for it; then init goes on without it.
            if let Some(r) = system.fault_ep.nb_recv() {
                if let Some(i) = exit_of(&r) {
                    registry::exited(i);
                    if i == index {
                        println!(
                            "init: {name}'s program returned before it registered the name; init goes on without it"
                        );
                        break;
                    }
                    continue;
                }
                let waited_for = r.badge == index as u64 + 1;
                faults += usize::from(waited_for);
                if waited_for && (faults > BOOT_RESTARTS || !SERVERS[index].restart) {
                    registry::faulted(index, r.label());
                    println!(
                        "init: server {name} faulted (fault label {}) before it registered; it stays stopped, and init goes on without it",
                        r.label()
                    );
                    break;
                }
                fault(alloc, &mut system, r.badge, r.label());
                continue;
            }
            if !said && keel_sys::rdtsc().wrapping_sub(since) > patience {
                println!(
                    "init: still waiting for a server to register '{name}' (does its program register the name its manifest entry serves?)"
                );
                said = true;
            }
            keel_sys::ipc::yield_now();
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

/// How often init restarts a boot-stage server that faults before it registers its
/// name (a server whose setup always fails would otherwise hold the boot for ever).
const BOOT_RESTARTS: usize = 3;

/// A budget in init's start line: `1024 KiB budget`, or `in init's image`.
struct BudgetLine(Option<u64>);

impl core::fmt::Display for BudgetLine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(bytes) => write!(f, "{} KiB budget", bytes >> 10),
            None => f.write_str("in init's image"),
        }
    }
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
                init_query::IDENTIFY => {
                    let [index, slot] = request.words::<2>();
                    identify(alloc, index as usize, slot).message()
                }
                init_query::THREAD => match registry::thread_info(request.mr(0) as usize) {
                    Some(info) => info.message(),
                    None => keel_sys::Message::new(1),
                },
                init_query::CAPS => {
                    let mut words = [0u64; registry::MAX_CAPS];
                    let mut n = 0;
                    for (word, handed) in
                        words.iter_mut().zip(registry::caps(request.mr(0) as usize))
                    {
                        *word = handed.pack();
                        n += 1;
                    }
                    keel_sys::Message::new(0).words(&words[..n])
                }
                init_query::SYSTEM => init_query::SystemInfo {
                    ram: MEM_RAM.load(Ordering::Relaxed),
                    ram_caps: MEM_RAM_CAPS.load(Ordering::Relaxed),
                    free: MEM_FREE.load(Ordering::Relaxed),
                    device: MEM_DEVICE.load(Ordering::Relaxed),
                    init_priority: INIT_PRIORITY,
                }
                .message(),
                _ => init_query::SlotContents::Unknown.message(),
            };
            request = system.fault_ep.reply_recv(&answer);
            continue;
        }
        if let Some(i) = exit_of(&request) {
            registry::exited(i);
        } else {
            fault(alloc, &mut system, request.badge, request.label());
        }
        request = system.fault_ep.recv();
    }
}

/// The manifest entry whose program's entry returned, if `message` (from init's fault
/// endpoint) says so: the UnknownSyscall fault of `keel_servers::program::EXIT_SYSCALL`.
fn exit_of(message: &keel_sys::Received) -> Option<usize> {
    use keel_abi::fault::{FaultType, unknown_syscall};
    let index = (message.badge as usize).checked_sub(1)?;
    (index < SERVERS.len()
        && message.label() == FaultType::UnknownSyscall as u64
        && message.mr(unknown_syscall::SYSCALL) == keel_servers::program::EXIT_SYSCALL)
        .then_some(index)
}

/// What is in `slot` of thread `index`'s CSpace: init copies it into a slot of its own
/// to ask the kernel its type (DebugCapIdentify looks in the caller's CSpace only).
fn identify(alloc: &mut Allocator, index: usize, slot: u64) -> init_query::SlotContents {
    use keel_sys::cap::{CNode, Unknown};
    let (Some(cnode), Some(_)) = (registry::cnode(index), registry::tcb(index)) else {
        return init_query::SlotContents::Unknown;
    };
    let Ok(temporary) = alloc.slot() else {
        return init_query::SlotContents::Unknown;
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
            init_query::SlotContents::Tag(tag)
        }
        Err(keel_sys::Error::FailedLookup { .. }) => {
            init_query::SlotContents::Tag(keel_abi::object::cap_tag::NULL)
        }
        Err(keel_sys::Error::IllegalOperation) => init_query::SlotContents::Uncopyable,
        Err(_) => init_query::SlotContents::Unknown,
    };
    alloc.slots.free(temporary);
    contents
}

/// Handles a fault of the thread with fault badge `badge`: reports it, and restarts the
/// thread if its manifest entry says so.
fn fault(alloc: &mut Allocator, system: &mut System, badge: u64, label: u64) {
    let Some(i) = (badge as usize)
        .checked_sub(1)
        .filter(|&i| i < SERVERS.len())
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
    let Some(given) = system.given[i].clone() else {
        println!("init: {name} was never started here; it stays stopped");
        return;
    };
    let mut restart = || {
        if let Some(old) = system.running[i].take() {
            stop(alloc, &given, old)?;
        }
        let instance = launch(alloc, system, i, &given)?;
        registry::restarted(i);
        // Said before it runs: it has a higher priority than init.
        println!("init: server {name} restarted");
        instance.tcb.resume()?;
        system.running[i] = Some(instance);
        keel_rt::Result::Ok(())
    };
    if let Err(e) = restart() {
        println!("init: cannot restart {name}: {e}");
    }
}
