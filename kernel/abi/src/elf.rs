//! A small reader of ELF64 executables (x86-64, little-endian) in a byte slice: the
//! entry point and the loadable segments, checked against the slice. The kernel's
//! root-task loader (`keel_kern::elf`, which adds its own range checks) and init's
//! program loader (`keel_rt::elf`) both use it. It owns no memory; every read is
//! bounds-checked, so a bad image gives an [`ElfError`], never a panic.

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Not an ELF64 little-endian x86-64 executable.
    NotElf64,
    /// A header or segment lies outside the image, or a segment's sizes do not add up.
    Truncated,
    /// More loadable segments than [`MAX_SEGMENTS`].
    TooManySegments,
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

/// Most loadable segments an image may have.
pub const MAX_SEGMENTS: usize = 16;

/// A loadable segment (PT_LOAD).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of its first byte.
    pub vaddr: u64,
    /// Bytes in memory (the tail past `file_size` is zero).
    pub mem_size: u64,
    /// Offset of its bytes in the image.
    pub file_offset: u64,
    /// Bytes in the image.
    pub file_size: u64,
    /// Writable (PF_W).
    pub writable: bool,
    /// Executable (PF_X).
    pub executable: bool,
}

/// An executable's entry and loadable segments, in program-header order.
#[derive(Clone, Copy, Debug)]
pub struct Executable {
    /// Entry address.
    pub entry: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

impl Executable {
    /// Reads `image`'s headers.
    pub fn parse(image: &[u8]) -> Result<Self, ElfError> {
        let bytes = |at: u64, n: usize| -> Result<&[u8], ElfError> {
            let at = usize::try_from(at).map_err(|_| ElfError::Truncated)?;
            image
                .get(at..at.checked_add(n).ok_or(ElfError::Truncated)?)
                .ok_or(ElfError::Truncated)
        };
        let u16_at = |at: u64| -> Result<u64, ElfError> {
            let b = bytes(at, 2)?;
            Ok(u16::from_le_bytes([b[0], b[1]]) as u64)
        };
        let u32_at = |at: u64| -> Result<u64, ElfError> {
            let b = bytes(at, 4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
        };
        let u64_at = |at: u64| -> Result<u64, ElfError> {
            let mut w = [0u8; 8];
            w.copy_from_slice(bytes(at, 8)?);
            Ok(u64::from_le_bytes(w))
        };
        let ident = bytes(0, 16).map_err(|_| ElfError::NotElf64)?;
        // Magic, ELFCLASS64, ELFDATA2LSB; then ET_EXEC and EM_X86_64.
        if ident[..4] != *b"\x7fELF" || ident[4] != 2 || ident[5] != 1 {
            return Err(ElfError::NotElf64);
        }
        if u16_at(16)? != 2 || u16_at(18)? != 62 {
            return Err(ElfError::NotElf64);
        }
        let entry = u64_at(24)?;
        let (phoff, phentsize, phnum) = (u64_at(32)?, u16_at(54)?, u16_at(56)?);
        if phentsize < 56 {
            return Err(ElfError::Truncated);
        }
        let mut exe = Self {
            entry,
            segments: [Segment::default(); MAX_SEGMENTS],
            count: 0,
        };
        for i in 0..phnum {
            let ph = phoff
                .checked_add(i * phentsize)
                .ok_or(ElfError::Truncated)?;
            if u32_at(ph)? != 1 {
                continue;
            }
            let flags = u32_at(ph + 4)?;
            let segment = Segment {
                file_offset: u64_at(ph + 8)?,
                vaddr: u64_at(ph + 16)?,
                file_size: u64_at(ph + 32)?,
                mem_size: u64_at(ph + 40)?,
                writable: flags & 2 != 0,
                executable: flags & 1 != 0,
            };
            if segment.mem_size == 0 {
                continue;
            }
            let file_end = segment.file_offset.checked_add(segment.file_size);
            if segment.file_size > segment.mem_size
                || file_end.is_none_or(|end| end > image.len() as u64)
                || segment.vaddr.checked_add(segment.mem_size).is_none()
            {
                return Err(ElfError::Truncated);
            }
            if exe.count == MAX_SEGMENTS {
                return Err(ElfError::TooManySegments);
            }
            exe.segments[exe.count] = segment;
            exe.count += 1;
        }
        Ok(exe)
    }

    /// The loadable segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }

    /// Bytes of memory the segments take, page by page (a page shared by two segments
    /// counted once).
    pub fn pages(&self) -> u64 {
        let mut last = None;
        let mut pages = 0;
        for s in self.segments() {
            let (first, end) = (
                s.vaddr & !0xfff,
                (s.vaddr + s.mem_size).div_ceil(0x1000) * 0x1000,
            );
            let mut page = first;
            while page < end {
                if last.is_none_or(|l| page > l) {
                    pages += 1;
                    last = Some(page);
                }
                page += 0x1000;
            }
        }
        pages
    }
}
