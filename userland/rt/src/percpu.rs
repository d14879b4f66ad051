//! Per-CPU data for user threads, kept exact by user restartable sequences
//! (`keel_sys::rseq`, issue 5).
//!
//! A [`Counter`] has one slot per CPU; [`Counter::add`] updates the slot of the CPU the
//! calling thread runs on with a plain load/add/store that the kernel restarts if the
//! thread is preempted, faulted or migrated in the middle — no LOCK prefix, no shared
//! cache line between CPUs. The calling thread is registered with the kernel on its
//! first use (it needs an IPC buffer and its own TCB capability, which every thread of
//! the runtime has). An [`IndexPool`] is an allocator cache built the same way: per-CPU
//! free lists of indices in front of a shared list.

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

/// Indices moved from the shared list to a CPU's list at a time.
const REFILL_BATCH: usize = 8;

/// An allocator cache of the indices `0..N` (slots of some array the program owns):
/// per-CPU free lists, popped and pushed with restartable sequences (no lock, no
/// atomic read-modify-write), in front of a shared list behind a spin lock that only
/// a CPU whose list ran dry touches. Freed indices stay on the freeing CPU's list.
/// Freeing an index twice corrupts the lists (never memory: indices are bounds-checked).
pub struct IndexPool<const N: usize> {
    /// Per CPU: 1 + the first free index, 0 = empty.
    heads: [AtomicU64; MAX_CPUS],
    /// 1 + the index after `i` in whichever list holds `i`, 0 = end.
    next: [AtomicU64; N],
    /// The shared list's head (1 + index, 0 = empty), guarded by `lock`.
    shared: AtomicU64,
    lock: core::sync::atomic::AtomicBool,
}

impl<const N: usize> Default for IndexPool<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> IndexPool<N> {
    /// A pool with every index free (all on the shared list).
    pub const fn new() -> Self {
        let mut next = [const { AtomicU64::new(0) }; N];
        let mut i = 0;
        while i + 1 < N {
            next[i] = AtomicU64::new(i as u64 + 2);
            i += 1;
        }
        Self {
            heads: [const { AtomicU64::new(0) }; MAX_CPUS],
            next,
            shared: AtomicU64::new(if N > 0 { 1 } else { 0 }),
            lock: core::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A free index, or `None` if every index is taken (or sits on other CPUs' lists).
    pub fn alloc(&self) -> Option<usize> {
        ensure_registered();
        for _ in 0..2 {
            if let Some(i) = rseq::percpu_pop(&self.heads, &self.next) {
                return Some(i);
            }
            if !self.refill() {
                return None;
            }
        }
        rseq::percpu_pop(&self.heads, &self.next)
    }

    /// Gives index `i` back (to the calling CPU's list).
    pub fn free(&self, i: usize) {
        ensure_registered();
        rseq::percpu_push(&self.heads, &self.next, i);
    }

    /// Moves up to [`REFILL_BATCH`] indices from the shared list to this CPU's list;
    /// false if the shared list was empty.
    fn refill(&self) -> bool {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        let mut moved = 0;
        while moved < REFILL_BATCH {
            let head = self.shared.load(Ordering::Relaxed);
            if head == 0 || head as usize > N {
                break;
            }
            let i = head as usize - 1;
            self.shared
                .store(self.next[i].load(Ordering::Relaxed), Ordering::Relaxed);
            rseq::percpu_push(&self.heads, &self.next, i);
            moved += 1;
        }
        self.lock.store(false, Ordering::Release);
        moved > 0
    }

    /// Free indices on all lists (exact only while no thread allocates or frees).
    pub fn free_count(&self) -> usize {
        let walk = |mut head: u64| {
            let mut n = 0;
            while head != 0 && head as usize <= N && n <= N {
                n += 1;
                head = self.next[head as usize - 1].load(Ordering::Relaxed);
            }
            n
        };
        self.heads
            .iter()
            .map(|h| walk(h.load(Ordering::Relaxed)))
            .sum::<usize>()
            + walk(self.shared.load(Ordering::Relaxed))
    }
}
