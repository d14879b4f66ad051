//! The root task of the bench image: the operations of DESIGN §8, measured with RDTSC.
//!
//! Under `cargo run -- --image bench --icount` the TSC counts executed instructions, so
//! every figure is an exact instruction count per operation (unit `instructions`);
//! otherwise it is TSC cycles. Each result is one JSON line: name, median, min, max,
//! iterations, unit, cpu, accelerator. Figures include the user-side system-call stubs
//! and one TSC read, like sel4bench's.
//!
//! Threads that must be in another address space run in a clone of the root task's
//! image (`Allocator::clone_image_vspace`), so they share its statics: timestamps pass
//! through them.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use keel_abi::message::MessageInfo;
use keel_rt::Allocator;
use keel_rt::ThreadConfig;
use keel_rt::println;
use keel_sys::cap::{Cap, Endpoint, Frame, Notification, init};
use keel_sys::syscall as raw;

keel_sys::entry_point!(main);

/// Measurements per benchmark (the median is reported).
const SAMPLES: usize = 101;
/// Warm-up rounds before measuring.
const WARMUP: usize = 10;

static T0: AtomicU64 = AtomicU64::new(0);
static T1: AtomicU64 = AtomicU64::new(0);
static ENDPOINT: AtomicU64 = AtomicU64::new(0);
static NOTIFICATION: AtomicU64 = AtomicU64::new(0);
static WORDS: AtomicU64 = AtomicU64::new(0);

fn rdtsc() -> u64 {
    keel_sys::rdtsc()
}

struct Report {
    unit: &'static str,
    accelerator: &'static str,
    cpu: [u8; 48],
}

impl Report {
    fn new() -> Self {
        let flags = keel_sys::debug_platform_flags();
        let unit = if flags & keel_abi::syscall::PLATFORM_ICOUNT != 0 {
            "instructions"
        } else {
            "cycles"
        };
        let accelerator = if flags & keel_abi::syscall::PLATFORM_KVM != 0 {
            "kvm"
        } else {
            "tcg"
        };
        Self {
            unit,
            accelerator,
            cpu: keel_sys::cpu_brand(),
        }
    }

    fn print(&self, name: &str, samples: &mut [u64]) {
        samples.sort_unstable();
        let cpu = core::str::from_utf8(&self.cpu)
            .unwrap_or("?")
            .trim_matches(|c: char| c == '\0' || c == ' ');
        println!(
            "{{\"name\":\"{name}\",\"median\":{},\"min\":{},\"max\":{},\"iterations\":{},\"unit\":\"{}\",\"cpu\":\"{cpu}\",\"accelerator\":\"{}\"}}",
            samples[samples.len() / 2],
            samples[0],
            samples[samples.len() - 1],
            samples.len(),
            self.unit,
            self.accelerator
        );
    }
}

/// FPU use of the IPC round-trip pair: default threads that do not touch the FPU,
/// both touching it every round trip ([`FPU_TOUCH`]), or both FPU-disabled.
static FPU_MODE: AtomicU64 = AtomicU64::new(0);
const FPU_TOUCH: u64 = 1;
const FPU_DISABLED: u64 = 2;

fn info(words: u64) -> MessageInfo {
    MessageInfo::new(0, 0, 0, words)
}

/// Server: answers every call with ReplyRecv, stamping T1 on receipt and T0 just
/// before replying. A 0-word reply loads no message register (as sel4bench's stubs).
fn server(_: u64) {
    let ep = ENDPOINT.load(Ordering::Relaxed);
    let words = WORDS.load(Ordering::Relaxed);
    let touch = FPU_MODE.load(Ordering::Relaxed) == FPU_TOUCH;
    if words == 0 {
        serve(ep, touch, || raw::reply_recv_registers(ep, info(0), []));
    } else {
        serve(ep, touch, || raw::reply_recv(ep, info(words), [0; 4]));
    }
}

#[inline(always)]
fn serve(ep: u64, touch: bool, reply_recv: impl Fn() -> raw::RawReceive) -> ! {
    let mut r = raw::recv(ep);
    loop {
        T1.store(rdtsc(), Ordering::Relaxed);
        let _ = r;
        if touch {
            keel_sys::fpu::touch();
        }
        T0.store(rdtsc(), Ordering::Relaxed);
        r = reply_recv();
    }
}

/// The client's side of the IPC benchmarks: `call` each round, after the warm-up
/// rounds one-way Call, one-way ReplyRecv and round-trip times.
#[inline(never)]
fn ipc_samples(touch: bool, call: impl Fn()) -> [[u64; SAMPLES]; 3] {
    let [mut calls, mut replies, mut round_trips] = [[0u64; SAMPLES]; 3];
    for i in 0..WARMUP + SAMPLES {
        if touch {
            keel_sys::fpu::touch();
        }
        let start = rdtsc();
        call();
        let end = rdtsc();
        if i >= WARMUP {
            let j = i - WARMUP;
            calls[j] = T1.load(Ordering::Relaxed) - start;
            replies[j] = end - T0.load(Ordering::Relaxed);
            round_trips[j] = end - start;
        }
    }
    [calls, replies, round_trips]
}

/// Waits on the notification forever, stamping T1 after each wake-up.
fn waiter(_: u64) {
    let n = NOTIFICATION.load(Ordering::Relaxed);
    loop {
        raw::recv(n);
        T1.store(rdtsc(), Ordering::Relaxed);
    }
}

/// Receives forever (for Send to a higher-priority thread), stamping T1.
fn receiver(_: u64) {
    let ep = ENDPOINT.load(Ordering::Relaxed);
    loop {
        raw::recv(ep);
        T1.store(rdtsc(), Ordering::Relaxed);
    }
}

/// Faults forever; the handler skips the faulting instruction.
fn faulter(_: u64) {
    loop {
        T0.store(rdtsc(), Ordering::Relaxed);
        keel_sys::probe::ud2();
        T1.store(rdtsc(), Ordering::Relaxed);
    }
}

fn main(boot: u64) -> u64 {
    let Some(bootinfo) = keel_rt::init(boot) else {
        println!("bench: no boot info");
        return 1;
    };
    let report = Report::new();
    let mut alloc = Allocator::new(&bootinfo);
    let mut samples = [0u64; SAMPLES];

    // A system call that does nothing but enter and leave the kernel.
    for s in samples.iter_mut() {
        let start = rdtsc();
        raw::yield_now();
        *s = rdtsc() - start;
    }
    report.print("null_syscall_yield", &mut samples);

    // IPC between two address spaces: a client here, a server in a clone.
    let ep = alloc.create::<Endpoint>().expect("endpoint");
    ENDPOINT.store(ep.cptr(), Ordering::Relaxed);
    let other = alloc
        .clone_image_vspace(&bootinfo)
        .expect("second address space");
    let priority = 200;
    for (words, fastpath, suffix, fpu) in [
        (0u64, true, "", 0),
        (0, false, "_slowpath", 0),
        (10, true, "_10_words", 0),
        (0, true, "_fpu", FPU_TOUCH),
        (0, true, "_fpu_free", FPU_DISABLED),
    ] {
        keel_sys::debug_set_fastpath(fastpath);
        WORDS.store(words, Ordering::Relaxed);
        FPU_MODE.store(fpu, Ordering::Relaxed);
        let disable = keel_abi::object::tcb_flags::FPU_DISABLED * (fpu == FPU_DISABLED) as u64;
        init::TCB
            .set_flags(keel_abi::object::tcb_flags::FPU_DISABLED, disable)
            .expect("flags");
        let config = ThreadConfig {
            priority,
            ..ThreadConfig::default()
        };
        let server_thread = alloc
            .create_thread_in(other, server, 0, config)
            .expect("server");
        init::TCB
            .set_priority(init::TCB, priority as u64)
            .expect("priority");
        server_thread
            .tcb
            .set_flags(0, disable)
            .expect("server flags");
        server_thread.start().expect("start server");
        // Let the server block in Recv.
        raw::yield_now();
        let touch = fpu == FPU_TOUCH;
        let ep = ep.cptr();
        // A 0-word Call loads no message register (as sel4bench's stubs).
        let [mut calls, mut replies, mut round_trips] = if words == 0 {
            ipc_samples(touch, || {
                raw::call_registers(ep, info(0), []);
            })
        } else {
            ipc_samples(touch, || {
                raw::call(ep, info(words), [0; 4]);
            })
        };
        let _ = server_thread.tcb.suspend();
        report.print(&alloc_name("ipc_call", suffix), &mut calls);
        report.print(&alloc_name("ipc_reply_recv", suffix), &mut replies);
        report.print(&alloc_name("ipc_round_trip", suffix), &mut round_trips);
        server_thread.destroy(&mut alloc).expect("destroy server");
    }
    keel_sys::debug_set_fastpath(true);
    init::TCB
        .set_flags(keel_abi::object::tcb_flags::FPU_DISABLED, 0)
        .expect("flags");
    init::TCB.set_priority(init::TCB, 100).expect("priority");

    // Send to a higher-priority thread waiting in Recv (same address space).
    let config = ThreadConfig {
        priority: 150,
        ..ThreadConfig::default()
    };
    let t = alloc.create_thread(receiver, 0, config).expect("receiver");
    t.start().expect("start");
    for i in 0..WARMUP + SAMPLES {
        let start = rdtsc();
        raw::send(ep.cptr(), info(0), [0; 4]);
        if i >= WARMUP {
            samples[i - WARMUP] = T1.load(Ordering::Relaxed) - start;
        }
    }
    report.print("ipc_send_to_higher_priority", &mut samples);
    let _ = t.tcb.suspend();
    t.destroy(&mut alloc).expect("destroy");

    // Signal a notification whose waiter has higher priority.
    let n = alloc.create::<Notification>().expect("notification");
    NOTIFICATION.store(n.cptr(), Ordering::Relaxed);
    let t = alloc.create_thread(waiter, 0, config).expect("waiter");
    t.start().expect("start");
    for i in 0..WARMUP + SAMPLES {
        let start = rdtsc();
        n.signal();
        if i >= WARMUP {
            samples[i - WARMUP] = T1.load(Ordering::Relaxed) - start;
        }
    }
    report.print("notification_signal_to_higher_priority", &mut samples);
    let _ = t.tcb.suspend();
    t.destroy(&mut alloc).expect("destroy");

    // Fault round trip: a thread's #UD goes to this thread, which resumes it after the
    // instruction. The `_slowpath` run switches the fastpath (and with it the fault fast
    // route) off.
    for (fastpath, suffix) in [(true, ""), (false, "_slowpath")] {
        keel_sys::debug_set_fastpath(fastpath);
        let fault_ep = alloc.create::<Endpoint>().expect("fault endpoint");
        let config = ThreadConfig {
            priority: 150,
            fault_ep: fault_ep.cptr(),
            ..ThreadConfig::default()
        };
        let t = alloc.create_thread(faulter, 0, config).expect("faulter");
        init::TCB.set_priority(init::TCB, 150).expect("priority");
        t.start().expect("start");
        // One round: the faulter stamps T0 and executes UD2; the fault message reaches
        // this thread, whose reply resumes the faulter after the instruction, which
        // stamps T1 and faults again (so this thread's ReplyRecv returns with the next
        // fault).
        let mut r = raw::recv(fault_ep.cptr());
        for i in 0..WARMUP + SAMPLES {
            let (ip, sp, flags) = (r.mrs[0], r.mrs[1], r.mrs[2]);
            let t0 = T0.load(Ordering::Relaxed);
            r = raw::reply_recv(
                fault_ep.cptr(),
                info(3),
                [ip + keel_sys::probe::UD2_LENGTH, sp, flags, 0],
            );
            if i >= WARMUP {
                samples[i - WARMUP] = T1.load(Ordering::Relaxed) - t0;
            }
        }
        report.print(&alloc_name("fault_round_trip", suffix), &mut samples);
        let _ = t.tcb.suspend();
        t.destroy(&mut alloc).expect("destroy");
        init::TCB.set_priority(init::TCB, 100).expect("priority");
    }
    keel_sys::debug_set_fastpath(true);

    // Map one 4 KiB page (its page table exists already).
    let frame: Cap<Frame> = alloc
        .frame(keel_abi::object::ObjectType::X86Page4K)
        .expect("frame");
    let vaddr = alloc.scratch_range(4096, 4096);
    alloc
        .map_frame(
            init::VSPACE,
            frame,
            vaddr,
            keel_abi::message::CapRights::READ_WRITE,
            keel_sys::VmAttributes::DEFAULT,
            1,
        )
        .expect("first map");
    frame.unmap().expect("unmap");
    // And Unmap it again (the same loop times both).
    let mut unmap_samples = [0u64; SAMPLES];
    for i in 0..WARMUP + SAMPLES {
        let start = rdtsc();
        let result = frame.map(
            init::VSPACE,
            vaddr,
            keel_abi::message::CapRights::READ_WRITE,
            keel_sys::VmAttributes::DEFAULT,
        );
        let end = rdtsc();
        result.expect("map");
        let unmap_start = rdtsc();
        let result = frame.unmap();
        let unmap_end = rdtsc();
        result.expect("unmap");
        if i >= WARMUP {
            samples[i - WARMUP] = end - start;
            unmap_samples[i - WARMUP] = unmap_end - unmap_start;
        }
    }
    report.print("page_map_4k", &mut samples);
    report.print("page_unmap_4k", &mut unmap_samples);

    gs_threading(&mut alloc, &report);
    0
}

/// Yields forever (the partner of the kernel-switch benchmarks).
fn yielder(_: u64) {
    loop {
        raw::yield_now();
    }
}

/// Fiber samples (a fiber fills them, so they live in a static).
static FIBER_SAMPLES: [AtomicU64; SAMPLES] = [const { AtomicU64::new(0) }; SAMPLES];
static FIBER_STOP: AtomicU64 = AtomicU64::new(0);

/// Measuring fiber: times `yield_now` (a switch to the partner fiber and back).
fn fiber_timer(_: u64) {
    for i in 0..WARMUP + SAMPLES {
        let start = rdtsc();
        keel_sys::fiber::yield_now();
        let end = rdtsc();
        if i >= WARMUP {
            FIBER_SAMPLES[i - WARMUP].store(end - start, Ordering::Relaxed);
        }
    }
    FIBER_STOP.store(1, Ordering::Relaxed);
}

/// Partner fiber: yields until the timer is done.
fn fiber_partner(_: u64) {
    while FIBER_STOP.load(Ordering::Relaxed) == 0 {
        keel_sys::fiber::yield_now();
    }
}

/// Issue 5's figures: fiber switch against kernel switch, GS base change by
/// instruction and by invocation, the CR4.FSGSBASE toggle, per-CPU counters by user
/// rseq and by LOCK ADD.
fn gs_threading(alloc: &mut Allocator, report: &Report) {
    use keel_sys::fiber::{self, GsMode};
    let mut samples = [0u64; SAMPLES];
    let control = init::FS_GS_BASE_CONTROL;
    let has_right = control.set_access(init::TCB, false).is_ok();

    // Fiber switch round trip (two switches), GS base by invocation and, with the
    // right, by WRGSBASE.
    let mut modes = [Some(GsMode::Invocation), None];
    if has_right {
        modes[1] = Some(GsMode::Instructions);
    }
    for mode in modes.into_iter().flatten() {
        let _ = control.set_access(init::TCB, mode == GsMode::Instructions);
        fiber::init(mode, init::TCB);
        FIBER_STOP.store(0, Ordering::Relaxed);
        fiber::spawn(fiber_timer, 0).expect("fiber");
        fiber::spawn(fiber_partner, 0).expect("fiber");
        fiber::run();
        for (s, f) in samples.iter_mut().zip(&FIBER_SAMPLES) {
            *s = f.load(Ordering::Relaxed);
        }
        let name = match mode {
            GsMode::Invocation => "fiber_switch_round_trip_gs_by_invocation",
            GsMode::Instructions => "fiber_switch_round_trip_gs_by_wrgsbase",
        };
        report.print(name, &mut samples);
    }

    // GS base change: TCBSetGSBase on oneself, and WRGSBASE with the right.
    for s in samples.iter_mut() {
        let start = rdtsc();
        let _ = init::TCB.set_gs_base(0);
        *s = rdtsc() - start;
    }
    report.print("gs_base_change_by_invocation", &mut samples);
    if has_right {
        let _ = control.set_access(init::TCB, true);
        for s in samples.iter_mut() {
            let start = rdtsc();
            fiber::wrgsbase(0);
            *s = rdtsc() - start;
        }
        report.print("gs_base_change_by_wrgsbase", &mut samples);
    }
    let _ = control.set_access(init::TCB, false);

    // Kernel switch round trip by Yield with a thread of the same priority (two
    // switches); then with the partner holding the FSGSBASE right and this thread not,
    // so every switch toggles CR4.FSGSBASE.
    init::TCB.set_priority(init::TCB, 100).expect("priority");
    let config = ThreadConfig {
        priority: 100,
        ..ThreadConfig::default()
    };
    let partner = alloc.create_thread(yielder, 0, config).expect("yielder");
    partner.start().expect("start");
    let rounds: &[(&str, bool)] = if has_right {
        &[
            ("kernel_switch_round_trip_yield", false),
            ("kernel_switch_round_trip_yield_cr4_toggle", true),
        ]
    } else {
        &[("kernel_switch_round_trip_yield", false)]
    };
    for &(name, right) in rounds {
        let _ = control.set_access(partner.tcb, right);
        for i in 0..WARMUP + SAMPLES {
            let start = rdtsc();
            raw::yield_now();
            let end = rdtsc();
            if i >= WARMUP {
                samples[i - WARMUP] = end - start;
            }
        }
        report.print(name, &mut samples);
    }
    let _ = partner.tcb.suspend();
    partner.destroy(alloc).expect("destroy");

    // Per-CPU counter: user rseq against LOCK ADD on one shared word.
    static PER_CPU: keel_rt::percpu::Counter = keel_rt::percpu::Counter::new();
    static SHARED_WORD: AtomicU64 = AtomicU64::new(0);
    keel_rt::percpu::ensure_registered();
    for s in samples.iter_mut() {
        let start = rdtsc();
        PER_CPU.add(1);
        *s = rdtsc() - start;
    }
    report.print("percpu_counter_user_rseq", &mut samples);
    for s in samples.iter_mut() {
        let start = rdtsc();
        SHARED_WORD.fetch_add(1, Ordering::Relaxed);
        *s = rdtsc() - start;
    }
    report.print("percpu_counter_user_lock_add", &mut samples);
}

/// `prefix` + `suffix` in a fixed buffer (no heap).
fn alloc_name(prefix: &str, suffix: &str) -> Name {
    let mut n = Name {
        bytes: [0; 48],
        len: 0,
    };
    for b in prefix.bytes().chain(suffix.bytes()) {
        if n.len < n.bytes.len() {
            n.bytes[n.len] = b;
            n.len += 1;
        }
    }
    n
}

struct Name {
    bytes: [u8; 48],
    len: usize,
}

impl core::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}
