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
    FiberId, GsMode, MAX_FIBERS, TLS_WORDS, current, join, rdgsbase, run, spawn, switches, tls_get,
    tls_set, yield_now,
};

/// Makes the calling thread (TCB `tcb`) run fibers: asks `control` for the FSGSBASE
/// right and switches GS bases with the instructions if it is granted, else with the
/// TCBSetGSBase invocation. Returns the mode chosen.
pub fn setup(tcb: Cap<Tcb>, control: Cap<FsGsBaseControl>) -> GsMode {
    let mode = if control.set_access(tcb, true).is_ok() {
        GsMode::Instructions
    } else {
        GsMode::Invocation
    };
    keel_sys::fiber::init(mode, tcb);
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
