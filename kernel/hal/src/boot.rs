//! The multiboot2 entry: header, 32-bit start, long mode, and the bootstrap CPU's
//! bring-up sequence up to the kernel's main function.
//!
//! GRUB enters `_start32` in 32-bit protected mode with paging off, EAX = multiboot2
//! magic and EBX = physical address of the boot information. The stub checks for long
//! mode, zeroes .bss, builds boot page tables (4 GiB identity map, the same 4 GiB at
//! [`layout::DIRECT_MAP`], the first GiB at [`layout::KERNEL_BASE`]), enables PAE,
//! long mode, NX (when present) and paging, and jumps to `hal_boot_main` in the higher
//! half on the boot stack. `hal_boot_main` then replaces the boot page tables with the
//! real ones and brings up the machine (see [`bring_up`]).

use alloc::string::String;
use alloc::vec::Vec;

use multiboot2::{BootInformation, BootInformationHeader, FramebufferType, MemoryAreaType};

use crate::console::{self, FramebufferInfo};
use crate::layout;

core::arch::global_asm!(
    r#"
    .section .multiboot2_header, "a"
    .balign 8
multiboot2_header:
    .long 0xe85250d6
    .long 0
    .long multiboot2_header_end - multiboot2_header
    .long 0x100000000 - (0xe85250d6 + (multiboot2_header_end - multiboot2_header))
    /* framebuffer request, optional: no preferred size, 32 bpp */
    .balign 8
    .short 5
    .short 1
    .long 20
    .long 0
    .long 0
    .long 32
    /* end tag */
    .balign 8
    .short 0
    .short 0
    .long 8
multiboot2_header_end:

    .section .boot32.bss, "aw", @nobits
    .balign 4096
boot_pml4:       .skip 4096
boot_pdpt_low:   .skip 4096
boot_pdpt_high:  .skip 4096
boot_pd:         .skip 4 * 4096
boot32_stack:    .skip 1024
boot32_stack_top:

    .section .boot32.data, "aw"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_end:
    .balign 4
    .short 0
boot_gdt_pointer:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt
boot32_mbi_phys:
    .long 0

    .section .boot32.text, "ax"
    .code32
    .global _start32
_start32:
    cli
    cld
    mov esp, offset boot32_stack_top
    cmp eax, 0x36d76289
    jne boot32_fail
    mov dword ptr [boot32_mbi_phys], ebx

    /* long mode present? */
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb boot32_fail
    mov eax, 0x80000001
    cpuid
    test edx, 0x20000000
    jz boot32_fail
    mov ebp, edx

    /* zero the kernel's .bss and the boot page tables */
    xor eax, eax
    mov edi, offset __bss_phys_start
    mov ecx, offset __bss_phys_end
    sub ecx, edi
    shr ecx, 2
    rep stosd
    mov edi, offset boot_pml4
    mov ecx, (7 * 4096) / 4
    rep stosd

    /* 2048 2 MiB pages: physical 0 .. 4 GiB */
    mov edi, offset boot_pd
    mov eax, 0x83
    xor edx, edx
    mov ecx, 2048
2:
    mov dword ptr [edi], eax
    mov dword ptr [edi + 4], edx
    add eax, 0x200000
    adc edx, 0
    add edi, 8
    dec ecx
    jnz 2b

    mov eax, offset boot_pd
    or eax, 3
    mov dword ptr [boot_pdpt_low], eax
    mov dword ptr [boot_pdpt_high + 510 * 8], eax
    add eax, 4096
    mov dword ptr [boot_pdpt_low + 8], eax
    add eax, 4096
    mov dword ptr [boot_pdpt_low + 16], eax
    add eax, 4096
    mov dword ptr [boot_pdpt_low + 24], eax

    mov eax, offset boot_pdpt_low
    or eax, 3
    mov dword ptr [boot_pml4], eax
    mov dword ptr [boot_pml4 + 256 * 8], eax
    mov eax, offset boot_pdpt_high
    or eax, 3
    mov dword ptr [boot_pml4 + 511 * 8], eax

    /* PAE, then CR3, then EFER.LME|SCE (and NXE when the CPU has NX), then paging */
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x101
    test ebp, 0x100000
    jz 3f
    or eax, 0x800
3:
    wrmsr
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax

    lgdt [boot_gdt_pointer]
    mov eax, offset boot64
    push 0x08
    push eax
    retf

boot32_fail:
    /* no multiboot2 magic or no long mode: say so on COM1 and stop */
    mov dx, 0x3f8
    mov al, '!'
    out dx, al
    hlt
    jmp boot32_fail

    .code64
boot64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    movabs rax, offset boot_stack_top
    mov rsp, rax
    mov edi, dword ptr [boot32_mbi_phys]
    xor ebp, ebp
    movabs rax, offset hal_boot_main
    call rax
    ud2

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    .global __boot_stack_guard
__boot_stack_guard:
    .skip 4096
boot_stack:
    .skip 64 * 1024
    .global boot_stack_top
boot_stack_top:
"#
);

unsafe extern "C" {
    static __kernel_phys_start: u8;
    static __kernel_phys_end: u8;
    static __boot_stack_guard: u8;
}

unsafe extern "Rust" {
    /// The kernel's main function, defined with [`crate::entry_point!`].
    safe fn keel_kernel_main(boot: &'static BootInfo) -> !;
}

/// Kind of a physical memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM.
    Available,
    /// ACPI tables (reclaimable after ACPI is parsed; Keel keeps them).
    AcpiReclaimable,
    /// Anything else: reserved, NVS, defective.
    Reserved,
}

/// A physical memory region from the bootloader's map.
#[derive(Clone, Copy, Debug)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What the firmware says it is.
    pub kind: MemoryKind,
    /// The firmware's own type number (multiboot: 1 RAM, 2 reserved, 3 ACPI
    /// reclaimable, 4 ACPI NVS, 5 defective), passed on to the root task.
    pub firmware_type: u32,
}

/// A multiboot2 module (a userland ELF image) in physical memory.
#[derive(Clone, Debug)]
pub struct Module {
    /// The module's command line (its name, from grub.cfg).
    pub name: String,
    /// Physical address of the first byte.
    pub start: u64,
    /// Physical address one past the last byte.
    pub end: u64,
}

impl Module {
    /// The module's bytes, through the direct map.
    pub fn bytes(&self) -> &'static [u8] {
        // SAFETY: the module's frames are reserved in the frame allocator for the
        // kernel's lifetime and mapped by the direct map; nothing writes them.
        unsafe {
            core::slice::from_raw_parts(
                layout::phys_to_virt(self.start) as *const u8,
                (self.end - self.start) as usize,
            )
        }
    }
}

/// Everything the kernel learned at boot, owned (copied out of the multiboot2 info).
#[derive(Debug)]
pub struct BootInfo {
    /// The kernel command line.
    pub cmdline: String,
    /// Name of the bootloader.
    pub bootloader: String,
    /// The physical memory map.
    pub memory_map: Vec<MemoryRegion>,
    /// Boot modules in order; the first is the root task.
    pub modules: Vec<Module>,
    /// The framebuffer, when the bootloader set one up.
    pub framebuffer: Option<FramebufferInfo>,
    /// The ACPI RSDP as the bootloader copied it, when its checksum is right: 36 bytes
    /// (an ACPI 1.0 RSDP fills the first 20, the rest stays 0).
    pub rsdp: Option<[u8; RSDP_BYTES]>,
    /// Whether the machine booted through UEFI (GRUB passed an EFI system table).
    pub uefi: bool,
    /// ACPI platform description.
    pub platform: crate::acpi::Platform,
    /// Frame allocator statistics right after boot.
    pub memory: crate::memory::Stats,
    /// TSC frequency in Hz, calibrated against the HPET or the PIT.
    pub tsc_hz: u64,
    /// TSC value when `hal_boot_main` started.
    pub boot_tsc: u64,
}

/// Rust entry on the bootstrap CPU (from `boot64`, on the boot stack).
#[unsafe(no_mangle)]
extern "C" fn hal_boot_main(mbi_phys: u64) -> ! {
    let boot_tsc = crate::cpu::rdtsc();
    crate::percpu::install_bootstrap();
    console::init_serial();
    console::init_logger(log::LevelFilter::Info);
    // SAFETY: GRUB passed the physical address of a valid multiboot2 information
    // structure; the boot page tables map it at DIRECT_MAP + phys (it lies below 4 GiB).
    let mbi = unsafe {
        BootInformation::load(layout::phys_to_virt(mbi_phys) as *const BootInformationHeader)
    };
    let Ok(mbi) = mbi else {
        panic!("bad multiboot2 information at {mbi_phys:#x}")
    };
    let cmdline = mbi
        .command_line_tag()
        .and_then(|t| t.cmdline().ok())
        .unwrap_or("");
    console::init_logger(keel_kern::cmdline::log_level(cmdline));
    log::info!("Keel booting; command line '{cmdline}'");

    let (regions, region_count) = read_memory_map(&mbi);
    let regions = &regions[..region_count];
    let framebuffer = read_framebuffer(&mbi);
    if let Some(fb) = framebuffer {
        // SAFETY: the bootloader's framebuffer; the direct map covers it once paging is
        // set up, and the boot map covers the first 4 GiB where firmware puts it.
        unsafe { console::init_framebuffer(fb) };
    }
    let mut reserved: [(u64, u64); 2 + MAX_MODULES] = [(0, 0); 2 + MAX_MODULES];
    reserved[0] = (kernel_phys_start(), kernel_phys_end());
    reserved[1] = (mbi_phys, mbi_phys + mbi.total_size() as u64);
    for (i, m) in mbi.module_tags().take(MAX_MODULES).enumerate() {
        reserved[2 + i] = (m.start_address() as u64, m.end_address() as u64);
    }
    let framebuffer_end = framebuffer.map(|f| f.phys + f.pitch as u64 * f.height as u64);
    let memory = crate::memory::init(regions, &reserved, framebuffer_end);
    let memory_map = regions.to_vec();

    // The heap exists now: copy the boot information out of the multiboot2 structure.
    let modules = mbi
        .module_tags()
        .map(|m| Module {
            name: String::from(m.cmdline().unwrap_or("")),
            start: m.start_address() as u64,
            end: m.end_address() as u64,
        })
        .collect();
    let rsdp_copy = if let Some(v2) = mbi.rsdp_v2_tag().filter(|t| t.checksum_is_valid()) {
        Some(rsdp_bytes(v2, RSDP_BYTES))
    } else {
        mbi.rsdp_v1_tag()
            .filter(|t| t.checksum_is_valid())
            .map(|v1| rsdp_bytes(v1, 20))
    };
    let rsdp = if let Some(v2) = mbi.rsdp_v2_tag().filter(|t| t.checksum_is_valid()) {
        Some(crate::acpi::RootPointer {
            revision: v2.revision(),
            table: v2.xsdt_address() as u64,
        })
    } else {
        mbi.rsdp_v1_tag()
            .filter(|t| t.checksum_is_valid())
            .map(|v1| crate::acpi::RootPointer {
                revision: 0,
                table: v1.rsdt_address() as u64,
            })
    };
    let cmdline = String::from(cmdline);
    let bootloader = String::from(
        mbi.boot_loader_name_tag()
            .and_then(|t| t.name().ok())
            .unwrap_or("?"),
    );
    let uefi = mbi.efi_sdt64_tag().is_some();

    crate::switches::configure(&cmdline);
    crate::fpu::configure(&cmdline);
    crate::rseq::init();
    let (platform, tsc_hz) = bring_up(rsdp);
    if keel_kern::cmdline::flag(&cmdline, "keel.bench") {
        crate::rseq::bench();
    }
    let info = alloc::boxed::Box::leak(alloc::boxed::Box::new(BootInfo {
        cmdline,
        bootloader,
        memory_map,
        modules,
        framebuffer,
        rsdp: rsdp_copy,
        uefi,
        platform,
        memory,
        tsc_hz,
        boot_tsc,
    }));
    keel_kernel_main(info)
}

/// The machine bring-up after memory: descriptor tables, ACPI, APIC and timer, the
/// other CPUs, system calls. Returns the platform description and the TSC frequency.
fn bring_up(rsdp: Option<crate::acpi::RootPointer>) -> (crate::acpi::Platform, u64) {
    crate::cpu::enable_protections();
    crate::fpu::init_cpu();
    crate::gdt::prepare_stacks(0, crate::percpu::current() as *const _ as u64);
    crate::gdt::load(0);
    crate::trap::init_idt();
    crate::trap::load_idt();
    crate::syscall::init_cpu();
    let platform = crate::acpi::parse(rsdp);
    let tsc_hz = crate::time::calibrate_tsc(&platform);
    crate::apic::init_bootstrap(&platform);
    crate::apic::start_timer(tsc_hz);
    crate::smp::start_application_processors(&platform, tsc_hz);
    (platform, tsc_hz)
}

const MAX_MODULES: usize = 16;

/// Bytes of an ACPI 2.0 RSDP.
pub const RSDP_BYTES: usize = 36;

/// The first `len` bytes of the RSDP copy in the multiboot2 RSDP tag `tag` (an 8-byte
/// tag header, then the RSDP), zero-padded to [`RSDP_BYTES`].
fn rsdp_bytes<T>(tag: &T, len: usize) -> [u8; RSDP_BYTES] {
    assert!(len <= RSDP_BYTES && 8 + len <= core::mem::size_of::<T>());
    let base = (tag as *const T).cast::<u8>();
    let mut out = [0u8; RSDP_BYTES];
    for (i, byte) in out.iter_mut().take(len).enumerate() {
        // SAFETY: `tag` is a multiboot2 RSDP tag (`RsdpV1Tag`/`RsdpV2Tag`, repr(C)):
        // its first 8 bytes are the tag header, the next `len` (checked above to lie
        // inside the type) are the bootloader's copy of the RSDP, plain bytes.
        *byte = unsafe { base.add(8 + i).read() };
    }
    out
}

const MAX_REGIONS: usize = 256;

/// Reads the memory map into a fixed array (the heap does not exist yet).
fn read_memory_map(mbi: &BootInformation<'_>) -> ([MemoryRegion; MAX_REGIONS], usize) {
    let Some(tag) = mbi.memory_map_tag() else {
        panic!("the bootloader gave no memory map")
    };
    let mut regions = [MemoryRegion {
        start: 0,
        end: 0,
        kind: MemoryKind::Reserved,
        firmware_type: 0,
    }; MAX_REGIONS];
    let mut count = 0;
    for area in tag.memory_areas().iter().take(MAX_REGIONS) {
        let kind = match area.typ() {
            MemoryAreaType::Available => MemoryKind::Available,
            MemoryAreaType::AcpiAvailable => MemoryKind::AcpiReclaimable,
            _ => MemoryKind::Reserved,
        };
        regions[count] = MemoryRegion {
            start: area.start_address(),
            end: area.end_address(),
            kind,
            firmware_type: area.typ().val(),
        };
        count += 1;
    }
    (regions, count)
}

fn read_framebuffer(mbi: &BootInformation<'_>) -> Option<FramebufferInfo> {
    let tag = mbi.framebuffer_tag()?.ok()?;
    let text = matches!(tag.buffer_type(), Ok(FramebufferType::Text));
    let rgb = matches!(tag.buffer_type(), Ok(FramebufferType::RGB { .. }));
    if !text && !rgb {
        return None;
    }
    Some(FramebufferInfo {
        phys: tag.address(),
        pitch: tag.pitch(),
        width: tag.width(),
        height: tag.height(),
        bpp: tag.bpp(),
        text,
    })
}

/// Physical address of the first byte of the kernel image.
pub fn kernel_phys_start() -> u64 {
    &raw const __kernel_phys_start as u64
}

/// Physical address one past the kernel image (including .bss).
pub fn kernel_phys_end() -> u64 {
    &raw const __kernel_phys_end as u64
}

/// Virtual address of the unmapped guard page below the boot stack.
pub fn boot_stack_guard() -> u64 {
    // SAFETY: taking the address of a symbol; never dereferenced.
    &raw const __boot_stack_guard as u64
}
