//! CNode invocations: copy, mint (badges, rights), move, mutate (guards), rotate,
//! delete, revoke; lookups with bad depths and guards; wrong capability types; full
//! and empty slots.

use keel_abi::error::{Error as Code, LookupFailure};
use keel_abi::invocation::InvocationLabel;
use keel_abi::object::{CNodeCapData, ObjectType, cap_tag};
use keel_sys::cap::{CNode, Cap, Frame, Untyped, init};
use keel_sys::error::Lookup;
use keel_sys::invocations::{Args, invoke};
use keel_sys::{CapRights, Error};

use crate::harness::{DEPTH, Env, OrFail, Suite, TestResult, expect_code, expect_err};
use crate::{ensure, fail};

/// Runs the CSpace tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("debug_cap_identify_reports_types", || identify(env));
    suite.run("cnode_copy_then_delete", || copy_then_delete(env));
    suite.run("cnode_copy_into_full_slot_is_delete_first", || {
        copy_full(env)
    });
    suite.run("cnode_copy_from_empty_slot_fails_lookup", || {
        copy_empty(env)
    });
    suite.run("cnode_mint_badge_reaches_signal", || mint_badge(env));
    suite.run("cnode_mint_rebadge_is_illegal", || mint_rebadge(env));
    suite.run("cnode_move_empties_source", || move_cap(env));
    suite.run("cnode_mutate_sets_guard", || mutate_guard(env));
    suite.run("cnode_rotate_moves_two_caps", || rotate(env));
    suite.run("cnode_rotate_swap_same_slot", || rotate_swap(env));
    suite.run("cnode_revoke_deletes_children", || revoke(env));
    suite.run("cnode_delete_empty_slot_succeeds", || delete_empty(env));
    suite.run("cnode_lookup_depth_out_of_range", || depth_range(env));
    suite.run("cnode_lookup_depth_mismatch", || depth_mismatch(env));
    suite.run("cnode_lookup_guard_mismatch", || guard_mismatch(env));
    suite.run("cnode_src_root_not_a_cnode_is_invalid_root", || {
        invalid_root(env)
    });
    suite.run("cnode_wrong_label_is_illegal_operation", || {
        wrong_label(env)
    });
    suite.run("cnode_copy_of_frame_masks_rights", || frame_rights(env));
}

fn identify(env: &mut Env) -> TestResult {
    if !env.identify {
        fail!("seL4_DebugCapIdentify is an unknown system call (seL4 debug builds answer it)");
    }
    let checks = [
        (init::TCB.cptr(), cap_tag::THREAD),
        (init::CNODE.cptr(), cap_tag::CNODE),
        (init::VSPACE.cptr(), cap_tag::PML4),
        (init::IRQ_CONTROL.cptr(), cap_tag::IRQ_CONTROL),
        (init::ASID_CONTROL.cptr(), cap_tag::ASID_CONTROL),
        (init::ASID_POOL.cptr(), cap_tag::ASID_POOL),
        (init::IO_PORT_CONTROL.cptr(), cap_tag::IO_PORT_CONTROL),
        (init::BOOT_INFO_FRAME.cptr(), cap_tag::FRAME),
        (init::IPC_BUFFER.cptr(), cap_tag::FRAME),
        (init::NULL.cptr(), cap_tag::NULL),
    ];
    for (slot, tag) in checks {
        let got = keel_sys::debug_cap_identify(slot);
        ensure!(got == tag, "initial slot {slot}: tag {got}, expected {tag}");
    }
    let empty = env.info.empty();
    ensure!(
        empty.start >= keel_abi::bootinfo::cap::KEEL_NUM_INITIAL_CAPS,
        "empty region starts at {}",
        empty.start
    );
    Ok(())
}

fn copy_then_delete(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let s = env.slot()?;
    init::CNODE
        .copy(s, DEPTH, init::CNODE, ep.cptr(), DEPTH, CapRights::ALL)
        .or_fail("copy")?;
    ensure!(env.has_tag(s, cap_tag::ENDPOINT), "copy is not an endpoint");
    init::CNODE.delete(s, DEPTH).or_fail("delete")?;
    ensure!(env.is_empty(s), "slot not empty after delete");
    ensure!(env.has_tag(ep.cptr(), cap_tag::ENDPOINT), "original gone");
    Ok(())
}

fn copy_full(env: &mut Env) -> TestResult {
    let a = env.endpoint()?;
    let b = env.notification()?;
    expect_err(
        init::CNODE.copy(
            b.cptr(),
            DEPTH,
            init::CNODE,
            a.cptr(),
            DEPTH,
            CapRights::ALL,
        ),
        Error::DeleteFirst,
        "copy onto a full slot",
    )?;
    ensure!(
        env.has_tag(b.cptr(), cap_tag::NOTIFICATION),
        "destination changed"
    );
    Ok(())
}

fn copy_empty(env: &mut Env) -> TestResult {
    let src = env.slot()?;
    let dst = env.slot()?;
    match init::CNODE.copy(dst, DEPTH, init::CNODE, src, DEPTH, CapRights::ALL) {
        Err(Error::FailedLookup {
            source: true,
            lookup,
        }) => {
            ensure!(
                lookup.kind() == Some(LookupFailure::MissingCapability),
                "lookup failure {lookup:?}, expected MissingCapability"
            );
        }
        other => fail!("copy from an empty slot: {other:?}"),
    }
    ensure!(env.is_empty(dst), "destination filled");
    Ok(())
}

fn mint_badge(env: &mut Env) -> TestResult {
    let n = env.notification()?;
    let b1 = env.mint(n, CapRights::ALL, 0x11)?;
    let b2 = env.mint(n, CapRights::ALL, 0x100)?;
    b1.signal();
    b2.signal();
    let bits = n.poll();
    ensure!(
        bits == 0x111,
        "poll returned {bits:#x}, expected 0x111 (badges OR-ed)"
    );
    ensure!(n.poll() == 0, "second poll not 0");
    Ok(())
}

fn mint_rebadge(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let badged = env.mint(ep, CapRights::ALL, 5)?;
    let s = env.slot()?;
    expect_err(
        init::CNODE.mint(
            s,
            DEPTH,
            init::CNODE,
            badged.cptr(),
            DEPTH,
            CapRights::ALL,
            6,
        ),
        Error::IllegalOperation,
        "minting a badged endpoint again",
    )
}

fn move_cap(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let d = env.slot()?;
    init::CNODE
        .move_(d, DEPTH, init::CNODE, ep.cptr(), DEPTH)
        .or_fail("move")?;
    ensure!(env.is_empty(ep.cptr()), "source not empty after move");
    ensure!(
        env.has_tag(d, cap_tag::ENDPOINT),
        "destination not an endpoint"
    );
    // Moving from the now empty slot fails.
    let d2 = env.slot()?;
    expect_code(
        init::CNODE.move_(d2, DEPTH, init::CNODE, ep.cptr(), DEPTH),
        Code::FailedLookup,
        "move from an empty slot",
    )
}

fn mutate_guard(env: &mut Env) -> TestResult {
    // A 16-slot CNode: unguarded, it resolves 4 bits; with a 60-bit guard, a full word.
    let cn = env.alloc.cnode(4).or_fail("retype cnode")?;
    let ep = env.endpoint()?;
    cn.copy(3, 4, init::CNODE, ep.cptr(), DEPTH, CapRights::ALL)
        .or_fail("copy into the new cnode")?;
    let s = env.slot()?;
    // Unguarded: depth 64 is a mismatch.
    expect_code(
        init::CNODE.copy(s, DEPTH, cn, 3, DEPTH, CapRights::ALL),
        Code::FailedLookup,
        "64-bit lookup in an unguarded 4-bit cnode",
    )?;
    let guarded = Cap::<CNode>::from_cptr(env.slot()?);
    init::CNODE
        .mutate(
            guarded.cptr(),
            DEPTH,
            init::CNODE,
            cn.cptr(),
            DEPTH,
            CNodeCapData::new(0, 60).0,
        )
        .or_fail("mutate with guard")?;
    ensure!(env.is_empty(cn.cptr()), "mutate left the source");
    init::CNODE
        .copy(s, DEPTH, guarded, 3, DEPTH, CapRights::ALL)
        .or_fail("64-bit lookup through the guarded cnode")?;
    ensure!(env.has_tag(s, cap_tag::ENDPOINT), "wrong cap found");
    Ok(())
}

fn frames(env: &mut Env, n: usize) -> Result<[Cap<Frame>; 3], crate::harness::Why> {
    let mut out = [Cap::from_cptr(0); 3];
    for f in out.iter_mut().take(n) {
        *f = env
            .alloc
            .frame(ObjectType::X86Page4K)
            .or_fail("retype frame")?;
    }
    Ok(out)
}

fn rotate(env: &mut Env) -> TestResult {
    let [a, b, _] = frames(env, 2)?;
    let (pa, pb) = (
        a.get_address().or_fail("address a")?,
        b.get_address().or_fail("address b")?,
    );
    ensure!(pa != pb, "two frames at one address");
    let dest = env.slot()?;
    // pivot (b) → dest, src (a) → pivot.
    init::CNODE
        .rotate(
            dest,
            DEPTH,
            0,
            init::CNODE,
            b.cptr(),
            DEPTH,
            0,
            init::CNODE,
            a.cptr(),
            DEPTH,
        )
        .or_fail("rotate")?;
    ensure!(env.is_empty(a.cptr()), "source not empty");
    let at = |s: u64| Cap::<Frame>::from_cptr(s).get_address();
    ensure!(at(dest) == Ok(pb), "dest does not hold the pivot's frame");
    ensure!(
        at(b.cptr()) == Ok(pa),
        "pivot does not hold the source's frame"
    );
    // Full destination.
    let [c, _, _] = frames(env, 1)?;
    expect_err(
        init::CNODE.rotate(
            c.cptr(),
            DEPTH,
            0,
            init::CNODE,
            b.cptr(),
            DEPTH,
            0,
            init::CNODE,
            dest,
            DEPTH,
        ),
        Error::DeleteFirst,
        "rotate onto a full slot",
    )
}

fn rotate_swap(env: &mut Env) -> TestResult {
    let [a, b, _] = frames(env, 2)?;
    let (pa, pb) = (a.get_address().or_fail("a")?, b.get_address().or_fail("b")?);
    init::CNODE
        .rotate(
            a.cptr(),
            DEPTH,
            0,
            init::CNODE,
            b.cptr(),
            DEPTH,
            0,
            init::CNODE,
            a.cptr(),
            DEPTH,
        )
        .or_fail("rotate with dest = src")?;
    ensure!(
        a.get_address() == Ok(pb) && b.get_address() == Ok(pa),
        "not swapped"
    );
    Ok(())
}

fn revoke(env: &mut Env) -> TestResult {
    let ep = env.endpoint()?;
    let c1 = env.mint(ep, CapRights::ALL, 1)?;
    let c2 = env.mint(ep, CapRights::ALL, 2)?;
    let grandchild = env.slot()?;
    init::CNODE
        .copy(
            grandchild,
            DEPTH,
            init::CNODE,
            c1.cptr(),
            DEPTH,
            CapRights::ALL,
        )
        .or_fail("copy of child")?;
    init::CNODE.revoke(ep.cptr(), DEPTH).or_fail("revoke")?;
    ensure!(
        env.is_empty(c1.cptr()) && env.is_empty(c2.cptr()),
        "children survived"
    );
    ensure!(env.is_empty(grandchild), "grandchild survived");
    ensure!(
        env.has_tag(ep.cptr(), cap_tag::ENDPOINT),
        "revoked cap itself deleted"
    );
    Ok(())
}

fn delete_empty(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    init::CNODE
        .delete(s, DEPTH)
        .or_fail("delete of an empty slot")?;
    init::CNODE
        .revoke(s, DEPTH)
        .or_fail("revoke of an empty slot")
}

fn depth_range(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    let ep = env.endpoint()?;
    expect_err(
        init::CNODE.copy(s, 0, init::CNODE, ep.cptr(), DEPTH, CapRights::ALL),
        Error::RangeError { min: 1, max: 64 },
        "destination depth 0",
    )?;
    expect_err(
        init::CNODE.copy(s, DEPTH, init::CNODE, ep.cptr(), 65, CapRights::ALL),
        Error::RangeError { min: 1, max: 64 },
        "source depth 65",
    )
}

fn depth_mismatch(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    let ep = env.endpoint()?;
    // The root's 52-bit guard does not fit in 32 bits: a guard mismatch (seL4 checks
    // the guard before the level's size).
    match init::CNODE.copy(s, DEPTH, init::CNODE, ep.cptr(), 32, CapRights::ALL) {
        Err(Error::FailedLookup {
            source: true,
            lookup:
                Lookup::GuardMismatch {
                    bits_left: 32,
                    guard_size,
                    ..
                },
        }) if guard_size == 64 - env.info.cnode_size_bits() => {}
        other => fail!("32-bit lookup in the root: {other:?}"),
    }
    // An unguarded 4-bit CNode looked up with 2 bits: a depth mismatch.
    let cn = env.alloc.cnode(4).or_fail("retype cnode")?;
    match init::CNODE.copy(s, DEPTH, cn, 0, 2, CapRights::ALL) {
        Err(Error::FailedLookup {
            source: true,
            lookup:
                Lookup::DepthMismatch {
                    bits_left,
                    bits_found,
                },
        }) => {
            ensure!(
                bits_left == 2 && bits_found == 4,
                "bits left {bits_left}, found {bits_found}"
            );
            Ok(())
        }
        other => fail!("2-bit lookup in a 4-bit cnode: {other:?}"),
    }
}

fn guard_mismatch(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    let ep = env.endpoint()?;
    let bits = env.info.cnode_size_bits();
    match init::CNODE.copy(
        s,
        DEPTH,
        init::CNODE,
        ep.cptr() | 1 << 40,
        DEPTH,
        CapRights::ALL,
    ) {
        Err(Error::FailedLookup {
            source: true,
            lookup:
                Lookup::GuardMismatch {
                    bits_left,
                    guard_found,
                    guard_size,
                },
        }) => {
            ensure!(
                bits_left == 64 && guard_found == 0 && guard_size == 64 - bits,
                "bits left {bits_left}, guard {guard_found}, size {guard_size}"
            );
            Ok(())
        }
        other => fail!("cptr with guard bits set: {other:?}"),
    }
}

fn invalid_root(env: &mut Env) -> TestResult {
    let s = env.slot()?;
    let ep = env.endpoint()?;
    let not_cnode: Cap<CNode> = ep.cast();
    match init::CNODE.copy(s, DEPTH, not_cnode, 0, DEPTH, CapRights::ALL) {
        Err(Error::FailedLookup {
            source: true,
            lookup: Lookup::InvalidRoot,
        }) => Ok(()),
        other => fail!("source root is an endpoint: {other:?}"),
    }
}

fn wrong_label(env: &mut Env) -> TestResult {
    // The typed API cannot express this; the raw one can: an untyped invoked with a TCB
    // label, and a CNode invoked with Untyped Retype.
    let ut: Cap<Untyped> = env.alloc.untyped(12).or_fail("retype untyped")?;
    let args = Args::default();
    expect_err(
        invoke(ut.cptr(), InvocationLabel::TcbSuspend, &args),
        Error::IllegalOperation,
        "untyped invoked with TCBSuspend",
    )?;
    expect_err(
        invoke(init::CNODE.cptr(), InvocationLabel::UntypedRetype, &args),
        Error::IllegalOperation,
        "cnode invoked with UntypedRetype",
    )
}

fn frame_rights(env: &mut Env) -> TestResult {
    let f = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let ro = env.slot()?;
    init::CNODE
        .copy(ro, DEPTH, init::CNODE, f.cptr(), DEPTH, CapRights::READ)
        .or_fail("copy read-only")?;
    ensure!(env.has_tag(ro, cap_tag::FRAME), "copy is not a frame");
    let a = Cap::<Frame>::from_cptr(ro)
        .get_address()
        .or_fail("address of copy")?;
    ensure!(Ok(a) == f.get_address(), "copy names another frame");
    Ok(())
}
