//! Fibers for servers (issue 5): user-level threads on one kernel thread, with GS-based
//! thread-local data, built on `keel_sys::fiber` (the switch and the scheduler's
//! unsafe core). This module adds the policy: choosing how GS bases change
//! ([`setup`]: the FSGSBASE instructions when the FsGsBaseControl capability grants
//! them, else the TCBSetGSBase fallback) and blocking on endpoints without blocking the
//! other fibers ([`recv`]: an event loop over NBRecv that yields to the other fibers and,
//! when a whole round found nothing, yields the kernel thread).
//!
//! ```ignore
//! keel_rt::fiber::setup(init::TCB, init::FS_GS_BASE_CONTROL);
//! for client in 0..n {
//!     fiber::spawn(serve_one, client);   // each: loop { recv(ep); reply(..) }
//! }
//! fiber::run();
//! ```

use keel_sys::Received;
use keel_sys::cap::{Cap, Endpoint, FsGsBaseControl, Tcb};
pub use keel_sys::fiber::{
    DEFAULT_FIBERS, FiberId, FiberStackChunk, GsMode, MAX_FIBERS, TLS_WORDS, chunks_for, current,
    join, rdgsbase, run, spawn, switches, tls_get, tls_set, yield_now,
};

/// Makes the calling thread (TCB `tcb`) run fibers: asks `control` for the FSGSBASE
/// right and switches GS bases with the instructions if it is granted, else with the
/// TCBSetGSBase invocation. Returns the mode chosen.
pub fn setup(tcb: Cap<Tcb>, control: Cap<FsGsBaseControl>) -> GsMode {
    setup_with_stacks(tcb, control, None)
}

/// [`setup`] with the program's own stack pool (`None`: the built-in one of
/// `DEFAULT_FIBERS`), for more fibers.
pub fn setup_with_stacks(
    tcb: Cap<Tcb>,
    control: Cap<FsGsBaseControl>,
    stacks: Option<&'static [FiberStackChunk]>,
) -> GsMode {
    let mode = if control.set_access(tcb, true).is_ok() {
        GsMode::Instructions
    } else {
        GsMode::Invocation
    };
    match stacks {
        Some(s) => keel_sys::fiber::init_with_stacks(mode, tcb, s),
        None => keel_sys::fiber::init(mode, tcb),
    }
    mode
}

/// Receives on `ep` without blocking the other fibers: polls with NBRecv, yielding to
/// the other fibers between polls; a fiber that polls in vain twice in a row also
/// yields the kernel thread (so clients on this CPU run). Must be called in a fiber.
pub fn recv(ep: Cap<Endpoint>) -> Received {
    let mut idle = 0u32;
    loop {
        if let Some(m) = ep.nb_recv() {
            return m;
        }
        idle += 1;
        if idle >= 2 {
            keel_sys::ipc::yield_now();
            idle = 0;
        }
        yield_now();
    }
}

/// A one-word mailbox between fibers of one thread: [`Channel::send`] waits (yielding
/// to the other fibers) while it is full, [`Channel::recv`] while it is empty. Fibers
/// never run concurrently, so relaxed atomics are enough.
pub struct Channel {
    full: core::sync::atomic::AtomicBool,
    value: core::sync::atomic::AtomicU64,
}

impl Default for Channel {
    fn default() -> Self {
        Self::new()
    }
}

impl Channel {
    /// An empty channel.
    pub const fn new() -> Self {
        Self {
            full: core::sync::atomic::AtomicBool::new(false),
            value: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Puts `value` in, waiting while the channel holds an earlier one.
    pub fn send(&self, value: u64) {
        use core::sync::atomic::Ordering::Relaxed;
        while self.full.load(Relaxed) {
            yield_now();
        }
        self.value.store(value, Relaxed);
        self.full.store(true, Relaxed);
    }

    /// Takes the value out, waiting until there is one.
    pub fn recv(&self) -> u64 {
        use core::sync::atomic::Ordering::Relaxed;
        while !self.full.load(Relaxed) {
            yield_now();
        }
        self.full.store(false, Relaxed);
        self.value.load(Relaxed)
    }

    /// Takes the value out if there is one.
    pub fn try_recv(&self) -> Option<u64> {
        use core::sync::atomic::Ordering::Relaxed;
        self.full
            .swap(false, Relaxed)
            .then(|| self.value.load(Relaxed))
    }
}
