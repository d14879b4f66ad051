//! The ELF loader's plan: which pages of a user image go where, with which rights.
//!
//! Parsing uses the `xmas-elf` crate; this module checks everything a hostile or broken
//! image could get wrong (wrong class or machine, segments outside user space or
//! overlapping the kernel, file ranges past the end) before the trusted core copies a
//! single byte.

use xmas_elf::ElfFile;
use xmas_elf::header::{Class, Machine};
use xmas_elf::program::{Flags, Type};

/// First address user images may occupy (page 0 and the first MiB stay unmapped).
pub const USER_IMAGE_MIN: u64 = 0x10_0000;
/// First address above user space.
pub const USER_END: u64 = 0x0000_8000_0000_0000;

/// A loadable segment, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of the first byte.
    pub vaddr: u64,
    /// Bytes in memory (the tail past `file_size` is zero).
    pub mem_size: u64,
    /// Offset of the segment's bytes in the file.
    pub file_offset: u64,
    /// Bytes taken from the file.
    pub file_size: u64,
    /// Writable.
    pub writable: bool,
    /// Executable.
    pub executable: bool,
}

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Not an ELF file `xmas-elf` can parse.
    Malformed(&'static str),
    /// Not a 64-bit x86-64 executable.
    WrongKind,
    /// A segment lies outside user space or below [`USER_IMAGE_MIN`].
    OutOfRange,
    /// A segment's file bytes lie past the end of the file, or file size > memory size.
    Truncated,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// The entry point is not inside an executable segment.
    BadEntry,
}

/// Upper bound on loadable segments.
pub const MAX_SEGMENTS: usize = 16;

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
    let elf = ElfFile::new(image).map_err(ElfError::Malformed)?;
    let header = &elf.header;
    if header.pt1.class() != Class::SixtyFour
        || header.pt2.machine().as_machine() != Machine::X86_64
    {
        return Err(ElfError::WrongKind);
    }
    let entry = header.pt2.entry_point();
    let mut segments = [None; MAX_SEGMENTS];
    let mut count = 0;
    let mut entry_ok = false;
    for ph in elf.program_iter() {
        if ph.get_type() != Ok(Type::Load) || ph.mem_size() == 0 {
            continue;
        }
        let vaddr = ph.virtual_addr();
        let end = vaddr
            .checked_add(ph.mem_size())
            .ok_or(ElfError::OutOfRange)?;
        if vaddr < USER_IMAGE_MIN || end > USER_END {
            return Err(ElfError::OutOfRange);
        }
        let file_end = ph
            .offset()
            .checked_add(ph.file_size())
            .ok_or(ElfError::Truncated)?;
        if file_end > image.len() as u64 || ph.file_size() > ph.mem_size() {
            return Err(ElfError::Truncated);
        }
        if count == MAX_SEGMENTS {
            return Err(ElfError::TooManySegments);
        }
        let flags: Flags = ph.flags();
        let segment = Segment {
            vaddr,
            mem_size: ph.mem_size(),
            file_offset: ph.offset(),
            file_size: ph.file_size(),
            writable: flags.is_write(),
            executable: flags.is_execute(),
        };
        entry_ok |= segment.executable && (vaddr..end).contains(&entry);
        segments[count] = Some(segment);
        count += 1;
    }
    if !entry_ok {
        return Err(ElfError::BadEntry);
    }
    Ok(Plan { entry, segments })
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
