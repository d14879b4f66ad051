//! The memory of a program's heap: one static region of [`HEAP_BYTES`] in the
//! program's `.bss`, and [`give_region`], which hands it, once, to a
//! `buddy_system_allocator` heap. The runtime's global allocator (`keel_rt::heap`) calls
//! it as its rescue function when an allocation first fails, so a program that never
//! allocates never touches the region.
//!
//! The region is part of the program's image: its pages are mapped with the rest of
//! the image (by the kernel for the root task, by init for the servers it loads), so
//! no program needs an untyped capability or a mapping call to have a heap.

use core::alloc::Layout;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use buddy_system_allocator::Heap;

/// Bytes of heap every program has: 256 KiB.
pub const HEAP_BYTES: usize = 256 * 1024;

/// The heap's memory, page-aligned.
#[repr(C, align(4096))]
struct Region(UnsafeCell<[u8; HEAP_BYTES]>);

// SAFETY: the region is never read or written through this static; its address is
// handed once (guarded by `GIVEN`) to the allocator, which gives out disjoint parts of
// it under its lock.
unsafe impl Sync for Region {}

static REGION: Region = Region(UnsafeCell::new([0; HEAP_BYTES]));
static GIVEN: AtomicBool = AtomicBool::new(false);

/// Adds the region to `heap` the first time it is called (later calls do nothing: the
/// allocation that failed then really found the heap full). Matches
/// `buddy_system_allocator::LockedHeapWithRescue`'s rescue function, which runs with
/// the heap's lock held.
pub fn give_region<const ORDER: usize>(heap: &mut Heap<ORDER>, _failed: &Layout) {
    if GIVEN.swap(true, Ordering::AcqRel) {
        return;
    }
    let start = REGION.0.get() as usize;
    // SAFETY: the region is static memory of this program's image, mapped writable
    // (`.bss`), used by nothing else (it is private to this module and `GIVEN` makes
    // this the only hand-over), and it lives as long as the program.
    unsafe { heap.init(start, HEAP_BYTES) }
}

/// Whether the region has been handed to the allocator (the heap was used).
pub fn region_given() -> bool {
    GIVEN.load(Ordering::Acquire)
}
