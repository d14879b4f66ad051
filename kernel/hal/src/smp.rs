//! Starting the other CPUs: INIT-SIPI-SIPI with a real-mode trampoline, then each AP
//! loads its own GDT/TSS/IDT, enables its local APIC and timer, checks in, and parks
//! in its idle loop.
//!
//! The trampoline is position-independent: the bootstrap CPU copies it to a free page
//! below 1 MiB and patches its data block (GDT base, far-jump targets, CR3, EFER,
//! stack, entry). Its 32-bit code segment's base is the trampoline page, so the jump
//! from real mode uses a small offset. While APs start, the kernel page tables
//! identity-map the first 2 MiB so the trampoline survives turning paging on.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::acpi::Platform;
use crate::layout::{self, PAGE_SIZE};
use crate::percpu::PerCpu;

// Layout of the trampoline's data block (offsets from its start); the code patches
// nothing else. Checked at run time against the assembled bytes.
const OFFSET_CR3: usize = 8;
const OFFSET_EFER: usize = 16;
const OFFSET_STACK: usize = 24;
const OFFSET_ARGUMENT: usize = 32;
const OFFSET_ENTRY: usize = 40;
const OFFSET_FAR64: usize = 48;
const OFFSET_GDTR: usize = 56;
const OFFSET_GDT: usize = 64;

// Two instructions need AT&T syntax (32-bit operand forms in 16-bit code).
#[allow(bad_asm_style)]
mod trampoline_asm {
    core::arch::global_asm!(
        r#"
    .section .text.ap_trampoline, "ax"
    .code16
    .global ap_trampoline_start
ap_trampoline_start:
    jmp tramp_16
    .balign 8
    .quad 0                                       /* 8: CR3 */
    .quad 0                                       /* 16: EFER bits to set */
    .quad 0                                       /* 24: stack */
    .quad 0                                       /* 32: argument */
    .quad 0                                       /* 40: entry */
    .long tramp_64 - ap_trampoline_start          /* 48: far pointer to 64-bit code */
    .short 0x08
    .short 0
    .short tramp_gdt_end - tramp_gdt - 1          /* 56: GDTR */
    .long tramp_gdt - ap_trampoline_start
    .short 0
tramp_gdt:                                        /* 64: GDT */
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf9a000000ffff                      /* 32-bit code, base patched */
tramp_gdt_end:

tramp_16:
    cli
    cld
    mov ax, cs
    mov ds, ax
    xor ebx, ebx
    mov bx, ax
    shl ebx, 4
    .att_syntax
    lgdtl {gdtr}
    .intel_syntax noprefix
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .att_syntax
    ljmpl $0x18, $(tramp_32 - ap_trampoline_start)
    .intel_syntax noprefix

    .code32
tramp_32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, [ebx + {cr3}]
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, [ebx + {efer}]
    wrmsr
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax
    ljmp fword ptr [ebx + {far64}]

    .code64
tramp_64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov ebx, ebx
    mov rsp, [rbx + {stack}]
    mov rdi, [rbx + {argument}]
    mov rax, [rbx + {entry}]
    call rax
    ud2
    .global ap_trampoline_end
ap_trampoline_end:
    .text
"#,
        gdtr = const super::OFFSET_GDTR,
        cr3 = const super::OFFSET_CR3,
        efer = const super::OFFSET_EFER,
        far64 = const super::OFFSET_FAR64,
        stack = const super::OFFSET_STACK,
        argument = const super::OFFSET_ARGUMENT,
        entry = const super::OFFSET_ENTRY,
    );
}

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

fn trampoline_bytes() -> &'static [u8] {
    // SAFETY: the trampoline is a contiguous block of .text between these symbols.
    unsafe {
        let start = &raw const ap_trampoline_start;
        let end = &raw const ap_trampoline_end;
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// CPUs that have checked in (including the bootstrap CPU).
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// Number of CPUs running.
pub fn online_cpus() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// Starts every enabled CPU of the MADT other than this one, one at a time.
pub fn start_application_processors(platform: &Platform, tsc_hz: u64) {
    let me = crate::apic::id();
    let others: alloc::vec::Vec<u32> = platform
        .usable_processors()
        .map(|p| p.apic_id)
        .filter(|&id| id != me)
        .take(layout::MAX_CPUS - 1)
        .collect();
    if others.is_empty() {
        return;
    }
    let page = pick_trampoline_page();
    let bytes = trampoline_bytes();
    assert!(page < 0x10_0000 && bytes.len() as u64 <= PAGE_SIZE);
    assert_eq!(bytes[OFFSET_FAR64 + 4], 0x08, "trampoline data block moved");
    assert_eq!(
        bytes[OFFSET_GDT + 8..OFFSET_GDT + 16],
        0x00af_9a00_0000_ffffu64.to_le_bytes(),
        "trampoline GDT moved"
    );
    crate::paging::identity_map_low_memory(true);
    let dst = layout::phys_to_virt(page) as *mut u8;
    // SAFETY: `page` is a free page below 1 MiB kept for the trampoline (the frame
    // allocator never hands out memory below 1 MiB), mapped by the direct map; every
    // patched offset lies inside the copied bytes.
    let put64 = |off: usize, v: u64| unsafe { (dst.add(off) as *mut u64).write_unaligned(v) };
    // SAFETY: as above.
    let put32 = |off: usize, v: u32| unsafe { (dst.add(off) as *mut u32).write_unaligned(v) };
    let read32 = |off: usize| {
        u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
    };
    // SAFETY: as above.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
    // The 32-bit code segment is based at the trampoline page; absolute addresses are
    // the assembled offsets plus the page.
    let code32 =
        0x00cf_9a00_0000_ffffu64 | ((page & 0xff_ffff) << 16) | (((page >> 24) & 0xff) << 56);
    put64(OFFSET_GDT + 24, code32);
    put32(OFFSET_GDTR + 2, page as u32 + read32(OFFSET_GDTR + 2));
    put32(OFFSET_FAR64, page as u32 + read32(OFFSET_FAR64));
    put64(OFFSET_CR3, crate::paging::kernel_pml4());
    put64(
        OFFSET_EFER,
        0x101 | if crate::cpu::features().nx { 0x800 } else { 0 },
    );
    for (i, &apic_id) in others.iter().enumerate() {
        let cpu = i + 1;
        let area = Box::leak(Box::new(PerCpu::new(cpu as u32, apic_id)));
        let area_ptr = area as *mut PerCpu as u64;
        crate::gdt::prepare_stacks(cpu, area_ptr);
        let idle_stack_top = crate::gdt::stack_top(cpu, layout::IDLE_STACK);
        put64(OFFSET_STACK, idle_stack_top);
        put64(OFFSET_ARGUMENT, area_ptr);
        put64(OFFSET_ENTRY, ap_entry as *const () as u64);
        let before = online_cpus();
        crate::apic::send_init(apic_id);
        crate::time::delay_us(10_000);
        crate::apic::send_startup(apic_id, (page >> 12) as u8);
        crate::time::delay_us(200);
        if online_cpus() == before {
            crate::apic::send_startup(apic_id, (page >> 12) as u8);
        }
        // Generous under emulation on a loaded host: a late AP must not find the
        // trampoline patched for the next one.
        let start = crate::cpu::rdtsc();
        while online_cpus() == before && crate::cpu::rdtsc() - start < 5 * tsc_hz {
            crate::cpu::relax();
        }
        if online_cpus() == before {
            log::error!("CPU {cpu} (APIC ID {apic_id}) did not start; not starting the others");
            // It may still be running the trampoline: keep it and its identity mapping.
            return;
        }
    }
    crate::paging::identity_map_low_memory(false);
    log::info!("{} CPUs online", online_cpus());
}

fn pick_trampoline_page() -> u64 {
    // Conventional memory below 640 KiB is free after boot on PCs and under OVMF; the
    // frame allocator never hands out memory below 1 MiB. 0x8000 is the usual choice.
    0x8000
}

/// First Rust code on an application processor (on its idle stack, kernel page tables).
extern "C" fn ap_entry(area: *mut PerCpu) -> ! {
    // SAFETY: the bootstrap CPU allocated `area` for this CPU alone and leaked it.
    unsafe { crate::percpu::install(area) };
    let cpu = crate::percpu::cpu_index();
    crate::cpu::enable_protections();
    crate::fpu::init_cpu();
    crate::gdt::load(cpu);
    crate::trap::load_idt();
    crate::syscall::init_cpu();
    crate::apic::init_application_processor();
    crate::apic::start_timer(crate::time::tsc_hz());
    log::debug!("CPU {cpu} (APIC ID {}) online", crate::apic::id());
    ONLINE.fetch_add(1, Ordering::AcqRel);
    crate::entry::enter_idle()
}
