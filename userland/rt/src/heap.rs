//! The program's heap: the global allocator behind `alloc` (`Vec`, `String`, `Box`,
//! `BTreeMap`), a buddy allocator (`buddy_system_allocator`) over the static region of
//! `keel_sys::heap` ([`keel_sys::heap::HEAP_BYTES`] bytes), handed to it at the first
//! allocation.
//!
//! Running out of heap is not a hang: an allocation that cannot be met makes the
//! allocator return null, `alloc` calls its error handler, which panics with
//! `memory allocation of N bytes failed`, and the runtime's panic handler prints that
//! as `user panic: ...` and ends the thread. Code that wants to handle exhaustion uses
//! the fallible calls (`Vec::try_reserve`, `Box::try_new` where stable).

use buddy_system_allocator::LockedHeapWithRescue;

/// Orders of block sizes the allocator keeps (blocks up to 2^31 bytes).
const ORDER: usize = 32;

#[global_allocator]
static HEAP: LockedHeapWithRescue<ORDER> =
    LockedHeapWithRescue::new(keel_sys::heap::give_region::<ORDER>);

/// The heap's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes the heap manages (0 until the first allocation).
    pub total: usize,
    /// Bytes handed out, rounded up to the allocator's block sizes.
    pub allocated: usize,
    /// Bytes the program asked for.
    pub requested: usize,
}

/// The heap's counters now.
pub fn heap_stats() -> HeapStats {
    let heap = HEAP.lock();
    HeapStats {
        total: heap.stats_total_bytes(),
        allocated: heap.stats_alloc_actual(),
        requested: heap.stats_alloc_user(),
    }
}
