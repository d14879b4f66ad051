//! Deriving, deleting and revoking capabilities, and the CNode invocations.
//!
//! Deletion finalises an object when its last capability goes: endpoints and
//! notifications wake their waiters (who restart their system calls), TCBs are
//! suspended, mapped frames and tables are unmapped, IRQ handlers are cleared. A CNode
//! or TCB that must be emptied first becomes a Zombie capability; emptying nested
//! CNodes is iterative (each Zombie records the slot of the Zombie it sits in), so a
//! hostile CSpace cannot exhaust the kernel stack.
//!
//! Long finalisations stop at preemption points and are continued by the redone
//! system call: emptying a CNode or TCB (its Zombie records the scan position),
//! restarting the waiters of an endpoint or notification (its last capability becomes
//! an endpoint or notification Zombie; the queue is the progress), and dropping the
//! address spaces of an ASID pool (the cleared pool entries are the progress).
//! Invariant: a Zombie is always its object's last capability, and nothing derives
//! from or invokes it; an endpoint or notification behind a Zombie gains no waiter.

use keel_abi::error::Error;

use crate::invocation::{Args, InvocationError};
use crate::kernel::{Hardware, Kernel};
use crate::object::cap::{Cap, Rights, VmRights, ZombieKind};
use crate::object::cspace;
use crate::object::endpoint::{Endpoint, Notification, Queue};
use crate::object::tcb::{self, Tcb, ThreadState};

/// The copy of `cap` (in `slot`) a derivation makes, or `None` if it may not be copied.
pub fn derive<H: Hardware>(k: &Kernel<H>, slot: u64, cap: Cap) -> Option<Cap> {
    match cap {
        // seL4 deriveCap: these are never copied.
        Cap::Null
        | Cap::Zombie { .. }
        | Cap::Reply { .. }
        | Cap::IrqControl
        | Cap::IoPortControl => None,
        Cap::Untyped { .. } if cspace::has_children(&k.hw, slot) => None,
        Cap::Frame {
            base,
            size,
            rights,
            device,
            ..
        } => Some(Cap::Frame {
            base,
            size,
            rights,
            device,
            mapping: None,
        }),
        other => Some(other),
    }
}

/// `cap` with its rights reduced to `mask`.
pub fn mask_rights(cap: Cap, mask: Rights) -> Cap {
    match cap {
        Cap::Endpoint { ptr, badge, rights } => Cap::Endpoint {
            ptr,
            badge,
            rights: rights.intersect(mask),
        },
        Cap::Notification { ptr, badge, rights } => Cap::Notification {
            ptr,
            badge,
            rights: rights.intersect(mask.intersect(Rights(3))),
        },
        Cap::Reply {
            tcb,
            master,
            can_grant,
        } => Cap::Reply {
            tcb,
            master,
            can_grant: can_grant && mask.contains(Rights::GRANT),
        },
        Cap::Frame {
            base,
            size,
            rights,
            device,
            mapping,
        } => {
            let rights = if mask.contains(Rights::WRITE)
                && rights == VmRights::ReadWrite
                && mask.contains(Rights::READ)
            {
                VmRights::ReadWrite
            } else {
                VmRights::ReadOnly
            };
            Cap::Frame {
                base,
                size,
                rights,
                device,
                mapping,
            }
        }
        other => other,
    }
}

/// `cap` with new badge / guard data; `None` if not allowed (seL4 updateCapData).
/// `mint`: for Mint, which may badge an unbadged endpoint or notification capability;
/// Mutate and Rotate (`mint` false) can never change badge data, so they refuse
/// endpoint and notification capabilities altogether.
pub fn update_data(cap: Cap, data: u64, mint: bool) -> Option<Cap> {
    match cap {
        Cap::Endpoint { ptr, badge, rights } => {
            if !mint || badge != 0 {
                return None;
            }
            Some(Cap::Endpoint {
                ptr,
                badge: data,
                rights,
            })
        }
        Cap::Notification { ptr, badge, rights } => {
            if !mint || badge != 0 {
                return None;
            }
            Some(Cap::Notification {
                ptr,
                badge: data,
                rights,
            })
        }
        Cap::CNode { ptr, radix, .. } => {
            let guard_size = (data & 63) as u8;
            let guard = (data >> 6) & ((1 << 58) - 1);
            if guard_size as u32 + radix as u32 > 64 {
                return None;
            }
            let guard = if guard_size >= 58 {
                guard
            } else {
                guard & ((1u64 << guard_size) - 1)
            };
            Some(Cap::CNode {
                ptr,
                radix,
                guard_size,
                guard,
            })
        }
        other => Some(other),
    }
}

/// Deleting a capability whose slot is being emptied (the work stack of [`Kernel::delete`]).
const DELETE_STACK: usize = 32;

/// Empty slots scanned while emptying a CNode that count as one unit of work between
/// preemption points.
const SCAN_UNIT: u64 = 64;

/// The scan position a Zombie records (0 for anything else).
fn zombie_scan(cap: Cap) -> u64 {
    match cap {
        Cap::Zombie { scan, .. } => scan,
        _ => 0,
    }
}

impl<H: Hardware> Kernel<H> {
    /// Deletes the capability in `slot`, finalising its object if it was the last one,
    /// with preemption points while a CNode or TCB is emptied: returns false if it
    /// stopped for a pending interrupt ([`Kernel::preempted`] is then set). The slot
    /// then holds a Zombie that records the progress, and deleting it again continues.
    pub fn delete(&mut self, slot: u64) -> bool {
        self.delete_with(slot, true)
    }

    fn delete_with(&mut self, slot: u64, preemptible: bool) -> bool {
        let cap = cspace::cap(&self.hw, slot);
        if cap.is_null() {
            return true;
        }
        if !cspace::is_final(&self.hw, slot) {
            self.unmap_if_frame(cap);
            cspace::remove(&mut self.hw, slot);
            return true;
        }
        match cap {
            Cap::CNode { .. } | Cap::Tcb { .. } => self.empty_and_delete(slot, preemptible),
            Cap::Zombie { kind, .. } if kind.has_slots() => {
                self.empty_and_delete(slot, preemptible)
            }
            _ => {
                if !self.finalise(slot, cap, preemptible) {
                    return false;
                }
                cspace::remove(&mut self.hw, slot);
                true
            }
        }
    }

    /// Deletes a capability without preemption points (used for reply and caller caps,
    /// which never need emptying, from paths that cannot be redone).
    pub fn delete_one(&mut self, slot: u64) {
        self.delete_with(slot, false);
    }

    /// Every frame capability stands for its own mapping: deleting one unmaps it even
    /// when other capabilities keep the frame alive (seL4 Arch_finaliseCap).
    fn unmap_if_frame(&mut self, cap: Cap) {
        if let Cap::Frame {
            mapping: Some(_), ..
        } = cap
        {
            self.finalise_vspace_object(cap);
        }
    }

    /// Turns the final CNode/TCB capability in `root` into a Zombie and empties it and
    /// everything it alone keeps alive, iteratively. With `preemptible`, stops at a
    /// preemption point when an interrupt is pending (returns false): every Zombie on
    /// the work stack then records its scan position, and each nested Zombie sits in a
    /// slot of the object containing it, so deleting `root` again finds the work where
    /// it stopped.
    fn empty_and_delete(&mut self, root: u64, preemptible: bool) -> bool {
        let mut stack = [(0u64, 0u64); DELETE_STACK]; // (zombie slot, next index to scan)
        let mut depth = 0;
        self.make_zombie(root);
        stack[0] = (root, zombie_scan(cspace::cap(&self.hw, root)));
        loop {
            let (zslot, start) = stack[depth];
            // Only CNode and TCB Zombies are ever on the stack.
            let (ptr, is_tcb, count) = match cspace::cap(&self.hw, zslot) {
                Cap::Zombie {
                    ptr,
                    kind: ZombieKind::CNode { radix },
                    ..
                } => (ptr, false, 1u64 << radix),
                Cap::Zombie {
                    ptr,
                    kind: ZombieKind::Tcb,
                    ..
                } => (ptr, true, tcb::TCB_SLOTS),
                _ => return true,
            };
            // The first full slot, skipping the zombie's own slot if the object holds
            // its own zombie (that one goes last, with the object). Every
            // `SCAN_UNIT` empty slots count as one unit of work.
            let mut i = start;
            let mut found = None;
            while i < count {
                let s = ptr + i * cspace::SLOT_BYTES;
                if s != zslot && !cspace::cap(&self.hw, s).is_null() {
                    found = Some(i);
                    break;
                }
                i += 1;
                if preemptible && i % SCAN_UNIT == 0 && i < count && self.preemption_point() {
                    stack[depth].1 = i;
                    self.save_delete_progress(&stack[..=depth]);
                    return false;
                }
            }
            let Some(i) = found else {
                // Empty: the object dies.
                if is_tcb {
                    self.hw.tcb_deleted(ptr);
                    self.hw.destroy::<Tcb>(tcb::record(ptr));
                }
                cspace::remove(&mut self.hw, zslot);
                if depth == 0 {
                    return true;
                }
                depth -= 1;
                if preemptible && self.preemption_point() {
                    self.save_delete_progress(&stack[..=depth]);
                    return false;
                }
                continue;
            };
            stack[depth].1 = i;
            let inner = ptr + i * cspace::SLOT_BYTES;
            let cap = cspace::cap(&self.hw, inner);
            let needs_emptying = matches!(cap, Cap::Zombie { kind, .. } if kind.has_slots())
                || (matches!(cap, Cap::CNode { .. } | Cap::Tcb { .. })
                    && cspace::is_final(&self.hw, inner));
            if !needs_emptying {
                if !self.finalise_if_final(inner, preemptible) {
                    // An endpoint or notification stopped while restarting its
                    // waiters: it is a Zombie in slot `i`, where the redone deletion
                    // resumes this level's scan.
                    self.save_delete_progress(&stack[..=depth]);
                    return false;
                }
                cspace::remove(&mut self.hw, inner);
                if preemptible && self.preemption_point() {
                    self.save_delete_progress(&stack[..=depth]);
                    return false;
                }
                continue;
            }
            if let Some(j) = stack[..depth].iter().position(|&(s, _)| s == inner) {
                // A cycle: this object holds the zombie of an object being emptied
                // further out, which (transitively) holds this one. Swap the two
                // zombies so that each object holds its own (skipped above).
                let zcap = cspace::cap(&self.hw, zslot);
                cspace::swap(&mut self.hw, zslot, cap, inner, zcap);
                stack[j].0 = zslot;
                stack[depth].0 = inner;
                continue;
            }
            if !matches!(cap, Cap::Zombie { .. }) {
                self.make_zombie(inner);
            }
            // A Zombie left by an earlier, preempted deletion resumes where it stopped.
            let resume = zombie_scan(cspace::cap(&self.hw, inner));
            if depth + 1 < DELETE_STACK {
                depth += 1;
                stack[depth] = (inner, resume);
            } else {
                // Too deep to remember: restart this level's scan from 0 later.
                stack[depth].1 = 0;
                let mut d = depth;
                while d > 0 {
                    stack[d] = stack[d - 1];
                    d -= 1;
                }
                stack[depth] = (inner, resume);
            }
        }
    }

    /// Records each work-stack level's scan position in its Zombie, for the redone
    /// deletion. (Levels dropped from a full stack keep an older, smaller position,
    /// which is still correct: slots below it stay empty.)
    fn save_delete_progress(&mut self, stack: &[(u64, u64)]) {
        for &(zslot, next) in stack {
            if let Cap::Zombie { ptr, kind, .. } = cspace::cap(&self.hw, zslot) {
                cspace::set_cap(
                    &mut self.hw,
                    zslot,
                    Cap::Zombie {
                        ptr,
                        kind,
                        scan: next,
                    },
                );
            }
        }
    }

    /// Finalises the object of the capability in `slot` if that is its last one (or
    /// just unmaps a frame capability): false if it stopped at a preemption point
    /// (see [`Kernel::finalise`]).
    fn finalise_if_final(&mut self, slot: u64, preemptible: bool) -> bool {
        let cap = cspace::cap(&self.hw, slot);
        if cspace::is_final(&self.hw, slot) {
            self.finalise(slot, cap, preemptible)
        } else {
            self.unmap_if_frame(cap);
            true
        }
    }

    fn make_zombie(&mut self, slot: u64) {
        match cspace::cap(&self.hw, slot) {
            Cap::CNode { ptr, radix, .. } => cspace::set_cap(
                &mut self.hw,
                slot,
                Cap::Zombie {
                    ptr,
                    kind: ZombieKind::CNode { radix },
                    scan: 0,
                },
            ),
            Cap::Tcb { ptr } => {
                // Stop it on any other CPU before its TCB goes away.
                self.stall_if_running_elsewhere(ptr);
                self.suspend(ptr);
                self.unbind_notification(ptr);
                let cpu = self.tcb(ptr).affinity as usize;
                if cpu < self.cpus.len() && self.cpus[cpu].current == ptr {
                    self.current_gone(cpu);
                }
                cspace::set_cap(
                    &mut self.hw,
                    slot,
                    Cap::Zombie {
                        ptr,
                        kind: ZombieKind::Tcb,
                        scan: 0,
                    },
                )
            }
            _ => {}
        }
    }

    /// The last capability to `cap`'s object (in `slot`) is going: release the object.
    /// Returns false if it stopped at a preemption point (only with `preemptible`: an
    /// endpoint or notification with waiters, whose Zombie the slot then holds, or an
    /// ASID pool with address spaces, whose capability stays as it is).
    fn finalise(&mut self, slot: u64, cap: Cap, preemptible: bool) -> bool {
        match cap {
            Cap::Endpoint { ptr, .. }
            | Cap::Zombie {
                ptr,
                kind: ZombieKind::Endpoint,
                ..
            } => return self.finalise_queue_object(slot, ptr, ZombieKind::Endpoint, preemptible),
            Cap::Notification { ptr, .. }
            | Cap::Zombie {
                ptr,
                kind: ZombieKind::Notification,
                ..
            } => {
                return self.finalise_queue_object(
                    slot,
                    ptr,
                    ZombieKind::Notification,
                    preemptible,
                );
            }
            Cap::IrqHandler { irq } => self.clear_irq(irq),
            Cap::IoPort { first, last } => self.mark_io_ports(first, last, false),
            Cap::Frame { .. }
            | Cap::PageTable { .. }
            | Cap::PageDirectory { .. }
            | Cap::Pdpt { .. }
            | Cap::Pml4 { .. } => self.finalise_vspace_object(cap),
            Cap::AsidPool { base, asid_base } => {
                return self.finalise_asid_pool(base, asid_base, preemptible);
            }
            Cap::Ldt { base } => self.detach_ldts(|a| a.ldt == base),
            _ => {}
        }
        true
    }

    /// Finalises the endpoint or notification at `ptr` (`kind` says which) whose last
    /// capability, or its Zombie, is in `slot`: every waiter restarts its system call,
    /// then the object is destroyed. With `preemptible`, stops at a preemption point
    /// after a waiter (returns false) and leaves a Zombie in `slot`: no capability to
    /// the object is left, so no thread can join its queue (a notification is also
    /// unbound and cut off from IRQ handlers first), and deleting the Zombie again
    /// goes on from the head of the queue. The waiters end as the unpreempted deletion
    /// leaves them.
    fn finalise_queue_object(
        &mut self,
        slot: u64,
        ptr: u64,
        kind: ZombieKind,
        preemptible: bool,
    ) -> bool {
        let queue = if kind == ZombieKind::Notification {
            self.detach_notification(ptr);
            Queue::Notification(ptr)
        } else {
            Queue::Endpoint(ptr)
        };
        if !self.restart_all_waiters(queue, preemptible) {
            cspace::set_cap(&mut self.hw, slot, Cap::Zombie { ptr, kind, scan: 0 });
            return false;
        }
        if kind == ZombieKind::Notification {
            self.hw.destroy::<Notification>(ptr);
        } else {
            self.hw.destroy::<Endpoint>(ptr);
        }
        true
    }

    /// Deletes every capability derived from the one in `slot`, one child at a time
    /// with a preemption point after each: returns false if it stopped for a pending
    /// interrupt (the children deleted so far stay deleted; revoking again continues).
    pub fn revoke(&mut self, slot: u64) -> bool {
        loop {
            let next = cspace::next(&self.hw, slot);
            if next == 0 || !cspace::is_parent_of(&self.hw, slot, next) {
                return true;
            }
            if !self.delete(next) {
                return false;
            }
            if cspace::cap(&self.hw, next) != Cap::Null && cspace::next(&self.hw, slot) == next {
                // Could not delete (should not happen): stop rather than loop.
                return true;
            }
            if self.preemption_point() {
                return false;
            }
        }
    }

    /// Stops a thread: it leaves every queue and will not run until resumed.
    pub fn suspend(&mut self, t: u64) {
        // A running thread's last system call is complete (its result is in its
        // registers: it suspended itself, or it has not run since the call returned),
        // so resumed it goes on after it, as seL4's updateRestartPC makes it: dropping
        // the SYSCALL marker keeps the restart from rewinding to the instruction. The
        // exception is a thread current on another CPU, which is inside an entry that
        // CPU has not handled yet (its registers hold the new call): it redoes that.
        if self.tcb(t).state == ThreadState::Running && self.current_elsewhere(t).is_none() {
            self.tcb_mut(t).context.vector = 0;
        }
        self.cancel_ipc(t);
        self.set_state(t, ThreadState::Inactive);
        self.dequeue(t);
    }

    /// Unbinds a thread's notification.
    pub fn unbind_notification(&mut self, t: u64) {
        let n = self.tcb(t).bound_notification;
        if n != 0 {
            self.hw.get_mut::<Notification>(n).set_bound(0);
            self.tcb_mut(t).bound_notification = 0;
        }
    }

    /// Decodes and performs a CNode invocation on `cnode` (the invoked capability).
    pub fn invoke_cnode(
        &mut self,
        cnode: Cap,
        label: keel_abi::invocation::InvocationLabel,
        args: &Args,
    ) -> Result<usize, InvocationError> {
        use crate::object::cspace::LookupFault;
        use keel_abi::invocation::InvocationLabel as L;
        let truncated = || InvocationError::simple(Error::TruncatedMessage);
        let illegal = || InvocationError::simple(Error::IllegalOperation);
        // Checks in seL4's order (decodeCNodeInvocation), so that the first error
        // reported is the one seL4 reports.
        if !matches!(
            label,
            L::CNodeRevoke
                | L::CNodeDelete
                | L::CNodeCancelBadgedSends
                | L::CNodeCopy
                | L::CNodeMint
                | L::CNodeMove
                | L::CNodeMutate
                | L::CNodeRotate
                | L::CNodeSaveCaller
        ) {
            return Err(illegal());
        }
        if args.length < 2 {
            return Err(truncated());
        }
        let dest = self.target_slot(cnode, args.mr(0), args.mr(1), false)?;
        match label {
            L::CNodeRevoke => {
                // Preempted: `handle_invocation` makes the thread redo the call.
                self.revoke(dest);
                Ok(0)
            }
            L::CNodeDelete => {
                // Preempted: `handle_invocation` makes the thread redo the call.
                self.delete(dest);
                Ok(0)
            }
            L::CNodeCancelBadgedSends => match cspace::cap(&self.hw, dest) {
                // seL4 hasCancelSendRights: an endpoint capability with every right.
                Cap::Endpoint { ptr, badge, rights } if rights.contains(Rights::ALL) => {
                    if badge != 0 {
                        // Preempted: `handle_invocation` makes the thread redo the call.
                        self.cancel_badged_sends(ptr, badge);
                    }
                    Ok(0)
                }
                _ => Err(illegal()),
            },
            L::CNodeSaveCaller => {
                if !cspace::cap(&self.hw, dest).is_null() {
                    return Err(InvocationError::simple(Error::DeleteFirst));
                }
                let caller = tcb::slot(args.thread, tcb::SLOT_CALLER);
                let cap = cspace::cap(&self.hw, caller);
                if matches!(cap, Cap::Reply { .. }) {
                    cspace::move_cap(&mut self.hw, caller, dest, cap);
                }
                Ok(0)
            }
            L::CNodeCopy | L::CNodeMint | L::CNodeMove | L::CNodeMutate => {
                let src_root = args.extra_cap(0).ok_or_else(truncated)?;
                if args.length < 4 {
                    return Err(truncated());
                }
                if !cspace::cap(&self.hw, dest).is_null() {
                    return Err(InvocationError::simple(Error::DeleteFirst));
                }
                let (src_index, src_depth) = (args.mr(2), args.mr(3));
                let src = self.source_slot(src_root, src_index, src_depth)?;
                let src_cap = cspace::cap(&self.hw, src);
                if src_cap.is_null() {
                    return Err(InvocationError::failed_lookup(
                        true,
                        LookupFault::MissingCapability {
                            bits_left: src_depth as u32,
                        },
                    ));
                }
                let need = match label {
                    L::CNodeMint => 6,
                    L::CNodeMove => 4,
                    _ => 5,
                };
                if args.length < need {
                    return Err(truncated());
                }
                match label {
                    L::CNodeCopy | L::CNodeMint => {
                        let rights = Rights::from_word(args.mr(4));
                        let mut new = mask_rights(src_cap, rights);
                        if label == L::CNodeMint {
                            new = update_data(new, args.mr(5), true).ok_or_else(illegal)?;
                        }
                        let new = derive(self, src, new).ok_or_else(|| {
                            if matches!(src_cap, Cap::Untyped { .. }) {
                                InvocationError::simple(Error::RevokeFirst)
                            } else {
                                illegal()
                            }
                        })?;
                        cspace::insert_child(&mut self.hw, src, dest, new);
                        Ok(0)
                    }
                    _ => {
                        let new = if label == L::CNodeMutate {
                            update_data(src_cap, args.mr(4), false).ok_or_else(illegal)?
                        } else {
                            src_cap
                        };
                        cspace::move_cap(&mut self.hw, src, dest, new);
                        Ok(0)
                    }
                }
            }
            L::CNodeRotate => {
                // seL4_CNode_Rotate: MR0/1 destination, MR2 the data for the cap that
                // moves to the destination (the pivot's), MR3/4 pivot, MR5 the data for
                // the cap that moves to the pivot (the source's), MR6/7 source.
                let (Some(pivot_root), Some(src_root)) = (args.extra_cap(0), args.extra_cap(1))
                else {
                    return Err(truncated());
                };
                if args.length < 8 {
                    return Err(truncated());
                }
                let (pivot_data, pivot_index, pivot_depth) = (args.mr(2), args.mr(3), args.mr(4));
                let (src_data, src_index, src_depth) = (args.mr(5), args.mr(6), args.mr(7));
                let src = self.source_slot(src_root, src_index, src_depth)?;
                // seL4 (lookupPivotSlot) reports a failed pivot lookup as the source's.
                let pivot = self.target_slot(pivot_root, pivot_index, pivot_depth, true)?;
                if pivot == src || pivot == dest {
                    return Err(illegal());
                }
                if src != dest && !cspace::cap(&self.hw, dest).is_null() {
                    return Err(InvocationError::simple(Error::DeleteFirst));
                }
                let (src_cap, pivot_cap) =
                    (cspace::cap(&self.hw, src), cspace::cap(&self.hw, pivot));
                if src_cap.is_null() {
                    return Err(InvocationError::failed_lookup(
                        true,
                        LookupFault::MissingCapability {
                            bits_left: src_depth as u32,
                        },
                    ));
                }
                if pivot_cap.is_null() {
                    return Err(InvocationError::failed_lookup(
                        false,
                        LookupFault::MissingCapability {
                            bits_left: pivot_depth as u32,
                        },
                    ));
                }
                let new_src = update_data(src_cap, src_data, false).ok_or_else(illegal)?;
                let new_pivot = update_data(pivot_cap, pivot_data, false).ok_or_else(illegal)?;
                if src == dest {
                    cspace::swap(&mut self.hw, src, new_pivot, pivot, new_src);
                } else {
                    cspace::move_cap(&mut self.hw, pivot, dest, new_pivot);
                    cspace::move_cap(&mut self.hw, src, pivot, new_src);
                }
                Ok(0)
            }
            _ => Err(illegal()),
        }
    }

    /// Resolves (index, depth) in `root` exactly to a slot (seL4 lookupTargetSlot).
    pub fn target_slot(
        &self,
        root: Cap,
        index: u64,
        depth: u64,
        is_source: bool,
    ) -> Result<u64, InvocationError> {
        if !matches!(root, Cap::CNode { .. }) {
            return Err(InvocationError::failed_lookup(
                is_source,
                crate::object::cspace::LookupFault::InvalidRoot,
            ));
        }
        if depth == 0 || depth > 64 {
            return Err(InvocationError::range(1, 64));
        }
        match cspace::resolve(&self.hw, root, index, depth as u32) {
            Ok((slot, 0)) => Ok(slot),
            Ok((_, left)) => Err(InvocationError::failed_lookup(
                is_source,
                crate::object::cspace::LookupFault::DepthMismatch {
                    bits_left: left,
                    bits_found: 0,
                },
            )),
            Err(f) => Err(InvocationError::failed_lookup(is_source, f)),
        }
    }

    fn source_slot(&self, root: Cap, index: u64, depth: u64) -> Result<u64, InvocationError> {
        self.target_slot(root, index, depth, true)
    }
}
