//! The default image's manifest: which servers init starts and what each is given.

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
    /// Its thread's entry; the argument is a packed `keel_servers::StartInfo`.
    pub entry: fn(u64),
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
    /// Free root-CNode slots it may fill (the first ones hold its IRQ handlers).
    pub slots: u64,
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
        entry: keel_servers::names::main,
        serves: Some(NAMES),
        uses: &[],
        io_ports: None,
        irqs: &[],
        slots: 64,
        stage: Stage::Boot,
    },
    Server {
        name: "serial",
        priority: 180,
        entry: keel_servers::serial::main,
        serves: Some(keel_servers::serial::NAME),
        uses: &[NAMES],
        io_ports: Some(keel_servers::serial::PORTS),
        irqs: &[keel_servers::serial::IRQ],
        slots: 2,
        stage: Stage::Boot,
    },
    Server {
        name: "echo",
        priority: 150,
        entry: keel_servers::echo::main,
        serves: Some(keel_servers::echo::NAME),
        uses: &[NAMES, keel_servers::serial::NAME],
        io_ports: None,
        irqs: &[],
        slots: 1,
        stage: Stage::Boot,
    },
    Server {
        name: "shell",
        priority: 50,
        entry: crate::shell::main,
        serves: None,
        uses: &[
            NAMES,
            keel_servers::serial::NAME,
            keel_servers::echo::NAME,
            crate::power::NAME,
        ],
        io_ports: None,
        irqs: &[],
        slots: 4,
        stage: Stage::Ready,
    },
];
