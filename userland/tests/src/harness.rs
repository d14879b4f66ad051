//! The suite's harness: result lines, failure messages, the shared environment (an
//! allocator, the fault endpoint), polling waits with time limits, and child threads.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

use keel_abi::object::cap_tag;
use keel_rt::{Allocator, Thread, ThreadConfig, println};
use keel_sys::bootinfo::BootInfo;
use keel_sys::cap::{Cap, Endpoint, Notification, init};
use keel_sys::{CapRights, Received};

/// Depth that resolves a capability pointer of the root CNode.
pub const DEPTH: u8 = 64;
/// Badge of the suite's fault endpoint as children get it.
pub const FAULT_BADGE: u64 = 0xfa17;
/// How long a wait may take before the test fails: about 3 s of TSC at 3 GHz (more
/// under TCG, whose TSC follows the host's).
pub const TIMEOUT_TSC: u64 = 10_000_000_000;

/// Why a test did not pass.
pub enum Why {
    /// It failed, with a message.
    Failed(Text),
    /// It could not run here.
    Skipped(&'static str),
}

/// A short message built without a heap.
pub struct Text {
    bytes: [u8; 200],
    len: usize,
}

impl Text {
    fn new() -> Self {
        Self {
            bytes: [0; 200],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("(bad utf-8)")
    }
}

impl Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// A failure with a formatted message.
pub fn why(args: fmt::Arguments<'_>) -> Why {
    let mut t = Text::new();
    let _ = t.write_fmt(args);
    Why::Failed(t)
}

/// The result of one test.
pub type TestResult = Result<(), Why>;

/// Fails the test with a formatted message.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => { return Err($crate::harness::why(format_args!($($arg)*))) };
}

/// Fails the test unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond { $crate::fail!($($arg)*); }
    };
}

/// Turns any displayable error into a failure with context.
pub trait OrFail<T> {
    /// The value, or a failure saying `what` failed and why.
    fn or_fail(self, what: &str) -> Result<T, Why>;
}

impl<T, E: fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> Result<T, Why> {
        self.map_err(|e| why(format_args!("{what}: {e}")))
    }
}

/// Expects an invocation to fail with `expected` (compared by code and details).
pub fn expect_err<T>(
    r: keel_sys::error::Result<T>,
    expected: keel_sys::Error,
    what: &str,
) -> TestResult {
    match r {
        Ok(_) => fail!("{what}: succeeded, expected {expected}"),
        Err(e) if e == expected => Ok(()),
        Err(e) => fail!("{what}: got {e}, expected {expected}"),
    }
}

/// Expects an invocation to fail with error code `code` (details not compared).
pub fn expect_code<T>(
    r: keel_sys::error::Result<T>,
    code: keel_abi::error::Error,
    what: &str,
) -> TestResult {
    match r {
        Ok(_) => fail!("{what}: succeeded, expected {}", code.name()),
        Err(e) if e.is(code) => Ok(()),
        Err(e) => fail!("{what}: got {e}, expected {}", code.name()),
    }
}

/// Counts and prints results.
#[derive(Default)]
pub struct Suite {
    /// Tests that passed.
    pub passed: u32,
    /// Tests that failed.
    pub failed: u32,
}

impl Suite {
    /// Runs one test and prints its line.
    pub fn run(&mut self, name: &str, test: impl FnOnce() -> TestResult) {
        reset_shared();
        match test() {
            Ok(()) => {
                self.passed += 1;
                println!("test {name} ... ok");
            }
            Err(Why::Failed(t)) => {
                self.failed += 1;
                println!("test {name} ... FAILED: {}", t.as_str());
            }
            Err(Why::Skipped(reason)) => println!("test {name} ... skipped ({reason})"),
        }
    }

    /// Records that the environment could not be set up.
    pub fn fail_setup(&mut self, e: keel_rt::Error) {
        self.failed += 1;
        println!("test suite_setup ... FAILED: {e}");
    }
}

/// Words shared between the root task and the threads of one test (reset before each).
pub static SHARED: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

fn reset_shared() {
    for s in &SHARED {
        s.store(0, Ordering::SeqCst);
    }
}

/// Reads shared word `i`.
pub fn shared(i: usize) -> u64 {
    SHARED[i].load(Ordering::SeqCst)
}

/// Writes shared word `i`.
pub fn set_shared(i: usize, v: u64) {
    SHARED[i].store(v, Ordering::SeqCst)
}

/// Adds to shared word `i`.
pub fn add_shared(i: usize, v: u64) -> u64 {
    SHARED[i].fetch_add(v, Ordering::SeqCst) + v
}

/// Polls `done` (yielding) until it is true or the time limit passes.
pub fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let start = keel_sys::rdtsc();
    loop {
        if done() {
            return true;
        }
        if keel_sys::rdtsc().wrapping_sub(start) > TIMEOUT_TSC {
            return false;
        }
        keel_sys::ipc::yield_now();
    }
}

/// Spins (yielding) for about `tsc` cycles.
pub fn pause(tsc: u64) {
    let start = keel_sys::rdtsc();
    while keel_sys::rdtsc().wrapping_sub(start) < tsc {
        keel_sys::ipc::yield_now();
    }
}

/// Whether shared word `i` stays at `before` for a while (a thread counting in it is
/// stopped: a running one adds thousands in that time).
pub fn stays(i: usize, before: u64) -> bool {
    pause(20_000_000);
    shared(i) == before
}

/// Receives on `ep` without blocking, retrying until a message arrives or the limit.
pub fn recv_timeout(ep: Cap<Endpoint>) -> Option<Received> {
    let mut got = None;
    wait_until(|| {
        got = ep.nb_recv();
        got.is_some()
    });
    got
}

/// Polls a notification until some bits arrive or the limit passes; returns them.
pub fn wait_signal(n: Cap<Notification>) -> u64 {
    let mut bits = 0;
    wait_until(|| {
        bits = n.poll();
        bits != 0
    });
    bits
}

/// What every test may use.
pub struct Env {
    /// Slots and memory.
    pub alloc: Allocator,
    /// The boot info.
    pub info: BootInfo,
    /// The endpoint the suite receives fault messages on.
    pub fault_ep: Cap<Endpoint>,
    /// The copy children get as their fault endpoint (badge [`FAULT_BADGE`]).
    pub fault_ep_badged: Cap<Endpoint>,
    /// Whether the kernel answers seL4_DebugCapIdentify.
    pub identify: bool,
    /// A slot kept empty, for probing other slots with copies.
    scratch: u64,
}

impl Env {
    /// Sets up the allocator and the fault endpoint.
    pub fn new(info: BootInfo) -> keel_rt::Result<Self> {
        let mut alloc = Allocator::new(&info);
        let fault_ep = alloc.create::<Endpoint>()?;
        let badged = Cap::<Endpoint>::from_cptr(alloc.slot()?);
        init::CNODE.mint(
            badged.cptr(),
            DEPTH,
            init::CNODE,
            fault_ep.cptr(),
            DEPTH,
            CapRights::ALL,
            FAULT_BADGE,
        )?;
        let scratch = alloc.slot()?;
        let mut env = Self {
            alloc,
            info,
            fault_ep,
            fault_ep_badged: badged,
            identify: false,
            scratch,
        };
        env.identify = env.detect_identify();
        Ok(env)
    }

    /// Asks seL4_DebugCapIdentify from a thread with a fault handler: a kernel without
    /// it sends an UnknownSyscall fault instead of answering.
    fn detect_identify(&mut self) -> bool {
        fn ask(_: u64) {
            let tag = keel_sys::debug_cap_identify(init::CNODE.cptr());
            set_shared(15, tag + 1);
        }
        reset_shared();
        let Ok(t) = self.spawn(ask, 0, crate::CHILD_PRIORITY) else {
            return false;
        };
        let mut faulted = false;
        wait_until(|| {
            faulted = self.fault_ep.nb_recv().is_some();
            faulted || shared(15) != 0
        });
        let answer = shared(15);
        let _ = t.destroy(&mut self.alloc);
        reset_shared();
        if faulted || answer == 0 {
            println!("(seL4_DebugCapIdentify unsupported: slot types checked by copying only)");
        }
        !faulted && answer == cap_tag::CNODE + 1
    }

    /// A new endpoint.
    pub fn endpoint(&mut self) -> Result<Cap<Endpoint>, Why> {
        self.alloc.create::<Endpoint>().or_fail("retype endpoint")
    }

    /// A new notification.
    pub fn notification(&mut self) -> Result<Cap<Notification>, Why> {
        self.alloc
            .create::<Notification>()
            .or_fail("retype notification")
    }

    /// A free slot.
    pub fn slot(&mut self) -> Result<u64, Why> {
        self.alloc.slot().or_fail("slot")
    }

    /// A copy of `cap` in a new slot, minted with `rights` and `badge`.
    pub fn mint<T: keel_sys::CapType>(
        &mut self,
        cap: Cap<T>,
        rights: CapRights,
        badge: u64,
    ) -> Result<Cap<T>, Why> {
        let s = self.slot()?;
        init::CNODE
            .mint(s, DEPTH, init::CNODE, cap.cptr(), DEPTH, rights, badge)
            .or_fail("mint")?;
        Ok(Cap::from_cptr(s))
    }

    /// A started thread running `entry(argument)` at `priority`, with the suite's
    /// fault endpoint.
    pub fn spawn(&mut self, entry: fn(u64), argument: u64, priority: u8) -> Result<Thread, Why> {
        let t = self.create(entry, argument, priority)?;
        t.start().or_fail("resume thread")?;
        Ok(t)
    }

    /// A thread like [`Env::spawn`] but not started.
    pub fn create(&mut self, entry: fn(u64), argument: u64, priority: u8) -> Result<Thread, Why> {
        let config = ThreadConfig {
            priority,
            fault_ep: self.fault_ep_badged.cptr(),
            affinity: None,
            cspace: None,
        };
        self.alloc
            .create_thread(entry, argument, config)
            .or_fail("create thread")
    }

    /// Destroys a thread (failure to do so fails the test).
    pub fn destroy(&mut self, t: Thread) -> TestResult {
        t.destroy(&mut self.alloc).or_fail("destroy thread")
    }

    /// Whether the slot is empty (DebugCapIdentify, or else a copy of it fails its
    /// lookup).
    pub fn is_empty(&self, slot: u64) -> bool {
        if self.identify {
            return keel_sys::debug_cap_identify(slot) == cap_tag::NULL;
        }
        match init::CNODE.copy(
            self.scratch,
            DEPTH,
            init::CNODE,
            slot,
            DEPTH,
            CapRights::ALL,
        ) {
            Ok(()) => {
                let _ = init::CNODE.delete(self.scratch, DEPTH);
                false
            }
            Err(keel_sys::Error::FailedLookup { .. }) => true,
            Err(_) => false,
        }
    }

    /// Whether the slot holds a capability with kernel type tag `tag`
    /// (`keel_abi::object::cap_tag`). Without DebugCapIdentify only "not empty" is
    /// checked.
    pub fn has_tag(&self, slot: u64, tag: u64) -> bool {
        if self.identify {
            keel_sys::debug_cap_identify(slot) == tag
        } else {
            (tag == cap_tag::NULL) == self.is_empty(slot)
        }
    }
}
