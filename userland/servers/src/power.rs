//! The power service: the one holder of the machine's power controls. It is a server
//! program of its own (init loads it like the others) with I/O port capabilities for the ACPI PM1a (and PM1b)
//! control block and for the reset register, registered at the name service as
//! [`NAME`]; clients (the shell) Call it to power the machine off or restart it.
//!
//! The ports and values come from the kernel's ACPI power record in the boot info (init
//! maps a read-only copy of the boot-info frame and its extra records into the
//! service's address space and passes its address in RSI; `BootInfo::get` finds it)
//! (`keel_abi::bootinfo::KeelAcpiPower`: the FADT's PM1 control blocks and reset
//! register, the DSDT's `\_S5` sleep types). Power off writes `SLP_TYPx | SLP_EN` to
//! the PM1 control blocks (ACPI sleep state S5); restart writes the FADT's reset value
//! to its reset register, or `0x06` to port `0xcf9` (the chipset's reset control
//! register) when the FADT names none. Before either, the service prints
//! [`keel_abi::harness::POWER_OFF_LINE`] or [`keel_abi::harness::RESTART_LINE`], which
//! the runner reads to tell a requested power off or restart from a crash.
//!
//! Protocol ([`PowerRequest`], with the runtime's typed IPC, `keel_rt::protocol`): a
//! Call with label [`POWER_OFF`] or [`RESTART`] and no words. On success there is no
//! reply (the machine is off); otherwise the reply is an error: `Unsupported` (the
//! firmware describes no way), `PortRefused` (no I/O port capability, or the kernel
//! refused the write), `StillRunning` (the write went through, nothing happened).

use keel_abi::bootinfo::{
    KeelAcpiPower, PM1_CONTROL_SLEEP_ENABLE, PM1_CONTROL_SLEEP_TYPE_SHIFT, acpi_power_flags,
};
use keel_abi::harness::{POWER_OFF_LINE, RESTART_LINE};
use keel_rt::println;
use keel_rt::protocol::{self, Answer, Error, Request, Service};
use keel_servers::names;
use keel_sys::bootinfo::BootInfo;
use keel_sys::cap::{Cap, Endpoint, IoPort};
use keel_sys::{Message, Received};

/// The name the service registers.
pub const NAME: &str = "power";
/// Its priority: above the shell, below the other servers.
pub const PRIORITY: u8 = 60;
/// Request label: power the machine off (ACPI S5).
pub const POWER_OFF: u64 = 1;
/// Request label: restart the machine.
pub const RESTART: u64 = 2;
/// Port of the chipset's reset control register, used when the FADT names no reset
/// register.
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// The value written there: full reset (SYS_RST | RST_CPU).
pub const RESET_CONTROL_VALUE: u8 = 0x06;
/// TSC ticks the service waits after the write before it says the machine is still
/// running: a virtual machine may act on the write only after the vCPU has gone on
/// for a while (QEMU's `pc` machine does). About a second at 2 GHz.
pub const GRACE_TICKS: u64 = 1 << 31;

/// The power service's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerRequest {
    /// Power the machine off (ACPI S5).
    PowerOff,
    /// Restart the machine.
    Restart,
}

impl Request for PowerRequest {
    /// Never sent: success has no reply.
    type Reply = ();

    fn encode(&self) -> Message {
        Message::new(match self {
            Self::PowerOff => POWER_OFF,
            Self::Restart => RESTART,
        })
    }

    fn decode(message: &Received) -> Result<Self, Error> {
        match message.label() {
            POWER_OFF => Ok(Self::PowerOff),
            RESTART => Ok(Self::Restart),
            _ => Err(Error::UnknownLabel),
        }
    }
}

/// The reset register to use: the FADT's, else the chipset's reset control register.
pub fn reset_register(acpi: Option<KeelAcpiPower>) -> (u16, u8) {
    match acpi {
        Some(a) if a.flags & acpi_power_flags::RESET_REGISTER != 0 => {
            (a.reset_port as u16, a.reset_value as u8)
        }
        _ => (RESET_CONTROL_PORT, RESET_CONTROL_VALUE),
    }
}

/// The capabilities the service starts with, packed into its thread argument (12 bits
/// each; 0 = none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerStart {
    /// The endpoint it serves.
    pub serve: u64,
    /// Its badged capability to the name service.
    pub names: u64,
    /// I/O port capability for the PM1a control block.
    pub pm1a: u64,
    /// I/O port capability for the PM1b control block.
    pub pm1b: u64,
    /// I/O port capability for the reset register.
    pub reset: u64,
}

impl PowerStart {
    /// The argument word.
    pub fn pack(&self) -> u64 {
        [self.serve, self.names, self.pm1a, self.pm1b, self.reset]
            .iter()
            .enumerate()
            .fold(0, |word, (i, f)| {
                assert!(*f < 1 << 12, "power start field {i} too large");
                word | f << (12 * i)
            })
    }

    /// Unpacks [`PowerStart::pack`]'s word.
    pub fn unpack(word: u64) -> Self {
        let f = |i: u32| (word >> (12 * i)) & 0xfff;
        Self {
            serve: f(0),
            names: f(1),
            pm1a: f(2),
            pm1b: f(3),
            reset: f(4),
        }
    }
}

/// The service's thread.
pub fn main(argument: u64) {
    let start = PowerStart::unpack(argument);
    let ep = Cap::<Endpoint>::from_cptr(start.serve);
    if let Err(e) = names::register(Cap::from_cptr(start.names), NAME, ep) {
        println!("power: cannot register: {e:?}");
        return;
    }
    let acpi = BootInfo::get().and_then(|b| b.acpi_power());
    protocol::serve(ep, &mut Power { start, acpi })
}

/// The service's state: its capabilities and the firmware's power record.
struct Power {
    start: PowerStart,
    acpi: Option<KeelAcpiPower>,
}

impl Service for Power {
    type Request = PowerRequest;

    fn handle(&mut self, request: PowerRequest, _badge: u64) -> Answer<()> {
        Answer::Now(Err(match request {
            PowerRequest::PowerOff => power_off(&self.start, self.acpi),
            PowerRequest::Restart => restart(&self.start, self.acpi),
        }))
    }
}

fn port(cptr: u64) -> Option<Cap<IoPort>> {
    (cptr != 0).then(|| Cap::from_cptr(cptr))
}

/// Powers off; returns only if that failed, with why.
fn power_off(start: &PowerStart, acpi: Option<KeelAcpiPower>) -> Error {
    let Some(acpi) = acpi.filter(KeelAcpiPower::can_power_off) else {
        return Error::Unsupported;
    };
    let Some(pm1a) = port(start.pm1a) else {
        return Error::PortRefused;
    };
    let control = |sleep_type: u64| {
        ((sleep_type as u16) << PM1_CONTROL_SLEEP_TYPE_SHIFT) | PM1_CONTROL_SLEEP_ENABLE
    };
    println!("{POWER_OFF_LINE}");
    if acpi.pm1b_control != 0
        && let Some(pm1b) = port(start.pm1b)
        && pm1b
            .out16(acpi.pm1b_control, control(acpi.s5_sleep_type_b) as u64)
            .is_err()
    {
        return Error::PortRefused;
    }
    if pm1a
        .out16(acpi.pm1a_control, control(acpi.s5_sleep_type_a) as u64)
        .is_err()
    {
        return Error::PortRefused;
    }
    wait_grace();
    Error::StillRunning
}

/// Yields for [`GRACE_TICKS`].
fn wait_grace() {
    let start = keel_sys::rdtsc();
    while keel_sys::rdtsc().wrapping_sub(start) < GRACE_TICKS {
        keel_sys::ipc::yield_now();
    }
}

/// Restarts; returns only if that failed, with why.
fn restart(start: &PowerStart, acpi: Option<KeelAcpiPower>) -> Error {
    let Some(reset) = port(start.reset) else {
        return Error::PortRefused;
    };
    let (port, value) = reset_register(acpi);
    println!("{RESTART_LINE}");
    if reset.out8(port as u64, value as u64).is_err() {
        return Error::PortRefused;
    }
    wait_grace();
    Error::StillRunning
}

/// Client side: asks the service to power the machine off; returns only if it did not,
/// with why.
pub fn request_power_off(service: Cap<Endpoint>) -> Error {
    protocol::call(service, &PowerRequest::PowerOff)
        .err()
        .unwrap_or(Error::BadReply)
}

/// Client side: asks the service to restart the machine; returns only if it did not,
/// with why.
pub fn request_restart(service: Cap<Endpoint>) -> Error {
    protocol::call(service, &PowerRequest::Restart)
        .err()
        .unwrap_or(Error::BadReply)
}
