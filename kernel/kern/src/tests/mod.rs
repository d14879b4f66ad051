//! Host tests of the object layer driven the way user programs drive it: threads' registers
//! are set up in their TCB records and the kernel's entry points (`handle_syscall`,
//! `handle_user_exception`, `handle_timer_tick`, `schedule`) run on a [`FakeHardware`].
//!
//! The [`World`] fixture builds a small system by hand, the way boot does: a root thread
//! whose CSpace is a 256-slot CNode (guard to 64 bits), a PML4 with ASID 1, an IPC
//! buffer frame, IRQ/ASID/IOPort control and three untypeds (normal, 1 GiB, device).
//! Everything after that goes through real invocations.

extern crate std;

use std::collections::BTreeSet;
use std::vec::Vec;

use keel_abi::invocation::InvocationLabel as L;
use keel_abi::message::MessageInfo;
use keel_abi::object::ObjectType;
use keel_abi::syscall;

use crate::kernel::{Hardware, Kernel};
use crate::memory::{Memory, Record};
use crate::object::cap::{Cap, FrameSize, Rights, VmRights, ZombieKind};
use crate::object::cspace;
use crate::object::endpoint::{self as ep, Queue};
use crate::object::tcb::{self, Tcb, ThreadState};
use crate::testing_memory::TestMemory;

mod cspace_ops;
mod faults;
mod finalise;
mod invariants;
mod ipc;
mod ldt;
mod sched;
mod tcb_debug;
mod tcb_ops;
mod untyped;
mod vspace;

/// A port access the fake hardware saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortOp {
    In { port: u16, size: u8 },
    Out { port: u16, size: u8, value: u32 },
}

/// [`Hardware`] over [`TestMemory`] that records every machine operation.
#[derive(Default)]
pub struct FakeHardware {
    pub mem: TestMemory,
    pub cpu: usize,
    pub kernel_pml4: u64,
    pub console: Vec<u8>,
    pub ipis: Vec<usize>,
    pub page_flushes: Vec<(u16, u64)>,
    pub space_flushes: Vec<u16>,
    pub ports: Vec<PortOp>,
    pub port_value: u32,
    pub irqs: Vec<(u16, bool)>,
    pub exits: Vec<(u64, u64)>,
    pub reports: Vec<(u64, u64)>,
    pub ticks: u64,
    pub ldt_changes: Vec<(u64, u64)>,
    /// The CPUs stalled (`stall_cpu`) and the FPU releases (`fpu_release`), in order.
    pub stalls_and_releases: Vec<Stall>,
    /// What `preemption_window` answers (preemption-point tests).
    pub pending_interrupt: bool,
}

/// A stall of a CPU or an FPU release, as `FakeHardware` records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// `stall_cpu(cpu)`.
    Cpu(usize),
    /// `fpu_release` of the TCB at this address.
    FpuRelease(u64),
}

impl Memory for FakeHardware {
    fn read(&self, phys: u64) -> u64 {
        self.mem.read(phys)
    }
    fn write(&mut self, phys: u64, value: u64) {
        self.mem.write(phys, value)
    }
    fn zero(&mut self, phys: u64, bytes: u64) {
        self.mem.zero(phys, bytes)
    }
    fn create<T: Record>(&mut self, phys: u64) {
        self.mem.create::<T>(phys)
    }
    fn destroy<T: Record>(&mut self, phys: u64) {
        self.mem.destroy::<T>(phys)
    }
    fn get<T: Record>(&self, phys: u64) -> &T {
        self.mem.get::<T>(phys)
    }
    fn get_mut<T: Record>(&mut self, phys: u64) -> &mut T {
        self.mem.get_mut::<T>(phys)
    }
    fn exists<T: Record>(&self, phys: u64) -> bool {
        self.mem.exists::<T>(phys)
    }
}

impl Hardware for FakeHardware {
    fn current_cpu(&self) -> usize {
        self.cpu
    }
    fn kernel_pml4(&self) -> u64 {
        self.kernel_pml4
    }
    fn console_write(&mut self, bytes: &[u8]) {
        self.console.extend_from_slice(bytes);
    }
    fn reschedule_cpu(&mut self, cpu: usize) {
        if cpu != self.cpu {
            self.ipis.push(cpu);
        }
    }
    fn flush_page(&mut self, asid: u16, _pml4: u64, vaddr: u64) {
        self.page_flushes.push((asid, vaddr));
    }
    fn flush_address_space(&mut self, asid: u16, _pml4: u64) {
        self.space_flushes.push(asid);
    }
    fn stall_cpu(&mut self, cpu: usize, _tcb_record: u64) {
        self.stalls_and_releases.push(Stall::Cpu(cpu));
    }
    fn fpu_release(&mut self, tcb: u64) {
        self.stalls_and_releases.push(Stall::FpuRelease(tcb));
    }
    fn address_space_deleted(&mut self, asid: u16, _pml4: u64) {
        self.space_flushes.push(asid);
    }
    fn set_vspace_ldt(&mut self, pml4: u64, ldt: u64) {
        self.ldt_changes.push((pml4, ldt));
    }
    fn port_read(&mut self, port: u16, size: u8) -> u32 {
        self.ports.push(PortOp::In { port, size });
        self.port_value
    }
    fn port_write(&mut self, port: u16, size: u8, value: u32) {
        self.ports.push(PortOp::Out { port, size, value });
    }
    fn irq_route(&mut self, irq: u16, _route: crate::object::irq::IrqRoute, enabled: bool) {
        self.irqs.push((irq, enabled));
    }
    fn ticks(&self) -> u64 {
        self.ticks
    }
    fn preemption_window(&self) -> bool {
        self.pending_interrupt
    }
    fn thread_exited(&mut self, tcb: u64, value: u64) {
        self.exits.push((tcb, value));
    }
    fn test_report(&mut self, passed: u64, failed: u64) {
        self.reports.push((passed, failed));
    }
    fn halt(&mut self) -> ! {
        panic!("DebugHalt");
    }
}

// Physical layout of the hand-built part of the world.
pub const KERNEL_PML4: u64 = 0x1000;
pub const ROOT_CNODE: u64 = 0x10_0000;
pub const ROOT_TCB: u64 = 0x20_0000;
pub const ROOT_PML4: u64 = 0x21_0000;
pub const ROOT_POOL: u64 = 0x22_0000;
pub const ROOT_IPC: u64 = 0x23_0000;
pub const UNTYPED_BASE: u64 = 0x100_0000;
pub const UNTYPED_BITS: u8 = 24;
pub const HUGE_UNTYPED_BASE: u64 = 0x4000_0000;
pub const DEVICE_BASE: u64 = 0xfe00_0000;
pub const DEVICE_BITS: u8 = 20;
pub const ROOT_IPC_VADDR: u64 = 0x7000_0400;
pub const ROOT_ASID: u16 = 1;
/// Where new threads' IPC buffers go (one page each, at `IPC_VADDR_BASE + 0x1000 * n`).
pub const IPC_VADDR_BASE: u64 = 0x6000_0000;

// Root CNode slots (seL4's initial layout, then Keel's untypeds).
pub const S_TCB: u64 = 1;
pub const S_CNODE: u64 = 2;
pub const S_VSPACE: u64 = 3;
pub const S_IRQ_CONTROL: u64 = 4;
pub const S_ASID_CONTROL: u64 = 5;
pub const S_ASID_POOL: u64 = 6;
pub const S_IO_PORT_CONTROL: u64 = 7;
pub const S_IPC_BUFFER: u64 = 10;
pub const S_DOMAIN: u64 = 11;
pub const S_FSGS: u64 = 16;
pub const S_UNTYPED: u64 = 20;
pub const S_HUGE_UNTYPED: u64 = 21;
pub const S_DEVICE_UNTYPED: u64 = 22;
/// First slot the tests allocate.
pub const FIRST_FREE: u64 = 32;

/// The root CNode capability (radix 8, 56-bit guard of 0: a cptr is a slot number).
pub const ROOT_CNODE_CAP: Cap = Cap::CNode {
    ptr: ROOT_CNODE,
    radix: 8,
    guard_size: 56,
    guard: 0,
};

/// User address the tests pretend each `syscall` instruction is at.
pub const SYSCALL_IP: u64 = 0x40_1000;

/// Address of slot `i` of the root CNode.
pub const fn slot(i: u64) -> u64 {
    ROOT_CNODE + i * cspace::SLOT_BYTES
}

/// A message the kernel (or another thread) delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub label: u64,
    pub info: MessageInfo,
    pub badge: u64,
    pub mrs: Vec<u64>,
}

/// A thread the tests created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thread {
    /// Root CNode slot of its TCB capability.
    pub slot: u64,
    /// TCB address.
    pub tcb: u64,
    /// Root CNode slot of its IPC buffer frame (0 = none).
    pub buffer_slot: u64,
}

/// The fixture.
pub struct World {
    pub k: Kernel<FakeHardware>,
    next_slot: u64,
    threads: u64,
    /// Check the invariants after every system call.
    pub check: bool,
}

impl World {
    /// A world on one CPU.
    pub fn new() -> Self {
        Self::with_cpus(1)
    }

    /// A world on `cpus` CPUs; the root thread runs on CPU 0.
    pub fn with_cpus(cpus: usize) -> Self {
        let mut hw = FakeHardware {
            kernel_pml4: KERNEL_PML4,
            ..Default::default()
        };
        // Some kernel mappings every new PML4 must share.
        for i in [256u64, 300, 511] {
            hw.write(KERNEL_PML4 + 8 * i, 0x8000_0000 + i * 0x1000 + 3);
        }
        let mut k = Kernel::new(hw, cpus);
        let m = &mut k;
        // The root CNode (its memory is zero) and the capability to it.
        cspace::insert_root(&mut m.hw, 0, slot(S_CNODE), ROOT_CNODE_CAP, true);
        // The root TCB.
        let tcb_cap = m.create_object(
            ObjectType::Tcb,
            ROOT_TCB,
            keel_abi::object::TCB_BITS,
            0,
            false,
        );
        cspace::insert_root(&mut m.hw, 0, slot(S_TCB), tcb_cap, true);
        cspace::insert_child(
            &mut m.hw,
            slot(S_CNODE),
            tcb::slot(ROOT_TCB, tcb::SLOT_CSPACE),
            ROOT_CNODE_CAP,
        );
        // Its address space: a PML4 with ASID 1 from pool 0.
        let Cap::Pml4 { base, .. } = m.create_object(ObjectType::X64Pml4, ROOT_PML4, 12, 0, false)
        else {
            unreachable!()
        };
        cspace::insert_root(
            &mut m.hw,
            0,
            slot(S_ASID_POOL),
            Cap::AsidPool {
                base: ROOT_POOL,
                asid_base: 0,
            },
            true,
        );
        m.boot_assign_asid(ROOT_POOL, base, ROOT_ASID);
        let pml4 = Cap::Pml4 {
            base,
            asid: Some(ROOT_ASID),
        };
        cspace::insert_root(&mut m.hw, 0, slot(S_VSPACE), pml4, true);
        cspace::insert_child(
            &mut m.hw,
            slot(S_VSPACE),
            tcb::slot(ROOT_TCB, tcb::SLOT_VSPACE),
            pml4,
        );
        // Its IPC buffer.
        let frame = m.create_object(ObjectType::X86Page4K, ROOT_IPC, 12, 0, false);
        cspace::insert_root(&mut m.hw, 0, slot(S_IPC_BUFFER), frame, true);
        cspace::insert_child(
            &mut m.hw,
            slot(S_IPC_BUFFER),
            tcb::slot(ROOT_TCB, tcb::SLOT_IPC_BUFFER),
            frame,
        );
        // Authorities and memory.
        for (s, c) in [
            (S_IRQ_CONTROL, Cap::IrqControl),
            (S_ASID_CONTROL, Cap::AsidControl),
            (S_IO_PORT_CONTROL, Cap::IoPortControl),
            (S_DOMAIN, Cap::Domain),
            (S_FSGS, Cap::FsGsBaseControl),
            (
                S_UNTYPED,
                Cap::Untyped {
                    base: UNTYPED_BASE,
                    size_bits: UNTYPED_BITS,
                    free_index: 0,
                    device: false,
                },
            ),
            (
                S_HUGE_UNTYPED,
                Cap::Untyped {
                    base: HUGE_UNTYPED_BASE,
                    size_bits: 30,
                    free_index: 0,
                    device: false,
                },
            ),
            (
                S_DEVICE_UNTYPED,
                Cap::Untyped {
                    base: DEVICE_BASE,
                    size_bits: DEVICE_BITS,
                    free_index: 0,
                    device: true,
                },
            ),
        ] {
            cspace::insert_root(&mut m.hw, 0, slot(s), c, true);
        }
        {
            let r = m.tcb_mut(ROOT_TCB);
            r.priority = 100;
            r.mcp = 255;
            r.ipc_buffer = ROOT_IPC_VADDR;
            r.context.rip = SYSCALL_IP + 2;
            r.context.rsp = 0x7fff_0000;
            r.name[..4].copy_from_slice(b"root");
        }
        m.set_state(ROOT_TCB, ThreadState::Running);
        m.cpus[0].current = ROOT_TCB;
        let w = World {
            k,
            next_slot: FIRST_FREE,
            threads: 0,
            check: true,
        };
        w.check_invariants();
        w
    }

    // ---- slots and capabilities ----

    /// A fresh root-CNode slot number.
    pub fn alloc_slot(&mut self) -> u64 {
        let s = self.next_slot;
        assert!(s < 256, "root CNode full");
        self.next_slot += 1;
        s
    }

    /// The next slot [`World::alloc_slot`] would return (not allocated).
    pub fn next_free(&self) -> u64 {
        self.next_slot
    }

    /// The capability in root slot `i`.
    pub fn cap(&self, i: u64) -> Cap {
        cspace::cap(&self.k.hw, slot(i))
    }

    /// The capability at slot address `a`.
    pub fn cap_at(&self, a: u64) -> Cap {
        cspace::cap(&self.k.hw, a)
    }

    /// The TCB record of `t`.
    pub fn tcb(&self, t: u64) -> &Tcb {
        self.k.tcb(t)
    }

    /// The state of thread `t`.
    pub fn state(&self, t: u64) -> ThreadState {
        self.k.tcb(t).state
    }

    // ---- messages ----

    /// Sets thread `t`'s message registers (0–3 in registers, the rest in its buffer).
    pub fn set_mrs(&mut self, t: u64, mrs: &[u64]) {
        let buffer = self.k.ipc_buffer(t);
        for (i, v) in mrs.iter().enumerate() {
            assert!(
                self.k.set_message_register(t, buffer, i, *v),
                "no room for MR{i}"
            );
        }
    }

    /// Message register `i` of thread `t`.
    pub fn mr(&self, t: u64, i: usize) -> u64 {
        self.k.message_register(t, self.k.ipc_buffer(t), i)
    }

    /// Writes extra capability pointers into `t`'s IPC buffer.
    pub fn set_caps(&mut self, t: u64, caps: &[u64]) {
        if caps.is_empty() {
            return;
        }
        let b = self.k.ipc_buffer(t).expect("extra caps need an IPC buffer");
        for (i, c) in caps.iter().enumerate() {
            self.k
                .hw
                .write(b + crate::ipc::buffer::caps_or_badges(i), *c);
        }
    }

    /// IPC buffer word `w` of thread `t`.
    pub fn buffer_word(&self, t: u64, w: u64) -> u64 {
        self.k
            .hw
            .read(self.k.ipc_buffer(t).expect("no IPC buffer") + 8 * w)
    }

    /// Sets IPC buffer word `w` of thread `t`.
    pub fn set_buffer_word(&mut self, t: u64, w: u64, v: u64) {
        let b = self.k.ipc_buffer(t).expect("no IPC buffer");
        self.k.hw.write(b + 8 * w, v);
    }

    /// Where thread `t` receives a capability: (CNode cptr, index, depth).
    pub fn set_receive_slot(&mut self, t: u64, cnode: u64, index: u64, depth: u64) {
        self.set_buffer_word(t, 125, cnode);
        self.set_buffer_word(t, 126, index);
        self.set_buffer_word(t, 127, depth);
    }

    /// The message thread `t` last received (RDI badge, RSI info, MRs).
    pub fn received(&self, t: u64) -> Msg {
        let c = self.k.tcb(t).context;
        let info = MessageInfo::from_word(c.rsi);
        let mrs = (0..info.length() as usize).map(|i| self.mr(t, i)).collect();
        Msg {
            label: info.label(),
            info,
            badge: c.rdi,
            mrs,
        }
    }

    // ---- running threads ----

    /// Makes `t` the running thread of its CPU, as if the scheduler had picked it.
    pub fn make_current(&mut self, t: u64) {
        let cpu = self.k.tcb(t).affinity as usize;
        assert!(
            self.k.tcb(t).state.is_runnable(),
            "{t:#x} cannot run: {:?}",
            self.k.tcb(t).state
        );
        self.k.hw.cpu = cpu;
        let cur = self.k.cpus[cpu].current;
        if cur != t {
            if cur != 0 && self.k.tcb(cur).state.is_runnable() {
                self.k.enqueue(cur, true);
            }
            self.k.dequeue(t);
            self.k.cpus[cpu].current = t;
        }
        // Finish a pending restart the way `schedule` does.
        if self.k.tcb(t).state == ThreadState::Restart {
            self.k.cpus[cpu].set_action(crate::kernel::Action::Resume);
            self.k.schedule();
        }
    }

    /// Thread `t` executes `syscall` with number `number` (its other registers are set).
    pub fn syscall(&mut self, t: u64, number: i64) {
        self.make_current(t);
        self.raw_syscall(number);
    }

    /// Like [`World::syscall`], but Call, ReplyRecv and Send try the fastpath first, as the
    /// kernel's entry glue does. Returns whether the fastpath took the call.
    pub fn fast_syscall(&mut self, t: u64, number: i64) -> bool {
        self.make_current(t);
        {
            let c = &mut self.k.tcb_mut(t).context;
            c.rip = SYSCALL_IP + 2;
            c.rdx = number as u64;
            c.rcx = c.rip;
            c.r11 = c.rflags;
            // The SYSCALL entry pushes the marker as the vector.
            c.vector = crate::object::tcb::SYSCALL_VECTOR;
        }
        let here = self.k.hw.cpu;
        let fast = match number {
            syscall::CALL => self.k.fastpath_call(t, here),
            syscall::REPLY_RECV => self.k.fastpath_reply_recv(t, here),
            syscall::SEND => self.k.fastpath_send(t, here),
            _ => None,
        };
        if let Some(next) = fast {
            assert_eq!(self.k.current(), next.get());
        } else {
            self.k.handle_syscall(t, number as u64);
        }
        self.k.schedule();
        if self.check {
            self.check_invariants();
        }
        fast.is_some()
    }

    /// The current thread of the current CPU executes `syscall`.
    pub fn raw_syscall(&mut self, number: i64) {
        let t = self.k.current();
        assert_ne!(t, 0, "idle CPU cannot make a system call");
        {
            let c = &mut self.k.tcb_mut(t).context;
            c.rip = SYSCALL_IP + 2;
            c.rdx = number as u64;
            c.rcx = c.rip;
            c.r11 = c.rflags;
            // The SYSCALL entry pushes the marker as the vector.
            c.vector = crate::object::tcb::SYSCALL_VECTOR;
        }
        self.k.handle_syscall(t, number as u64);
        self.k.schedule();
        if self.check {
            self.check_invariants();
        }
    }

    /// Sets up a message in `t`'s registers and buffer: RDI `cptr`, RSI info.
    pub fn load(&mut self, t: u64, cptr: u64, label: u64, mrs: &[u64], caps: &[u64]) {
        self.set_mrs(t, mrs);
        self.set_caps(t, caps);
        let c = &mut self.k.tcb_mut(t).context;
        c.rdi = cptr;
        c.rsi = MessageInfo::new(label, 0, caps.len() as u64, mrs.len() as u64).to_word();
    }

    /// `t` Calls `cptr` with a message; returns what it got back (if it is not blocked).
    pub fn call(&mut self, t: u64, cptr: u64, label: u64, mrs: &[u64], caps: &[u64]) -> Msg {
        self.load(t, cptr, label, mrs, caps);
        self.syscall(t, syscall::CALL);
        self.received(t)
    }

    /// `t` invokes a kernel object with Call; returns the kernel's reply.
    pub fn invoke(&mut self, t: u64, cptr: u64, label: L, mrs: &[u64], caps: &[u64]) -> Msg {
        let r = self.call(t, cptr, label as u64, mrs, caps);
        assert!(
            self.state(t).is_runnable(),
            "invoker blocked: {:?}",
            self.state(t)
        );
        r
    }

    /// The root thread invokes a kernel object.
    pub fn root(&mut self, cptr: u64, label: L, mrs: &[u64], caps: &[u64]) -> Msg {
        self.invoke(ROOT_TCB, cptr, label, mrs, caps)
    }

    /// Like [`World::root`], asserting success.
    pub fn root_ok(&mut self, cptr: u64, label: L, mrs: &[u64], caps: &[u64]) -> Msg {
        let r = self.root(cptr, label, mrs, caps);
        assert_eq!(r.label, 0, "{label:?} failed: {r:?}");
        r
    }

    /// `t` sends (Send) a message.
    pub fn send(&mut self, t: u64, cptr: u64, label: u64, mrs: &[u64], caps: &[u64]) {
        self.load(t, cptr, label, mrs, caps);
        self.syscall(t, syscall::SEND);
    }

    /// `t` Recvs on `cptr`.
    pub fn recv(&mut self, t: u64, cptr: u64) {
        self.k.tcb_mut(t).context.rdi = cptr;
        self.syscall(t, syscall::RECV);
    }

    // ---- building things with invocations ----

    /// Retypes `count` objects from root slot `untyped` into root slots `dest..`.
    pub fn retype(
        &mut self,
        untyped: u64,
        kind: ObjectType,
        size: u64,
        dest: u64,
        count: u64,
    ) -> Msg {
        self.root(
            untyped,
            L::UntypedRetype,
            &[kind as u64, size, 0, 0, dest, count],
            &[S_CNODE],
        )
    }

    /// Retypes one object from the main untyped into a fresh slot; returns the slot.
    pub fn make(&mut self, kind: ObjectType, size: u64) -> u64 {
        let s = self.alloc_slot();
        let r = self.retype(S_UNTYPED, kind, size, s, 1);
        assert_eq!(r.label, 0, "retype {kind:?} failed: {r:?}");
        s
    }

    /// A new endpoint; returns its slot.
    pub fn endpoint(&mut self) -> u64 {
        self.make(ObjectType::Endpoint, 0)
    }

    /// A new notification; returns its slot.
    pub fn notification(&mut self) -> u64 {
        self.make(ObjectType::Notification, 0)
    }

    /// Mints root slot `src` into a fresh slot with `rights` and `badge`.
    pub fn mint(&mut self, src: u64, rights: Rights, badge: u64) -> u64 {
        let d = self.alloc_slot();
        self.root_ok(
            S_CNODE,
            L::CNodeMint,
            &[d, 64, src, 64, rights.0 as u64, badge],
            &[S_CNODE],
        );
        d
    }

    /// Object address of the capability in root slot `s`.
    pub fn addr(&self, s: u64) -> u64 {
        self.cap(s).object().expect("not an object capability").0
    }

    /// A new thread sharing the root's CSpace and VSpace, with an IPC buffer, priority
    /// `prio`, not yet resumed.
    pub fn thread(&mut self, prio: u8) -> Thread {
        self.thread_with(prio, true, 0)
    }

    /// A new thread; `buffer`: whether it gets an IPC buffer; `fault_ep`: its fault
    /// endpoint cptr.
    pub fn thread_with(&mut self, prio: u8, buffer: bool, fault_ep: u64) -> Thread {
        let s = self.make(ObjectType::Tcb, 0);
        let t = self.addr(s);
        self.threads += 1;
        let (vaddr, buffer_slot) = if buffer {
            let f = self.make(ObjectType::X86Page4K, 0);
            (IPC_VADDR_BASE + 0x1000 * self.threads, f)
        } else {
            (0, 0)
        };
        // Configure takes three capabilities; with buffer address 0 the third is not
        // looked at (seL4).
        let caps = [
            S_CNODE,
            S_VSPACE,
            if buffer { buffer_slot } else { S_CNODE },
        ];
        self.root_ok(s, L::TcbConfigure, &[fault_ep, 0, 0, vaddr], &caps);
        self.root_ok(s, L::TcbSetPriority, &[prio as u64], &[S_TCB]);
        // rip, rsp: somewhere in user space.
        self.root_ok(
            s,
            L::TcbWriteRegisters,
            &[0, 2, 0x50_0000 + 0x100 * self.threads, 0x7ff0_0000],
            &[],
        );
        Thread {
            slot: s,
            tcb: t,
            buffer_slot,
        }
    }

    /// A new thread, resumed (runnable, in its ready queue).
    pub fn running_thread(&mut self, prio: u8) -> Thread {
        let th = self.thread(prio);
        self.root_ok(th.slot, L::TcbResume, &[], &[]);
        th
    }

    // ---- invariants ----

    /// Every slot reachable from the root CNode (through CNode, TCB and Zombie
    /// capabilities) and every slot a derivation link names.
    pub fn all_slots(&self) -> BTreeSet<u64> {
        let hw = &self.k.hw;
        let mut slots = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut work = std::vec![(ROOT_CNODE, 256u64)];
        while let Some((base, count)) = work.pop() {
            if !seen.insert(base) {
                continue;
            }
            for i in 0..count {
                let s = base + i * cspace::SLOT_BYTES;
                slots.insert(s);
                match cspace::cap(hw, s) {
                    Cap::CNode { ptr, radix, .. } => work.push((ptr, 1 << radix)),
                    Cap::Tcb { ptr } => work.push((ptr, tcb::TCB_SLOTS)),
                    Cap::Zombie {
                        ptr,
                        kind: ZombieKind::Tcb,
                        ..
                    } => work.push((ptr, tcb::TCB_SLOTS)),
                    Cap::Zombie {
                        ptr,
                        kind: ZombieKind::CNode { radix },
                        ..
                    } => work.push((ptr, 1 << radix)),
                    _ => {}
                }
            }
        }
        let mut frontier: Vec<u64> = slots.iter().copied().collect();
        while let Some(s) = frontier.pop() {
            for l in [cspace::prev(hw, s), cspace::next(hw, s)] {
                if l != 0 && slots.insert(l) {
                    frontier.push(l);
                }
            }
        }
        slots
    }

    /// Every live TCB reachable from the root CNode.
    pub fn all_threads(&self) -> BTreeSet<u64> {
        self.all_slots()
            .into_iter()
            .filter_map(|s| match cspace::cap(&self.k.hw, s) {
                Cap::Tcb { ptr } => Some(ptr),
                _ => None,
            })
            .collect()
    }

    /// Checks the derivation tree, untyped accounting, ready queues and wait queues
    /// (the kernel's own checker, `Kernel::check_invariants`, from the root CNode).
    pub fn check_invariants(&self) {
        if let Err(v) = self.k.check_invariants(&[(ROOT_CNODE, 256)]) {
            panic!("invariant broken: {v}");
        }
    }

    /// The threads waiting in a queue, in order.
    pub fn queue(&self, q: Queue) -> Vec<u64> {
        let mut v = Vec::new();
        let mut t = ep::head(&self.k.hw, q);
        while t != 0 {
            assert!(v.len() < 1000, "queue loops");
            v.push(t);
            t = self.k.tcb(t).wait_next;
        }
        v
    }

    /// Threads in CPU `cpu`'s ready queue of priority `prio`, in order.
    pub fn ready(&self, cpu: usize, prio: u8) -> Vec<u64> {
        let mut v = Vec::new();
        for t in self.all_threads() {
            let r = self.k.tcb(t);
            if r.queued && r.affinity as usize == cpu && r.priority == prio && r.ready_prev == 0 {
                let mut x = t;
                while x != 0 {
                    v.push(x);
                    x = self.k.tcb(x).ready_next;
                }
            }
        }
        v
    }
}

/// A frame capability as Retype makes it.
pub fn frame(base: u64, size: FrameSize) -> Cap {
    Cap::Frame {
        base,
        size,
        rights: VmRights::ReadWrite,
        device: false,
        mapping: None,
    }
}

/// Error code of a reply.
pub fn err(e: keel_abi::error::Error) -> u64 {
    e as u64
}

#[test]
fn world_builds_and_root_can_invoke() {
    let mut w = World::new();
    let e = w.endpoint();
    assert!(matches!(
        w.cap(e),
        Cap::Endpoint {
            badge: 0,
            rights: Rights::ALL,
            ..
        }
    ));
    let th = w.running_thread(50);
    assert_eq!(w.state(th.tcb), ThreadState::Restart);
    assert_eq!(w.k.current(), ROOT_TCB);
    w.check_invariants();
}
