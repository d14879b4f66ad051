//! Invocation error paths no other module asserts: each test makes an invocation fail
//! in one way (missing rights on IPC capabilities, tables mapped into the kernel half or
//! over missing levels, derive and badge refusals, argument checks of I/O ports, IRQ
//! controls, Retype, TCB register, priority and breakpoint methods, LDTs, DomainSet,
//! Rotate and SaveCaller, wrong or unknown labels, messages too short, extra
//! capabilities and receive pointers that do not resolve), checks the exact error (code
//! and detail words) or the exact capability fault, and checks that the failed call
//! changed nothing. Only errors on which Keel and seL4 agree are asserted here (and
//! Keel's own objects: LDT, FsGsBaseControl, SetGSBase, SetRseq).

use alloc::format;

use keel_abi::error::{Error as Code, LookupFailure};
use keel_abi::fault::{BreakpointType, FaultType, cap_fault};
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::message::CapRights;
use keel_abi::object::{CNodeCapData, ObjectType, cap_tag};
use keel_sys::cap::{
    Cap, Endpoint, Frame, Ldt, Notification, PageDirectory, PageTable, Pdpt, Pml4, init,
};
use keel_sys::error::Lookup;
use keel_sys::invocations::{Args, Reply, invoke};
use keel_sys::{Error, Message, VmAttributes, probe};

use crate::harness::{
    DEPTH, Env, FAULT_BADGE, OrFail, Suite, TestResult, Why, expect_err, pause, recv_timeout,
    set_shared, shared, wait_until, why,
};
use crate::{CHILD_PRIORITY, ensure, fail};

/// Invokes `cptr` with `label`, the message words `words` and the extra capabilities
/// `caps` (for calls the typed API cannot express).
fn call(cptr: u64, label: L, words: &[u64], caps: &[u64]) -> keel_sys::error::Result<Reply> {
    let mut args = Args::new();
    words.iter().for_each(|&w| args.word(w));
    caps.iter().for_each(|&c| args.cap(c));
    invoke(cptr, label, &args)
}

/// Runs the error-path tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run(
        "vspace_table_map_in_the_kernel_half_is_invalid_argument",
        || table_map_kernel_half(env),
    );
    suite.run(
        "ipc_call_through_an_endpoint_without_write_is_invalid_capability",
        || call_without_write(env),
    );
    suite.run("ipc_recv_without_read_is_a_receive_phase_cap_fault", || {
        recv_without_read(env)
    });
    suite.run(
        "ipc_signal_through_a_notification_without_write_is_invalid_capability",
        || signal_without_write(env),
    );
    suite.run(
        "cnode_cancel_badged_sends_without_all_rights_is_illegal_operation",
        || cancel_badged_sends_rights(env),
    );
    suite.run(
        "tcb_bind_a_notification_bound_to_another_thread_is_illegal_operation",
        || bind_bound_elsewhere(env),
    );
    suite.run(
        "ipc_wait_on_a_notification_bound_to_another_thread_is_a_receive_phase_cap_fault",
        || wait_bound_elsewhere(env),
    );
    suite.run(
        "cnode_copy_of_irq_control_or_io_port_control_is_illegal_operation",
        || derive_refused(env),
    );
    suite.run(
        "ioport_issue_reversed_range_is_invalid_argument_and_full_slot_is_delete_first",
        || ioport_issue_checks(env),
    );
    suite.run(
        "irq_get_ioapic_out_of_range_arguments_are_range_errors_and_full_slot_is_delete_first",
        || irq_ioapic_checks(env),
    );
    suite.run(
        "irq_get_msi_vector_out_of_range_in_use_or_into_a_full_slot_is_refused",
        || irq_msi_checks(env),
    );
    suite.run(
        "vspace_mapped_table_map_is_invalid_capability_and_unmap_with_copies_is_revoke_first",
        || mapped_table_state(env),
    );
    suite.run(
        "vspace_large_page_over_a_page_table_is_delete_first",
        || large_page_over_table(env),
    );
    suite.run(
        "vspace_map_with_unassigned_vspace_or_missing_upper_level_fails",
        || missing_levels(env),
    );
    suite.run(
        "untyped_retype_window_past_the_cnode_end_is_range_error",
        || retype_window(env),
    );
    suite.run(
        "untyped_retype_with_guard_mismatching_node_index_fails_lookup",
        || retype_guard_mismatch(env),
    );
    suite.run(
        "tcb_copy_registers_from_a_non_tcb_and_write_registers_on_itself_are_refused",
        || register_writes(env),
    );
    suite.run(
        "tcb_bind_a_notification_with_a_waiter_is_illegal_operation",
        || bind_with_waiter(env),
    );
    suite.run(
        "tcb_set_mc_priority_and_set_sched_params_above_the_authority_mcp_are_range_errors",
        || mcp_ceiling(env),
    );
    suite.run("ldt_set_entries_past_the_table_are_range_errors", || {
        ldt_ranges(env)
    });
    suite.run(
        "ldt_set_ldt_without_asid_or_with_a_non_ldt_is_invalid_capability",
        || set_ldt_checks(env),
    );
    suite.run(
        "gsbase_set_access_with_a_cnode_is_invalid_capability",
        || set_access_cnode(env),
    );
    suite.run("vspace_make_pool_without_capabilities_is_truncated", || {
        make_pool_truncated(env)
    });
    suite.run(
        "vspace_assign_from_a_full_asid_pool_is_delete_first",
        || full_asid_pool(env),
    );
    suite.run(
        "cnode_save_caller_into_a_full_slot_is_delete_first_and_the_caller_still_waits",
        || save_caller_full(env),
    );
    suite.run(
        "cnode_guards_too_large_and_endpoint_mutate_or_rotate_are_illegal_operation",
        || immutable_data(env),
    );
    suite.run(
        "cnode_rotate_pivot_equal_to_source_or_destination_or_empty_slots_are_refused",
        || rotate_checks(env),
    );
    suite.run(
        "fault_extra_capability_or_receive_pointer_that_does_not_resolve_is_a_cap_fault",
        || lookup_faults(env),
    );
    suite.run(
        "invocation_wrong_or_unknown_label_is_illegal_operation",
        || wrong_labels(env),
    );
    suite.run("domain_set_bad_domain_or_thread_is_refused", || {
        domain_set(env)
    });
    suite.run("invocation_short_messages_are_truncated", || {
        short_messages(env)
    });
    suite.run(
        "irq_set_notification_without_a_capability_is_truncated_and_a_wrong_one_is_invalid_capability_0",
        || irq_set_notification_checks(env),
    );
    suite.run(
        "ioport_issue_takes_the_ports_low_16_bits_and_a_missing_root_is_truncated_first",
        || ioport_issue_low_bits(env),
    );
    suite.run(
        "irq_get_ioapic_and_msi_check_the_route_after_the_destination",
        || irq_route_checks(env),
    );
    suite.run("tcb_set_breakpoint_codes_and_order_are_sel4s", || {
        breakpoint_sel4_checks(env)
    });
    suite.run(
        "vspace_tables_round_down_below_2_47_and_frames_check_the_range_before_alignment",
        || tables_near_user_top(env),
    );
    suite.run(
        "vspace_stale_asid_is_failed_lookup_and_make_pool_with_no_free_pool_is_delete_first",
        || stale_asid(env),
    );
}

/// Deletes the capabilities in `slots` and gives the slots back; the first failure.
fn free(env: &mut Env, slots: &[u64]) -> TestResult {
    let mut result = Ok(());
    for &s in slots {
        match init::CNODE.delete(s, DEPTH) {
            Ok(()) => env.alloc.slots.free(s),
            Err(e) => {
                if result.is_ok() {
                    result = Err(why(format_args!("delete slot {s}: {e}")));
                }
            }
        }
    }
    result
}

/// Rights without `right`.
fn all_but(right: CapRights) -> CapRights {
    CapRights(CapRights::ALL.0 & !right.0)
}

/// Entry of threads that are never started.
fn idle(_: u64) {
    loop {
        keel_sys::ipc::yield_now();
    }
}

fn table_map_kernel_half(env: &mut Env) -> TestResult {
    let pt = env.alloc.create::<PageTable>().or_fail("page table")?;
    let pd = env
        .alloc
        .create::<PageDirectory>()
        .or_fail("page directory")?;
    let pdpt = env.alloc.create::<Pdpt>().or_fail("pdpt")?;
    let result = (|| {
        // The first non-canonical address and the start of the kernel half. (seL4 takes
        // a table address rounded down to the table's span, so an address from
        // USER_TOP up to 2^47 is a different case.)
        for vaddr in [1u64 << 47, 0xffff_8000_0000_0000, 0xffff_ffff_ffff_f000] {
            let invalid = Error::InvalidArgument { index: 0 };
            let attr = VmAttributes::DEFAULT;
            expect_err(
                pt.map(init::VSPACE, vaddr, attr),
                invalid,
                &format!("page table at {vaddr:#x}"),
            )?;
            expect_err(
                pd.map(init::VSPACE, vaddr, attr),
                invalid,
                &format!("page directory at {vaddr:#x}"),
            )?;
            expect_err(
                pdpt.map(init::VSPACE, vaddr, attr),
                invalid,
                &format!("PDPT at {vaddr:#x}"),
            )?;
        }
        Ok(())
    })();
    let cleanup = free(env, &[pt.cptr(), pd.cptr(), pdpt.cptr()]);
    result.and(cleanup)
}

/// Calls the endpoint in shared word 10 (reply label + 1 → word 0, its MR0 → word 1),
/// then Sends on it and sets word 2.
fn caller_then_sender(_: u64) {
    let ep = Cap::<Endpoint>::from_cptr(shared(10));
    // Label 0, a label Keel knows: for an unknown one it answers IllegalOperation
    // before it looks at the capability (seL4: InvalidCapability 0 whatever the label).
    let r = ep.call(&Message::new(0).word(5));
    set_shared(1, r.mr(0));
    set_shared(0, r.label() + 1);
    ep.send(&Message::new(0x78));
    set_shared(2, 1);
}

fn call_without_write(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let no_write = env.mint(ep, all_but(CapRights::WRITE), 0)?;
    set_shared(10, no_write.cptr());
    // A thread makes the calls: with the check gone they would block.
    let t = env.spawn(caller_then_sender, 0, CHILD_PRIORITY)?;
    let result = (|| {
        ensure!(
            wait_until(|| shared(2) != 0),
            "the Call or the Send through a capability without Write blocked"
        );
        ensure!(
            shared(0) == Code::InvalidCapability as u64 + 1 && shared(1) == 0,
            "Call reply label {} MR0 {}, expected InvalidCapability 0",
            shared(0).wrapping_sub(1),
            shared(1)
        );
        ensure!(
            ep.nb_recv().is_none(),
            "a message arrived through a capability without Write"
        );
        Ok(())
    })();
    let destroyed = env.destroy(t);
    let cleanup = free(env, &[no_write.cptr(), ep.cptr()]);
    result.and(destroyed).and(cleanup)
}

/// Receives on the endpoint in shared word 10; sets word 0 if that returns.
fn receiver(_: u64) {
    Cap::<Endpoint>::from_cptr(shared(10)).recv();
    set_shared(0, 1);
}

/// Waits on the notification in shared word 10; sets word 0 if that returns.
fn waiter(_: u64) {
    Cap::<Notification>::from_cptr(shared(10)).wait();
    set_shared(0, 1);
}

/// Starts `t` (made to run `entry` on capability `cptr`, in shared word 10) and expects
/// the receive-phase capability fault seL4 sends for a Recv through a capability it may
/// not receive on: MissingCapability with no bits left, at `cptr`.
fn expect_recv_cap_fault(env: &mut Env, t: &keel_rt::Thread, cptr: u64, what: &str) -> TestResult {
    t.start().or_fail("start")?;
    let Some(r) = recv_timeout(env.fault_ep) else {
        fail!("{what}: no fault (the thread received: {})", shared(0) != 0)
    };
    ensure!(r.badge == FAULT_BADGE, "{what}: fault badge {:#x}", r.badge);
    ensure!(
        r.label() == FaultType::CapFault as u64,
        "{what}: fault label {}",
        r.label()
    );
    let w = r.words::<5>();
    ensure!(
        w[cap_fault::ADDR] == cptr
            && w[cap_fault::IN_RECV_PHASE] == 1
            && w[cap_fault::LOOKUP_FAILURE_TYPE] == LookupFailure::MissingCapability as u64
            && w[cap_fault::BITS_LEFT] == 0,
        "{what}: fault address {:#x}, receive phase {}, lookup failure {}, bits left {}",
        w[cap_fault::ADDR],
        w[cap_fault::IN_RECV_PHASE],
        w[cap_fault::LOOKUP_FAILURE_TYPE],
        w[cap_fault::BITS_LEFT]
    );
    ensure!(shared(0) == 0, "{what}: the thread went on");
    Ok(())
}

fn recv_without_read(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let n = env.notification()?;
    let ep_no_read = env.mint(ep, all_but(CapRights::READ), 0)?;
    let n_no_read = env.mint(n, CapRights::WRITE, 0)?;
    let mut result = Ok(());
    for (entry, cptr, what) in [
        (
            receiver as fn(u64),
            ep_no_read.cptr(),
            "Recv on an endpoint without Read",
        ),
        (
            waiter,
            n_no_read.cptr(),
            "Wait on a notification without Read",
        ),
    ] {
        set_shared(0, 0);
        set_shared(10, cptr);
        let t = match env.create(entry, 0, CHILD_PRIORITY) {
            Ok(t) => t,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let r = expect_recv_cap_fault(env, &t, cptr, what);
        let destroyed = env.destroy(t);
        result = r.and(destroyed);
        if result.is_err() {
            break;
        }
    }
    let cleanup = free(
        env,
        &[ep_no_read.cptr(), n_no_read.cptr(), ep.cptr(), n.cptr()],
    );
    result.and(cleanup)
}

fn signal_without_write(env: &mut Env) -> TestResult {
    let n = env.notification()?;
    let no_write = env.mint(n, CapRights::READ, 0x5)?;
    let result = (|| {
        expect_err(
            invoke(no_write.cptr(), L::InvalidInvocation, &Args::new()),
            Error::InvalidCapability { index: 0 },
            "Call of a notification capability without Write",
        )?;
        no_write.signal();
        let bits = n.poll();
        ensure!(
            bits == 0,
            "a Send through a notification capability without Write signalled {bits:#x}"
        );
        Ok(())
    })();
    let cleanup = free(env, &[no_write.cptr(), n.cptr()]);
    result.and(cleanup)
}

/// Sends label 0x42 on the endpoint in shared word 10; sets word 0 when that returns.
fn sender(_: u64) {
    Cap::<Endpoint>::from_cptr(shared(10)).send(&Message::new(0x42));
    set_shared(0, 1);
}

fn cancel_badged_sends_rights(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let badged = env.mint(ep, CapRights::ALL, 9)?;
    let read_write = env.slot()?;
    let n = env.notification()?;
    set_shared(10, badged.cptr());
    let t = env.spawn(sender, 0, CHILD_PRIORITY)?;
    let result = (|| {
        init::CNODE
            .copy(
                read_write,
                DEPTH,
                init::CNODE,
                badged.cptr(),
                DEPTH,
                CapRights::READ_WRITE,
            )
            .or_fail("read-write copy")?;
        pause(2_000_000);
        expect_err(
            init::CNODE.cancel_badged_sends(read_write, DEPTH),
            Error::IllegalOperation,
            "CancelBadgedSends through a read-write copy",
        )?;
        expect_err(
            init::CNODE.cancel_badged_sends(n.cptr(), DEPTH),
            Error::IllegalOperation,
            "CancelBadgedSends of a notification",
        )?;
        ensure!(shared(0) == 0, "the sender was released");
        let Some(r) = recv_timeout(ep) else {
            fail!("the queued sender is gone")
        };
        ensure!(
            r.badge == 9 && r.label() == 0x42,
            "received badge {} label {:#x}",
            r.badge,
            r.label()
        );
        ensure!(wait_until(|| shared(0) == 1), "the sender did not go on");
        Ok(())
    })();
    let destroyed = env.destroy(t);
    let cleanup = free(env, &[read_write, badged.cptr(), n.cptr(), ep.cptr()]);
    result.and(destroyed).and(cleanup)
}

fn bind_bound_elsewhere(env: &mut Env) -> TestResult {
    let n = env.notification()?;
    let a = env.create(idle, 0, CHILD_PRIORITY)?;
    let b = env.create(idle, 0, CHILD_PRIORITY)?;
    let result = (|| {
        a.tcb.bind_notification(n).or_fail("bind to A")?;
        expect_err(
            b.tcb.bind_notification(n),
            Error::IllegalOperation,
            "binding to B a notification bound to A",
        )?;
        expect_err(
            b.tcb.unbind_notification(),
            Error::IllegalOperation,
            "unbinding B (nothing may be bound)",
        )?;
        a.tcb
            .unbind_notification()
            .or_fail("unbind A (still bound)")?;
        Ok(())
    })();
    let destroyed = env.destroy(a).and(env.destroy(b));
    let cleanup = free(env, &[n.cptr()]);
    result.and(destroyed).and(cleanup)
}

fn wait_bound_elsewhere(env: &mut Env) -> TestResult {
    let n = env.notification()?;
    let a = env.create(idle, 0, CHILD_PRIORITY)?;
    set_shared(10, n.cptr());
    let b = env.create(waiter, 0, CHILD_PRIORITY)?;
    let result = (|| {
        a.tcb.bind_notification(n).or_fail("bind to A")?;
        expect_recv_cap_fault(
            env,
            &b,
            n.cptr(),
            "Wait on a notification bound to another thread",
        )
    })();
    let destroyed = env.destroy(b).and(env.destroy(a));
    let cleanup = free(env, &[n.cptr()]);
    result.and(destroyed).and(cleanup)
}

fn derive_refused(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    let result = (|| {
        for (control, what) in [
            (init::IRQ_CONTROL.cptr(), "IRQControl"),
            (init::IO_PORT_CONTROL.cptr(), "IOPortControl"),
        ] {
            expect_err(
                init::CNODE.copy(s, DEPTH, init::CNODE, control, DEPTH, CapRights::ALL),
                Error::IllegalOperation,
                &format!("copy of {what}"),
            )?;
            expect_err(
                init::CNODE.mint(s, DEPTH, init::CNODE, control, DEPTH, CapRights::ALL, 0),
                Error::IllegalOperation,
                &format!("mint of {what}"),
            )?;
            ensure!(env.is_empty(s), "a copy of {what} was made");
        }
        Ok(())
    })();
    let cleanup = free(env, &[s]);
    result.and(cleanup)
}

fn ioport_issue_checks(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    let full = env.endpoint()?;
    let result = (|| {
        expect_err(
            init::IO_PORT_CONTROL.issue(0xc002, 0xc000, init::CNODE, s, DEPTH),
            Error::InvalidArgument { index: 1 },
            "first port above the last",
        )?;
        ensure!(env.is_empty(s), "a capability was made");
        expect_err(
            init::IO_PORT_CONTROL.issue(0xc000, 0xc003, init::CNODE, full.cptr(), DEPTH),
            Error::DeleteFirst,
            "issue into a full slot",
        )?;
        ensure!(
            env.has_tag(full.cptr(), cap_tag::ENDPOINT),
            "the full slot changed"
        );
        // The refused range was not recorded as issued.
        init::IO_PORT_CONTROL
            .issue(0xc000, 0xc003, init::CNODE, s, DEPTH)
            .or_fail("issuing the range after the refusals")?;
        Ok(())
    })();
    let cleanup = free(env, &[s, full.cptr()]);
    result.and(cleanup)
}

fn get_ioapic(slot: u64, ioapic: u64, pin: u64, vector: u64) -> keel_sys::error::Result<()> {
    init::IRQ_CONTROL.get_ioapic(init::CNODE, slot, DEPTH, ioapic, pin, 0, 0, vector)
}

fn irq_ioapic_checks(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    let full = env.endpoint()?;
    let result = (|| {
        // I/O APIC 99 is past the last one; the error names the last.
        let last = match get_ioapic(s, 99, 23, 100) {
            Err(Error::RangeError { min: 0, max }) if max < 99 => max,
            other => fail!("I/O APIC 99: {other:?}"),
        };
        expect_err(
            get_ioapic(s, last + 1, 23, 100),
            Error::RangeError { min: 0, max: last },
            "the I/O APIC after the last",
        )?;
        expect_err(
            get_ioapic(s, 0, 24, 100),
            Error::RangeError { min: 0, max: 23 },
            "pin 24",
        )?;
        // Relative vector 108 is CPU vector 156, the first the kernel keeps.
        expect_err(
            get_ioapic(s, 0, 23, 108),
            Error::RangeError { min: 0, max: 107 },
            "vector 108",
        )?;
        ensure!(env.is_empty(s), "a handler was made");
        expect_err(
            get_ioapic(full.cptr(), 0, 23, 100),
            Error::DeleteFirst,
            "handler into a full slot",
        )?;
        ensure!(
            env.has_tag(full.cptr(), cap_tag::ENDPOINT),
            "the full slot changed"
        );
        get_ioapic(s, 0, 23, 100).or_fail("vector 100 after the refusals")?;
        Ok(())
    })();
    let cleanup = free(env, &[s, full.cptr()]);
    result.and(cleanup)
}

fn get_msi(slot: u64, vector: u64) -> keel_sys::error::Result<()> {
    init::IRQ_CONTROL.get_msi(init::CNODE, slot, DEPTH, 0, 0, 0, 0, vector)
}

fn irq_msi_checks(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    let pin = env.slot()?;
    let full = env.endpoint()?;
    let result = (|| {
        expect_err(
            get_msi(s, 200),
            Error::RangeError { min: 0, max: 107 },
            "MSI vector 200",
        )?;
        get_ioapic(pin, 0, 22, 101).or_fail("pin 22 at vector 101")?;
        expect_err(
            get_msi(s, 101),
            Error::RevokeFirst,
            "MSI on a vector in use",
        )?;
        ensure!(env.is_empty(s), "a handler was made");
        expect_err(
            get_msi(full.cptr(), 102),
            Error::DeleteFirst,
            "MSI into a full slot",
        )?;
        ensure!(
            env.has_tag(full.cptr(), cap_tag::ENDPOINT),
            "the full slot changed"
        );
        get_msi(s, 102).or_fail("MSI vector 102 after the refusals")?;
        Ok(())
    })();
    let cleanup = free(env, &[s, pin, full.cptr()]);
    result.and(cleanup)
}

/// A fresh 2 MiB region of the scratch area with the tables above its page table.
fn fresh_region(env: &mut Env) -> Result<u64, Why> {
    let region = env.alloc.scratch_range(0x20_0000, 0x20_0000);
    env.alloc
        .ensure_tables(init::VSPACE, region, 2)
        .or_fail("tables above")?;
    Ok(region)
}

fn mapped_table_state(env: &mut Env) -> TestResult {
    let pt = env.alloc.create::<PageTable>().or_fail("page table")?;
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let copy = env.slot()?;
    let result = (|| {
        let region = fresh_region(env)?;
        let other = fresh_region(env)?;
        pt.map(init::VSPACE, region, VmAttributes::DEFAULT)
            .or_fail("map the page table")?;
        frame
            .map(
                init::VSPACE,
                region,
                CapRights::READ_WRITE,
                VmAttributes::DEFAULT,
            )
            .or_fail("map a frame through it")?;
        probe::write_u64(region, 0x7ab1e);
        expect_err(
            pt.map(init::VSPACE, other, VmAttributes::DEFAULT),
            Error::InvalidCapability { index: 0 },
            "map a mapped page table again",
        )?;
        init::CNODE
            .copy(copy, DEPTH, init::CNODE, pt.cptr(), DEPTH, CapRights::ALL)
            .or_fail("copy the mapped page table")?;
        expect_err(pt.unmap(), Error::RevokeFirst, "unmap with a copy")?;
        ensure!(
            probe::read_u64(region) == 0x7ab1e,
            "the page table was unmapped"
        );
        init::CNODE.delete(copy, DEPTH).or_fail("delete the copy")?;
        pt.unmap().or_fail("unmap without copies")?;
        Ok(())
    })();
    let cleanup = free(env, &[copy, frame.cptr(), pt.cptr()]);
    result.and(cleanup)
}

fn large_page_over_table(env: &mut Env) -> TestResult {
    let pt = env.alloc.create::<PageTable>().or_fail("page table")?;
    let small = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let large = env
        .alloc
        .frame(ObjectType::X86LargePage)
        .or_fail("2 MiB frame")?;
    let result = (|| {
        let region = fresh_region(env)?;
        pt.map(init::VSPACE, region, VmAttributes::DEFAULT)
            .or_fail("map the page table")?;
        expect_err(
            large.map(
                init::VSPACE,
                region,
                CapRights::READ_WRITE,
                VmAttributes::DEFAULT,
            ),
            Error::DeleteFirst,
            "2 MiB page over a page table",
        )?;
        // The page table is still there: a 4 KiB page maps through it.
        small
            .map(
                init::VSPACE,
                region + 0x1000,
                CapRights::READ_WRITE,
                VmAttributes::DEFAULT,
            )
            .or_fail("4 KiB page through the page table")?;
        probe::write_u64(region + 0x1000, 1);
        Ok(())
    })();
    let cleanup = free(env, &[small.cptr(), large.cptr(), pt.cptr()]);
    result.and(cleanup)
}

/// Expects a FailedLookup (destination) with MissingCapability and `bits_left`.
fn expect_missing<T: core::fmt::Debug>(
    r: keel_sys::error::Result<T>,
    bits_left: u64,
    what: &str,
) -> TestResult {
    expect_err(
        r,
        Error::FailedLookup {
            source: false,
            lookup: Lookup::MissingCapability { bits_left },
        },
        what,
    )
}

fn missing_levels(env: &mut Env) -> TestResult {
    let pml4 = env.alloc.create::<Pml4>().or_fail("pml4")?;
    let pt = env.alloc.create::<PageTable>().or_fail("page table")?;
    let pd = env
        .alloc
        .create::<PageDirectory>()
        .or_fail("page directory")?;
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let result = (|| {
        let attr = VmAttributes::DEFAULT;
        // A PML4 without an ASID.
        expect_err(
            pt.map(pml4, 0x40_0000, attr),
            Error::InvalidCapability { index: 1 },
            "page table into a PML4 without an ASID",
        )?;
        expect_err(
            pd.map(pml4, 0x4000_0000, attr),
            Error::InvalidCapability { index: 1 },
            "page directory into a PML4 without an ASID",
        )?;
        // A 512 GiB region with no PDPT: 39 bits are left when the lookup stops.
        let far = 0x5a00_0000_0000;
        expect_missing(
            pd.map(init::VSPACE, far, attr),
            39,
            "page directory, no PDPT",
        )?;
        expect_missing(
            frame.map(init::VSPACE, far, CapRights::READ_WRITE, attr),
            39,
            "4 KiB frame, no PDPT",
        )?;
        // A 1 GiB region (under the root task's PDPT) with no page directory: 30.
        let gib = env.alloc.scratch_range(1 << 30, 1 << 30);
        expect_missing(
            pt.map(init::VSPACE, gib, attr),
            30,
            "page table, no page directory",
        )?;
        expect_missing(
            frame.map(init::VSPACE, gib, CapRights::READ_WRITE, attr),
            30,
            "4 KiB frame, no page directory",
        )?;
        Ok(())
    })();
    let cleanup = free(env, &[frame.cptr(), pd.cptr(), pt.cptr(), pml4.cptr()]);
    result.and(cleanup)
}

fn retype_window(env: &mut Env) -> TestResult {
    let cn = env.alloc.cnode(4).or_fail("16-slot cnode")?;
    let ut = env.alloc.untyped(12).or_fail("untyped")?;
    let result = (|| {
        expect_err(
            ut.retype(
                ObjectType::Endpoint,
                0,
                init::CNODE,
                cn.cptr(),
                DEPTH as u64,
                10,
                10,
            ),
            Error::RangeError { min: 1, max: 6 },
            "10 objects from slot 10 of 16",
        )?;
        // Nothing was made: all six slots of the window are still empty.
        ut.retype(
            ObjectType::Endpoint,
            0,
            init::CNODE,
            cn.cptr(),
            DEPTH as u64,
            10,
            6,
        )
        .or_fail("6 objects from slot 10 after the refusal")?;
        Ok(())
    })();
    let cleanup = free(env, &[cn.cptr(), ut.cptr()]);
    result.and(cleanup)
}

fn retype_guard_mismatch(env: &mut Env) -> TestResult {
    let cn = env.alloc.cnode(4).or_fail("16-slot cnode")?;
    let ut = env.alloc.untyped(12).or_fail("untyped")?;
    let bits = env.info.cnode_size_bits();
    let result = (|| {
        expect_err(
            ut.retype(
                ObjectType::Endpoint,
                0,
                init::CNODE,
                cn.cptr() | 1 << 40,
                DEPTH as u64,
                0,
                1,
            ),
            Error::FailedLookup {
                source: false,
                lookup: Lookup::GuardMismatch {
                    bits_left: 64,
                    guard_found: 0,
                    guard_size: 64 - bits,
                },
            },
            "destination CNode index with guard bits set",
        )?;
        // The untyped has no children: a copy of it may be made.
        let s = env.slot()?;
        let copied = init::CNODE
            .copy(s, DEPTH, init::CNODE, ut.cptr(), DEPTH, CapRights::ALL)
            .or_fail("copy of the untyped (it has no children)");
        free(env, &[s]).and(copied)
    })();
    let cleanup = free(env, &[cn.cptr(), ut.cptr()]);
    result.and(cleanup)
}

fn register_writes(env: &mut Env) -> TestResult {
    let t = env.create(idle, 0, CHILD_PRIORITY)?;
    let result = (|| {
        expect_err(
            t.tcb
                .copy_registers(init::CNODE.cast(), false, false, true, true, 0),
            Error::InvalidCapability { index: 1 },
            "CopyRegisters from a CNode",
        )?;
        // WriteRegisters of no register on the caller itself.
        expect_err(
            call(init::TCB.cptr(), L::TcbWriteRegisters, &[0, 0], &[]),
            Error::IllegalOperation,
            "WriteRegisters on the calling thread",
        )?;
        Ok(())
    })();
    let destroyed = env.destroy(t);
    result.and(destroyed)
}

fn bind_with_waiter(env: &mut Env) -> TestResult {
    let n = env.notification()?;
    set_shared(10, n.cptr());
    let w = env.spawn(waiter, 0, CHILD_PRIORITY)?;
    let b = env.create(idle, 0, CHILD_PRIORITY)?;
    let result = (|| {
        pause(2_000_000);
        expect_err(
            b.tcb.bind_notification(n),
            Error::IllegalOperation,
            "binding a notification a thread waits on",
        )?;
        expect_err(
            b.tcb.unbind_notification(),
            Error::IllegalOperation,
            "unbind (nothing may be bound)",
        )?;
        ensure!(shared(0) == 0, "the waiter went on");
        n.signal();
        ensure!(
            wait_until(|| shared(0) == 1),
            "the waiter did not get the signal"
        );
        Ok(())
    })();
    let destroyed = env.destroy(w).and(env.destroy(b));
    let cleanup = free(env, &[n.cptr()]);
    result.and(destroyed).and(cleanup)
}

fn mcp_ceiling(env: &mut Env) -> TestResult {
    let auth = env.create(idle, 0, CHILD_PRIORITY)?;
    let target = env.create(idle, 0, CHILD_PRIORITY)?;
    let result = (|| {
        auth.tcb
            .set_mc_priority(init::TCB, 10)
            .or_fail("MCP 10 for the authority")?;
        let ceiling = Error::RangeError { min: 0, max: 10 };
        expect_err(
            target.tcb.set_mc_priority(auth.tcb, 11),
            ceiling,
            "SetMCPriority 11",
        )?;
        expect_err(
            target.tcb.set_sched_params(auth.tcb, 11, 5),
            ceiling,
            "SetSchedParams MCP 11",
        )?;
        expect_err(
            target.tcb.set_sched_params(auth.tcb, 5, 11),
            ceiling,
            "SetSchedParams priority 11",
        )?;
        target
            .tcb
            .set_sched_params(auth.tcb, 10, 10)
            .or_fail("SetSchedParams at the ceiling")?;
        Ok(())
    })();
    let destroyed = env.destroy(auth).and(env.destroy(target));
    result.and(destroyed)
}

fn ldt_ranges(env: &mut Env) -> TestResult {
    let ldt = env.alloc.create::<Ldt>().or_fail("retype LDT")?;
    let result = (|| {
        expect_err(
            ldt.set_entries(512, &[0]),
            Error::RangeError { min: 0, max: 511 },
            "first entry 512",
        )?;
        expect_err(
            ldt.set_entries(511, &[0, 0]),
            Error::RangeError { min: 1, max: 1 },
            "two entries from 511",
        )?;
        ldt.set_entries(511, &[0]).or_fail("one entry at 511")?;
        Ok(())
    })();
    let cleanup = free(env, &[ldt.cptr()]);
    result.and(cleanup)
}

fn set_ldt_checks(env: &mut Env) -> TestResult {
    let ldt = env.alloc.create::<Ldt>().or_fail("retype LDT")?;
    let pml4 = env.alloc.create::<Pml4>().or_fail("pml4")?;
    let ep = env.endpoint()?;
    let result = (|| {
        expect_err(
            pml4.set_ldt(Some(ldt)),
            Error::InvalidCapability { index: 0 },
            "SetLDT on a PML4 without an ASID",
        )?;
        expect_err(
            init::VSPACE.set_ldt(Some(ep.cast())),
            Error::InvalidCapability { index: 1 },
            "SetLDT with an endpoint",
        )?;
        Ok(())
    })();
    let cleanup = free(env, &[ep.cptr(), pml4.cptr(), ldt.cptr()]);
    result.and(cleanup)
}

fn set_access_cnode(_env: &mut Env) -> TestResult {
    expect_err(
        init::FS_GS_BASE_CONTROL.set_access(init::CNODE.cast(), true),
        Error::InvalidCapability { index: 1 },
        "SetAccess with a CNode",
    )
}

fn make_pool_truncated(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    let result = (|| {
        expect_err(
            call(
                init::ASID_CONTROL.cptr(),
                L::X86AsidControlMakePool,
                &[s, DEPTH as u64],
                &[],
            ),
            Error::TruncatedMessage,
            "MakePool without capabilities",
        )?;
        ensure!(env.is_empty(s), "a pool was made");
        Ok(())
    })();
    let cleanup = free(env, &[s]);
    result.and(cleanup)
}

/// Calls the endpoint in shared word 10; puts the reply's label in word 1 and sets
/// word 0.
fn caller(_: u64) {
    let r = Cap::<Endpoint>::from_cptr(shared(10)).call(&Message::new(0x33));
    set_shared(1, r.label());
    set_shared(0, 1);
}

fn save_caller_full(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let full = env.notification()?;
    set_shared(10, ep.cptr());
    let t = env.spawn(caller, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let Some(r) = recv_timeout(ep) else {
            fail!("no call")
        };
        ensure!(r.label() == 0x33, "call label {:#x}", r.label());
        expect_err(
            init::CNODE.save_caller(full.cptr(), DEPTH),
            Error::DeleteFirst,
            "SaveCaller into a full slot",
        )?;
        ensure!(
            env.has_tag(full.cptr(), cap_tag::NOTIFICATION),
            "the full slot changed"
        );
        ensure!(shared(0) == 0, "the caller went on");
        keel_sys::ipc::reply(&Message::new(0x44));
        ensure!(
            wait_until(|| shared(0) == 1),
            "the reply did not reach the caller"
        );
        ensure!(shared(1) == 0x44, "reply label {:#x}", shared(1));
        Ok(())
    })();
    let destroyed = env.destroy(t);
    let cleanup = free(env, &[full.cptr(), ep.cptr()]);
    result.and(destroyed).and(cleanup)
}

fn immutable_data(env: &mut Env) -> TestResult {
    let cn = env.alloc.cnode(8).or_fail("256-slot cnode")?;
    let ep = env.endpoint()?;
    let n = env.notification()?;
    let s = env.slot()?;
    let result = (|| {
        // A 57-bit guard on an 8-bit radix resolves 65 bits.
        let guard = CNodeCapData::new(0, 57).0;
        expect_err(
            init::CNODE.mint(
                s,
                DEPTH,
                init::CNODE,
                cn.cptr(),
                DEPTH,
                CapRights::ALL,
                guard,
            ),
            Error::IllegalOperation,
            "Mint of a CNode with a 57-bit guard",
        )?;
        expect_err(
            init::CNODE.mutate(s, DEPTH, init::CNODE, cn.cptr(), DEPTH, guard),
            Error::IllegalOperation,
            "Mutate of a CNode with a 57-bit guard",
        )?;
        ensure!(
            env.has_tag(cn.cptr(), cap_tag::CNODE),
            "the CNode capability moved"
        );
        // Mutate and Rotate never change an endpoint's badge, whatever the data.
        for data in [7, 0] {
            expect_err(
                init::CNODE.mutate(s, DEPTH, init::CNODE, ep.cptr(), DEPTH, data),
                Error::IllegalOperation,
                &format!("Mutate of an endpoint with data {data}"),
            )?;
        }
        expect_err(
            init::CNODE.rotate(
                s,
                DEPTH,
                0,
                init::CNODE,
                ep.cptr(),
                DEPTH,
                0,
                init::CNODE,
                n.cptr(),
                DEPTH,
            ),
            Error::IllegalOperation,
            "Rotate of an endpoint and a notification",
        )?;
        ensure!(env.is_empty(s), "the destination was filled");
        ensure!(
            env.has_tag(ep.cptr(), cap_tag::ENDPOINT)
                && env.has_tag(n.cptr(), cap_tag::NOTIFICATION),
            "a capability moved"
        );
        Ok(())
    })();
    let cleanup = free(env, &[s, n.cptr(), ep.cptr(), cn.cptr()]);
    result.and(cleanup)
}

fn rotate_checks(env: &mut Env) -> TestResult {
    let a = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame a")?;
    let b = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame b")?;
    let empty = env.slot()?;
    let dest = env.slot()?;
    let at = |f: Cap<Frame>| f.get_address();
    let result = (|| {
        let (pa, pb) = (at(a).or_fail("a")?, at(b).or_fail("b")?);
        let rotate = |dest: u64, pivot: u64, src: u64| {
            init::CNODE.rotate(
                dest,
                DEPTH,
                0,
                init::CNODE,
                pivot,
                DEPTH,
                0,
                init::CNODE,
                src,
                DEPTH,
            )
        };
        expect_err(
            rotate(dest, a.cptr(), a.cptr()),
            Error::IllegalOperation,
            "pivot = source",
        )?;
        expect_err(
            rotate(a.cptr(), a.cptr(), b.cptr()),
            Error::IllegalOperation,
            "pivot = destination",
        )?;
        expect_err(
            rotate(dest, a.cptr(), empty),
            Error::FailedLookup {
                source: true,
                lookup: Lookup::MissingCapability { bits_left: 64 },
            },
            "empty source",
        )?;
        expect_err(
            rotate(dest, empty, a.cptr()),
            Error::FailedLookup {
                source: false,
                lookup: Lookup::MissingCapability { bits_left: 64 },
            },
            "empty pivot",
        )?;
        ensure!(
            env.is_empty(dest) && env.is_empty(empty),
            "a slot was filled"
        );
        ensure!(at(a) == Ok(pa) && at(b) == Ok(pb), "the frames moved");
        Ok(())
    })();
    let cleanup = free(env, &[dest, empty, b.cptr(), a.cptr()]);
    result.and(cleanup)
}

/// Invokes CNode Copy into the slot in shared word 11 with the capability pointer in
/// word 10 as the source root (an extra capability); sets word 0 if that returns.
fn bad_extra_cap(_: u64) {
    let mut args = Args::new();
    for w in [shared(11), DEPTH as u64, 0, DEPTH as u64, CapRights::ALL.0] {
        args.word(w);
    }
    args.cap(shared(10));
    let _ = invoke(init::CNODE.cptr(), L::CNodeCopy, &args);
    set_shared(0, 1);
}

/// Maps the frame in shared word 11 with the capability pointer in word 10 as the
/// address space (the register route of a frame Map); sets word 0 if that returns.
fn bad_vspace(_: u64) {
    let _ = Cap::<Frame>::from_cptr(shared(11)).map(
        Cap::from_cptr(shared(10)),
        0x1000,
        CapRights::READ_WRITE,
        VmAttributes::DEFAULT,
    );
    set_shared(0, 1);
}

/// Starts `t` and expects a capability fault on `cptr`, a root-CNode pointer with guard
/// bits set: GuardMismatch with 64 bits left, the root's guard (0) and guard size.
fn expect_guard_fault(
    env: &mut Env,
    t: &keel_rt::Thread,
    cptr: u64,
    in_receive: bool,
    what: &str,
) -> TestResult {
    let guard_size = 64 - env.info.cnode_size_bits();
    t.start().or_fail("start")?;
    let Some(r) = recv_timeout(env.fault_ep) else {
        fail!("{what}: no fault (the call returned: {})", shared(0) != 0)
    };
    ensure!(r.badge == FAULT_BADGE, "{what}: fault badge {:#x}", r.badge);
    ensure!(
        r.label() == FaultType::CapFault as u64 && r.length() == 7,
        "{what}: fault label {} length {}",
        r.label(),
        r.length()
    );
    let w = r.words::<7>();
    ensure!(
        w[cap_fault::ADDR] == cptr
            && w[cap_fault::IN_RECV_PHASE] == in_receive as u64
            && w[cap_fault::LOOKUP_FAILURE_TYPE] == LookupFailure::GuardMismatch as u64
            && w[cap_fault::BITS_LEFT] == 64
            && w[cap_fault::GUARD_MISMATCH_GUARD_FOUND] == 0
            && w[cap_fault::GUARD_MISMATCH_BITS_FOUND] == guard_size,
        "{what}: fault words {:x?}",
        &w[1..]
    );
    ensure!(shared(0) == 0, "{what}: the thread went on");
    Ok(())
}

fn lookup_faults(env: &mut Env) -> TestResult {
    let bad = 1 << 40 | 5;
    let dest = env.slot()?;
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let mut result = Ok(());
    for (entry, in_receive, word, what) in [
        (
            bad_extra_cap as fn(u64),
            false,
            dest,
            "CNode Copy with a source root that does not resolve",
        ),
        (
            bad_vspace,
            false,
            frame.cptr(),
            "frame Map with a VSpace that does not resolve",
        ),
        (receiver, true, 0, "Recv on a pointer that does not resolve"),
    ] {
        set_shared(0, 0);
        set_shared(10, bad);
        set_shared(11, word);
        let t = match env.create(entry, 0, CHILD_PRIORITY) {
            Ok(t) => t,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let r = expect_guard_fault(env, &t, bad, in_receive, what);
        let destroyed = env.destroy(t);
        result = r.and(destroyed);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() && !env.is_empty(dest) {
        result = Err(why(format_args!("the copy was made")));
    }
    let cleanup = free(env, &[dest, frame.cptr()]);
    result.and(cleanup)
}

/// The label of the reply to a Call of `cptr` with label `label` and no message.
fn raw_label(cptr: u64, label: u64) -> u64 {
    let info = keel_abi::message::MessageInfo::new(label, 0, 0, 0);
    keel_sys::syscall::call(cptr, info, [0; 4]).info.label()
}

fn wrong_labels(env: &mut Env) -> TestResult {
    let t = env.create(idle, 0, CHILD_PRIORITY)?;
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let pt = env.alloc.create::<PageTable>().or_fail("page table")?;
    let ldt = env.alloc.create::<Ldt>().or_fail("LDT")?;
    let handler = env.slot()?;
    let port = env.slot()?;
    let result = (|| {
        get_ioapic(handler, 0, 21, 103).or_fail("IRQ handler")?;
        init::IO_PORT_CONTROL
            .issue(0xc010, 0xc013, init::CNODE, port, DEPTH)
            .or_fail("I/O port capability")?;
        let illegal = Code::IllegalOperation as u64;
        for (cptr, label, what) in [
            (t.tcb.cptr(), L::CNodeCopy, "TCB with CNodeCopy"),
            (frame.cptr(), L::TcbSuspend, "frame with TCBSuspend"),
            (init::VSPACE.cptr(), L::X86PageMap, "PML4 with X86PageMap"),
            (pt.cptr(), L::X86PdptMap, "page table with X86PDPTMap"),
            (
                init::IRQ_CONTROL.cptr(),
                L::IrqAckIrq,
                "IRQControl with IRQAckIRQ",
            ),
            (handler, L::TcbSuspend, "IRQHandler with TCBSuspend"),
            (
                init::IO_PORT_CONTROL.cptr(),
                L::X86IoPortIn8,
                "IOPortControl with X86IOPortIn8",
            ),
            (
                port,
                L::X86IoPortControlIssue,
                "IOPort with X86IOPortControlIssue",
            ),
            (
                init::ASID_CONTROL.cptr(),
                L::X86AsidPoolAssign,
                "ASIDControl with X86ASIDPoolAssign",
            ),
            (
                init::ASID_POOL.cptr(),
                L::X86AsidControlMakePool,
                "ASIDPool with X86ASIDControlMakePool",
            ),
            (
                init::DOMAIN.cptr(),
                L::TcbSuspend,
                "DomainSet with TCBSuspend",
            ),
            (ldt.cptr(), L::TcbSuspend, "LDT with TCBSuspend"),
            (
                init::FS_GS_BASE_CONTROL.cptr(),
                L::TcbSuspend,
                "FsGsBaseControl with TCBSuspend",
            ),
        ] {
            expect_err(
                invoke(cptr, label, &Args::new()),
                Error::IllegalOperation,
                what,
            )?;
        }
        // A label number seL4 does not have, on kernel objects.
        for (cptr, what) in [
            (init::CNODE.cptr(), "CNode"),
            (t.tcb.cptr(), "TCB"),
            (frame.cptr(), "frame"),
            (init::VSPACE.cptr(), "PML4"),
            (handler, "IRQHandler"),
            (port, "IOPort"),
            (ldt.cptr(), "LDT"),
        ] {
            let got = raw_label(cptr, 999);
            ensure!(
                got == illegal,
                "{what} with label 999: reply label {got}, expected IllegalOperation"
            );
        }
        Ok(())
    })();
    let destroyed = env.destroy(t);
    let cleanup = free(env, &[port, handler, ldt.cptr(), pt.cptr(), frame.cptr()]);
    result.and(destroyed).and(cleanup)
}

fn domain_set(env: &mut Env) -> TestResult {
    let t = env.create(idle, 0, CHILD_PRIORITY)?;
    let ep = env.endpoint()?;
    let result = (|| {
        expect_err(
            init::DOMAIN.set(1, t.tcb),
            Error::InvalidArgument { index: 0 },
            "domain 1 (there is one domain)",
        )?;
        expect_err(
            init::DOMAIN.set(0, ep.cast()),
            Error::InvalidArgument { index: 1 },
            "an endpoint as the thread",
        )?;
        expect_err(
            call(init::DOMAIN.cptr(), L::DomainSetSet, &[0], &[]),
            Error::TruncatedMessage,
            "no thread",
        )?;
        init::DOMAIN.set(0, t.tcb).or_fail("domain 0")?;
        Ok(())
    })();
    let destroyed = env.destroy(t);
    let cleanup = free(env, &[ep.cptr()]);
    result.and(destroyed).and(cleanup)
}

/// A message too short for its invocation: invoked capability, label, message words,
/// extra capabilities, what it is.
type ShortMessage<'a> = (u64, L, &'a [u64], &'a [u64], &'a str);

fn short_messages(env: &mut Env) -> TestResult {
    let t = env.create(idle, 0, CHILD_PRIORITY)?;
    let ut = env.alloc.untyped(12).or_fail("untyped")?;
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let pt = env.alloc.create::<PageTable>().or_fail("page table")?;
    let ldt = env.alloc.create::<Ldt>().or_fail("LDT")?;
    let ep = env.endpoint()?;
    let port = env.slot()?;
    let s = env.slot()?;
    let result = (|| {
        init::IO_PORT_CONTROL
            .issue(0xc020, 0xc023, init::CNODE, port, DEPTH)
            .or_fail("I/O port capability")?;
        let root = init::CNODE.cptr();
        let d = DEPTH as u64;
        let all = CapRights::ALL.0;
        let tcb = t.tcb.cptr();
        let cases: &[ShortMessage] = &[
            (root, L::CNodeDelete, &[s], &[], "CNode Delete, 1 word"),
            (
                root,
                L::CNodeCopy,
                &[s, d, ep.cptr(), d, all],
                &[],
                "Copy, no source root",
            ),
            (
                root,
                L::CNodeCopy,
                &[s, d, ep.cptr()],
                &[root],
                "Copy, 3 words",
            ),
            (
                root,
                L::CNodeCopy,
                &[s, d, ep.cptr(), d],
                &[root],
                "Copy, 4 words",
            ),
            (
                root,
                L::CNodeMint,
                &[s, d, ep.cptr(), d, all],
                &[root],
                "Mint, 5 words",
            ),
            (
                root,
                L::CNodeMove,
                &[s, d, ep.cptr()],
                &[root],
                "Move, 3 words",
            ),
            (
                root,
                L::CNodeMutate,
                &[s, d, ep.cptr(), d],
                &[root],
                "Mutate, 4 words",
            ),
            (
                root,
                L::CNodeRotate,
                &[s, d, 0, ep.cptr(), d, 0, frame.cptr(), d],
                &[root],
                "Rotate, one root",
            ),
            (
                root,
                L::CNodeRotate,
                &[s, d, 0, ep.cptr(), d, 0, frame.cptr()],
                &[root, root],
                "Rotate, 7 words",
            ),
            (
                ut.cptr(),
                L::UntypedRetype,
                &[ObjectType::Endpoint as u64, 0, 0, 0, s, 1],
                &[],
                "Retype, no root",
            ),
            (tcb, L::TcbReadRegisters, &[0], &[], "ReadRegisters, 1 word"),
            (
                tcb,
                L::TcbWriteRegisters,
                &[0],
                &[],
                "WriteRegisters, 1 word",
            ),
            (
                tcb,
                L::TcbConfigure,
                &[0, 0, 0],
                &[root, init::VSPACE.cptr(), frame.cptr()],
                "Configure, 3 words",
            ),
            (
                tcb,
                L::TcbConfigure,
                &[0, 0, 0, 0],
                &[root, init::VSPACE.cptr()],
                "Configure, 2 capabilities",
            ),
            (
                tcb,
                L::TcbSetSpace,
                &[0, 0],
                &[root, init::VSPACE.cptr()],
                "SetSpace, 2 words",
            ),
            (
                tcb,
                L::TcbSetIpcBuffer,
                &[],
                &[frame.cptr()],
                "SetIPCBuffer, no word",
            ),
            (tcb, L::TcbSetPriority, &[], &[tcb], "SetPriority, no word"),
            (
                tcb,
                L::TcbSetMcPriority,
                &[],
                &[tcb],
                "SetMCPriority, no word",
            ),
            (
                tcb,
                L::TcbSetSchedParams,
                &[0],
                &[tcb],
                "SetSchedParams, 1 word",
            ),
            (tcb, L::TcbSetAffinity, &[], &[], "SetAffinity, no word"),
            (tcb, L::TcbSetTlsBase, &[], &[], "SetTLSBase, no word"),
            (tcb, L::TcbSetGsBase, &[], &[], "SetGSBase, no word"),
            (tcb, L::TcbSetRseq, &[], &[], "SetRseq, no word"),
            (tcb, L::TcbSetFlags, &[0], &[], "SetFlags, 1 word"),
            (
                frame.cptr(),
                L::X86PageMap,
                &[0x1000, 3],
                &[init::VSPACE.cptr()],
                "frame Map, 2 words",
            ),
            (
                frame.cptr(),
                L::X86PageMap,
                &[0x1000, 3, 0],
                &[],
                "frame Map, no VSpace",
            ),
            (
                pt.cptr(),
                L::X86PageTableMap,
                &[0],
                &[init::VSPACE.cptr()],
                "page table Map, 1 word",
            ),
            (
                pt.cptr(),
                L::X86PageTableMap,
                &[0, 0],
                &[],
                "page table Map, no VSpace",
            ),
            (
                init::IRQ_CONTROL.cptr(),
                L::X86IrqIssueIrqHandlerIoApic,
                &[s, d, 0, 20, 0, 0],
                &[root],
                "GetIOAPIC, 6 words",
            ),
            (
                init::IRQ_CONTROL.cptr(),
                L::X86IrqIssueIrqHandlerMsi,
                &[s, d, 0, 0, 0, 0, 104],
                &[],
                "GetMSI, no root",
            ),
            (
                init::IO_PORT_CONTROL.cptr(),
                L::X86IoPortControlIssue,
                &[0xc030, 0xc031, s],
                &[root],
                "Issue, 3 words",
            ),
            (
                init::IO_PORT_CONTROL.cptr(),
                L::X86IoPortControlIssue,
                &[0xc030, 0xc031, s, d],
                &[],
                "Issue, no root",
            ),
            (port, L::X86IoPortIn8, &[], &[], "In8, no word"),
            (port, L::X86IoPortOut8, &[0xc020], &[], "Out8, 1 word"),
            (
                ldt.cptr(),
                L::X86LdtSetEntries,
                &[0],
                &[],
                "LDT SetEntries, 1 word",
            ),
            (
                ldt.cptr(),
                L::X86LdtSetEntries,
                &[0, 2, 0],
                &[],
                "LDT SetEntries, 1 of 2 descriptors",
            ),
            (
                init::FS_GS_BASE_CONTROL.cptr(),
                L::FsGsBaseControlSetAccess,
                &[],
                &[tcb],
                "SetAccess, no word",
            ),
        ];
        for &(cptr, label, words, caps, what) in cases {
            expect_err(
                call(cptr, label, words, caps),
                Error::TruncatedMessage,
                what,
            )?;
        }
        ensure!(
            env.is_empty(s),
            "a short message filled the destination slot"
        );
        ensure!(
            env.has_tag(ep.cptr(), cap_tag::ENDPOINT),
            "a short message moved the endpoint"
        );
        Ok(())
    })();
    let destroyed = env.destroy(t);
    let cleanup = free(
        env,
        &[
            s,
            port,
            ep.cptr(),
            ldt.cptr(),
            pt.cptr(),
            frame.cptr(),
            ut.cptr(),
        ],
    );
    result.and(destroyed).and(cleanup)
}

fn full_asid_pool(env: &mut Env) -> TestResult {
    // Up to 512 PML4s (one more than a pool has ASIDs) from one 2 MiB untyped, each
    // moved once assigned into a 512-slot CNode (the root CNode has too few free slots).
    let ut = env.alloc.untyped(21).or_fail("2 MiB untyped")?;
    let cn = env.alloc.cnode(9).or_fail("512-slot cnode")?;
    let s = env.slot()?;
    let result = (|| {
        let mut assigned = 0;
        loop {
            ut.retype(ObjectType::X64Pml4, 0, init::CNODE, 0, 0, s, 1)
                .or_fail("PML4")?;
            match init::ASID_POOL.assign(Cap::from_cptr(s)) {
                Ok(()) => {}
                Err(Error::DeleteFirst) => break,
                Err(e) => fail!("assign {}: {e}", assigned + 1),
            }
            cn.move_(assigned, 9, init::CNODE, s, DEPTH)
                .or_fail("move the PML4 away")?;
            assigned += 1;
            ensure!(
                assigned < 512,
                "512 ASIDs assigned from one pool (it has 511 to give)"
            );
        }
        ensure!(assigned >= 1, "no ASID was free in the root task's pool");
        // The refused PML4 got no ASID: it takes one once one is free.
        cn.delete(assigned - 1, 9)
            .or_fail("delete an assigned PML4")?;
        init::ASID_POOL
            .assign(Cap::from_cptr(s))
            .or_fail("assign the refused PML4 after one ASID was freed")?;
        Ok(())
    })();
    let cleanup = free(env, &[s, cn.cptr(), ut.cptr()]);
    result.and(cleanup)
}

fn irq_set_notification_checks(env: &mut Env) -> TestResult {
    let h = env.slot()?;
    let n = env.notification()?;
    let ep = env.endpoint()?;
    let read_only = env.mint(n, CapRights::READ, 0)?;
    let result = (|| {
        init::IRQ_CONTROL
            .get_msi(init::CNODE, h, DEPTH, 0, 0, 0, 0, 106)
            .or_fail("MSI handler at vector 106")?;
        let handler = Cap::<keel_sys::cap::IrqHandler>::from_cptr(h);
        expect_err(
            invoke(h, L::IrqSetIrqHandler, &Args::new()),
            Error::TruncatedMessage,
            "SetNotification without a capability",
        )?;
        expect_err(
            handler.set_notification(ep.cast()),
            Error::InvalidCapability { index: 0 },
            "SetNotification with an endpoint",
        )?;
        expect_err(
            handler.set_notification(read_only),
            Error::InvalidCapability { index: 0 },
            "SetNotification with a notification without write",
        )?;
        handler.set_notification(n).or_fail("SetNotification")
    })();
    let cleanup = free(env, &[h, read_only.cptr(), n.cptr(), ep.cptr()]);
    result.and(cleanup)
}

fn ioport_issue_low_bits(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    let s2 = env.slot()?;
    let result = (|| {
        let mut args = Args::new();
        for w in [0xc050, 0x1_0000, s, DEPTH as u64] {
            args.word(w);
        }
        expect_err(
            invoke(
                init::IO_PORT_CONTROL.cptr(),
                L::X86IoPortControlIssue,
                &args,
            ),
            Error::TruncatedMessage,
            "Issue with last port 0x1_0000 and no root",
        )?;
        // 0x1_0000 is port 0, below the first.
        expect_err(
            init::IO_PORT_CONTROL.issue(0xc050, 0x1_0000, init::CNODE, s, DEPTH),
            Error::InvalidArgument { index: 1 },
            "last port 0x1_0000",
        )?;
        ensure!(env.is_empty(s), "a capability was made");
        init::IO_PORT_CONTROL
            .issue(0x1_c050, 0xffff_ffff_ffff_c051, init::CNODE, s, DEPTH)
            .or_fail("ports 0x1_c050 to 0xffff_ffff_ffff_c051 (0xc050 to 0xc051)")?;
        ensure!(
            env.has_tag(s, cap_tag::IO_PORT),
            "not an I/O port capability"
        );
        expect_err(
            init::IO_PORT_CONTROL.issue(0xc051, 0xc051, init::CNODE, s2, DEPTH),
            Error::RevokeFirst,
            "port 0xc051 again",
        )?;
        ensure!(env.is_empty(s2), "a capability was made");
        Ok(())
    })();
    let cleanup = free(env, &[s, s2]);
    result.and(cleanup)
}

fn irq_route_checks(env: &mut Env) -> TestResult {
    let active = env.slot()?;
    let s = env.slot()?;
    let full = env.endpoint()?;
    let result = (|| {
        let io_apic = |slot: u64, ioapic, pin, level, polarity, vector| {
            init::IRQ_CONTROL.get_ioapic(
                init::CNODE,
                slot,
                DEPTH,
                ioapic,
                pin,
                level,
                polarity,
                vector,
            )
        };
        let msi = |slot: u64, bus, dev, func, vector| {
            init::IRQ_CONTROL.get_msi(init::CNODE, slot, DEPTH, bus, dev, func, 0, vector)
        };
        get_msi(active, 106).or_fail("MSI handler at vector 106")?;
        // Bad I/O APIC, pin, level and polarity: the IRQ in use and the full slot
        // come first.
        expect_err(
            io_apic(s, 99, 99, 2, 2, 106),
            Error::RevokeFirst,
            "GetIOAPIC on a vector in use, every route argument bad",
        )?;
        expect_err(
            io_apic(full.cptr(), 99, 99, 2, 2, 107),
            Error::DeleteFirst,
            "GetIOAPIC into a full slot, every route argument bad",
        )?;
        expect_err(
            msi(full.cptr(), 256, 32, 8, 107),
            Error::DeleteFirst,
            "GetMSI into a full slot, every PCI argument bad",
        )?;
        ensure!(
            env.has_tag(full.cptr(), cap_tag::ENDPOINT),
            "the full slot changed"
        );
        // Level and polarity are 0 or 1 (after the I/O APIC and pin).
        expect_err(
            io_apic(s, 0, 24, 2, 2, 107),
            Error::RangeError { min: 0, max: 23 },
            "pin 24 and level 2",
        )?;
        expect_err(
            io_apic(s, 0, 23, 2, 0, 107),
            Error::RangeError { min: 0, max: 1 },
            "level 2",
        )?;
        expect_err(
            io_apic(s, 0, 23, 0, 2, 107),
            Error::RangeError { min: 0, max: 1 },
            "polarity 2",
        )?;
        for (bus, dev, func, max, what) in [
            (256, 32, 8, 255, "PCI bus 256"),
            (255, 32, 8, 31, "PCI device 32"),
            (255, 31, 8, 7, "PCI function 8"),
        ] {
            expect_err(
                msi(s, bus, dev, func, 107),
                Error::RangeError { min: 0, max },
                what,
            )?;
        }
        ensure!(env.is_empty(s), "a handler was made");
        msi(s, 255, 31, 7, 107).or_fail("GetMSI at the last PCI bus, device and function")
    })();
    let cleanup = free(env, &[active, s, full.cptr()]);
    result.and(cleanup)
}

fn breakpoint_sel4_checks(env: &mut Env) -> TestResult {
    let t = env.create(idle, 0, CHILD_PRIORITY)?;
    let result = (|| {
        let set = |slot: u64, vaddr: u64, kind: u64, size: u64, rw: u64| {
            call(
                t.tcb.cptr(),
                L::TcbSetBreakpoint,
                &[slot, vaddr, kind, size, rw],
                &[],
            )
        };
        let get = |slot: u64| call(t.tcb.cptr(), L::TcbGetBreakpoint, &[slot], &[]);
        let data = BreakpointType::Data as u64;
        let instruction = BreakpointType::Instruction as u64;
        let address = crate::harness::SHARED.as_ptr() as u64;
        const READ: u64 = 0;
        const WRITE: u64 = 1;
        for (slot, vaddr, kind, size, rw, expected, what) in [
            (
                0,
                0xffff_8000_0000_0000,
                data,
                4,
                WRITE,
                Error::InvalidArgument { index: 1 },
                "a kernel address",
            ),
            (
                4,
                address,
                data,
                4,
                WRITE,
                Error::RangeError { min: 0, max: 3 },
                "slot 4",
            ),
            (
                0,
                address,
                BreakpointType::SingleStep as u64,
                4,
                WRITE,
                Error::InvalidArgument { index: 2 },
                "type 2",
            ),
            (
                0,
                address,
                data,
                3,
                WRITE,
                Error::InvalidArgument { index: 3 },
                "size 3",
            ),
            (
                9,
                0x7fff_ffff_ffff,
                data,
                1,
                WRITE,
                Error::InvalidArgument { index: 1 },
                "address 2^47 - 1",
            ),
            (
                0,
                address,
                data,
                4,
                3,
                Error::InvalidArgument { index: 3 },
                "access 3",
            ),
            (
                0,
                address,
                instruction,
                1,
                READ,
                Error::InvalidArgument { index: 3 },
                "an instruction breakpoint of size 1",
            ),
            (
                0,
                address + 2,
                data,
                4,
                WRITE,
                Error::AlignmentError,
                "a misaligned watchpoint",
            ),
            (
                4,
                address + 2,
                data,
                4,
                WRITE,
                Error::AlignmentError,
                "a misaligned watchpoint in slot 4",
            ),
        ] {
            expect_err(set(slot, vaddr, kind, size, rw), expected, what)?;
        }
        let r = get(0).or_fail("GetBreakpoint")?;
        ensure!(r.mr(4) == 0, "slot 0 was enabled by a refused call");
        // x86 has no read-only watchpoint: "read" watches reads and writes.
        set(0, address, data, 4, READ).or_fail("a data breakpoint on reads")?;
        let r = get(0).or_fail("GetBreakpoint")?;
        ensure!(
            (r.mr(0), r.mr(1), r.mr(2), r.mr(3), r.mr(4)) == (address, data, 4, 2, 1),
            "GetBreakpoint: {:#x} {} {} {} {}, expected a read-write watchpoint",
            r.mr(0),
            r.mr(1),
            r.mr(2),
            r.mr(3),
            r.mr(4)
        );
        call(t.tcb.cptr(), L::TcbUnsetBreakpoint, &[0], &[]).or_fail("UnsetBreakpoint")?;
        Ok(())
    })();
    let destroyed = env.destroy(t);
    result.and(destroyed)
}

fn tables_near_user_top(env: &mut Env) -> TestResult {
    use keel_abi::object::USER_TOP; // 0x7fff_ffff_f000
    let pml4 = env.alloc.create::<Pml4>().or_fail("pml4")?;
    let pdpt = env.alloc.create::<Pdpt>().or_fail("pdpt")?;
    let pd = env
        .alloc
        .create::<PageDirectory>()
        .or_fail("page directory")?;
    let pt = env.alloc.create::<PageTable>().or_fail("page table")?;
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let other = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let result = (|| {
        init::ASID_POOL.assign(pml4).or_fail("assign")?;
        let attr = VmAttributes::DEFAULT;
        // Addresses above USER_TOP but below 2^47 round down into the last region.
        pdpt.map(pml4, USER_TOP + 0x800, attr)
            .or_fail("PDPT at USER_TOP + 0x800")?;
        pd.map(pml4, USER_TOP + 0xfff, attr)
            .or_fail("page directory at 2^47 - 1")?;
        pt.map(pml4, USER_TOP, attr)
            .or_fail("page table at USER_TOP")?;
        // A mapped table without a VSpace: TruncatedMessage before "already mapped".
        expect_err(
            call(pt.cptr(), L::X86PageTableMap, &[USER_TOP, 0], &[]),
            Error::TruncatedMessage,
            "mapped page table, no VSpace",
        )?;
        // Frames: the range before the alignment.
        let rw = CapRights::READ_WRITE;
        expect_err(
            other.map(pml4, USER_TOP + 0x10, rw, attr),
            Error::InvalidArgument { index: 0 },
            "a misaligned frame above USER_TOP",
        )?;
        expect_err(
            other.map(pml4, USER_TOP - 0xfff, rw, attr),
            Error::AlignmentError,
            "a misaligned frame ending below 2^47",
        )?;
        expect_err(
            other.map(pml4, USER_TOP, rw, attr),
            Error::InvalidArgument { index: 0 },
            "a frame at USER_TOP",
        )?;
        frame
            .map(pml4, USER_TOP - 0x1000, rw, attr)
            .or_fail("the last page")?;
        // The mapped frame in another address space: InvalidCapability 1.
        expect_err(
            frame.map(init::VSPACE, USER_TOP - 0x1000, rw, attr),
            Error::InvalidCapability { index: 1 },
            "the mapped frame into another address space",
        )?;
        Ok(())
    })();
    let cleanup = free(
        env,
        &[
            frame.cptr(),
            other.cptr(),
            pt.cptr(),
            pd.cptr(),
            pdpt.cptr(),
            pml4.cptr(),
        ],
    );
    result.and(cleanup)
}

/// Deletes an ASID pool an earlier test left behind (found in the root CNode's empty
/// region), so that a new one can be made.
fn free_a_leftover_pool(env: &mut Env) -> TestResult {
    let empty = env.info.empty();
    let Some(s) =
        (empty.start..empty.end).find(|&s| keel_sys::debug_cap_identify(s) == cap_tag::ASID_POOL)
    else {
        fail!("every ASID pool is in use and none of them is in the root CNode's empty region");
    };
    init::CNODE
        .delete(s, DEPTH)
        .or_fail("delete a leftover ASID pool")
}

fn stale_asid(env: &mut Env) -> TestResult {
    use keel_sys::cap::{AsidPool, Untyped};
    // Every free ASID pool is made (earlier tests leave pools), kept to be deleted.
    let mut made: alloc::vec::Vec<(Cap<Untyped>, u64)> = alloc::vec::Vec::new();
    let big = env.alloc.untyped(13).or_fail("8 KiB untyped")?;
    let spare = env.slot()?;
    let result = (|| {
        loop {
            let ut = env.alloc.untyped(12).or_fail("4 KiB untyped")?;
            let s = env.slot()?;
            match init::ASID_CONTROL.make_pool(ut, init::CNODE, s, DEPTH) {
                Ok(()) => made.push((ut, s)),
                Err(Error::DeleteFirst) => {
                    free(env, &[s, ut.cptr()])?;
                    break;
                }
                Err(e) => fail!("MakePool {}: {e}", made.len() + 1),
            }
            ensure!(made.len() <= 8, "more than eight ASID pools");
        }
        // seL4 looks for a free pool before it looks at the untyped.
        expect_err(
            init::ASID_CONTROL.make_pool(big, init::CNODE, spare, DEPTH),
            Error::DeleteFirst,
            "MakePool from an 8 KiB untyped with every pool in use",
        )?;
        ensure!(env.is_empty(spare), "a pool was made");
        // One pool of this test's own: the last one made, else a new one where a
        // leftover was.
        let (ut, pool_slot) = match made.pop() {
            Some(p) => p,
            None => {
                free_a_leftover_pool(env)?;
                let ut = env.alloc.untyped(12).or_fail("4 KiB untyped")?;
                let s = env.slot()?;
                init::ASID_CONTROL
                    .make_pool(ut, init::CNODE, s, DEPTH)
                    .or_fail("MakePool after a leftover pool was deleted")?;
                (ut, s)
            }
        };
        let pool = Cap::<AsidPool>::from_cptr(pool_slot);
        let stale = env.alloc.create::<Pml4>().or_fail("pml4")?;
        let fresh = env.alloc.create::<Pml4>().or_fail("pml4")?;
        let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
        let pt = env.alloc.create::<PageTable>().or_fail("page table")?;
        let inner = (|| {
            pool.assign(stale).or_fail("assign")?;
            init::CNODE
                .delete(pool_slot, DEPTH)
                .or_fail("delete the pool")?;
            let rw = CapRights::READ_WRITE;
            let attr = VmAttributes::DEFAULT;
            let lookup = Error::FailedLookup {
                source: false,
                lookup: Lookup::InvalidRoot,
            };
            expect_err(
                frame.map(stale, 0x40_0000, rw, attr),
                lookup,
                "frame into a PML4 whose pool is gone",
            )?;
            expect_err(
                frame.map(stale, 0x40_0001, rw, attr),
                lookup,
                "misaligned frame into a PML4 whose pool is gone (the ASID first)",
            )?;
            expect_err(
                frame.map(stale, keel_abi::object::USER_TOP, rw, attr),
                Error::InvalidArgument { index: 0 },
                "frame at USER_TOP into a PML4 whose pool is gone (the range first)",
            )?;
            expect_err(
                pt.map(stale, 0x40_0000, attr),
                lookup,
                "page table into a PML4 whose pool is gone",
            )?;
            // The pool again, its first ASID now another PML4's.
            init::ASID_CONTROL
                .make_pool(ut, init::CNODE, pool_slot, DEPTH)
                .or_fail("MakePool again")?;
            pool.assign(fresh).or_fail("assign another PML4")?;
            expect_err(
                frame.map(stale, 0x40_0000, rw, attr),
                Error::InvalidCapability { index: 1 },
                "frame into a PML4 whose ASID is another's",
            )?;
            expect_err(
                pt.map(stale, 0x40_0000, attr),
                Error::InvalidCapability { index: 1 },
                "page table into a PML4 whose ASID is another's",
            )
        })();
        let cleanup = free(
            env,
            &[
                frame.cptr(),
                pt.cptr(),
                stale.cptr(),
                fresh.cptr(),
                pool_slot,
                ut.cptr(),
            ],
        );
        inner.and(cleanup)
    })();
    let mut slots = alloc::vec![spare, big.cptr()];
    for (ut, s) in made {
        slots.push(s);
        slots.push(ut.cptr());
    }
    let cleanup = free(env, &slots);
    result.and(cleanup)
}
