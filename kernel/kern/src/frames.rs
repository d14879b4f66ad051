//! The boot-time physical frame allocator: a bitmap over all physical memory.
//!
//! One bit per 4 KiB frame, set when the frame is free. Built from the firmware's map of
//! usable memory minus the ranges the kernel must keep (its image, the boot
//! information, boot modules). The kernel uses it while booting (page tables, stacks,
//! per-CPU areas, the boot heap); with the object model, the frames still free become
//! the root task's untyped memory.
//!
//! Invariants: `free` equals the number of set bits; a frame is handed out at most once
//! until it is freed; freeing a frame that is not allocated (or not usable memory) is
//! refused.

/// Size of a frame.
pub const FRAME_SIZE: u64 = 4096;

/// Why a free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The address is not frame-aligned.
    Unaligned,
    /// The frame is outside usable memory.
    NotUsable,
    /// The frame is already free.
    DoubleFree,
}

/// Allocation statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Usable frames the allocator manages (free + allocated).
    pub managed_frames: u64,
    /// Frames free now.
    pub free_frames: u64,
}

/// A bitmap frame allocator over `bitmap.len() * 64` frames starting at address 0.
#[derive(Debug)]
pub struct FrameAllocator<'a> {
    bitmap: &'a mut [u64],
    usable: &'a mut [u64],
    managed: u64,
    free: u64,
    next_word: usize,
}

/// Words of bitmap needed to cover physical memory up to `top` (exclusive).
pub const fn bitmap_words(top: u64) -> usize {
    (top.div_ceil(FRAME_SIZE) as usize).div_ceil(64)
}

impl<'a> FrameAllocator<'a> {
    /// Builds the allocator. `bitmap` and `usable` (same length) are scratch storage it
    /// owns from now on. Frames inside `usable_ranges` and outside every `reserved`
    /// range become free; partial frames at range edges are dropped.
    pub fn new(
        bitmap: &'a mut [u64],
        usable: &'a mut [u64],
        usable_ranges: impl Iterator<Item = (u64, u64)>,
        reserved: &[(u64, u64)],
    ) -> Self {
        assert_eq!(bitmap.len(), usable.len());
        bitmap.fill(0);
        usable.fill(0);
        let limit = bitmap.len() as u64 * 64;
        for (start, end) in usable_ranges {
            let first = start.div_ceil(FRAME_SIZE);
            let last = (end / FRAME_SIZE).min(limit);
            for frame in first..last {
                set(bitmap, frame, true);
            }
        }
        for &(start, end) in reserved {
            let first = start / FRAME_SIZE;
            let last = end.div_ceil(FRAME_SIZE).min(limit);
            for frame in first..last {
                set(bitmap, frame, false);
            }
        }
        usable.copy_from_slice(bitmap);
        let free = bitmap.iter().map(|w| w.count_ones() as u64).sum();
        FrameAllocator {
            bitmap,
            usable,
            managed: free,
            free,
            next_word: 0,
        }
    }

    /// Allocates one frame, lowest address first; `None` when memory is exhausted.
    pub fn allocate(&mut self) -> Option<u64> {
        let words = self.bitmap.len();
        for i in 0..words {
            let w = (self.next_word + i) % words;
            let word = self.bitmap[w];
            if word != 0 {
                let bit = word.trailing_zeros() as u64;
                let frame = w as u64 * 64 + bit;
                set(self.bitmap, frame, false);
                self.free -= 1;
                self.next_word = w;
                return Some(frame * FRAME_SIZE);
            }
        }
        None
    }

    /// Allocates `count` contiguous frames aligned to `align` bytes (a power of two, at
    /// least one frame), below physical address `below`. Returns the first address.
    pub fn allocate_contiguous(&mut self, count: u64, align: u64, below: u64) -> Option<u64> {
        let align_frames = (align / FRAME_SIZE).max(1);
        let limit = (self.bitmap.len() as u64 * 64).min(below / FRAME_SIZE);
        let mut start = 0;
        while start + count <= limit {
            match (start..start + count).find(|&f| !get(self.bitmap, f)) {
                None => {
                    for f in start..start + count {
                        set(self.bitmap, f, false);
                    }
                    self.free -= count;
                    return Some(start * FRAME_SIZE);
                }
                Some(busy) => start = (busy + 1).next_multiple_of(align_frames),
            }
        }
        None
    }

    /// Returns a frame.
    pub fn free(&mut self, address: u64) -> Result<(), FreeError> {
        if !address.is_multiple_of(FRAME_SIZE) {
            return Err(FreeError::Unaligned);
        }
        let frame = address / FRAME_SIZE;
        if frame >= self.bitmap.len() as u64 * 64 || !get(self.usable, frame) {
            return Err(FreeError::NotUsable);
        }
        if get(self.bitmap, frame) {
            return Err(FreeError::DoubleFree);
        }
        set(self.bitmap, frame, true);
        self.free += 1;
        Ok(())
    }

    /// Whether the frame at `address` is free.
    pub fn is_free(&self, address: u64) -> bool {
        let frame = address / FRAME_SIZE;
        frame < self.bitmap.len() as u64 * 64 && get(self.bitmap, frame)
    }

    /// Current statistics.
    pub fn stats(&self) -> Stats {
        Stats {
            managed_frames: self.managed,
            free_frames: self.free,
        }
    }

    /// The free frames as maximal ranges `[start, end)` of addresses, in order.
    pub fn free_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let total = self.bitmap.len() as u64 * 64;
        let mut frame = 0;
        core::iter::from_fn(move || {
            while frame < total && !get(self.bitmap, frame) {
                frame += 1;
            }
            if frame >= total {
                return None;
            }
            let start = frame;
            while frame < total && get(self.bitmap, frame) {
                frame += 1;
            }
            Some((start * FRAME_SIZE, frame * FRAME_SIZE))
        })
    }
}

fn get(bits: &[u64], frame: u64) -> bool {
    bits[(frame / 64) as usize] & (1 << (frame % 64)) != 0
}

fn set(bits: &mut [u64], frame: u64, value: bool) {
    let word = &mut bits[(frame / 64) as usize];
    if value {
        *word |= 1 << (frame % 64);
    } else {
        *word &= !(1 << (frame % 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(words: usize) -> (Vec<u64>, Vec<u64>) {
        (vec![0; words], vec![0; words])
    }

    #[test]
    fn accounting_and_reservations() {
        let (mut b, mut u) = make(bitmap_words(16 << 20));
        // usable: 1 MiB .. 16 MiB with a hole at 4..5 MiB; reserved 2 MiB .. 3 MiB + 1 byte
        let ranges = [(0x10_0000, 0x40_0000), (0x50_0000, 0x100_0000)];
        let mut a = FrameAllocator::new(
            &mut b,
            &mut u,
            ranges.into_iter(),
            &[(0x20_0000, 0x30_0001)],
        );
        let expected = (0x40_0000 - 0x10_0000 + 0x100_0000 - 0x50_0000 - 0x10_1000) / FRAME_SIZE;
        assert_eq!(a.stats().managed_frames, expected);
        let mut got = Vec::new();
        while let Some(f) = a.allocate() {
            assert!(
                !(0x20_0000..0x30_1000).contains(&f),
                "reserved frame {f:#x} handed out"
            );
            assert!(
                !(0x40_0000..0x50_0000).contains(&f),
                "hole frame {f:#x} handed out"
            );
            got.push(f);
        }
        assert_eq!(got.len() as u64, expected);
        assert_eq!(a.stats().free_frames, 0);
        let mut sorted = got.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "a frame was handed out twice");
        for f in &got {
            a.free(*f).unwrap();
        }
        assert_eq!(a.stats().free_frames, expected);
        assert_eq!(a.free(got[0]), Err(FreeError::DoubleFree));
        assert_eq!(a.free(0x20_0000), Err(FreeError::NotUsable));
        assert_eq!(a.free(0x10_0001), Err(FreeError::Unaligned));
    }

    #[test]
    fn partial_frames_are_dropped() {
        let (mut b, mut u) = make(1);
        let a = FrameAllocator::new(&mut b, &mut u, [(0x800, 0x3800)].into_iter(), &[]);
        assert_eq!(a.stats().managed_frames, 2); // 0x1000 and 0x2000
    }

    #[test]
    fn contiguous_aligned() {
        let (mut b, mut u) = make(bitmap_words(64 << 20));
        let mut a = FrameAllocator::new(&mut b, &mut u, [(0x1000, 64 << 20)].into_iter(), &[]);
        let one = a.allocate().unwrap();
        assert_eq!(one, 0x1000);
        let big = a.allocate_contiguous(512, 2 << 20, u64::MAX).unwrap();
        assert_eq!(big, 2 << 20);
        assert!(!a.is_free(big) && !a.is_free(big + (511 << 12)) && a.is_free(big + (512 << 12)));
        assert_eq!(a.allocate_contiguous(1 << 20, 4096, u64::MAX), None);
        assert_eq!(a.allocate_contiguous(1, 4096, 0x1000), None);
        let ranges: Vec<_> = a.free_ranges().collect();
        assert_eq!(ranges, vec![(0x2000, 2 << 20), (4 << 20, 64 << 20)]);
    }
}
