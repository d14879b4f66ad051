//! Physical memory at boot: the frame allocator (logic in `keel_kern::frames`) and the
//! boot heap (buddy_system_allocator).
//!
//! The heap serves boot-time structures only: per-CPU areas, boot information, ACPI
//! data. Frames for page tables and stacks come straight from the frame allocator.

use buddy_system_allocator::LockedHeap;
use keel_kern::frames::{self, FrameAllocator};
use spin::Mutex;

use crate::boot::{MemoryKind, MemoryRegion};
use crate::layout::{self, PAGE_SIZE};

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// Size of the boot heap.
pub const HEAP_SIZE: u64 = 8 << 20;
/// Memory below this address is never handed out (real-mode area, AP trampoline).
pub const LOW_MEMORY_END: u64 = 0x10_0000;
/// The boot page tables map the first 4 GiB; early allocations must stay below it.
const BOOT_MAPPED: u64 = 4 << 30;

/// Memory statistics at boot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Bytes of usable RAM in the firmware's map.
    pub usable_bytes: u64,
    /// Bytes the frame allocator manages (usable minus kernel image, modules, boot info).
    pub managed_bytes: u64,
    /// Highest physical address mapped by the direct map.
    pub direct_map_top: u64,
    /// Physical address of the boot heap.
    pub heap_phys: u64,
}

/// Builds the frame allocator and the boot heap, then the kernel's page tables.
/// `reserved` lists ranges that are in use (kernel image, boot information, modules);
/// `framebuffer_end` extends the direct map to cover the framebuffer.
pub fn init(
    regions: &[MemoryRegion],
    reserved: &[(u64, u64)],
    framebuffer_end: Option<u64>,
) -> Stats {
    let usable = || {
        regions
            .iter()
            .filter(|r| r.kind == MemoryKind::Available)
            .map(|r| (r.start, r.end))
    };
    let top = usable().map(|(_, end)| end).max().unwrap_or(0);
    let words = frames::bitmap_words(top);
    let bitmap_bytes = (words as u64 * 8 * 2).next_multiple_of(PAGE_SIZE);

    // Place the two bitmaps in the first usable range above 1 MiB that is free of
    // reserved ranges and mapped by the boot page tables.
    let overlaps = |start: u64, end: u64| reserved.iter().any(|&(s, e)| start < e && s < end);
    let mut place = None;
    'search: for (start, end) in usable() {
        let mut candidate = start.max(LOW_MEMORY_END).next_multiple_of(PAGE_SIZE);
        while candidate + bitmap_bytes <= end.min(BOOT_MAPPED) {
            if !overlaps(candidate, candidate + bitmap_bytes) {
                place = Some(candidate);
                break 'search;
            }
            candidate += PAGE_SIZE;
        }
    }
    let Some(bitmap_phys) = place else {
        panic!("no room for the frame bitmap ({bitmap_bytes} bytes)")
    };
    // SAFETY: [bitmap_phys, +bitmap_bytes) is usable RAM that no reserved range covers,
    // mapped by the boot direct map, and from now on owned by the allocator (it is
    // reserved below so it is never handed out).
    let (bitmap, usable_bits) = unsafe {
        let words_ptr = layout::phys_to_virt(bitmap_phys) as *mut u64;
        (
            core::slice::from_raw_parts_mut(words_ptr, words),
            core::slice::from_raw_parts_mut(words_ptr.add(words), words),
        )
    };
    let mut all_reserved = [(0u64, 0u64); 24];
    let n = reserved.len().min(all_reserved.len() - 2);
    all_reserved[..n].copy_from_slice(&reserved[..n]);
    all_reserved[n] = (0, LOW_MEMORY_END);
    all_reserved[n + 1] = (bitmap_phys, bitmap_phys + bitmap_bytes);
    let mut allocator = FrameAllocator::new(bitmap, usable_bits, usable(), &all_reserved[..n + 2]);

    let Some(heap_phys) =
        allocator.allocate_contiguous(HEAP_SIZE / PAGE_SIZE, PAGE_SIZE, BOOT_MAPPED)
    else {
        panic!("no room for the boot heap")
    };
    // SAFETY: the heap range was just taken from the allocator, so nothing else uses it,
    // and it is mapped by the boot direct map (below 4 GiB) and by every later one.
    unsafe {
        HEAP.lock()
            .init(layout::phys_to_virt(heap_phys) as usize, HEAP_SIZE as usize)
    };
    let managed = allocator.stats().managed_frames * PAGE_SIZE;
    *FRAMES.lock() = Some(allocator);

    let direct_map_top = top
        .max(BOOT_MAPPED)
        .max(framebuffer_end.unwrap_or(0))
        .next_multiple_of(1 << 30);
    crate::paging::init_kernel_space(direct_map_top);
    let usable_bytes = usable().map(|(s, e)| e - s).sum();
    log::info!(
        "{} MiB usable, {} MiB managed, direct map to {:#x}",
        usable_bytes >> 20,
        managed >> 20,
        direct_map_top
    );
    Stats {
        usable_bytes,
        managed_bytes: managed,
        direct_map_top,
        heap_phys,
    }
}

/// Allocates 2^`bits` bytes (bits ≥ 12) of zeroed memory aligned to its size, for the
/// root task's boot objects; panics when memory is exhausted.
pub fn allocate_object(bits: u32) -> u64 {
    let bits = bits.max(12);
    let pages = 1u64 << (bits - 12);
    let found = FRAMES
        .lock()
        .as_mut()
        .and_then(|a| a.allocate_contiguous(pages, 1 << bits, u64::MAX));
    let Some(base) = found else {
        panic!("out of physical memory for a 2^{bits}-byte boot object")
    };
    // SAFETY: the range was just allocated (ours alone) and is in the direct map.
    unsafe { core::ptr::write_bytes(layout::phys_to_virt(base) as *mut u8, 0, 1usize << bits) };
    base
}

/// Hands over every free frame (as maximal ranges) and retires the allocator: after
/// boot the kernel allocates nothing; the ranges become the root task's untyped memory.
pub fn take_free_ranges() -> alloc::vec::Vec<(u64, u64)> {
    let mut frames = FRAMES.lock();
    let ranges = frames
        .as_ref()
        .map(|a| a.free_ranges().collect())
        .unwrap_or_default();
    *frames = None;
    ranges
}

/// Allocates one zeroed frame; panics when physical memory is exhausted at boot.
pub fn allocate_zeroed_frame() -> u64 {
    let Some(frame) = allocate_frame() else {
        panic!("out of physical memory")
    };
    // SAFETY: the frame was just allocated (exclusively ours) and the direct map covers
    // every frame the allocator manages.
    unsafe {
        core::ptr::write_bytes(
            layout::phys_to_virt(frame) as *mut u8,
            0,
            PAGE_SIZE as usize,
        )
    };
    frame
}

/// Allocates one frame (contents undefined).
pub fn allocate_frame() -> Option<u64> {
    FRAMES.lock().as_mut().and_then(|a| a.allocate())
}

/// Returns a frame to the allocator.
pub fn free_frame(frame: u64) -> Result<(), frames::FreeError> {
    FRAMES
        .lock()
        .as_mut()
        .map_or(Err(frames::FreeError::NotUsable), |a| a.free(frame))
}

/// Current frame statistics.
pub fn frame_stats() -> frames::Stats {
    FRAMES
        .lock()
        .as_ref()
        .map(|a| a.stats())
        .unwrap_or_default()
}

/// Bytes the boot heap has handed out and its capacity.
pub fn heap_usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.stats_alloc_actual(), heap.stats_total_bytes())
}
