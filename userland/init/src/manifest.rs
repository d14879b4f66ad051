//! The default image's manifest: which servers init starts and what each is given.
//! Each server gets a CSpace of its own holding exactly what its entry lists: the
//! endpoint it serves, a badged capability to the name service, its I/O ports, its IRQ
//! handlers, its own TCB and CNode, its fault endpoint, `slots` free slots, and what is
//! left of its memory budget. A server with `entry: None` is a program of its own: the
//! boot module of the same name (crate `userland/programs/NAME`; the runner puts every
//! program of that directory on the ISO), loaded into an address space of its own.

/// When init starts a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before `keel: ready`: init waits until the server's [`Server::serves`] name is
    /// registered.
    Boot,
    /// After `keel: ready` (the shell).
    Ready,
}

/// One server.
#[derive(Clone, Copy, Debug)]
pub struct Server {
    /// Its name in init's reports.
    pub name: &'static str,
    /// Scheduling priority (init itself drops to [`crate::INIT_PRIORITY`]).
    pub priority: u8,
    /// `None`: a program of its own, loaded from the boot module called [`Server::name`]
    /// (the binary of crate `userland/programs/NAME`) into its own address space.
    /// `Some(entry)`: a thread of init's image (in an address space that maps init's
    /// image) that runs `entry`. The argument is a packed `keel_servers::StartInfo`
    /// (the power service: `keel_servers::power::PowerStart`).
    pub entry: Option<fn(u64)>,
    /// log2 of its memory budget in bytes (a program of its own): init makes an untyped
    /// of this size and builds every object of the server from it; the server gets
    /// what is left as an untyped in `keel_servers::cspace::slot::UNTYPED`. A restart
    /// revokes it, which returns all of it.
    pub budget_bits: u32,
    /// Whether it gets the ACPI power controls the kernel found (the I/O ports of the
    /// PM1 control blocks and of the reset register) and a read-only copy of the boot
    /// info (the power service).
    pub acpi_power: bool,
    /// The name it registers with the name service (an endpoint is made for it), if
    /// it serves one. The name service itself serves `names`.
    pub serves: Option<&'static str>,
    /// Names it looks up (documentation for now: any client may look any name up).
    pub uses: &'static [&'static str],
    /// I/O ports it is given (first, last).
    pub io_ports: Option<(u16, u16)>,
    /// ISA IRQs it is given: a handler for each in the first slots of its window (in
    /// this order), signalling one notification bound to its TCB with badge
    /// `keel_servers::serial::IRQ_BADGE`.
    pub irqs: &'static [u8],
    /// Free slots it may fill (the first ones hold its IRQ handlers): its slot budget.
    /// Its own CNode has room for these after the well-known slots
    /// (`keel_servers::cspace::slot`), rounded up to a power of two.
    pub slots: u64,
    /// Whether it gets an endpoint to ask init about the threads init started (in slot
    /// `keel_servers::cspace::slot::INIT`; the shell's `caps`).
    pub asks_init: bool,
    /// The CPU it runs on (a machine with fewer CPUs runs it on CPU 0).
    pub cpu: u16,
    /// Whether it may use RD/WR FS/GS BASE itself (FsGsBaseControl; without FSGSBASE
    /// on the CPU the right is not given and the server uses TCBSetGSBase instead).
    pub fsgsbase: bool,
    /// Whether init restarts it when it faults (otherwise it stays stopped). A new
    /// instance gets a fresh CSpace, stack and IPC buffer, the same capabilities and
    /// address space, and registers its name again.
    pub restart: bool,
    /// When it starts.
    pub stage: Stage,
}

/// The name under which the name service is known (it does not register itself).
pub const NAMES: &str = "names";

/// The servers, in start order; the first is the name service.
pub const SERVERS: &[Server] = &[
    Server {
        name: "names",
        priority: 200,
        entry: None,
        budget_bits: 20,
        acpi_power: false,
        serves: Some(NAMES),
        uses: &[],
        io_ports: None,
        irqs: &[],
        slots: 64,
        asks_init: false,
        cpu: 0,
        fsgsbase: false,
        restart: false,
        stage: Stage::Boot,
    },
    Server {
        name: "serial",
        priority: 180,
        entry: None,
        budget_bits: 20,
        acpi_power: false,
        serves: Some(keel_servers::serial::NAME),
        uses: &[NAMES],
        io_ports: Some(keel_servers::serial::PORTS),
        irqs: &[keel_servers::serial::IRQ],
        slots: 2,
        asks_init: false,
        cpu: 0,
        fsgsbase: false,
        restart: false,
        stage: Stage::Boot,
    },
    Server {
        name: "timer",
        priority: 170,
        entry: None,
        budget_bits: 20,
        acpi_power: false,
        serves: Some(keel_servers::timer::NAME),
        uses: &[NAMES],
        io_ports: Some(keel_servers::timer::PORTS),
        irqs: &[keel_servers::timer::IRQ],
        slots: 9, // the IRQ 0 handler, then 8 sleepers' reply capabilities
        asks_init: false,
        cpu: 0,
        fsgsbase: false,
        restart: true,
        stage: Stage::Boot,
    },
    Server {
        name: "echo",
        priority: 150,
        entry: None,
        budget_bits: 20,
        acpi_power: false,
        serves: Some(keel_servers::echo::NAME),
        uses: &[NAMES, keel_servers::serial::NAME],
        io_ports: None,
        irqs: &[],
        slots: 1,
        asks_init: false,
        // On the second CPU (where there is one), with the FS/GS BASE right: the
        // manifest's placement and right in use.
        cpu: 1,
        fsgsbase: true,
        restart: true,
        stage: Stage::Boot,
    },
    Server {
        name: "power",
        priority: keel_servers::power::PRIORITY,
        entry: None,
        budget_bits: 20,
        acpi_power: true,
        serves: Some(keel_servers::power::NAME),
        uses: &[NAMES],
        io_ports: None,
        irqs: &[],
        slots: 2, // the PM1b control block's and the reset register's ports
        asks_init: false,
        cpu: 0,
        fsgsbase: false,
        restart: false,
        stage: Stage::Boot,
    },
    Server {
        name: "kv",
        priority: 140,
        entry: None,
        budget_bits: 20,
        acpi_power: false,
        // The key-value store (doc/writing-a-server.md's worked example). Its name comes
        // from its crate: init waits for exactly this name before `keel: ready`.
        serves: Some(keel_server_kv::NAME),
        uses: &[NAMES],
        io_ports: None,
        irqs: &[],
        slots: 0, // it looks nothing up
        asks_init: false,
        cpu: 0,
        fsgsbase: false,
        restart: true,
        stage: Stage::Boot,
    },
    Server {
        name: "kvclient",
        priority: 60,
        entry: None,
        budget_bits: 20,
        acpi_power: false,
        serves: None,
        uses: &[NAMES, keel_servers::serial::NAME, keel_server_kv::NAME],
        io_ports: None,
        irqs: &[],
        slots: 2, // the endpoints it looks up: serial's, kv's
        asks_init: false,
        cpu: 0,
        fsgsbase: false,
        restart: false,
        stage: Stage::Ready,
    },
    Server {
        name: "shell",
        priority: 50,
        entry: None,
        budget_bits: 20,
        acpi_power: false,
        serves: None,
        uses: &[
            NAMES,
            keel_servers::serial::NAME,
            keel_servers::echo::NAME,
            keel_servers::timer::NAME,
            keel_servers::power::NAME,
        ],
        io_ports: None,
        irqs: &[],
        slots: 5,
        asks_init: true,
        cpu: 0,
        fsgsbase: false,
        restart: true,
        stage: Stage::Ready,
    },
];
