//! The program's own ELF image as loaded: its loadable segments, read from the program
//! headers the image carries in memory (at `__ehdr_start`, which the linker defines).
//!
//! The root task needs this to map its image into a second address space (the kernel
//! gives it the image's frames in page order of these segments, a frame per page not
//! already covered by an earlier segment).

unsafe extern "C" {
    static __ehdr_start: u8;
}

/// A loadable segment: `[start, end)` in virtual memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Writable.
    pub writable: bool,
    /// Executable.
    pub executable: bool,
}

fn read_u64(address: u64) -> u64 {
    // SAFETY: only called for addresses inside the ELF header and program headers,
    // which the first loadable segment maps readable for the program's whole life.
    unsafe { (address as *const u64).read_unaligned() }
}

fn read_u16(address: u64) -> u16 {
    // SAFETY: as in `read_u64`.
    unsafe { (address as *const u16).read_unaligned() }
}

fn read_u32(address: u64) -> u32 {
    // SAFETY: as in `read_u64`.
    unsafe { (address as *const u32).read_unaligned() }
}

/// The image's loadable segments in program-header order.
pub fn segments() -> impl Iterator<Item = Segment> {
    let base = &raw const __ehdr_start as u64;
    let phoff = read_u64(base + 32);
    let phentsize = read_u16(base + 54) as u64;
    let phnum = read_u16(base + 56) as u64;
    (0..phnum).filter_map(move |i| {
        let ph = base + phoff + i * phentsize;
        let (kind, flags) = (read_u32(ph), read_u32(ph + 4));
        let (vaddr, memsz) = (read_u64(ph + 16), read_u64(ph + 40));
        (kind == 1 && memsz > 0).then_some(Segment {
            start: vaddr,
            end: vaddr + memsz,
            writable: flags & 2 != 0,
            executable: flags & 1 != 0,
        })
    })
}

/// The image's pages in the order the kernel gives their frames: for each segment in
/// order, its pages ascending, each page once.
pub fn pages() -> impl Iterator<Item = u64> {
    let mut last = u64::MAX;
    segments()
        .flat_map(|s| (s.start & !0xfff..s.end).step_by(0x1000))
        .filter(move |&page| {
            let new = page != last && (last == u64::MAX || page > last);
            if new {
                last = page;
            }
            new
        })
}
