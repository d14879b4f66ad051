//! Address spaces and devices: page tables and frames mapped into the root VSpace,
//! written and read, unmapped (access faults), read-only and no-execute mappings,
//! mapping errors, ASID pools; I/O ports; IRQ handlers.

use keel_abi::error::Error as Code;
use keel_abi::fault::{FaultType, vm_fault};
use keel_abi::invocation::InvocationLabel;
use keel_abi::message::CapRights;
use keel_abi::object::{ObjectType, USER_TOP, cap_tag};
use keel_sys::cap::{AsidPool, Cap, Frame, IoPort, IrqHandler, Pml4, init};
use keel_sys::invocations::{Args, invoke};
use keel_sys::{Error, Message, VmAttributes, probe};

use crate::harness::{
    DEPTH, Env, OrFail, Suite, TestResult, Why, expect_code, expect_err, recv_timeout, set_shared,
    shared, wait_signal, wait_until,
};
use crate::{CHILD_PRIORITY, ensure, fail};

/// Runs the address-space tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("vspace_map_frame_write_read_get_address", || {
        map_write_read(env)
    });
    suite.run("vspace_map_errors", || map_errors(env));
    suite.run("vspace_unmap_then_access_faults_and_remap", || {
        unmap_faults(env)
    });
    suite.run("vspace_remap_on_another_cpu_is_seen_here", || {
        remap_across_cpus(env)
    });
    suite.run(
        "vspace_unmap_and_downgrade_stop_a_thread_using_the_page_on_another_cpu",
        || stop_accesses_across_cpus(env),
    );
    suite.run(
        "vspace_deleting_an_address_space_stops_a_thread_running_in_it_on_another_cpu",
        || delete_running_space(env),
    );
    suite.run("vspace_read_only_mapping_faults_on_write", || {
        read_only(env)
    });
    suite.run("vspace_no_execute_mapping_faults_on_fetch", || {
        no_execute(env)
    });
    suite.run("vspace_paging_structure_map_twice_is_delete_first", || {
        tables_twice(env)
    });
    suite.run("vspace_asid_pool_make_and_assign", || asid(env));
}

/// Runs the device tests (last: the ASID and IRQ tests use up global resources).
pub fn run_devices(suite: &mut Suite, env: &mut Env) {
    suite.run("ioport_issue_and_access", || ioport(env));
    suite.run(
        "ioport_access_running_past_the_last_port_is_refused",
        || ioport_top(env),
    );
    suite.run("irq_get_ioapic_handlers", || irq_handlers(env));
    suite.run("irq_rtc_interrupt_signals_notification", || rtc_irq(env));
    suite.run("asid_pool_exhaustion_is_delete_first", || {
        asid_exhaustion(env)
    });
}

/// A fresh 2 MiB region of the scratch area with the tables above it, and `pt` mapped
/// as its page table; returns the region's address.
fn page_table_region(env: &mut Env, pt: Cap<keel_sys::cap::PageTable>) -> Result<u64, Why> {
    let region = env.alloc.scratch_range(0x20_0000, 0x20_0000);
    env.alloc
        .ensure_tables(init::VSPACE, region, 2)
        .or_fail("tables above")?;
    pt.map(init::VSPACE, region, VmAttributes::DEFAULT)
        .or_fail("map the page table")?;
    Ok(region)
}

fn new_mapping(
    env: &mut Env,
    rights: CapRights,
    attr: VmAttributes,
) -> Result<(Cap<Frame>, u64), Why> {
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let vaddr = env.alloc.scratch_range(0x1000, 0x1000);
    env.alloc
        .map_frame(init::VSPACE, frame, vaddr, rights, attr, 1)
        .or_fail("map")?;
    Ok((frame, vaddr))
}

fn map_write_read(env: &mut Env) -> TestResult {
    let (frame, vaddr) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
    ensure!(probe::read_u64(vaddr + 8) == 0, "new frame not zeroed");
    for i in 0..512 {
        probe::write_u64(vaddr + 8 * i, i * 0x0101_0101);
    }
    for i in 0..512 {
        let v = probe::read_u64(vaddr + 8 * i);
        ensure!(v == i * 0x0101_0101, "word {i} reads {v:#x}");
    }
    let pa = frame.get_address().or_fail("get address")?;
    ensure!(pa != 0 && pa % 0x1000 == 0, "physical address {pa:#x}");
    // A second frame in the same page table, and the first one's data is untouched.
    let (_, second) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
    probe::write_u64(second, 1);
    ensure!(probe::read_u64(vaddr) == 0, "frames alias");
    // Every memory type maps, and the page reads back what was written through it.
    for (name, attributes) in [
        ("write-through", VmAttributes::WRITE_THROUGH),
        ("cache-disabled", VmAttributes::CACHE_DISABLED),
        ("uncacheable", VmAttributes::UNCACHEABLE),
        ("write-combining", VmAttributes::WRITE_COMBINING),
    ] {
        let (_, page) = new_mapping(env, CapRights::READ_WRITE, attributes)?;
        for i in 0..512 {
            probe::write_u64(page + 8 * i, !i);
        }
        ensure!(
            (0..512).all(|i| probe::read_u64(page + 8 * i) == !i),
            "a {name} page does not read back what was written"
        );
    }
    Ok(())
}

fn map_errors(env: &mut Env) -> TestResult {
    let (frame, vaddr) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
    let other = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    expect_err(
        other.map(
            init::VSPACE,
            vaddr,
            CapRights::READ_WRITE,
            VmAttributes::DEFAULT,
        ),
        Error::DeleteFirst,
        "map over a mapped page",
    )?;
    expect_err(
        other.map(
            init::VSPACE,
            vaddr + 0x800,
            CapRights::READ_WRITE,
            VmAttributes::DEFAULT,
        ),
        Error::AlignmentError,
        "unaligned vaddr",
    )?;
    expect_err(
        other.map(
            init::VSPACE,
            USER_TOP,
            CapRights::READ_WRITE,
            VmAttributes::DEFAULT,
        ),
        Error::InvalidArgument { index: 0 },
        "vaddr at the top of user space",
    )?;
    let elsewhere = env.alloc.scratch_range(0x1000, 0x1000);
    expect_code(
        other
            .map(
                init::VSPACE,
                elsewhere,
                CapRights::READ_WRITE,
                VmAttributes::DEFAULT,
            )
            .and_then(|_| {
                frame.map(
                    init::VSPACE,
                    vaddr + 0x2000,
                    CapRights::READ_WRITE,
                    VmAttributes::DEFAULT,
                )
            }),
        Code::InvalidArgument,
        "remapping a mapped frame elsewhere",
    )?;
    // A VSpace without an ASID.
    let pml4 = env.alloc.create::<Pml4>().or_fail("pml4")?;
    let third = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    expect_err(
        third.map(
            pml4,
            0x10_0000,
            CapRights::READ_WRITE,
            VmAttributes::DEFAULT,
        ),
        Error::InvalidCapability { index: 1 },
        "map into a PML4 without an ASID",
    )?;
    // An endpoint as the VSpace.
    let ep = env.endpoint()?;
    expect_err(
        third.map(
            ep.cast(),
            0x10_0000,
            CapRights::READ_WRITE,
            VmAttributes::DEFAULT,
        ),
        Error::InvalidCapability { index: 1 },
        "map into an endpoint",
    )
}

/// Reads (word 1 == 0) or writes (word 1 == 1) the address in word 10, then sets word 0.
fn accessor(_: u64) {
    if shared(1) == 1 {
        probe::write_u64(shared(10), 0xabcd);
        set_shared(0, 1);
    } else {
        let v = probe::read_u64(shared(10));
        set_shared(0, v | 1 << 63);
    }
}

fn unmap_faults(env: &mut Env) -> TestResult {
    let (frame, vaddr) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
    probe::write_u64(vaddr, 0x77);
    frame.unmap().or_fail("unmap")?;
    set_shared(10, vaddr);
    let t = env.spawn(accessor, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let Some(r) = recv_timeout(env.fault_ep) else {
            fail!("no fault after unmap")
        };
        ensure!(
            r.label() == FaultType::VmFault as u64,
            "label {}",
            r.label()
        );
        ensure!(
            r.mr(vm_fault::ADDR) == vaddr,
            "address {:#x}",
            r.mr(vm_fault::ADDR)
        );
        // Remap the same frame: the data is still there.
        frame
            .map(
                init::VSPACE,
                vaddr,
                CapRights::READ_WRITE,
                VmAttributes::DEFAULT,
            )
            .or_fail("remap")?;
        keel_sys::ipc::reply(&Message::new(0));
        ensure!(wait_until(|| shared(0) != 0), "not resumed");
        ensure!(
            shared(0) == 0x77 | 1 << 63,
            "read {:#x} after remap",
            shared(0)
        );
        Ok(())
    })();
    env.destroy(t)?;
    result
}

/// Moves the root VSpace's page at shared word 10 from frame shared(11) to frame
/// shared(12), then reports in shared word 0 (1 = done, 2 = failed).
fn remapper(_: u64) {
    let old = Cap::<Frame>::from_cptr(shared(11));
    let new = Cap::<Frame>::from_cptr(shared(12));
    let done = old.unmap().is_ok()
        && new
            .map(
                init::VSPACE,
                shared(10),
                CapRights::READ_WRITE,
                VmAttributes::DEFAULT,
            )
            .is_ok();
    set_shared(0, if done { 1 } else { 2 });
}

/// A page this thread has just read (so this CPU's TLB holds it) is remapped to another
/// frame by a thread on another CPU: the shootdown must reach this CPU, which then
/// reads the new frame (a stale TLB entry, e.g. kept under a PCID, would show the old
/// one).
fn remap_across_cpus(env: &mut Env) -> TestResult {
    let cpus = env.info.num_nodes();
    if cpus < 2 {
        return Err(Why::Skipped("needs two CPUs"));
    }
    let (old, vaddr) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
    let (new, other_vaddr) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
    probe::write_u64(other_vaddr, 0x2222);
    new.unmap().or_fail("unmap the new frame")?;
    probe::write_u64(vaddr, 0x1111);
    ensure!(probe::read_u64(vaddr) == 0x1111, "first read");
    set_shared(0, 0);
    set_shared(10, vaddr);
    set_shared(11, old.cptr());
    set_shared(12, new.cptr());
    let t = env.create(remapper, 0, CHILD_PRIORITY)?;
    let result = (|| {
        t.tcb.set_affinity(cpus - 1).or_fail("SetAffinity")?;
        t.start().or_fail("start")?;
        ensure!(
            wait_until(|| shared(0) != 0),
            "the thread on the other CPU did not run"
        );
        ensure!(shared(0) == 1, "remapping on the other CPU failed");
        let v = probe::read_u64(vaddr);
        ensure!(
            v == 0x2222,
            "read {v:#x}, not the new frame's 0x2222 (a stale TLB entry)"
        );
        Ok(())
    })();
    env.destroy(t)?;
    result
}

/// Reads (shared word 1 = 0) or writes (1) the page at shared word 10 for ever,
/// counting the accesses in shared word 3 (and the last value read in word 2).
fn page_user(_: u64) {
    let vaddr = shared(10);
    let mut n = 0u64;
    loop {
        if shared(1) == 0 {
            set_shared(2, probe::read_u64(vaddr));
        } else {
            probe::write_u64(vaddr, n);
        }
        n += 1;
        set_shared(3, n);
    }
}

/// A thread on another CPU uses a page in a loop (so that CPU's TLB holds the entry
/// while it runs in user mode), and this CPU unmaps the page, maps it again read-only,
/// or unmaps the page table it is mapped through: the shootdown (of the page, or of the
/// whole address space for the table) must reach that CPU at once, so the thread's next
/// access faults (not present for a read after an unmap; a write to a present page
/// after the downgrade) at the page's address, and it stops there.
fn stop_accesses_across_cpus(env: &mut Env) -> TestResult {
    let cpus = env.info.num_nodes();
    if cpus < 2 {
        return Err(Why::Skipped("needs two CPUs"));
    }
    // (write, through a page table of its own that is unmapped instead of the page,
    // what the fault's error code must be: user, and write and present or not)
    for (write, table, error_code) in [
        (false, false, 0b100),
        (true, false, 0b111),
        (false, true, 0b100),
    ] {
        let (frame, vaddr, pt) = if table {
            // A fresh 2 MiB region with a page table of its own, the frame in it.
            let pt = env
                .alloc
                .create::<keel_sys::cap::PageTable>()
                .or_fail("page table")?;
            let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
            let region = page_table_region(env, pt)?;
            frame
                .map(
                    init::VSPACE,
                    region,
                    CapRights::READ_WRITE,
                    VmAttributes::DEFAULT,
                )
                .or_fail("map the frame")?;
            (frame, region, Some(pt))
        } else {
            let (frame, vaddr) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
            (frame, vaddr, None)
        };
        probe::write_u64(vaddr, 0x5a5a);
        set_shared(1, write as u64);
        set_shared(2, 0);
        set_shared(3, 0);
        set_shared(10, vaddr);
        let t = env.create(page_user, 0, CHILD_PRIORITY)?;
        let result = (|| {
            t.tcb.set_affinity(cpus - 1).or_fail("SetAffinity")?;
            t.start().or_fail("start")?;
            ensure!(
                wait_until(|| shared(3) > 1000),
                "the thread on the other CPU did not use the page"
            );
            ensure!(
                write || shared(2) == 0x5a5a,
                "the other CPU read {:#x}",
                shared(2)
            );
            if let Some(pt) = pt {
                pt.unmap().or_fail("unmap the page table")?;
            } else if write {
                frame
                    .map(init::VSPACE, vaddr, CapRights::READ, VmAttributes::DEFAULT)
                    .or_fail("map again read-only")?;
            } else {
                frame.unmap().or_fail("unmap")?;
            }
            let what = match (write, table) {
                (_, true) => "table unmap",
                (true, _) => "downgrade",
                _ => "unmap",
            };
            let Some(r) = recv_timeout(env.fault_ep) else {
                fail!(
                    "no fault after the {what} (the other CPU goes on through a stale TLB entry: {} accesses)",
                    shared(3)
                )
            };
            ensure!(
                r.label() == FaultType::VmFault as u64,
                "{what}: fault label {}",
                r.label()
            );
            let (address, fsr) = (r.mr(vm_fault::ADDR), r.mr(vm_fault::FSR));
            ensure!(
                address == vaddr && fsr & 0b111 == error_code,
                "{what}: fault at {address:#x} with error code {fsr:#x}, expected {vaddr:#x} and {error_code:#b}"
            );
            ensure!(
                crate::harness::stays(3, shared(3)),
                "{what}: the thread went on after its fault"
            );
            Ok(())
        })();
        env.destroy(t)?;
        result?;
    }
    Ok(())
}

/// Where the loop of [`delete_running_space`] runs, in its address space of its own;
/// its counter is the next page.
const LOOP_CODE: u64 = 0x1000_0000;
/// `loop: lock inc qword ptr [rip + 0xff9]` (the counter page), `jmp loop`: 10 bytes,
/// as two little-endian words.
const LOOP_BYTES: [u64; 2] = [0x0000_0ff9_05ff_48f0, 0xf7eb];

/// A thread on another CPU runs a two-instruction loop (no stack, no IPC buffer) in an
/// address space of its own that maps only its code page and a counter page, which
/// this thread maps too. Deleting that address space (its PML4 revoked and deleted)
/// must stop the thread at once: the kernel moves every CPU still on it to its own
/// PML4 before the deletion completes, so the loop cannot go on in freed page tables.
fn delete_running_space(env: &mut Env) -> TestResult {
    let cpus = env.info.num_nodes();
    if cpus < 2 {
        return Err(Why::Skipped("needs two CPUs"));
    }
    let (code, code_here) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
    let (counter, counter_here) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
    probe::write_u64(code_here, LOOP_BYTES[0]);
    probe::write_u64(code_here + 8, LOOP_BYTES[1]);
    // Second capabilities to the frames, for the other address space.
    let code_there = env.slot()?;
    let counter_there = env.slot()?;
    for (copy, frame) in [(code_there, code.cptr()), (counter_there, counter.cptr())] {
        init::CNODE
            .copy(
                copy,
                DEPTH,
                init::CNODE,
                frame,
                DEPTH,
                CapRights::READ_WRITE,
            )
            .or_fail("copy a frame capability")?;
    }
    let vspace = env.alloc.create::<Pml4>().or_fail("PML4")?;
    let pdpt = env.alloc.create::<keel_sys::cap::Pdpt>().or_fail("PDPT")?;
    let pd = env
        .alloc
        .create::<keel_sys::cap::PageDirectory>()
        .or_fail("page directory")?;
    let pt = env
        .alloc
        .create::<keel_sys::cap::PageTable>()
        .or_fail("page table")?;
    let tcb = env.alloc.create::<keel_sys::cap::Tcb>().or_fail("TCB")?;
    let result = (|| {
        init::ASID_POOL.assign(vspace).or_fail("ASID")?;
        pdpt.map(vspace, LOOP_CODE, VmAttributes::DEFAULT)
            .or_fail("map the PDPT")?;
        pd.map(vspace, LOOP_CODE, VmAttributes::DEFAULT)
            .or_fail("map the page directory")?;
        pt.map(vspace, LOOP_CODE, VmAttributes::DEFAULT)
            .or_fail("map the page table")?;
        Cap::<Frame>::from_cptr(code_there)
            .map(vspace, LOOP_CODE, CapRights::READ, VmAttributes::DEFAULT)
            .or_fail("map the code")?;
        Cap::<Frame>::from_cptr(counter_there)
            .map(
                vspace,
                LOOP_CODE + 0x1000,
                CapRights::READ_WRITE,
                VmAttributes::DEFAULT,
            )
            .or_fail("map the counter")?;
        tcb.configure(
            env.fault_ep_badged.cptr(),
            init::CNODE,
            0,
            vspace,
            0,
            0,
            Cap::from_cptr(0),
        )
        .or_fail("configure")?;
        tcb.set_priority(init::TCB, CHILD_PRIORITY as u64)
            .or_fail("priority")?;
        tcb.set_affinity(cpus - 1).or_fail("affinity")?;
        let start = keel_abi::fault::UserContext {
            rip: LOOP_CODE,
            rflags: 0x202,
            ..Default::default()
        };
        tcb.write_registers(true, 0, 3, &start).or_fail("start")?;
        ensure!(
            wait_until(|| probe::read_u64(counter_here) > 100_000),
            "the loop on the other CPU did not run"
        );
        init::CNODE
            .revoke(vspace.cptr(), DEPTH)
            .or_fail("revoke the PML4")?;
        init::CNODE
            .delete(vspace.cptr(), DEPTH)
            .or_fail("delete the PML4")?;
        let at_delete = probe::read_u64(counter_here);
        crate::harness::pause(20_000_000);
        let later = probe::read_u64(counter_here);
        ensure!(
            later == at_delete,
            "the thread went on in the deleted address space ({} more increments)",
            later - at_delete
        );
        // Its next fetch faults (there is nothing at its RIP now), if the kernel runs
        // it at all; a fault, if one came, is that.
        if let Some(r) = recv_timeout_short(env.fault_ep) {
            ensure!(
                r.label() == FaultType::VmFault as u64 && r.mr(vm_fault::ADDR) == LOOP_CODE,
                "fault label {} at {:#x}",
                r.label(),
                r.mr(vm_fault::ADDR)
            );
        }
        Ok(())
    })();
    let cleanup = env
        .alloc
        .delete(tcb)
        .and(env.alloc.delete(Cap::<Frame>::from_cptr(code_there)))
        .and(env.alloc.delete(Cap::<Frame>::from_cptr(counter_there)))
        .and(env.alloc.delete(vspace))
        .and(env.alloc.delete(pt))
        .and(env.alloc.delete(pd))
        .and(env.alloc.delete(pdpt));
    result?;
    cleanup.or_fail("delete what the test made")?;
    Ok(())
}

/// A fault message on `ep` if one comes within about 20 ms.
fn recv_timeout_short(ep: Cap<keel_sys::cap::Endpoint>) -> Option<keel_sys::Received> {
    let start = keel_sys::rdtsc();
    loop {
        if let Some(r) = ep.nb_recv() {
            return Some(r);
        }
        if keel_sys::rdtsc().wrapping_sub(start) > 20_000_000 {
            return None;
        }
        keel_sys::ipc::yield_now();
    }
}

fn read_only(env: &mut Env) -> TestResult {
    // A read-only copy of a frame cap, mapped asking for read-write: still read-only.
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let ro = Cap::<Frame>::from_cptr(env.slot()?);
    init::CNODE
        .copy(
            ro.cptr(),
            DEPTH,
            init::CNODE,
            frame.cptr(),
            DEPTH,
            CapRights::READ,
        )
        .or_fail("copy")?;
    let vaddr = env.alloc.scratch_range(0x1000, 0x1000);
    env.alloc
        .map_frame(
            init::VSPACE,
            ro,
            vaddr,
            CapRights::READ_WRITE,
            VmAttributes::DEFAULT,
            1,
        )
        .or_fail("map")?;
    ensure!(
        probe::read_u64(vaddr) == 0,
        "read through the read-only mapping"
    );
    set_shared(10, vaddr);
    set_shared(1, 1);
    let t = env.spawn(accessor, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let Some(r) = recv_timeout(env.fault_ep) else {
            fail!("write to a read-only page did not fault")
        };
        ensure!(
            r.label() == FaultType::VmFault as u64,
            "label {}",
            r.label()
        );
        let fsr = r.mr(vm_fault::FSR);
        ensure!(
            fsr & 0b111 == 0b111,
            "error code {fsr:#x}: expected a user write to a present page"
        );
        ensure!(
            r.mr(vm_fault::ADDR) == vaddr,
            "address {:#x}",
            r.mr(vm_fault::ADDR)
        );
        ensure!(shared(0) == 0, "the write went through");
        Ok(())
    })();
    env.destroy(t)?;
    result
}

/// Calls the address in word 10; sets word 0 when back.
fn jumper(_: u64) {
    probe::call(shared(10));
    set_shared(0, 1);
}

fn no_execute(env: &mut Env) -> TestResult {
    let (frame, rw) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
    probe::write_u64(rw, 0xc3); // RET
    let copy = Cap::<Frame>::from_cptr(env.slot()?);
    init::CNODE
        .copy(
            copy.cptr(),
            DEPTH,
            init::CNODE,
            frame.cptr(),
            DEPTH,
            CapRights::ALL,
        )
        .or_fail("copy")?;
    let xn = env.alloc.scratch_range(0x1000, 0x1000);
    env.alloc
        .map_frame(
            init::VSPACE,
            copy,
            xn,
            CapRights::READ,
            VmAttributes::EXECUTE_NEVER,
            1,
        )
        .or_fail("map no-execute")?;
    ensure!(probe::read_u64(xn) == 0xc3, "the two mappings differ");
    // The executable mapping runs.
    set_shared(10, rw);
    let t = env.spawn(jumper, 0, CHILD_PRIORITY)?;
    let ran = wait_until(|| shared(0) == 1);
    let stray = env.fault_ep.nb_recv();
    env.destroy(t)?;
    ensure!(
        ran && stray.is_none(),
        "a RET in an executable mapping did not run"
    );
    set_shared(0, 0);
    set_shared(10, xn);
    let t = env.spawn(jumper, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let Some(r) = recv_timeout(env.fault_ep) else {
            fail!("executing a no-execute page did not fault")
        };
        ensure!(
            r.label() == FaultType::VmFault as u64,
            "label {}",
            r.label()
        );
        ensure!(
            r.mr(vm_fault::PREFETCH_FAULT) == vm_fault::INSTRUCTION_FAULT,
            "not an instruction fault"
        );
        ensure!(
            r.mr(vm_fault::ADDR) == xn,
            "address {:#x}",
            r.mr(vm_fault::ADDR)
        );
        Ok(())
    })();
    env.destroy(t)?;
    result
}

fn tables_twice(env: &mut Env) -> TestResult {
    let (_, vaddr) = new_mapping(env, CapRights::READ_WRITE, VmAttributes::DEFAULT)?;
    let pt = env
        .alloc
        .create::<keel_sys::cap::PageTable>()
        .or_fail("pt")?;
    let pd = env
        .alloc
        .create::<keel_sys::cap::PageDirectory>()
        .or_fail("pd")?;
    let pdpt = env.alloc.create::<keel_sys::cap::Pdpt>().or_fail("pdpt")?;
    expect_err(
        pt.map(init::VSPACE, vaddr, VmAttributes::DEFAULT),
        Error::DeleteFirst,
        "page table over a present one",
    )?;
    expect_err(
        pd.map(init::VSPACE, vaddr, VmAttributes::DEFAULT),
        Error::DeleteFirst,
        "page directory over a present one",
    )?;
    expect_err(
        pdpt.map(init::VSPACE, vaddr, VmAttributes::DEFAULT),
        Error::DeleteFirst,
        "PDPT over a present one",
    )?;
    // A fresh 2 MiB region: the page table maps, a second one does not, unmap works.
    let region = page_table_region(env, pt)?;
    let pt2 = env
        .alloc
        .create::<keel_sys::cap::PageTable>()
        .or_fail("pt2")?;
    expect_err(
        pt2.map(init::VSPACE, region, VmAttributes::DEFAULT),
        Error::DeleteFirst,
        "second page table",
    )?;
    pt.unmap().or_fail("page table unmap")?;
    pt2.map(init::VSPACE, region, VmAttributes::DEFAULT)
        .or_fail("map after unmap")
}

fn asid(env: &mut Env) -> TestResult {
    let ut = env.alloc.untyped(12).or_fail("4 KiB untyped")?;
    let big = env.alloc.untyped(13).or_fail("8 KiB untyped")?;
    let slot = env.slot()?;
    expect_err(
        init::ASID_CONTROL.make_pool(big, init::CNODE, slot, DEPTH),
        Error::InvalidCapability { index: 1 },
        "pool from an 8 KiB untyped",
    )?;
    init::ASID_CONTROL
        .make_pool(ut, init::CNODE, slot, DEPTH)
        .or_fail("make pool")?;
    ensure!(env.has_tag(slot, cap_tag::ASID_POOL), "not an ASID pool");
    let pool = Cap::<AsidPool>::from_cptr(slot);
    let pml4 = env.alloc.create::<Pml4>().or_fail("pml4")?;
    pool.assign(pml4).or_fail("assign")?;
    expect_err(
        pool.assign(pml4),
        Error::InvalidCapability { index: 1 },
        "assign twice",
    )?;
    // The new address space takes mappings now.
    let pdpt = env.alloc.create::<keel_sys::cap::Pdpt>().or_fail("pdpt")?;
    pdpt.map(pml4, 0x40_0000, VmAttributes::DEFAULT)
        .or_fail("map into the new vspace")?;
    let slot2 = env.slot()?;
    expect_err(
        init::ASID_CONTROL.make_pool(ut, init::CNODE, slot2, DEPTH),
        Error::RevokeFirst,
        "second pool from the same untyped",
    )
}

fn asid_exhaustion(env: &mut Env) -> TestResult {
    for made in 0..9 {
        let ut = env.alloc.untyped(12).or_fail("4 KiB untyped")?;
        let slot = env.slot()?;
        match init::ASID_CONTROL.make_pool(ut, init::CNODE, slot, DEPTH) {
            Ok(()) => {}
            Err(Error::DeleteFirst) if made > 0 => return Ok(()),
            Err(e) => fail!("pool {made}: {e}"),
        }
    }
    fail!("nine more ASID pools made: there are only eight")
}

fn ioport(env: &mut Env) -> TestResult {
    let slot = env.slot()?;
    init::IO_PORT_CONTROL
        .issue(0x70, 0x71, init::CNODE, slot, DEPTH)
        .or_fail("issue 0x70-0x71")?;
    ensure!(env.has_tag(slot, cap_tag::IO_PORT), "not an I/O port cap");
    let port = Cap::<IoPort>::from_cptr(slot);
    // CMOS register 0x0a (status A): bit 7 toggles, the rate bits are set by firmware.
    port.out8(0x70, 0x0a).or_fail("out8 0x70")?;
    let a = port.in8(0x71).or_fail("in8 0x71")?;
    ensure!(a & 0x70 != 0, "RTC status A {a:#x}: divider bits clear");
    expect_code(
        port.in8(0x72),
        Code::IllegalOperation,
        "in8 outside the range",
    )?;
    expect_code(
        port.in16(0x71),
        Code::IllegalOperation,
        "in16 crossing the end of the range",
    )?;
    let slot2 = env.slot()?;
    let overlap = init::IO_PORT_CONTROL.issue(0x71, 0x72, init::CNODE, slot2, DEPTH);
    let _ = init::CNODE.delete(slot2, DEPTH);
    init::CNODE
        .delete(slot, DEPTH)
        .or_fail("delete the port cap")?;
    expect_code(overlap, Code::RevokeFirst, "issuing an overlapping range")
}

/// Ports 0xfff0-0xffff: an access whose last port would be past 0xffff is refused,
/// however the port number is written (seL4 takes its low 16 bits, so u64::MAX is port
/// 0xffff, and 0xffff + 1 is outside the range; a sum that wrapped to 0 would let a
/// 16- or 32-bit access through). A byte at 0xffff, written as u64::MAX, is allowed.
fn ioport_top(env: &mut Env) -> TestResult {
    let slot = env.slot()?;
    init::IO_PORT_CONTROL
        .issue(0xfff0, 0xffff, init::CNODE, slot, DEPTH)
        .or_fail("issue 0xfff0-0xffff")?;
    let raw = |label: InvocationLabel, port: u64| {
        let mut args = Args::new();
        args.word(port);
        args.word(0);
        invoke(slot, label, &args)
    };
    let result = (|| {
        for (label, port) in [
            (InvocationLabel::X86IoPortIn16, u64::MAX),
            (InvocationLabel::X86IoPortIn32, u64::MAX - 2),
            (InvocationLabel::X86IoPortOut16, u64::MAX),
            (InvocationLabel::X86IoPortOut32, 0xfffd),
            (InvocationLabel::X86IoPortIn8, 0x1_0000),
        ] {
            expect_err(
                raw(label, port),
                Error::IllegalOperation,
                &alloc::format!("{label:?} at {port:#x}"),
            )?;
        }
        raw(InvocationLabel::X86IoPortIn8, u64::MAX).or_fail("in8 at u64::MAX (port 0xffff)")?;
        Cap::<IoPort>::from_cptr(slot)
            .in32(0xfffc)
            .or_fail("in32 at 0xfffc")?;
        Ok(())
    })();
    let deleted = init::CNODE
        .delete(slot, DEPTH)
        .or_fail("delete the port cap");
    result.and(deleted)
}

fn irq_handlers(env: &mut Env) -> TestResult {
    let a = env.slot()?;
    let b = env.slot()?;
    let c = env.slot()?;
    let result = irq_handlers_in(env, a, b, c);
    for s in [a, b, c] {
        let _ = init::CNODE.delete(s, DEPTH);
    }
    result
}

fn irq_handlers_in(env: &mut Env, a: u64, b: u64, c: u64) -> TestResult {
    // I/O APIC 0, pins 9 and 10, edge/high, vectors 9 and 10.
    init::IRQ_CONTROL
        .get_ioapic(init::CNODE, a, DEPTH, 0, 9, 0, 0, 9)
        .or_fail("pin 9")?;
    init::IRQ_CONTROL
        .get_ioapic(init::CNODE, b, DEPTH, 0, 10, 0, 0, 10)
        .or_fail("pin 10")?;
    ensure!(env.has_tag(a, cap_tag::IRQ_HANDLER), "not an IRQ handler");
    expect_code(
        init::IRQ_CONTROL.get_ioapic(init::CNODE, c, DEPTH, 0, 11, 0, 0, 9),
        Code::RevokeFirst,
        "second handler for vector 9",
    )?;
    expect_code(
        init::IRQ_CONTROL.get_ioapic(init::CNODE, c, DEPTH, 0, 11, 0, 0, 200),
        Code::RangeError,
        "vector 200",
    )?;
    let n = env.notification()?;
    let h = Cap::<IrqHandler>::from_cptr(a);
    h.set_notification(n).or_fail("set notification")?;
    h.clear().or_fail("clear")?;
    expect_code(
        h.set_notification(env.endpoint()?.cast()),
        Code::InvalidCapability,
        "endpoint as notification",
    )?;
    init::CNODE.delete(a, DEPTH).or_fail("delete handler")?;
    init::CNODE.delete(b, DEPTH).or_fail("delete handler")?;
    init::IRQ_CONTROL
        .get_ioapic(init::CNODE, a, DEPTH, 0, 9, 0, 0, 9)
        .or_fail("pin 9 again after deleting its handler")?;
    init::CNODE.delete(a, DEPTH).or_fail("delete")
}

fn rtc_irq(env: &mut Env) -> TestResult {
    let port_slot = env.slot()?;
    init::IO_PORT_CONTROL
        .issue(0x70, 0x71, init::CNODE, port_slot, DEPTH)
        .ok();
    let port = Cap::<IoPort>::from_cptr(port_slot);
    if port.in8(0x71).is_err() {
        // The range is held by the earlier test's capability.
        return Err(Why::Skipped("CMOS ports unavailable"));
    }
    let slot = env.slot()?;
    init::IRQ_CONTROL
        .get_ioapic(init::CNODE, slot, DEPTH, 0, 8, 0, 0, 8)
        .or_fail("handler for pin 8 (RTC)")?;
    let h = Cap::<IrqHandler>::from_cptr(slot);
    let n = env.notification()?;
    let badged = env.mint(n, CapRights::ALL, 0x8)?;
    h.set_notification(badged).or_fail("set notification")?;
    h.ack().or_fail("ack")?;
    // Periodic interrupt at 2 Hz..: status A rate 15, status B PIE on; read C to arm.
    let set = |reg: u64, v: u64| port.out8(0x70, reg).and_then(|_| port.out8(0x71, v));
    port.out8(0x70, 0x8a).or_fail("select A")?;
    let a = port.in8(0x71).or_fail("read A")? as u64;
    set(0x8a, (a & 0xf0) | 0x0f).or_fail("write A")?;
    port.out8(0x70, 0x8b).or_fail("select B")?;
    let b = port.in8(0x71).or_fail("read B")? as u64;
    set(0x8b, b | 0x40).or_fail("write B")?;
    port.out8(0x70, 0x0c).or_fail("select C")?;
    port.in8(0x71).or_fail("read C")?;
    let bits = wait_signal(n);
    // Turn it off again.
    let _ = set(0x8b, b & !0x40);
    let _ = port.out8(0x70, 0x0c).and_then(|_| port.in8(0x71));
    let _ = h.clear();
    let _ = init::CNODE.delete(slot, DEPTH);
    ensure!(
        bits == 0x8,
        "no RTC interrupt reached the notification (bits {bits:#x})"
    );
    Ok(())
}
