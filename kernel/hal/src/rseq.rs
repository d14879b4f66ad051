//! Kernel restartable sequences: per-CPU updates that interrupt and NMI handlers may
//! also make, done without CLI/STI (which does not hold off an NMI anyway) and without
//! LOCK.
//!
//! A sequence is a few instructions that read per-CPU state and end in one committing
//! store. The [`rseq!`](crate::rseq) macro writes it and emits its descriptor
//! `(start, end, restart)` into the `.keel_rseq` linker section, `end` being the
//! address after the commit. Every interrupt, exception and NMI that interrupts kernel
//! mode asks [`restart_address`]: if the interrupted RIP lies in `[start, end)` the
//! sequence has not committed, and the return RIP becomes `restart` (its start), so it
//! re-reads whatever the handler changed. No instruction-prefix marker is involved:
//! membership is decided by the table alone (a REX 0x40 prefix is not a no-op).
//!
//! [`init`] copies the table, checks that it is sorted and that the sequences are
//! disjoint (it sorts the copy if the linker did not keep address order) and makes it
//! visible to the handlers. Users in this crate: the per-CPU event counters
//! ([`count_event`]) and the per-CPU trace ring ([`trace`]).

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::percpu::{
    Event, OFFSET_DEFERRED, OFFSET_EVENTS, OFFSET_SELF, OFFSET_TRACE, OFFSET_TRACE_HEAD,
};

/// One sequence: interrupted at `start <= rip < end`, it resumes at `restart`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// First instruction.
    pub start: u64,
    /// Address after the committing instruction.
    pub end: u64,
    /// Where an interrupted sequence resumes.
    pub restart: u64,
}

/// Writes a restartable sequence: `rseq!(body: ["insn", ...], commit: "insn", operands)`.
/// Optional `before: [...]` and `after: [...]` lists (in that order, ahead of `body`)
/// are instructions run just before and just after the sequence in the same block.
///
/// The body may read anything but must write only registers that it initialises
/// itself (it runs again from the top after an interruption); the commit is one
/// instruction, the single store that publishes the result. Labels 2 and 3 belong to
/// the macro.
#[macro_export]
macro_rules! rseq {
    (
        $(before: [$($b:literal),* $(,)?],)?
        $(after: [$($a:literal),* $(,)?],)?
        body: [$($body:literal),* $(,)?],
        commit: $commit:literal,
        $($operands:tt)*
    ) => {
        core::arch::asm!(
            $($($b,)*)?
            "2:",
            $($body,)*
            $commit,
            "3:",
            ".pushsection .keel_rseq, \"a\"",
            ".balign 8",
            ".quad 2b, 3b, 2b",
            ".popsection",
            $($($a,)*)?
            $($operands)*
        )
    };
}

unsafe extern "C" {
    static __keel_rseq_start: Descriptor;
    static __keel_rseq_end: Descriptor;
}

/// Most sequences the kernel may hold.
const MAX_SEQUENCES: usize = 64;

struct Table(core::cell::UnsafeCell<[Descriptor; MAX_SEQUENCES]>);
// SAFETY: written only by `init` on the bootstrap CPU before `COUNT` is published
// (release); read only after `COUNT` is read (acquire), never written again.
unsafe impl Sync for Table {}

static TABLE: Table = Table(core::cell::UnsafeCell::new(
    [Descriptor {
        start: 0,
        end: 0,
        restart: 0,
    }; MAX_SEQUENCES],
));
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn section() -> &'static [Descriptor] {
    // SAFETY: the linker places only `Descriptor` records (three quads, 8-aligned,
    // emitted by `rseq!`) between these two symbols.
    unsafe {
        let start = &raw const __keel_rseq_start;
        let end = &raw const __keel_rseq_end;
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// Whether the linker section is in address order, and its length.
pub fn section_sorted() -> (bool, usize) {
    let s = section();
    (s.windows(2).all(|w| w[0].start <= w[1].start), s.len())
}

/// Loads the table (bootstrap CPU, before interrupts are enabled anywhere).
pub fn init() {
    let section = section();
    assert!(
        section.len() <= MAX_SEQUENCES,
        "{} restartable sequences, at most {MAX_SEQUENCES}",
        section.len()
    );
    // SAFETY: see `Table`: only this function writes, before COUNT is published.
    let table = unsafe { &mut *TABLE.0.get() };
    table[..section.len()].copy_from_slice(section);
    let table = &mut table[..section.len()];
    let (sorted, _) = section_sorted();
    if !sorted {
        log::debug!("rseq: linker table not in address order; sorted at boot");
        table.sort_unstable_by_key(|d| d.start);
    }
    for d in table.iter() {
        assert!(
            d.start < d.end && d.restart >= d.start && d.restart < d.end,
            "bad restartable sequence {d:x?}"
        );
    }
    for w in table.windows(2) {
        assert!(
            w[0].end <= w[1].start,
            "overlapping restartable sequences {:x?} {:x?}",
            w[0],
            w[1]
        );
    }
    COUNT.store(section.len(), Ordering::Release);
    log::debug!("rseq: {} kernel restartable sequences", section.len());
}

/// The sorted table.
pub fn table() -> &'static [Descriptor] {
    let n = COUNT.load(Ordering::Acquire);
    // SAFETY: the first `n` entries were written before COUNT was published.
    unsafe { &(&*TABLE.0.get())[..n] }
}

/// Where an interrupted kernel RIP must resume: `Some(restart)` if it lies inside a
/// sequence that has not committed. Binary search; safe in NMI context.
pub fn restart_address(rip: u64) -> Option<u64> {
    let t = table();
    let i = t.partition_point(|d| d.start <= rip);
    let d = t.get(i.checked_sub(1)?)?;
    (rip < d.end).then_some(d.restart)
}

/// Applies the restart rule to an interrupted kernel frame's RIP (every kernel-mode
/// interrupt, exception and NMI calls this first). Returns whether it restarted.
pub fn fix_interrupted(rip: &mut u64) -> bool {
    if crate::switches::is_off(crate::switches::Switch::Rseq) {
        return false;
    }
    match restart_address(*rip) {
        Some(r) => {
            *rip = r;
            bump(Event::RseqRestart);
            true
        }
        None => false,
    }
}

/// Adds one to this CPU's counter of `event`: load, add, store as a restartable
/// sequence (an NMI that counts the same event in between is never lost).
#[inline(always)]
pub fn count_event(event: Event) {
    // SAFETY: GS points at this CPU's PerCpu (module invariant of `percpu`); the
    // sequence touches only its `events` array; an interruption before the store
    // restarts it from the load.
    unsafe {
        crate::rseq!(
            body: [
                "mov {v}, qword ptr gs:[{off} + {i} * 8]",
                "add {v}, 1",
            ],
            commit: "mov qword ptr gs:[{off} + {i} * 8], {v}",
            off = const OFFSET_EVENTS,
            i = in(reg) event as u64,
            v = out(reg) _,
            options(nostack, preserves_flags),
        );
    }
}

/// Records vector `vector` (32–255) as taken but not handled on this CPU (the
/// interrupt path, inside a preemption window). An NMI in the middle restarts it.
pub fn defer_interrupt(vector: u64) {
    let (word, bit) = (vector / 64 % 4, 1u64 << (vector % 64));
    // SAFETY: GS points at this CPU's PerCpu; the sequence touches only its
    // `deferred_interrupts` word; an interruption before the store restarts it.
    unsafe {
        crate::rseq!(
            body: [
                "mov {v}, qword ptr gs:[{off} + {w} * 8]",
                "or {v}, {bit}",
            ],
            commit: "mov qword ptr gs:[{off} + {w} * 8], {v}",
            off = const OFFSET_DEFERRED,
            w = in(reg) word,
            bit = in(reg) bit,
            v = out(reg) _,
            options(nostack),
        );
    }
}

/// Takes the lowest deferred vector of this CPU, if any (the kernel, at the end of
/// the entry whose preemption point let it in).
pub fn take_deferred_interrupt() -> Option<u64> {
    for word in 0..4u64 {
        let before: u64;
        // SAFETY: as in `defer_interrupt`: the sequence loads the word and stores it
        // without its lowest set bit; an interruption before the store restarts it
        // from the load, so a bit set meanwhile is kept.
        unsafe {
            crate::rseq!(
                body: [
                    "mov {v}, qword ptr gs:[{off} + {w} * 8]",
                    "lea {rest}, [{v} - 1]",
                    "and {rest}, {v}",
                ],
                commit: "mov qword ptr gs:[{off} + {w} * 8], {rest}",
                off = const OFFSET_DEFERRED,
                w = in(reg) word,
                v = out(reg) before,
                rest = out(reg) _,
                options(nostack),
            );
        }
        if before != 0 {
            return Some(word * 64 + before.trailing_zeros() as u64);
        }
    }
    None
}

/// Whether this CPU has deferred interrupts (a few instructions: every general-path
/// exit asks).
#[inline]
pub fn deferred_interrupts() -> bool {
    let d = &crate::percpu::current().deferred_interrupts;
    (d[0] | d[1] | d[2] | d[3]) != 0
}

/// As [`count_event`] but from a handler: the same code (handlers nest inside it).
fn bump(event: Event) {
    count_event(event);
}

/// Appends `(event, argument, tsc)` to this CPU's trace ring (the oldest entry is
/// overwritten). The slot writes and the head update form one sequence: an
/// interrupting handler that traces takes the slot and advances the head, and this
/// sequence restarts into the next slot.
#[inline(always)]
pub fn trace(event: Event, argument: u64) {
    let tsc = crate::cpu::rdtsc();
    // SAFETY: GS points at this CPU's PerCpu; the slot index is masked to the ring; the
    // only store that publishes anything is the head update, and everything before it
    // is redone after an interruption.
    unsafe {
        crate::rseq!(
            body: [
                "mov {head}, qword ptr gs:[{head_off}]",
                "mov {slot}, {head}",
                "and {slot}, {mask}",
                "shl {slot}, 5",
                "add {slot}, qword ptr gs:[{self_off}]",
                "mov qword ptr [{slot} + {ring}], {event}",
                "mov qword ptr [{slot} + {ring} + 8], {arg}",
                "mov qword ptr [{slot} + {ring} + 16], {tsc}",
                "add {head}, 1",
            ],
            commit: "mov qword ptr gs:[{head_off}], {head}",
            head_off = const OFFSET_TRACE_HEAD,
            self_off = const OFFSET_SELF,
            ring = const OFFSET_TRACE,
            mask = const crate::percpu::TRACE_ENTRIES - 1,
            event = in(reg) event as u64,
            arg = in(reg) argument,
            tsc = in(reg) tsc,
            head = out(reg) _,
            slot = out(reg) _,
            options(nostack),
        );
    }
}

/// Test support: single-steps one counter sequence (TF set just before it), and at
/// the `target`-th single-step trap acts as an interrupting handler that counts the
/// same event. Returns the trap records (see [`crate::percpu::Injection`]).
pub fn inject_at(target: u64, event: Event) -> crate::percpu::Injection {
    let area =
        crate::percpu::current() as *const crate::percpu::PerCpu as *mut crate::percpu::PerCpu;
    // SAFETY: this CPU's own area, interrupts disabled; the #DB handler reads it on
    // this CPU only, while this function waits in the stepped code.
    unsafe {
        (*area).injection = crate::percpu::Injection {
            armed: true,
            target,
            event: event as u64,
            ..Default::default()
        };
    }
    // SAFETY: sets TF around one counter sequence; the IST #DB handler sees `armed`
    // and only counts steps (and at the target step bumps the counter and applies the
    // restart rule). The final POPF clears TF (a last trap follows it, still armed).
    unsafe {
        crate::rseq!(
            before: [
                "pushfq",
                "or qword ptr [rsp], 0x100",
                "popfq",
                "nop",
            ],
            after: [
                "pushfq",
                "and qword ptr [rsp], ~0x100",
                "popfq",
            ],
            body: [
                "mov {v}, qword ptr gs:[{off} + {i} * 8]",
                "add {v}, 1",
            ],
            commit: "mov qword ptr gs:[{off} + {i} * 8], {v}",
            off = const OFFSET_EVENTS,
            i = in(reg) event as u64,
            v = out(reg) _,
        );
    }
    // SAFETY: as above; TF is clear now, so no handler touches the record any more.
    unsafe {
        (*area).injection.armed = false;
        (*area).injection
    }
}

/// The `#DB` handler's part of [`inject_at`]: a single-step trap in kernel mode while
/// an injection is armed. Returns true if it handled the trap.
pub(crate) fn injection_step(rip: &mut u64) -> bool {
    let area =
        crate::percpu::current() as *const crate::percpu::PerCpu as *mut crate::percpu::PerCpu;
    // SAFETY: this CPU's area; the stepped code on this CPU is stopped in this trap.
    let inj = unsafe { &mut (*area).injection };
    if !inj.armed {
        return false;
    }
    inj.steps += 1;
    if inj.steps == inj.target {
        inj.injected_rip = *rip;
        // The interruption: a handler counting the same event.
        count_event(Event::from_u64(inj.event));
        inj.restarted = fix_interrupted(rip);
    }
    true
}

/// Microbenchmark of one per-CPU counter update, printed as JSON lines (the bench
/// image): rseq, CLI/STI, PUSHF/CLI/POPF, LOCK ADD, and a plain single-instruction
/// `add gs:[..]` for reference. Instructions per update under `--icount`.
pub fn bench() {
    const N: u64 = 1000;
    const ROUNDS: usize = 101;
    fn run(name: &str, f: fn()) {
        let mut samples = [0u64; ROUNDS];
        for s in samples.iter_mut() {
            let t0 = crate::cpu::rdtsc();
            for _ in 0..N {
                f();
            }
            *s = crate::cpu::rdtsc() - t0;
        }
        let empty = {
            let mut e = [0u64; ROUNDS];
            for s in e.iter_mut() {
                let t0 = crate::cpu::rdtsc();
                for _ in 0..N {
                    core::hint::black_box(());
                }
                *s = crate::cpu::rdtsc() - t0;
            }
            e.sort_unstable();
            e[ROUNDS / 2]
        };
        samples.sort_unstable();
        let per = |v: u64| v.saturating_sub(empty) as f64 / N as f64;
        crate::println!(
            "{{\"name\":\"{name}\",\"median\":{:.2},\"min\":{:.2},\"max\":{:.2},\"iterations\":{},\"unit\":\"tsc\",\"loop_overhead_subtracted\":true}}",
            per(samples[ROUNDS / 2]),
            per(samples[0]),
            per(samples[ROUNDS - 1]),
            N * ROUNDS as u64
        );
    }
    run("percpu_counter_rseq", || count_event(Event::Bench));
    run("percpu_counter_cli_sti", || {
        // SAFETY: a per-CPU counter update with interrupts held off; the kernel runs
        // with interrupts disabled, so STI is immediately undone by the next CLI of the
        // loop and no interrupt handler runs on a half-done state (NMIs still can).
        unsafe {
            core::arch::asm!(
                "cli",
                "mov {v}, qword ptr gs:[{off} + {i} * 8]",
                "add {v}, 1",
                "mov qword ptr gs:[{off} + {i} * 8], {v}",
                "sti",
                "cli",
                off = const OFFSET_EVENTS,
                i = in(reg) Event::Bench as u64,
                v = out(reg) _,
                options(nostack),
            )
        }
    });
    run("percpu_counter_pushf_cli_popf", || {
        // SAFETY: as above, restoring the previous interrupt flag with POPF.
        unsafe {
            core::arch::asm!(
                "pushfq",
                "cli",
                "mov {v}, qword ptr gs:[{off} + {i} * 8]",
                "add {v}, 1",
                "mov qword ptr gs:[{off} + {i} * 8], {v}",
                "popfq",
                off = const OFFSET_EVENTS,
                i = in(reg) Event::Bench as u64,
                v = out(reg) _,
            )
        }
    });
    run("percpu_counter_lock_add", || {
        // SAFETY: an atomic add to this CPU's counter.
        unsafe {
            core::arch::asm!(
                "lock add qword ptr gs:[{off} + {i} * 8], 1",
                off = const OFFSET_EVENTS,
                i = in(reg) Event::Bench as u64,
                options(nostack),
            )
        }
    });
    run("percpu_counter_single_add", || {
        // SAFETY: one read-modify-write instruction on this CPU's counter (interrupts
        // arrive only between instructions).
        unsafe {
            core::arch::asm!(
                "add qword ptr gs:[{off} + {i} * 8], 1",
                off = const OFFSET_EVENTS,
                i = in(reg) Event::Bench as u64,
                options(nostack),
            )
        }
    });
    run("percpu_trace_rseq", || trace(Event::Bench, 7));
}
