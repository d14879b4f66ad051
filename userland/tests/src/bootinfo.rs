//! The boot-info frame's extra records: seL4's x86 records (ACPI RSDP, framebuffer,
//! memory map, TSC frequency) in seL4's order, before Keel's own, each checked against
//! what the machine is.

use keel_abi::bootinfo::{self as abi, X86_RECORD_ORDER, extra_id};

use crate::harness::{Env, Suite, TestResult, Why};
use crate::{ensure, fail};

/// Runs the boot-info tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("bootinfo_x86_records_in_sel4_order_before_keels", || {
        record_order(env)
    });
    suite.run("bootinfo_memory_map_covers_every_ram_untyped", || {
        memory_map(env)
    });
    suite.run("bootinfo_acpi_rsdp_record_has_valid_checksums", || {
        rsdp(env)
    });
    suite.run("bootinfo_tsc_frequency_record", || tsc(env));
    suite.run(
        "bootinfo_slot_regions_are_disjoint_and_hold_their_kinds",
        || slot_regions(env),
    );
    suite.run(
        "bootinfo_framebuffer_record_describes_a_framebuffer",
        || framebuffer(env),
    );
}

fn record_order(env: &mut Env) -> TestResult {
    let mut last_x86 = None;
    let mut seen_keel = false;
    let mut count = 0;
    for (header, body) in env.info.extra_records() {
        count += 1;
        ensure!(
            header.len as usize == 16 + body.len(),
            "record {:#x}: len {} but {} body bytes",
            header.id,
            header.len,
            body.len()
        );
        if let Some(rank) = X86_RECORD_ORDER.iter().position(|&id| id == header.id) {
            ensure!(
                !seen_keel,
                "x86 record {:#x} after a Keel record",
                header.id
            );
            ensure!(
                last_x86.is_none_or(|last| rank > last),
                "x86 record {:#x} out of seL4's order (or twice)",
                header.id
            );
            last_x86 = Some(rank);
        } else {
            ensure!(
                header.id >= extra_id::KEEL_ACPI_POWER,
                "record {:#x} is neither seL4's x86 nor Keel's",
                header.id
            );
            seen_keel = true;
        }
    }
    ensure!(count > 0, "no extra records");
    for id in [extra_id::X86_MBMMAP, extra_id::X86_TSC_FREQ] {
        ensure!(
            env.info.extra_record(id).is_some(),
            "record {id:#x} missing (seL4 always writes it)"
        );
    }
    let mmap = env.info.extra_record(extra_id::X86_MBMMAP).unwrap_or(&[]);
    ensure!(
        16 + mmap.len() == core::mem::size_of::<abi::X86BootInfoMmap>(),
        "memory-map record is {} bytes, seL4's structure {}",
        16 + mmap.len(),
        core::mem::size_of::<abi::X86BootInfoMmap>()
    );
    Ok(())
}

fn memory_map(env: &mut Env) -> TestResult {
    let entries = || env.info.memory_map();
    ensure!(entries().count() > 0, "empty memory map");
    let mut ram = 0u64;
    for e in entries() {
        ensure!({ e.size } == 20, "entry size field {}", { e.size });
        ensure!({ e.region_type } != 0, "entry type 0");
        if e.region_type == abi::MULTIBOOT_RAM_REGION_TYPE {
            ram += e.length;
        }
    }
    let mut untyped_ram = 0u64;
    for u in env.info.untypeds().filter(|u| u.desc.is_device == 0) {
        let (start, end) = (u.desc.paddr, u.desc.paddr + (1u64 << u.desc.size_bits));
        untyped_ram += end - start;
        let inside = entries().any(|e| {
            e.region_type == abi::MULTIBOOT_RAM_REGION_TYPE
                && e.base_addr <= start
                && end <= e.base_addr + e.length
        });
        ensure!(
            inside,
            "RAM untyped {start:#x}..{end:#x} (slot {}) is in no RAM entry of the map",
            u.slot
        );
    }
    ensure!(
        untyped_ram > 0 && untyped_ram <= ram,
        "RAM untypeds {untyped_ram:#x} bytes, RAM in the map {ram:#x}"
    );
    Ok(())
}

fn rsdp(env: &mut Env) -> TestResult {
    let Some((rsdp, bytes)) = env.info.acpi_rsdp() else {
        return Err(Why::Skipped("the bootloader passed no RSDP"));
    };
    ensure!(
        &rsdp.signature == b"RSD PTR ",
        "signature {:?}",
        rsdp.signature
    );
    ensure!(
        abi::AcpiRsdp::checksums_valid(&bytes),
        "RSDP checksums wrong (revision {})",
        rsdp.revision
    );
    ensure!(
        rsdp.rsdt_address != 0 || rsdp.xsdt_address != 0,
        "no RSDT or XSDT address"
    );
    Ok(())
}

fn tsc(env: &mut Env) -> TestResult {
    let Some(mhz) = env.info.tsc_mhz() else {
        fail!("no TSC-frequency record");
    };
    ensure!(
        (1..=100_000).contains(&mhz),
        "TSC frequency {mhz} MHz is not a CPU's"
    );
    Ok(())
}

fn framebuffer(env: &mut Env) -> TestResult {
    let Some(fb) = env.info.framebuffer() else {
        return Err(Why::Skipped("the bootloader set up no framebuffer"));
    };
    let (addr, pitch, width, height) = (fb.addr, fb.pitch, fb.width, fb.height);
    ensure!(addr != 0 && width > 0 && height > 0, "framebuffer {fb:?}");
    match fb.fb_type {
        1 => ensure!(
            [8, 15, 16, 24, 32].contains(&fb.bpp)
                && pitch as u64 * 8 >= width as u64 * fb.bpp as u64,
            "RGB framebuffer {fb:?}"
        ),
        2 => ensure!(pitch >= 2 * width, "text framebuffer {fb:?}"),
        t => fail!("framebuffer type {t}"),
    }
    // It is device memory the root task can map: inside a device untyped.
    let end = addr + pitch as u64 * height as u64;
    let covered = env.info.untypeds().any(|u| {
        u.desc.is_device == 1
            && u.desc.paddr <= addr
            && end <= u.desc.paddr + (1u64 << u.desc.size_bits)
    });
    ensure!(
        covered,
        "framebuffer {addr:#x}..{end:#x} in no device untyped"
    );
    Ok(())
}

/// The boot info's slot regions (image frames, image paging structures, extra
/// boot-info pages, untypeds, empty) do not overlap, and each slot holds the kind of
/// capability its region says (DebugCapIdentify): the paging region held the extra
/// boot-info page's frame too, until the kernel ended it before that slot.
fn slot_regions(env: &mut Env) -> TestResult {
    use keel_abi::object::cap_tag;
    let i = &env.info;
    let regions = [
        ("userImageFrames", i.user_image_frames()),
        ("userImagePaging", i.user_image_paging()),
        ("extraBIPages", i.extra_bi_pages()),
        ("untyped", i.untyped()),
        ("empty", i.empty()),
    ];
    for (a, ra) in &regions {
        ensure!(ra.start <= ra.end, "{a}: {}..{}", ra.start, ra.end);
        for (b, rb) in &regions {
            ensure!(
                a == b || ra.end <= rb.start || rb.end <= ra.start,
                "{a} {}..{} overlaps {b} {}..{}",
                ra.start,
                ra.end,
                rb.start,
                rb.end
            );
        }
    }
    if !env.identify {
        return Err(Why::Skipped("no DebugCapIdentify"));
    }
    let paging = [cap_tag::PAGE_TABLE, cap_tag::PAGE_DIRECTORY, cap_tag::PDPT];
    for slot in i.user_image_paging().start..i.user_image_paging().end {
        let tag = keel_sys::debug_cap_identify(slot);
        ensure!(
            paging.contains(&tag),
            "userImagePaging slot {slot} holds capability type {tag}"
        );
    }
    for (name, region) in [
        ("userImageFrames", i.user_image_frames()),
        ("extraBIPages", i.extra_bi_pages()),
    ] {
        for slot in region.start..region.end {
            let tag = keel_sys::debug_cap_identify(slot);
            ensure!(
                tag == cap_tag::FRAME,
                "{name} slot {slot} holds capability type {tag}"
            );
        }
    }
    ensure!(
        i.extra_bi_pages().end > i.extra_bi_pages().start,
        "no extra boot-info page"
    );
    Ok(())
}
