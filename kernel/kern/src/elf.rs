//! The ELF loader's plan: which pages of a user image go where, with which rights.
//!
//! Parsing is `keel_abi::elf`'s (shared with init's program loader: headers and
//! segments checked against the image); this module adds what a hostile or broken root
//! task image could still get wrong (segments outside user space or overlapping the
//! kernel, an entry point outside its code) before the trusted core copies a single
//! byte.

pub use keel_abi::elf::{MAX_SEGMENTS, Segment};

/// First address user images may occupy (page 0 and the first MiB stay unmapped).
pub const USER_IMAGE_MIN: u64 = 0x10_0000;
/// First address above user space.
pub const USER_END: u64 = 0x0000_8000_0000_0000;

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Not an ELF64 little-endian x86-64 executable.
    Malformed(&'static str),
    /// A segment lies outside user space or below [`USER_IMAGE_MIN`].
    OutOfRange,
    /// A header or segment lies past the end of the file, or file size > memory size.
    Truncated,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// The entry point is not inside an executable segment.
    BadEntry,
}

impl From<keel_abi::elf::ElfError> for ElfError {
    fn from(e: keel_abi::elf::ElfError) -> Self {
        match e {
            keel_abi::elf::ElfError::NotElf64 => {
                ElfError::Malformed("not an ELF64 little-endian x86-64 executable")
            }
            keel_abi::elf::ElfError::Truncated => ElfError::Truncated,
            keel_abi::elf::ElfError::TooManySegments => ElfError::TooManySegments,
        }
    }
}

/// A checked load plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Entry point.
    pub entry: u64,
    /// Loadable segments.
    pub segments: [Option<Segment>; MAX_SEGMENTS],
}

impl Plan {
    /// The segments in file order.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().flatten()
    }
}

/// Parses and checks `image`.
pub fn plan(image: &[u8]) -> Result<Plan, ElfError> {
    let exe = keel_abi::elf::Executable::parse(image)?;
    let mut segments = [None; MAX_SEGMENTS];
    let mut entry_ok = false;
    for (i, segment) in exe.segments().iter().enumerate() {
        // The reader checked that the end does not overflow.
        let end = segment.vaddr + segment.mem_size;
        if segment.vaddr < USER_IMAGE_MIN || end > USER_END {
            return Err(ElfError::OutOfRange);
        }
        entry_ok |= segment.executable && (segment.vaddr..end).contains(&exe.entry);
        segments[i] = Some(*segment);
    }
    if !entry_ok {
        return Err(ElfError::BadEntry);
    }
    Ok(Plan {
        entry: exe.entry,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 x86-64 executable with one R-X segment at `vaddr`.
    fn tiny_elf(vaddr: u64, entry: u64, file_size: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x100];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R X
        f[ph + 8..ph + 16].copy_from_slice(&0u64.to_le_bytes()); // offset
        f[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&vaddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&file_size.to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&0x1000u64.to_le_bytes());
        f[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        f
    }

    #[test]
    fn accepts_a_good_image() {
        let p = plan(&tiny_elf(0x40_0000, 0x40_0010, 0x100)).unwrap();
        let segs: Vec<_> = p.segments().collect();
        assert_eq!(segs.len(), 1);
        assert!(segs[0].executable && !segs[0].writable);
        assert_eq!(p.entry, 0x40_0010);
    }

    #[test]
    fn refuses_bad_images() {
        assert!(matches!(plan(b"not an elf"), Err(ElfError::Malformed(_))));
        assert_eq!(
            plan(&tiny_elf(0x1000, 0x1000, 0x100)).unwrap_err(),
            ElfError::OutOfRange
        );
        assert_eq!(
            plan(&tiny_elf(
                0xffff_ffff_8000_0000,
                0xffff_ffff_8000_0000,
                0x100
            ))
            .unwrap_err(),
            ElfError::OutOfRange
        );
        assert_eq!(
            plan(&tiny_elf(0x40_0000, 0x40_0000, 0x1000_0000)).unwrap_err(),
            ElfError::Truncated
        );
        assert_eq!(
            plan(&tiny_elf(0x40_0000, 0x90_0000, 0x100)).unwrap_err(),
            ElfError::BadEntry
        );
    }
}
