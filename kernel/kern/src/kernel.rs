//! The kernel's state and its scheduler.
//!
//! [`Kernel`] owns the hardware interface (physical memory plus the few machine
//! operations the object layer needs, [`Hardware`]) and the per-CPU scheduling state.
//! The trusted core holds it behind the big kernel lock and calls its entry points
//! (`handle_syscall`, `handle_user_exception`, `handle_timer_tick`, …) with the current
//! thread's registers already saved in its TCB; afterwards it runs
//! [`Kernel::current`] of the CPU.
//!
//! Scheduling (seL4 non-MCS): 256 fixed priorities, one ready queue per priority per
//! CPU with a bitmap for the highest non-empty queue, round-robin time slices of
//! [`TIME_SLICE_TICKS`](crate::object::tcb::TIME_SLICE_TICKS) timer ticks, and a
//! scheduler action that lets IPC switch directly to the woken thread.
//!
//! Invariants: a thread is in at most one ready queue, that of its affinity CPU, and
//! only when runnable and not current; `cpus[c].current` is runnable or 0 (idle).

use alloc::boxed::Box;
use alloc::vec;

use crate::memory::Memory;
use crate::object::tcb::{self, Tcb, ThreadState};

/// Number of priorities.
pub const NUM_PRIORITIES: usize = 256;

/// What the machine must do for the object layer beyond memory access.
pub trait Hardware: Memory {
    /// Index of the CPU running this code.
    fn current_cpu(&self) -> usize;
    /// Physical address of the kernel's PML4 (its upper half is shared by every PML4).
    fn kernel_pml4(&self) -> u64;
    /// Writes bytes to the kernel console.
    fn console_write(&mut self, bytes: &[u8]);
    /// Asks `cpu` to run its scheduler soon (an IPI; nothing if it is this CPU).
    fn reschedule_cpu(&mut self, cpu: usize);
    /// If `cpu` runs the thread whose record is at `tcb_record` in user mode, makes it
    /// enter the kernel (saving the thread's registers into its TCB) and waits until it
    /// has ("remote stall"; the other CPU then waits for the big kernel lock).
    fn stall_cpu(&mut self, cpu: usize, tcb_record: u64);
    /// Flushes the TLB entries of address space `asid` (rooted at `pml4`) for `vaddr`
    /// on every CPU that may hold them.
    fn flush_page(&mut self, asid: u16, pml4: u64, vaddr: u64);
    /// Flushes every TLB entry of address space `asid` (rooted at `pml4`) on every CPU
    /// that may hold them.
    fn flush_address_space(&mut self, asid: u16, pml4: u64);
    /// The address space rooted at `pml4` (ASID `asid`) is going away: no CPU may keep
    /// using it (a CPU still on it switches to the kernel's own address space).
    fn address_space_deleted(&mut self, asid: u16, pml4: u64);
    /// Address space `pml4` now carries the LDT object at `ldt` (0 = none). Returns
    /// once no CPU uses an LDT the address space no longer carries.
    fn set_vspace_ldt(&mut self, pml4: u64, ldt: u64);
    /// Reads an I/O port (`size` 1, 2 or 4 bytes).
    fn port_read(&mut self, port: u16, size: u8) -> u32;
    /// Writes an I/O port.
    fn port_write(&mut self, port: u16, size: u8, value: u32);
    /// Routes IRQ `irq` (it arrives on the user vector `irq`) from `route`, unmasked
    /// (`true`) or masked (`false`).
    fn irq_route(&mut self, irq: u16, route: crate::object::irq::IrqRoute, enabled: bool);
    /// Timer interrupts seen by this CPU.
    fn ticks(&self) -> u64;
    /// A long operation's preemption point (see `Kernel::preemption_point`): lets the
    /// interrupts waiting on this CPU in, to be handled when this kernel entry ends, and
    /// says whether there were any.
    fn preemption_window(&self) -> bool {
        false
    }
    /// The KeelDebugKernelStackCount test hook: how many words of this CPU's kernel
    /// stack above the caller's frame equal `!complement`; `None` where the hook is not
    /// offered (not a test image, or no kernel stack: the host).
    fn kernel_stack_count(&self, complement: u64) -> Option<u64> {
        let _ = complement;
        None
    }
    /// The debug exit system call: a thread ended with `value`.
    fn thread_exited(&mut self, tcb: u64, value: u64);
    /// The debug test-report system call.
    fn test_report(&mut self, passed: u64, failed: u64);
    /// The debug halt system call.
    fn halt(&mut self) -> !;
    /// The TCB at `tcb` is being deleted: no CPU may save FPU state into it any more.
    fn tcb_deleted(&mut self, tcb: u64) {
        let _ = tcb;
    }
    /// The FPU flag of the TCB at `tcb` changes: the CPU holding its FPU state in
    /// registers gives it up (saving it if that CPU is this one).
    fn fpu_release(&mut self, tcb: u64) {
        let _ = tcb;
    }
}

/// What the scheduler does at the next exit to user mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep running the current thread.
    Resume,
    /// Pick the best ready thread (the current one competes if runnable).
    ChooseNew,
    /// Switch to this thread unless a better one is ready.
    SwitchTo(u64),
}

/// One CPU's scheduling state.
#[derive(Clone)]
pub struct CpuState {
    /// The running thread (TCB address; 0 = idle).
    pub current: u64,
    /// Pending scheduler decision (set with [`CpuState::set_action`], which keeps
    /// `bar` current).
    action: Action,
    heads: [u64; NUM_PRIORITIES],
    tails: [u64; NUM_PRIORITIES],
    bitmap: [u64; NUM_PRIORITIES / 64],
    /// The highest priority with a ready thread, -1 when none is ready (the bitmap's
    /// summary, kept by `enqueue`/`dequeue` for the fastpath's one compare).
    highest: i16,
    /// `highest` while the action is `Resume`, else above every priority: a thread of
    /// priority `p` may be switched to directly (no scheduler run) iff `bar <= p`
    /// (the fast routes' one compare for "no decision pending, nobody better ready").
    bar: i16,
    /// Bit `w` set when `bitmap[w]` is non-zero.
    words_used: u64,
}

impl CpuState {
    fn new() -> Self {
        Self {
            current: 0,
            action: Action::Resume,
            heads: [0; NUM_PRIORITIES],
            tails: [0; NUM_PRIORITIES],
            bitmap: [0; NUM_PRIORITIES / 64],
            highest: -1,
            bar: -1,
            words_used: 0,
        }
    }

    /// Whether a thread of priority higher than `priority` is ready.
    #[inline(always)]
    pub fn ready_above(&self, priority: u8) -> bool {
        self.highest > priority as i16
    }

    /// The pending scheduler decision.
    #[inline(always)]
    pub fn action(&self) -> Action {
        self.action
    }

    /// Sets the pending scheduler decision.
    #[inline(always)]
    pub fn set_action(&mut self, action: Action) {
        // (Callers pass a constant kind: the test folds away.)
        self.bar = if matches!(action, Action::Resume) {
            self.highest
        } else {
            i16::MAX
        };
        self.action = action;
    }

    /// Whether a thread of priority `priority` may not be switched to directly: a
    /// scheduler decision is pending, or a thread of higher priority is ready (one
    /// compare).
    #[inline(always)]
    pub fn direct_switch_barred(&self, priority: u8) -> bool {
        self.bar > priority as i16
    }

    /// Whether `bar` agrees with the action and the highest ready priority (the
    /// invariant checker's test).
    pub fn bar_is_current(&self) -> bool {
        self.bar
            == if matches!(self.action, Action::Resume) {
                self.highest
            } else {
                i16::MAX
            }
    }

    /// Marks priority `prio` as having a ready thread.
    fn mark_ready(&mut self, prio: usize) {
        self.bitmap[prio / 64] |= 1 << (prio % 64);
        self.words_used |= 1 << (prio / 64);
        self.highest = self.highest.max(prio as i16);
        // `bar` is `highest` (action Resume) or i16::MAX: either way this keeps it.
        self.bar = self.bar.max(prio as i16);
    }

    /// Marks priority `prio` as having no ready thread.
    fn mark_empty(&mut self, prio: usize) {
        let word = prio / 64;
        self.bitmap[word] &= !(1 << (prio % 64));
        if self.bitmap[word] == 0 {
            self.words_used &= !(1 << word);
        }
        if self.highest != prio as i16 {
            return;
        }
        // Nothing is ready above `prio`: the new highest is the highest set bit.
        self.highest = if self.words_used == 0 {
            -1
        } else {
            let w = 63 - self.words_used.leading_zeros() as usize;
            (w * 64 + 63 - self.bitmap[w].leading_zeros() as usize) as i16
        };
        // `bar` followed the old highest (`prio`) unless it is i16::MAX.
        if self.bar == prio as i16 {
            self.bar = self.highest;
        }
    }

    /// The highest priority with a ready thread.
    pub fn highest_ready(&self) -> Option<u8> {
        u8::try_from(self.highest).ok()
    }

    /// The first thread of the ready queue of priority `prio` (0 = empty).
    pub fn ready_head(&self, prio: u8) -> u64 {
        self.heads[prio as usize]
    }

    /// The last thread of the ready queue of priority `prio` (0 = empty).
    pub fn ready_tail(&self, prio: u8) -> u64 {
        self.tails[prio as usize]
    }

    /// Whether the bitmap marks priority `prio` as having a ready thread.
    pub fn ready_bit(&self, prio: u8) -> bool {
        self.bitmap[prio as usize / 64] & (1 << (prio % 64)) != 0
    }

    /// The highest priority whose bitmap bit is set (what `highest` summarises).
    pub fn scan_highest(&self) -> Option<u8> {
        (0..self.bitmap.len())
            .rev()
            .find(|&i| self.bitmap[i] != 0)
            .map(|i| (i * 64 + 63 - self.bitmap[i].leading_zeros() as usize) as u8)
    }
}

/// Units of work (e.g. capabilities deleted by a revoke) between two questions to the
/// hardware whether an interrupt is pending.
pub const PREEMPTION_INTERVAL: u32 = 8;

/// Most CPUs the kernel schedules (a power of two).
pub const MAX_CPUS: usize = 64;

/// The CPUs' scheduling states: `len()` online CPUs, indexed 0..len(). The array always
/// has [`MAX_CPUS`] entries and an index is reduced modulo [`MAX_CPUS`], so indexing
/// needs no bounds check on the hot paths (the hardware layer never reports a CPU
/// index ≥ [`MAX_CPUS`]; user-supplied CPU numbers are checked against `len()`).
pub struct Cpus {
    states: Box<[CpuState; MAX_CPUS]>,
    count: usize,
}

impl Cpus {
    fn new(count: usize) -> Self {
        assert!((1..=MAX_CPUS).contains(&count), "{count} CPUs");
        let states: Box<[CpuState]> = vec![CpuState::new(); MAX_CPUS].into_boxed_slice();
        let Ok(states) = states.try_into() else {
            unreachable!("MAX_CPUS entries")
        };
        Self { states, count }
    }

    /// Number of online CPUs.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no CPUs (never, after boot).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The online CPUs' states.
    pub fn iter(&self) -> impl Iterator<Item = &CpuState> {
        self.states[..self.count].iter()
    }
}

impl core::ops::Index<usize> for Cpus {
    type Output = CpuState;
    #[inline(always)]
    fn index(&self, cpu: usize) -> &CpuState {
        &self.states[cpu % MAX_CPUS]
    }
}

impl core::ops::IndexMut<usize> for Cpus {
    #[inline(always)]
    fn index_mut(&mut self, cpu: usize) -> &mut CpuState {
        &mut self.states[cpu % MAX_CPUS]
    }
}

/// The kernel.
pub struct Kernel<H: Hardware> {
    /// Memory and machine operations.
    pub hw: H,
    /// Per-CPU scheduling state, indexed by CPU.
    pub cpus: Cpus,
    /// IRQ states, indexed by IRQ number (see `object::irq`).
    pub irqs: [crate::object::irq::IrqState; crate::object::irq::MAX_IRQS],
    /// ASID pools by the ASID's high bits (physical address, 0 = none).
    pub asid_pools: [u64; crate::object::vspace::ASID_POOLS],
    /// Whether CPUs allow user RD/WR FS/GS BASE (CR4.FSGSBASE can be set).
    pub fsgsbase_supported: bool,
    /// Number of I/O APICs (GetIOAPIC's `ioapic` argument ranges below it).
    pub io_apics: usize,
    /// I/O ports handed out by IOPortControl Issue (one bit per port).
    pub io_ports_issued: [u64; 1024],
    /// Messages whose length-and-caps bits are below this take the fastpath: 121 (up
    /// to 120 words, no capabilities) when it is on, 0 when it is off
    /// (`keel.fastpath=off`, a debug call; [`Kernel::set_fastpath`]). One compare
    /// serves both tests.
    pub(crate) fastpath_limit: u64,
    /// The same for the short variant (4 words, in registers): 5 when on, 0 when off.
    pub(crate) fastpath_short_limit: u64,
    /// Set by a preemption point that stopped a long operation: the invoking thread
    /// redoes its system call (which continues from where the operation stopped)
    /// after the pending interrupt.
    pub preempted: bool,
    /// Units of work since the last preemption point asked the hardware.
    work_since_check: u32,
    /// Whether returns to user mode run the user rseq fix-up (`keel.unsafe.user_rseq`
    /// turns it off: the negative control of the rseq tests).
    pub user_rseq: bool,
    /// What DebugPlatformFlags reports.
    pub platform_flags: u64,
    /// `keel.check_invariants`: the TCB (the root task's) from which the glue runs
    /// [`Kernel::check_invariants`](crate::invariants) after system calls; 0 = off.
    pub invariant_root: u64,
    /// `keel.check_invariants=N`: the check runs after every N-th system call (1 =
    /// every one).
    pub invariant_every: u32,
    /// System calls since the last check.
    pub invariant_countdown: u32,
    /// Address spaces that carry an LDT (see `object::ldt`).
    pub ldts: [crate::object::ldt::LdtAttachment; crate::object::ldt::MAX_LDT_ATTACHMENTS],
}

impl<H: Hardware> Kernel<H> {
    /// A kernel for `cpu_count` CPUs.
    pub fn new(hw: H, cpu_count: usize) -> Self {
        let cpus = Cpus::new(cpu_count);
        Self {
            hw,
            cpus,
            irqs: [crate::object::irq::IrqState::Inactive; crate::object::irq::MAX_IRQS],
            asid_pools: [0; crate::object::vspace::ASID_POOLS],
            fsgsbase_supported: false,
            io_apics: 0,
            io_ports_issued: [0; 1024],
            fastpath_limit: crate::fastpath::FAST_LIMIT,
            fastpath_short_limit: crate::fastpath::FAST_SHORT_LIMIT,
            preempted: false,
            work_since_check: 0,
            user_rseq: true,
            platform_flags: 0,
            invariant_root: 0,
            invariant_every: 1,
            invariant_countdown: 0,
            ldts: [crate::object::ldt::LdtAttachment {
                asid: 0,
                pml4: 0,
                ldt: 0,
            }; crate::object::ldt::MAX_LDT_ATTACHMENTS],
        }
    }

    /// The thread running on this CPU (0 = idle).
    pub fn current(&self) -> u64 {
        self.cpus[self.hw.current_cpu()].current
    }

    /// The record of TCB `t`.
    pub fn tcb(&self, t: u64) -> &Tcb {
        self.hw.get::<Tcb>(tcb::record(t))
    }

    /// The record of TCB `t`, mutably.
    pub fn tcb_mut(&mut self, t: u64) -> &mut Tcb {
        self.hw.get_mut::<Tcb>(tcb::record(t))
    }

    /// Sets a thread's state; if it stops being runnable while current, the CPU
    /// reschedules.
    #[inline(always)]
    pub fn set_state(&mut self, t: u64, state: ThreadState) {
        self.tcb_mut(t).state = state;
        if !state.is_runnable() {
            self.dequeue(t);
            // This CPU's scheduler notices a current thread that cannot run; another
            // CPU must be told (and must not keep running it).
            if let Some(cpu) = self.current_elsewhere(t) {
                self.stop_on_other_cpu(cpu, t);
            }
        }
    }

    /// `t`, current on another CPU `cpu`, can no longer run: that CPU stops it and
    /// chooses again. It is no longer that CPU's current thread from here on, so that
    /// a resume before that CPU has chosen again (which queues it) leaves no thread
    /// both current and queued.
    #[cold]
    #[inline(never)]
    fn stop_on_other_cpu(&mut self, cpu: usize, t: u64) {
        self.hw.stall_cpu(cpu, tcb::record(t));
        self.current_gone(cpu);
    }

    /// Puts `t` at the head (`front`) or tail of its CPU's ready queue.
    pub fn enqueue(&mut self, t: u64, front: bool) {
        let (prio, cpu, queued) = {
            let r = self.tcb(t);
            (r.priority as usize, r.affinity as usize, r.queued)
        };
        if queued {
            return;
        }
        let (head, tail) = (self.cpus[cpu].heads[prio], self.cpus[cpu].tails[prio]);
        {
            let r = self.tcb_mut(t);
            r.queued = true;
            if front {
                r.ready_prev = 0;
                r.ready_next = head;
            } else {
                r.ready_prev = tail;
                r.ready_next = 0;
            }
        }
        let neighbour = if front { head } else { tail };
        if neighbour != 0 {
            if front {
                self.tcb_mut(head).ready_prev = t;
            } else {
                self.tcb_mut(tail).ready_next = t;
            }
        }
        let queues = &mut self.cpus[cpu];
        if front || head == 0 {
            queues.heads[prio] = t;
        }
        if !front || tail == 0 {
            queues.tails[prio] = t;
        }
        queues.mark_ready(prio);
    }

    /// Takes `t` out of its ready queue (if it is in one).
    pub fn dequeue(&mut self, t: u64) {
        let (prio, cpu, queued, prev, next) = {
            let r = self.tcb(t);
            (
                r.priority as usize,
                r.affinity as usize,
                r.queued,
                r.ready_prev,
                r.ready_next,
            )
        };
        if !queued {
            return;
        }
        if prev != 0 {
            self.tcb_mut(prev).ready_next = next;
        }
        if next != 0 {
            self.tcb_mut(next).ready_prev = prev;
        }
        {
            let r = self.tcb_mut(t);
            r.queued = false;
            r.ready_next = 0;
            r.ready_prev = 0;
        }
        let queues = &mut self.cpus[cpu];
        if prev == 0 {
            queues.heads[prio] = next;
        }
        if next == 0 {
            queues.tails[prio] = prev;
        }
        if queues.heads[prio] == 0 {
            queues.mark_empty(prio);
        }
    }

    /// Makes a newly runnable thread run: directly if it belongs to this CPU and the
    /// scheduler has not decided otherwise, else through its ready queue.
    pub fn possible_switch_to(&mut self, t: u64) {
        let cpu = self.tcb(t).affinity as usize;
        let here = self.hw.current_cpu();
        if cpu != here {
            self.enqueue(t, false);
            self.hw.reschedule_cpu(cpu);
        } else if self.cpus[here].action() != Action::Resume {
            // A decision is pending (a thread to switch to, woken earlier in this same
            // entry, e.g. by the reply half of ReplyRecv): it goes back to the ready
            // queue before the scheduler chooses again, or it would be lost.
            self.reschedule_required();
            self.enqueue(t, false);
        } else {
            self.cpus[here].set_action(Action::SwitchTo(t));
        }
    }

    /// If thread `t` is running on another CPU, stops it there until this CPU is done
    /// with it: its registers are then in its TCB and no other CPU touches them.
    pub fn stall_if_running_elsewhere(&mut self, t: u64) {
        if let Some(cpu) = self.current_elsewhere(t) {
            self.hw.stall_cpu(cpu, tcb::record(t));
        }
    }

    /// The other CPU `t` is current on, if any (it runs there, or is inside a kernel
    /// entry that CPU has not handled yet).
    #[inline(always)]
    pub fn current_elsewhere(&self, t: u64) -> Option<usize> {
        let cpu = self.tcb(t).affinity as usize;
        (cpu != self.hw.current_cpu() && cpu < self.cpus.len() && self.cpus[cpu].current == t)
            .then_some(cpu)
    }

    /// `cpu` stopped running its current thread (deleted, moved): it must choose again.
    ///
    /// On another CPU the thread is inside a kernel entry that CPU has not handled yet
    /// (it waits for the lock, or comes in through the stall IPI): that CPU drops the
    /// entry once its current thread is gone, so a running thread is left in Restart
    /// and redoes it where it runs next (a system call from its SYSCALL instruction, an
    /// exception by re-executing the instruction).
    pub fn current_gone(&mut self, cpu: usize) {
        let t = self.cpus[cpu].current;
        self.cpus[cpu].current = 0;
        if t != 0 {
            // Switched out without the scheduler seeing it (a user restartable
            // sequence it was in restarts).
            self.rseq_switched_out(t);
        }
        if cpu == self.hw.current_cpu() {
            self.reschedule_required();
        } else {
            if t != 0 && self.tcb(t).state == ThreadState::Running {
                self.tcb_mut(t).state = ThreadState::Restart;
            }
            self.request_choose_new(cpu);
            self.hw.reschedule_cpu(cpu);
        }
    }

    /// Asks the CPU thread `t` belongs to to choose again: this CPU at its next exit,
    /// another one through a reschedule IPI.
    pub fn reschedule_cpu_of(&mut self, t: u64) {
        let cpu = self.tcb(t).affinity as usize;
        if cpu == self.hw.current_cpu() {
            self.reschedule_required();
        } else {
            self.hw.reschedule_cpu(cpu);
        }
    }

    /// Whether a pending SwitchTo to `t` on CPU `here` still stands: `t` can run,
    /// belongs to `here` and waits in no queue (one read of its record).
    #[inline(always)]
    fn still_switchable(&self, t: u64, here: usize) -> bool {
        let r = self.tcb(t);
        matches!(r.state, ThreadState::Running | ThreadState::Restart)
            && r.affinity as usize == here
            && !r.queued
    }

    /// Asks this CPU to choose again at the next exit.
    pub fn reschedule_required(&mut self) {
        self.request_choose_new(self.hw.current_cpu());
    }

    /// Makes CPU `cpu` choose again when it next runs its scheduler. A thread a
    /// pending SwitchTo names goes to its ready queue first (if it can still run): it
    /// is in no queue and not current, so dropping the decision would lose it. (Another
    /// CPU's decision is pending between an interrupt its idle loop took and the
    /// scheduler run that follows, with the lock released in between.)
    fn request_choose_new(&mut self, cpu: usize) {
        if let Action::SwitchTo(t) = self.cpus[cpu].action()
            && self.tcb(t).state.is_runnable()
        {
            self.enqueue(t, false);
        }
        self.cpus[cpu].set_action(Action::ChooseNew);
    }

    /// A preemption point of a long operation (seL4's preemptionPoint): after every
    /// [`PREEMPTION_INTERVAL`] units of work it asks whether an interrupt is pending;
    /// if so it sets [`Kernel::preempted`] and returns true, and the operation stops
    /// where it is. Long operations stop only in states from which redoing the same
    /// invocation continues the work, so the invoking thread simply redoes its system
    /// call after the interrupt (`handle_invocation`).
    pub fn preemption_point(&mut self) -> bool {
        self.work_since_check += 1;
        if self.work_since_check < PREEMPTION_INTERVAL {
            return false;
        }
        self.work_since_check = 0;
        if self.hw.preemption_window() {
            self.preempted = true;
        }
        self.preempted
    }

    /// Carries out this CPU's scheduler action; returns the thread to run, `current()`
    /// from now on (0: idle).
    pub fn schedule(&mut self) -> u64 {
        let here = self.hw.current_cpu();
        let action = self.cpus[here].action();
        let current = self.cpus[here].current;
        // The common case after a system call that neither blocked nor woke anyone:
        // nothing to decide.
        if action == Action::Resume
            && current != 0
            && matches!(self.tcb(current).state, ThreadState::Running)
            && self.tcb(current).affinity as usize == here
        {
            return current;
        }
        self.cpus[here].set_action(Action::Resume);
        let current_runnable = current != 0
            && self.tcb(current).state.is_runnable()
            && self.tcb(current).affinity as usize == here;
        match action {
            Action::Resume => {
                if current != 0 && !current_runnable {
                    self.choose_new(here);
                }
            }
            Action::SwitchTo(candidate) if !self.still_switchable(candidate, here) => {
                // Another entry changed the candidate since the decision (blocked it,
                // moved it, queued it): choose anew; a runnable candidate waits in its
                // ready queue.
                if self.tcb(candidate).state.is_runnable() && !self.tcb(candidate).queued {
                    self.enqueue(candidate, false);
                    if self.tcb(candidate).affinity as usize != here {
                        self.reschedule_cpu_of(candidate);
                    }
                }
                if current_runnable {
                    self.enqueue(current, true);
                }
                self.choose_new(here);
            }
            Action::SwitchTo(candidate) => {
                let prio = self.tcb(candidate).priority;
                let best_ready = self.cpus[here].highest_ready();
                let beats_current = !current_runnable || prio >= self.tcb(current).priority;
                if beats_current && best_ready.is_none_or(|b| prio >= b) {
                    if current_runnable && current != candidate {
                        self.enqueue(current, true);
                    }
                    self.dequeue(candidate);
                    self.cpus[here].current = candidate;
                } else {
                    self.enqueue(candidate, false);
                    if current_runnable {
                        self.enqueue(current, true);
                    }
                    self.choose_new(here);
                }
            }
            Action::ChooseNew => {
                if current_runnable {
                    self.enqueue(current, true);
                }
                self.choose_new(here);
            }
        }
        let chosen = self.cpus[here].current;
        if chosen != current && current != 0 {
            self.rseq_switched_out(current);
        }
        if chosen != 0 && self.tcb(chosen).state == ThreadState::Restart {
            let r = self.tcb_mut(chosen);
            if r.context.vector == crate::object::tcb::SYSCALL_VECTOR {
                r.context.rip = r.context.rip.wrapping_sub(2);
            }
            r.state = ThreadState::Running;
        }
        chosen
    }

    fn choose_new(&mut self, here: usize) {
        match self.cpus[here].highest_ready() {
            Some(prio) => {
                let t = self.cpus[here].heads[prio as usize];
                self.dequeue(t);
                self.cpus[here].current = t;
            }
            None => self.cpus[here].current = 0,
        }
    }

    /// A timer interrupt on this CPU: charge the current thread's time slice.
    pub fn handle_timer_tick(&mut self) {
        let here = self.hw.current_cpu();
        let current = self.cpus[here].current;
        if current == 0 {
            if self.cpus[here].highest_ready().is_some() {
                self.reschedule_required();
            }
            return;
        }
        let expired = {
            let r = self.tcb_mut(current);
            r.time_slice = r.time_slice.saturating_sub(1);
            if r.time_slice == 0 {
                r.time_slice = tcb::TIME_SLICE_TICKS;
                true
            } else {
                false
            }
        };
        if expired && self.tcb(current).state.is_runnable() {
            // Another thread of its priority or higher takes over: it is preempted
            // (a user restartable sequence it was in restarts).
            let priority = self.tcb(current).priority;
            if self.cpus[here].highest >= priority as i16 {
                self.rseq_switched_out(current);
            }
            self.cpus[here].current = 0;
            self.enqueue(current, false);
            self.reschedule_required();
        }
    }

    /// A reschedule request from another CPU (or work arrived while idle).
    pub fn handle_reschedule(&mut self) {
        self.reschedule_required();
    }
}
