//! Hostile user code against the whole system-call interface: confined threads make
//! thousands of seeded-random system calls (seL4's eight and unknown numbers; random
//! capability pointers, labels, lengths, extra capabilities and words, biased toward
//! values that mean something: slot numbers, depth 64, object types, small sizes) on
//! the capabilities of a CSpace of their own, which holds only objects made for them
//! from an untyped of their own. The kernel must answer each with a reply, an error or
//! a fault; none may take it down, leave the suite unable to go on, or lose memory:
//! when the threads and their CSpaces are gone, each untyped's memory retypes again in
//! full.
//!
//! Each thread also has an address space of its own (a PML4 with an ASID and tables,
//! which no thread runs in) for paging operations. Two tests: one thread alone on the
//! suite's CPU (deterministic: the same counts on every configuration), and one thread
//! per CPU at once (up to [`MAX_FUZZERS`]), which share an endpoint, a notification
//! (messages, capability transfers with grant, wake-ups and cancelled IPC between
//! CPUs), one address space (maps and unmaps in the same page tables from every CPU)
//! and a third thread, the victim, whose TCB capability each of them holds: they
//! suspend, resume, move, reprioritise, bind and read it while it waits on the shared
//! notification, so that the cross-CPU paths (stalls, IPIs, migration, TLB and lock
//! paths) run under random load. The victim must fault only by a refused Wait and must
//! still wake for signals afterwards.
//!
//! Keel's debug calls are left out (they report test results and switch the fastpath).
//! A call that blocks for good (a Recv nobody sends to) or a fault (the suite does not
//! answer faults) stops a thread; the suite then suspends it and writes it its first
//! registers again (WriteRegisters with resume), and it carries on where it stopped
//! (the step and the generator's state live in shared words and are advanced before
//! each call). A thread that runs on another CPU is restarted the same way when its
//! step has not moved for a while. No fuzzing thread holds a capability to a fuzzing
//! thread's TCB, and in the concurrent test no call writes the victim's registers, its
//! rseq area, its CSpace or its fault endpoint, and no reply from one fuzzing thread to
//! another has label 0 (a fault reply writes registers; see [`tame`] and
//! [`REPLY_LABEL`]): otherwise a thread could be sent to a random RIP in the suite's
//! code, or have the kernel write to a random address, both in the address space the
//! suite shares with it.
//!
//! The tests found that a Call on a notification or a reply capability left the
//! caller's own message in its registers instead of seL4's empty reply, and (under
//! the invariant checker) that a thread suspended and resumed while running on
//! another CPU was left both current there and queued.

use core::sync::atomic::{AtomicU64, Ordering};

use keel_abi::fault::{USER_CONTEXT_WORDS, UserContext};
use keel_abi::invocation::{self, InvocationLabel};
use keel_abi::message::MessageInfo;
use keel_abi::object::ObjectType;
use keel_abi::syscall as number;
use keel_rt::Thread;
use keel_servers::cspace::{ServerCSpace, slot};
use keel_sys::CapRights;
use keel_sys::cap::{Cap, PageDirectory, PageTable, Pdpt, Pml4, Tcb, Untyped, init};

use crate::harness::{DEPTH, Env, OrFail, Suite, TestResult};
use crate::{CHILD_PRIORITY, ensure};

/// Runs the fuzz tests.
pub fn run(suite: &mut Suite, env: &mut Env) {
    suite.run("fuzz_random_system_calls_keep_the_kernel_whole", || {
        fuzz_alone(env)
    });
    suite.run(
        "fuzz_random_system_calls_on_every_cpu_at_once_keep_the_kernel_whole",
        || fuzz_concurrently(env),
    );
}

/// System calls each thread makes in all.
const CALLS: u64 = 10000;
/// The generator's seed (printed on failure); the concurrent test's threads start
/// from it mixed with their index.
const SEED: u64 = 0x6b65_656c_f022_1e57;
/// Free slots of a thread's CSpace (its CNode then has 32 slots).
const FREE: u64 = 23;
/// Slots of a thread's CNode.
const SLOTS: u64 = 32;
/// Size of a thread's untyped (64 KiB).
const UNTYPED_BITS: u64 = 16;
/// Fuzzing threads of the concurrent test, at most.
const MAX_FUZZERS: usize = 4;
/// A thread's argument: its index, and this bit in the concurrent test.
const CONCURRENT: u64 = 1 << 8;
/// Fault badges: the fuzzing threads' (plus their index) and the victim's.
const FAULT_BADGE: u64 = 0xf020;
const VICTIM_FAULT_BADGE: u64 = 0xf0ff;
/// Badge of the shared endpoint capability fuzzing thread `i` holds: this plus `i`.
const SHARED_BADGE: u64 = 0x100;
/// Where the concurrent test's shared objects sit in each thread's CSpace (free slots:
/// the threads' own operations may move or delete them).
const SHARED_EP_SLOT: u64 = slot::FIRST_FREE + 4;
const SHARED_NOTIFICATION_SLOT: u64 = slot::FIRST_FREE + 5;
const VICTIM_SLOT: u64 = slot::FIRST_FREE + 6;
/// Where each thread's address space (a PML4 with an ASID, which no thread runs in) and
/// a PDPT, page directory and page table for it sit; the frame sits at
/// `FIRST_FREE + 3`.
const VSPACE_SLOT: u64 = slot::FIRST_FREE + 7;
const PAGING_SLOTS: [u64; 3] = [
    slot::FIRST_FREE + 8,
    slot::FIRST_FREE + 9,
    slot::FIRST_FREE + 10,
];
const FRAME_SLOT: u64 = slot::FIRST_FREE + 3;
/// The victim's slot of the shared notification in its own CSpace.
const VICTIM_WAITS_ON: u64 = slot::FIRST_FREE;
/// How long a thread on another CPU may leave its step unchanged before the suite
/// takes it to be blocked for good and restarts it (about 2 ms). A restart of a thread
/// that was only slow (its CPU not run by the host for a while) costs it the step it
/// was making, so each restart that did not help doubles the thread's wait, up to
/// [`MAX_STALL_TSC`]: on a loaded host a thread is not restarted over and over before
/// it makes a step.
const STALL_TSC: u64 = crate::harness::TIMEOUT_TSC / 5000;
const MAX_STALL_TSC: u64 = crate::harness::TIMEOUT_TSC / 20;

/// Per-thread words, shared with the suite: the next step, the generator's state,
/// done, and the outcomes of Calls (label 0, an seL4 error 1-10, anything else), of
/// the other system calls, and messages and replies from another fuzzing thread.
const STEP: usize = 0;
const STATE: usize = 1;
const DONE: usize = 2;
const REPLIED: usize = 3;
const ERRORS: usize = 4;
const OTHER_LABELS: usize = 5;
const NOT_CALLS: usize = 6;
const FROM_OTHERS: usize = 7;
/// The last Call answered with another label: the message info it got, the one it
/// sent, and its step << 16 | capability pointer.
const ODD_GOT: usize = 8;
const ODD_SENT: usize = 9;
const ODD_CALL: usize = 10;
/// Shaped paging operations that succeeded.
const PAGING_DONE: usize = 11;
const WORDS: usize = 12;

static THREAD_WORDS: [[AtomicU64; WORDS]; MAX_FUZZERS] =
    [const { [const { AtomicU64::new(0) }; WORDS] }; MAX_FUZZERS];
/// CPUs the victim may be moved to (read by the fuzzing threads).
static CPUS: AtomicU64 = AtomicU64::new(1);
/// The victim's first registers, in [`UserContext`] order (set before the fuzzing
/// starts): a WriteRegisters of the victim keeps the words the runtime's trampoline
/// uses (RIP, RSP, RFLAGS, RDX, RSI, RDI) and makes the rest random.
static VICTIM_START: [AtomicU64; VICTIM_KEPT.len()] =
    [const { AtomicU64::new(0) }; VICTIM_KEPT.len()];
/// Which [`UserContext`] words of the victim a WriteRegisters keeps: RIP, RSP, RFLAGS,
/// RDX, RSI, RDI.
const VICTIM_KEPT: [usize; 6] = [0, 1, 2, 6, 7, 8];
/// WriteRegisters of the victim made (all threads).
static VICTIM_WRITES: AtomicU64 = AtomicU64::new(0);

fn get(thread: usize, word: usize) -> u64 {
    THREAD_WORDS[thread][word].load(Ordering::SeqCst)
}

fn set(thread: usize, word: usize, value: u64) {
    THREAD_WORDS[thread][word].store(value, Ordering::SeqCst)
}

fn add(thread: usize, word: usize) {
    THREAD_WORDS[thread][word].fetch_add(1, Ordering::SeqCst);
}

fn next(state: &mut u64) -> u64 {
    // xorshift64*
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A word that often means something to a decoder.
fn word(state: &mut u64) -> u64 {
    let r = next(state);
    match r % 10 {
        0..=2 => r >> 8 & (SLOTS - 1),
        3 => 64,
        4 => r >> 8 & 15,
        5 => 1 << (r >> 8 & 63),
        6 => 0,
        7 => u64::MAX,
        8 => (r >> 8 & 0xffff) << 12,
        _ => r,
    }
}

/// A capability pointer: mostly a slot of the thread's CNode.
fn cptr(state: &mut u64) -> u64 {
    let r = next(state);
    match r % 100 {
        0 => r,
        1 => r >> 8 & (SLOTS - 1) | 1 << 40,
        _ => r >> 8 & (SLOTS - 1),
    }
}

/// One of the free slots of the thread's CNode, from the low bits of `r`.
fn free_slot(r: u64) -> u64 {
    slot::FIRST_FREE + (r & 31) % (SLOTS - slot::FIRST_FREE)
}

/// Labels no call of the concurrent test may carry, with what each becomes: a write of
/// the victim's registers (a random RIP in the suite's code), its rseq area (the
/// kernel would write at a random address of the suite's address space), a new CSpace
/// or fault endpoint for it (its faults could then reach a fuzzing thread, whose reply
/// writes its registers; a Resume would then run it there), SaveCaller (a send on a
/// saved reply capability is a reply with a random label; see [`REPLY_LABEL`]), and
/// breakpoints and single-stepping (so that the victim's only faults are refused
/// Waits: the test checks that, and that it still wakes at the end).
fn tame(label: u64) -> u64 {
    match label {
        l if l == InvocationLabel::TcbWriteRegisters as u64 => InvocationLabel::TcbSuspend as u64,
        l if l == InvocationLabel::TcbCopyRegisters as u64 => {
            InvocationLabel::TcbReadRegisters as u64
        }
        l if l == InvocationLabel::TcbSetRseq as u64 => InvocationLabel::TcbResume as u64,
        l if l == InvocationLabel::TcbConfigure as u64 => InvocationLabel::TcbReadRegisters as u64,
        l if l == InvocationLabel::TcbSetSpace as u64 => {
            InvocationLabel::TcbUnbindNotification as u64
        }
        l if l == InvocationLabel::CNodeSaveCaller as u64 => InvocationLabel::CNodeCopy as u64,
        l if l == InvocationLabel::TcbSetBreakpoint as u64
            || l == InvocationLabel::TcbConfigureSingleStepping as u64 =>
        {
            InvocationLabel::TcbGetBreakpoint as u64
        }
        l => l,
    }
}

/// Set in the label of every Reply and ReplyRecv of the concurrent test. A thread's
/// fault may reach another fuzzing thread (its fault endpoint slot can come to hold
/// the shared endpoint), and a reply to an unknown-system-call or user-exception
/// fault writes the faulter's registers (RIP included) from the reply's words; with
/// label 0 the faulter would then resume at a random RIP in the suite's code, in the
/// address space the suite shares with it. With a non-zero label it stays stopped, and
/// the suite restarts it.
const REPLY_LABEL: u64 = 1 << 20;

/// A fuzzing thread: makes system calls from where the last one stopped. Its argument
/// is its index, with [`CONCURRENT`] in the concurrent test.
fn fuzzer(argument: u64) {
    let me = (argument & 0xff) as usize;
    let concurrent = argument & CONCURRENT != 0;
    loop {
        let step = get(me, STEP);
        if step >= CALLS {
            set(me, DONE, 1);
            // Stops here for good (a receive on the null slot is a capability fault,
            // which the suite leaves unanswered): returning would make the runtime
            // suspend the thread through its own TCB capability, which it has not got.
            loop {
                keel_sys::syscall::recv(0);
            }
        }
        let mut state = get(me, STATE);
        let r = next(&mut state);
        let syscall = match r % 100 {
            0..=54 => number::CALL,
            55..=69 => number::NB_SEND,
            70..=79 => number::NB_RECV,
            80..=83 => number::SEND,
            84..=86 => number::RECV,
            87..=90 => number::REPLY,
            91..=93 => number::REPLY_RECV,
            94..=95 => number::YIELD,
            _ => (next(&mut state) % 1000) as i64,
        };
        let r = next(&mut state);
        let mut label = if r.is_multiple_of(10) {
            r >> 12
        } else {
            r % (invocation::COUNT + 2)
        };
        let mut length = match next(&mut state) % 8 {
            0 => next(&mut state) % 121,
            n => n - 1,
        };
        let mut extra = next(&mut state) % 4;
        let mut dest = cptr(&mut state);
        let mut mrs = [
            word(&mut state),
            word(&mut state),
            word(&mut state),
            word(&mut state),
        ];
        for i in 0..extra as usize {
            keel_sys::ipc::set_cap(i, cptr(&mut state));
        }
        for i in 4..length.min(24) as usize {
            keel_sys::ipc::set_buffer_mr(i, word(&mut state));
        }
        // Three Calls in five are shaped like a real paging, Retype or CNode operation
        // (random values in the right places, on the free slots: the CNode and
        // untyped capabilities they use stay), so that objects and mappings come and
        // go.
        let shape = next(&mut state);
        let paging = syscall == number::CALL && shape % 5 == 2;
        if paging {
            // A paging operation in the thread's address space: a paging structure or
            // frame (one it was given, or whatever is in a free slot) mapped at a
            // random place of a small window (so that they meet), with random rights
            // and attributes; unmapped; or asked its address.
            (extra, length) = (1, 3);
            keel_sys::ipc::set_cap(0, VSPACE_SLOT);
            // Mostly the operations of the object's own type: a map, one in four an
            // unmap (or for a frame, its address).
            let op = shape >> 16;
            let first = InvocationLabel::X86PdptMap as u64;
            (dest, label) = match shape >> 8 & 7 {
                n @ 0..=2 => (
                    PAGING_SLOTS[n as usize],
                    first + 2 * n + op.is_multiple_of(4) as u64,
                ),
                3 | 4 => (FRAME_SLOT, first + 6 + [0, 0, 1, 2][op as usize % 4]),
                _ => (free_slot(shape >> 11), first + op % 9),
            };
            let vaddr = (shape >> 25 & 7) << 12
                | (shape >> 28 & 3) << 21
                | (shape >> 30 & 1) << 30
                | (shape >> 31 & 1) << 39;
            mrs = [vaddr, shape >> 32 & 15, shape >> 36 & 7, 0];
        } else if syscall == number::CALL && shape % 5 < 2 {
            extra = 1;
            keel_sys::ipc::set_cap(0, slot::CNODE);
            if shape.is_multiple_of(5) {
                // Retype: type, size bits, node index 0 and depth 0 (the root CNode
                // itself), then offset and count in the buffer.
                (dest, label, length) = (slot::UNTYPED, 1, 6);
                mrs = [shape >> 8 & 15, shape >> 12 & 15, 0, 0];
                keel_sys::ipc::set_buffer_mr(4, free_slot(shape >> 16));
                keel_sys::ipc::set_buffer_mr(5, 1 + (shape >> 24 & 3));
            } else {
                // A CNode operation on slots of its own CNode at depth 64.
                (dest, label, length) = (slot::CNODE, 22 + (shape >> 8) % 9, 8);
                mrs = [free_slot(shape >> 12), 64, free_slot(shape >> 18), 64];
                keel_sys::ipc::set_buffer_mr(4, shape >> 24 & 15);
                keel_sys::ipc::set_buffer_mr(5, free_slot(shape >> 28));
                keel_sys::ipc::set_buffer_mr(6, 64);
                keel_sys::ipc::set_buffer_mr(7, free_slot(shape >> 34));
            }
        }
        if concurrent {
            let r = next(&mut state);
            let mut shaped_write = false;
            if syscall == number::CALL && r.is_multiple_of(8) {
                // An operation on the victim's TCB (where the capability still is).
                (dest, length, extra) = (VICTIM_SLOT, 1, 0);
                let cpus = CPUS.load(Ordering::Relaxed);
                (label, mrs[0]) = match r >> 8 & 15 {
                    0 | 8 => (InvocationLabel::TcbSuspend as u64, 0),
                    1 | 2 | 9 => (InvocationLabel::TcbResume as u64, 0),
                    15 => {
                        // WriteRegisters with resume: from its first registers (the
                        // trampoline's), the rest random; a running victim goes on
                        // from them, a blocked or stopped one restarts (its IPC
                        // cancelled), wherever it runs.
                        let count = 9 + (r >> 16) % (USER_CONTEXT_WORDS as u64 - 8);
                        length = 2 + count;
                        let mut words = [0u64; USER_CONTEXT_WORDS];
                        for w in words.iter_mut() {
                            *w = word(&mut state);
                        }
                        for (k, &i) in VICTIM_KEPT.iter().enumerate() {
                            words[i] = VICTIM_START[k].load(Ordering::Relaxed);
                        }
                        for (i, &w) in words.iter().enumerate().take(count as usize).skip(2) {
                            keel_sys::ipc::set_buffer_mr(2 + i, w);
                        }
                        mrs[1] = count;
                        (mrs[2], mrs[3]) = (words[0], words[1]);
                        VICTIM_WRITES.fetch_add(1, Ordering::Relaxed);
                        shaped_write = true;
                        (InvocationLabel::TcbWriteRegisters as u64, 1)
                    }
                    3 | 10 => (
                        InvocationLabel::TcbSetAffinity as u64,
                        (r >> 16) % (cpus + 1),
                    ),
                    4 | 11 => {
                        extra = 1;
                        keel_sys::ipc::set_cap(0, VICTIM_SLOT);
                        (InvocationLabel::TcbSetPriority as u64, (r >> 16) % 128)
                    }
                    5 | 12 => {
                        extra = 1;
                        keel_sys::ipc::set_cap(0, SHARED_NOTIFICATION_SLOT);
                        (InvocationLabel::TcbBindNotification as u64, 0)
                    }
                    6 | 13 => (InvocationLabel::TcbUnbindNotification as u64, 0),
                    14 => {
                        // CopyRegisters from the victim to itself, random flags
                        // (suspend the source, resume the target, frame, integer):
                        // its registers stay its own.
                        extra = 1;
                        keel_sys::ipc::set_cap(0, VICTIM_SLOT);
                        shaped_write = true;
                        (InvocationLabel::TcbCopyRegisters as u64, r >> 16 & 15)
                    }
                    _ => (InvocationLabel::TcbReadRegisters as u64, 0),
                };
            } else if r % 8 < 3 {
                // The shared endpoint or notification.
                dest = if r & 8 == 0 {
                    SHARED_EP_SLOT
                } else {
                    SHARED_NOTIFICATION_SLOT
                };
            }
            // Half the receives take a capability, if one comes with grant.
            if r >> 4 & 1 == 0 {
                let (index, depth) = (free_slot(r >> 24), 64);
                keel_sys::ipc::set_receive_slot(Cap::from_cptr(slot::CNODE), index, depth);
            } else {
                keel_sys::ipc::set_receive_slot(Cap::from_cptr(0), 0, 0);
            }
            if !shaped_write {
                label = tame(label);
            }
            if matches!(syscall, number::REPLY | number::REPLY_RECV) {
                label |= REPLY_LABEL;
            }
        }
        let info = MessageInfo::new(label, 0, extra, length);
        // Advanced before the call: a restarted thread goes on after it.
        set(me, STATE, state);
        set(me, STEP, step + 1);
        let got = keel_sys::syscall::with_number(syscall, dest, info, mrs);
        if syscall == number::CALL {
            // What a Call that the kernel returns from without a reply gets: its own
            // message (another thread's reply has its own label and words).
            let own = got.info.label() == label && got.mrs == mrs;
            if paging && got.info.label() == 0 {
                add(me, PAGING_DONE);
            }
            match got.info.label() {
                0 => add(me, REPLIED),
                1..=10 => add(me, ERRORS),
                _ if concurrent && !own => add(me, FROM_OTHERS),
                _ => {
                    add(me, OTHER_LABELS);
                    set(me, ODD_GOT, got.info.to_word());
                    set(me, ODD_SENT, info.to_word());
                    set(me, ODD_CALL, step << 16 | dest);
                }
            };
        } else {
            add(me, NOT_CALLS);
        }
        let receives = matches!(syscall, number::RECV | number::NB_RECV | number::REPLY_RECV);
        if receives && got.badge & !0xff == SHARED_BADGE && got.badge as usize & 0xff != me {
            add(me, FROM_OTHERS);
        }
    }
}

/// Times the victim has woken.
static VICTIM_WAKES: AtomicU64 = AtomicU64::new(0);

/// The victim of the concurrent test: waits on the shared notification for ever and
/// counts its wake-ups, with nothing but registers and one static word (its TLS and
/// IPC buffer may be moved under it).
fn victim(_: u64) {
    loop {
        keel_sys::syscall::with_number(
            number::RECV,
            VICTIM_WAITS_ON,
            MessageInfo::new(0, 0, 0, 0),
            [0; 4],
        );
        VICTIM_WAKES.fetch_add(1, Ordering::SeqCst);
    }
}

/// After the fuzzing: the victim, put back to its priority, unbound and resumed (as the
/// threads may have left it; a faulted victim redoes its Wait), still waits on the
/// notification and wakes when it is signalled. Its only faults were refused Waits (a
/// thread had bound the notification to a TCB it made, and seL4 refuses a Wait on a
/// notification bound to another thread).
fn victim_still_works(
    victim: Cap<Tcb>,
    notification: Cap<keel_sys::cap::Notification>,
    odd_fault: Option<(u64, [u64; 4])>,
) -> TestResult {
    if let Some((label, mrs)) = odd_fault {
        crate::fail!(
            "the victim faulted other than by a refused Wait: label {label}, MR0-3 {mrs:x?}"
        );
    }
    victim
        .set_priority(init::TCB, CHILD_PRIORITY as u64)
        .or_fail("the victim's priority")?;
    let _ = victim.unbind_notification();
    victim.resume().or_fail("resume the victim")?;
    for round in 0..3 {
        let before = VICTIM_WAKES.load(Ordering::SeqCst);
        notification.signal();
        ensure!(
            crate::harness::wait_until(|| VICTIM_WAKES.load(Ordering::SeqCst) > before),
            "round {round}: the victim did not wake for a signal ({before} wake-ups before)"
        );
    }
    Ok(())
}

/// One fuzzing thread and what it was given.
struct Fuzzer {
    untyped: Cap<Untyped>,
    space: Option<ServerCSpace>,
    thread: Option<Thread>,
    initial: UserContext,
    restarts: u64,
    faults: u64,
}

/// Makes fuzzing thread `index`: its untyped, its CSpace holding the fault endpoint
/// (badged with its index), a copy of the untyped and the objects listed, and the
/// thread (created, not started; its own TCB capability taken out of its CSpace). On
/// failure nothing of it stays behind.
fn make_fuzzer(
    env: &mut Env,
    index: usize,
    objects: &[(u64, u64, u64)],
    affinity: Option<u64>,
) -> Result<Fuzzer, crate::harness::Why> {
    let untyped = env.alloc.untyped(UNTYPED_BITS).or_fail("untyped")?;
    let space = match ServerCSpace::new(&mut env.alloc, FREE) {
        Ok(space) => space,
        Err(e) => {
            let _ = env.alloc.delete(untyped);
            return Err(e).or_fail("cspace");
        }
    };
    let mut fuzzer = Fuzzer {
        untyped,
        space: Some(space),
        thread: None,
        initial: UserContext::default(),
        restarts: 0,
        faults: 0,
    };
    match fuzzer.make(env, index, objects, affinity) {
        Ok(()) => Ok(fuzzer),
        Err(e) => {
            // Nothing it was given stays behind.
            let _ = fuzzer.destroy(env);
            let _ = env.alloc.delete(fuzzer.untyped);
            Err(e)
        }
    }
}

impl Fuzzer {
    /// [`make_fuzzer`]'s fallible part, on its untyped and CSpace.
    fn make(
        &mut self,
        env: &mut Env,
        index: usize,
        objects: &[(u64, u64, u64)],
        affinity: Option<u64>,
    ) -> TestResult {
        let Some(space) = &self.space else {
            crate::fail!("no cspace");
        };
        ensure!(space.size() == SLOTS, "{} slots", space.size());
        space
            .mint(
                slot::FAULT,
                env.fault_ep,
                CapRights::ALL,
                FAULT_BADGE + index as u64,
            )
            .or_fail("fault endpoint")?;
        space
            .copy(slot::UNTYPED, self.untyped, CapRights::ALL)
            .or_fail("untyped copy")?;
        // Capabilities of several types: copied by slot number.
        for &(at, cap, badge) in objects {
            let copied = if badge == 0 {
                space
                    .cnode
                    .copy(at, DEPTH, init::CNODE, cap, DEPTH, CapRights::ALL)
            } else {
                space
                    .cnode
                    .mint(at, DEPTH, init::CNODE, cap, DEPTH, CapRights::ALL, badge)
            };
            copied.or_fail("an object's capability")?;
        }
        let config = keel_rt::ThreadConfig {
            priority: CHILD_PRIORITY,
            fault_ep: slot::FAULT,
            affinity,
            cspace: Some(space.thread_cspace()),
        };
        let cnode = space.cnode;
        let argument = index as u64 | if affinity.is_some() { CONCURRENT } else { 0 };
        // Slot 1 takes the thread's TCB capability, which is taken out again before it
        // runs: with its own TCB the thread could write itself a random RIP and run the
        // suite's code, which shares its address space.
        self.thread = Some(
            env.alloc
                .create_thread(fuzzer, argument, config)
                .or_fail("create a fuzzing thread")?,
        );
        cnode
            .delete(slot::TCB, DEPTH)
            .or_fail("take the thread's own TCB capability away")?;
        self.initial = self
            .tcb()
            .read_registers(false, 0, USER_CONTEXT_WORDS)
            .or_fail("read the thread's first registers")?;
        Ok(())
    }

    fn tcb(&self) -> Cap<Tcb> {
        self.thread.as_ref().map_or(Cap::from_cptr(0), |t| t.tcb)
    }

    /// Starts it again from its entry (it carries on from its shared step).
    fn restart(&mut self) -> TestResult {
        self.restarts += 1;
        self.tcb().suspend().or_fail("suspend a fuzzing thread")?;
        self.tcb()
            .write_registers(true, 0, USER_CONTEXT_WORDS, &self.initial)
            .or_fail("restart a fuzzing thread")
    }

    /// Deletes the thread and its CSpace (with every object it made or was given);
    /// its untyped stays, for [`retypes_in_full`].
    fn destroy(&mut self, env: &mut Env) -> TestResult {
        if let Some(thread) = self.thread.take() {
            env.destroy(thread)?;
        }
        match self.space.take() {
            Some(space) => space.destroy(&mut env.alloc).or_fail("delete a cspace"),
            None => Ok(()),
        }
    }
}

/// Whether an untyped's memory is whole again: after a revoke, one object of its full
/// size fits (then that object and the untyped go).
fn retypes_in_full(env: &mut Env, untyped: Cap<Untyped>, seed: u64) -> TestResult {
    init::CNODE
        .revoke(untyped.cptr(), DEPTH)
        .or_fail("revoke the untyped")?;
    let whole = env.slot()?;
    let again = untyped.retype(
        ObjectType::Untyped,
        UNTYPED_BITS,
        init::CNODE,
        0,
        0,
        whole,
        1,
    );
    ensure!(
        again.is_ok(),
        "seed {seed:#x}: the untyped does not retype in full afterwards: {again:?}"
    );
    init::CNODE
        .delete(whole, DEPTH)
        .or_fail("delete the retyped untyped")?;
    env.alloc.delete(untyped).or_fail("delete the untyped")
}

/// Checks thread `i`'s outcomes: a Call that returns was answered by the kernel (label
/// 0 or one of seL4's errors, nothing else) or, in the concurrent test, by another
/// fuzzing thread (with Reply, ReplyRecv, or a send on a reply capability it saved
/// with SaveCaller: its label and words, not the caller's own); and every kind of
/// outcome happened.
fn outcomes(i: usize, seed: u64, f: &Fuzzer) -> Result<u64, crate::harness::Why> {
    let (replied, errors, others, not_calls) = (
        get(i, REPLIED),
        get(i, ERRORS),
        get(i, OTHER_LABELS),
        get(i, NOT_CALLS),
    );
    let paging = get(i, PAGING_DONE);
    let report = alloc::format!(
        "seed {seed:#x}: {replied} replied ({paging} paging), {errors} errors, {others} other \
         labels, {not_calls} not Calls, {} faults, {} restarts",
        f.faults,
        f.restarts
    );
    ensure!(
        others == 0,
        "info {:#x} back from a Call with info {:#x} (step << 16 | capability {:#x}): the \
         last Call that came back with a label that is neither 0 nor an error ({report})",
        get(i, ODD_GOT),
        get(i, ODD_SENT),
        get(i, ODD_CALL)
    );
    ensure!(
        replied > 0 && paging > 0 && errors > 0 && not_calls > 0 && f.faults > 0,
        "{report}: some kind never happened"
    );
    keel_sys::debug_put_string(alloc::format!("  fuzz {i}: {CALLS} calls, {report}\n").as_bytes());
    Ok(get(i, FROM_OTHERS))
}

fn reset_words() {
    VICTIM_WAKES.store(0, Ordering::SeqCst);
    VICTIM_WRITES.store(0, Ordering::SeqCst);
    for thread in &THREAD_WORDS {
        for word in thread {
            word.store(0, Ordering::SeqCst);
        }
    }
}

/// An address space for a fuzzing thread: a PML4 with an ASID (from the root task's
/// pool) and a PDPT, page directory and page table, none mapped yet.
struct Paging {
    vspace: Cap<Pml4>,
    tables: [u64; 3],
}

impl Paging {
    fn new(env: &mut Env) -> Result<Self, crate::harness::Why> {
        let vspace = env.alloc.create::<Pml4>().or_fail("pml4")?;
        init::ASID_POOL.assign(vspace).or_fail("assign an ASID")?;
        let pdpt = env.alloc.create::<Pdpt>().or_fail("pdpt")?;
        let directory = env
            .alloc
            .create::<PageDirectory>()
            .or_fail("page directory")?;
        let table = env.alloc.create::<PageTable>().or_fail("page table")?;
        Ok(Self {
            vspace,
            tables: [pdpt.cptr(), directory.cptr(), table.cptr()],
        })
    }

    /// Deletes them (the tables first: a table's deletion unmaps it).
    fn delete(self, env: &mut Env) -> TestResult {
        env.alloc
            .delete(Cap::<Pdpt>::from_cptr(self.tables[0]))
            .or_fail("delete the pdpt")?;
        env.alloc
            .delete(Cap::<PageDirectory>::from_cptr(self.tables[1]))
            .or_fail("delete the page directory")?;
        env.alloc
            .delete(Cap::<PageTable>::from_cptr(self.tables[2]))
            .or_fail("delete the page table")?;
        env.alloc.delete(self.vspace).or_fail("delete the pml4")
    }
}

/// One thread on the suite's CPU.
fn fuzz_alone(env: &mut Env) -> TestResult {
    reset_words();
    set(0, STATE, SEED);
    // Objects made for it (their capabilities also in the suite's CNode, deleted
    // after its CSpace's copies).
    let ep = env.endpoint()?;
    let notification = env.notification()?;
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let paging = Paging::new(env)?;
    let objects = [
        (slot::SERVE, ep.cptr(), 0),
        (slot::FIRST_FREE, ep.cptr(), 5),
        (slot::FIRST_FREE + 1, notification.cptr(), 0),
        (slot::FIRST_FREE + 2, notification.cptr(), 3),
        (FRAME_SLOT, frame.cptr(), 0),
        (VSPACE_SLOT, paging.vspace.cptr(), 0),
        (PAGING_SLOTS[0], paging.tables[0], 0),
        (PAGING_SLOTS[1], paging.tables[1], 0),
        (PAGING_SLOTS[2], paging.tables[2], 0),
    ];
    let made = make_fuzzer(env, 0, &objects, None);
    let result = match made {
        Ok(mut f) => {
            let ran = (|| {
                f.tcb().resume().or_fail("start the fuzzing thread")?;
                let started = keel_sys::rdtsc();
                // The thread runs at a higher priority, on this CPU: the suite runs
                // again only when it has stopped (blocked for good, or stopped by a
                // fault the suite does not answer) or is done.
                loop {
                    while env.fault_ep.nb_recv().is_some() {
                        f.faults += 1;
                    }
                    if get(0, DONE) != 0 {
                        return Ok(());
                    }
                    f.restart()?;
                    ensure!(
                        keel_sys::rdtsc().wrapping_sub(started) < 20 * crate::harness::TIMEOUT_TSC,
                        "seed {SEED:#x}: step {} of {CALLS} after {} restarts: too slow",
                        get(0, STEP),
                        f.restarts
                    );
                }
            })();
            let destroyed = f.destroy(env);
            ran.and(destroyed)
                .and_then(|()| retypes_in_full(env, f.untyped, SEED))
                .and_then(|()| outcomes(0, SEED, &f).map(|_| ()))
        }
        Err(e) => Err(e),
    };
    env.alloc.delete(frame).or_fail("delete the frame")?;
    paging.delete(env)?;
    env.alloc.delete(ep).or_fail("delete the endpoint")?;
    env.alloc
        .delete(notification)
        .or_fail("delete the notification")?;
    result
}

/// One thread per CPU (at least two, at most [`MAX_FUZZERS`]) at once, sharing an
/// endpoint, a notification and a victim thread.
fn fuzz_concurrently(env: &mut Env) -> TestResult {
    reset_words();
    let cpus = env.info.num_nodes().max(1);
    CPUS.store(cpus, Ordering::SeqCst);
    let count = (cpus as usize).clamp(2, MAX_FUZZERS);
    let seed = |i: usize| SEED ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let ep = env.endpoint()?;
    let notification = env.notification()?;
    // One address space for all of them, and a frame each maps where it likes.
    let frame = env.alloc.frame(ObjectType::X86Page4K).or_fail("frame")?;
    let paging = Paging::new(env)?;
    // The victim: a confined thread that waits on the shared notification.
    let victim_space = ServerCSpace::new(&mut env.alloc, FREE).or_fail("victim's cspace")?;
    let mut result = (|| {
        victim_space
            .mint(
                slot::FAULT,
                env.fault_ep,
                CapRights::ALL,
                VICTIM_FAULT_BADGE,
            )
            .or_fail("victim's fault endpoint")?;
        victim_space
            .copy(VICTIM_WAITS_ON, notification, CapRights::ALL)
            .or_fail("victim's notification")?;
        Ok(())
    })();
    let config = keel_rt::ThreadConfig {
        priority: CHILD_PRIORITY,
        fault_ep: slot::FAULT,
        affinity: Some(cpus - 1),
        cspace: Some(victim_space.thread_cspace()),
    };
    let victim = match result {
        Ok(()) => env
            .alloc
            .create_thread(victim, 0, config)
            .or_fail("create the victim")
            .map(Some)?,
        Err(_) => None,
    };
    let mut fuzzers = alloc::vec::Vec::new();
    if let Some(v) = &victim {
        result = (|| {
            let first = v
                .tcb
                .read_registers(false, 0, USER_CONTEXT_WORDS)
                .or_fail("the victim's first registers")?
                .to_words();
            for (k, &i) in VICTIM_KEPT.iter().enumerate() {
                VICTIM_START[k].store(first[i], Ordering::SeqCst);
            }
            victim_space
                .cnode
                .delete(slot::TCB, DEPTH)
                .or_fail("take the victim's own TCB capability away")?;
            v.tcb
                .set_mc_priority(init::TCB, CHILD_PRIORITY as u64)
                .or_fail("victim's MCP")?;
            v.start().or_fail("start the victim")?;
            for i in 0..count {
                set(i, STATE, seed(i));
                let objects = [
                    (slot::SERVE, ep.cptr(), 0),
                    (SHARED_EP_SLOT, ep.cptr(), SHARED_BADGE + i as u64),
                    (SHARED_NOTIFICATION_SLOT, notification.cptr(), 1 << i),
                    (VICTIM_SLOT, v.tcb.cptr(), 0),
                    (FRAME_SLOT, frame.cptr(), 0),
                    (VSPACE_SLOT, paging.vspace.cptr(), 0),
                    (PAGING_SLOTS[0], paging.tables[0], 0),
                    (PAGING_SLOTS[1], paging.tables[1], 0),
                    (PAGING_SLOTS[2], paging.tables[2], 0),
                ];
                fuzzers.push(make_fuzzer(env, i, &objects, Some(i as u64 % cpus))?);
            }
            Ok(())
        })();
    }
    let mut victim_faults = 0u64;
    let mut odd_victim_fault = None;
    let mut elapsed = 0u64;
    if result.is_ok() {
        result = (|| {
            for f in &fuzzers {
                f.tcb().resume().or_fail("start a fuzzing thread")?;
            }
            let started = keel_sys::rdtsc();
            // Per thread: its step when last seen to change, then, and how long it
            // may stay there.
            let mut seen = [(0u64, started, STALL_TSC); MAX_FUZZERS];
            // The suite runs at a lower priority than the threads: on its own CPU
            // whenever the thread there has stopped; the others it watches.
            loop {
                while let Some(fault) = env.fault_ep.nb_recv() {
                    match fault.badge {
                        VICTIM_FAULT_BADGE => {
                            victim_faults += 1;
                            // Its Wait refused (seL4: a capability fault, missing
                            // capability, in the receive phase): a fuzzing thread has
                            // bound the notification to a TCB it made.
                            let refused = fault.info.label() == 1
                                && fault.regs[1..] == [VICTIM_WAITS_ON, 1, 2];
                            if !refused {
                                odd_victim_fault = Some((fault.info.label(), fault.regs));
                            }
                        }
                        b if (FAULT_BADGE..FAULT_BADGE + count as u64).contains(&b) => {
                            let i = (b - FAULT_BADGE) as usize;
                            fuzzers[i].faults += 1;
                            if get(i, DONE) == 0 {
                                fuzzers[i].restart()?;
                                seen[i] = (get(i, STEP), keel_sys::rdtsc(), seen[i].2);
                            }
                        }
                        b => ensure!(false, "a fault message with badge {b:#x}"),
                    }
                }
                if (0..count).all(|i| get(i, DONE) != 0) {
                    return Ok(());
                }
                let now = keel_sys::rdtsc();
                for (i, f) in fuzzers.iter_mut().enumerate() {
                    let step = get(i, STEP);
                    if get(i, DONE) != 0 {
                        continue;
                    }
                    if step != seen[i].0 {
                        seen[i] = (step, now, STALL_TSC);
                    } else if now.wrapping_sub(seen[i].1) > seen[i].2 {
                        f.restart()?;
                        let patience = (seen[i].2 * 2).min(MAX_STALL_TSC);
                        seen[i] = (step, keel_sys::rdtsc(), patience);
                    }
                }
                elapsed = now.wrapping_sub(started);
                ensure!(
                    now.wrapping_sub(started) < 40 * crate::harness::TIMEOUT_TSC,
                    "seed {SEED:#x}: steps {:?} of {CALLS}: too slow",
                    (0..count)
                        .map(|i| get(i, STEP))
                        .collect::<alloc::vec::Vec<_>>()
                );
            }
        })();
    }
    // Everything goes: the threads, the victim (once it is seen to work), the CSpaces
    // (with every object the threads made or were sent), the shared objects; then each
    // untyped must be whole again.
    for f in &mut fuzzers {
        let destroyed = f.destroy(env);
        result = result.and(destroyed);
    }
    if let Some(v) = &victim {
        result = result.and_then(|()| victim_still_works(v.tcb, notification, odd_victim_fault));
    }
    if let Some(v) = victim {
        result = result.and(env.destroy(v));
    }
    result = result.and(
        victim_space
            .destroy(&mut env.alloc)
            .or_fail("victim's cspace"),
    );
    result = result.and(env.alloc.delete(frame).or_fail("delete the frame"));
    result = result.and(paging.delete(env));
    result = result.and(env.alloc.delete(ep).or_fail("delete the endpoint"));
    result = result.and(
        env.alloc
            .delete(notification)
            .or_fail("delete the notification"),
    );
    let mut from_others = 0;
    for (i, f) in fuzzers.iter().enumerate() {
        result = result.and_then(|()| retypes_in_full(env, f.untyped, seed(i)));
        result = result.and_then(|()| outcomes(i, seed(i), f).map(|n| from_others += n));
    }
    result?;
    keel_sys::debug_put_string(
        alloc::format!(
            "  fuzz: {count} threads on {cpus} CPUs: {from_others} messages from another \
             thread; the victim woke {} times, its Wait was refused {victim_faults} times, \
             its registers were written {} times; {} M TSC ticks\n",
            VICTIM_WAKES.load(Ordering::SeqCst),
            VICTIM_WRITES.load(Ordering::SeqCst),
            elapsed / 1_000_000
        )
        .as_bytes(),
    );
    ensure!(
        from_others > 0,
        "the threads never received a message from each other"
    );
    ensure!(
        VICTIM_WRITES.load(Ordering::SeqCst) > 0,
        "no thread wrote the victim's registers"
    );
    Ok(())
}
