//! Per-CPU data for user threads, kept exact by user restartable sequences
//! (`keel_sys::rseq`, issue 5).
//!
//! A [`Counter`] has one slot per CPU; [`Counter::add`] updates the slot of the CPU the
//! calling thread runs on with a plain load/add/store that the kernel restarts if the
//! thread is preempted, faulted or migrated in the middle — no LOCK prefix, no shared
//! cache line between CPUs. The calling thread is registered with the kernel on its
//! first use (it needs an IPC buffer and its own TCB capability, which every thread of
//! the runtime has).

use core::sync::atomic::{AtomicU64, Ordering};

use keel_sys::cap::{Cap, Tcb};
use keel_sys::rseq::{self, MAX_CPUS};

/// A counter with one slot per CPU.
pub struct Counter {
    slots: [AtomicU64; MAX_CPUS],
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self {
            slots: [const { AtomicU64::new(0) }; MAX_CPUS],
        }
    }

    /// Adds `value` on the calling thread's CPU; returns how many times the sequence
    /// was restarted. Panics if the thread cannot be registered (no IPC buffer or no
    /// TCB capability of its own).
    pub fn add(&self, value: u64) -> u64 {
        match rseq::try_percpu_add(&self.slots, value) {
            Some(aborts) => aborts,
            None => {
                ensure_registered();
                rseq::percpu_add(&self.slots, value)
            }
        }
    }

    /// The sum over all CPUs (exact once the adding threads have stopped).
    pub fn total(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// CPU `cpu`'s slot.
    pub fn slot(&self, cpu: usize) -> &AtomicU64 {
        &self.slots[cpu % MAX_CPUS]
    }

    /// The slots themselves (for the sequences in `keel_sys::rseq`).
    pub fn slots(&self) -> &[AtomicU64; MAX_CPUS] {
        &self.slots
    }
}

/// Registers the calling thread's rseq area unless it is registered already.
pub fn ensure_registered() {
    if rseq::registered() {
        return;
    }
    let tcb = keel_sys::thread::current().tcb;
    assert!(
        tcb != 0,
        "per-CPU data needs the thread's own TCB capability"
    );
    rseq::register(Cap::<Tcb>::from_cptr(tcb)).expect("TCBSetRseq");
}

/// The CPU the calling thread runs on (registers it first if needed).
pub fn current_cpu() -> u32 {
    ensure_registered();
    rseq::cpu_id()
}
