//! Threads in the root task's address space: a TCB retyped from untyped, configured with
//! the root CNode (or a CSpace of its own, [`ThreadCSpace`]) and a VSpace, an IPC buffer frame retyped and mapped in
//! [`crate::IPC_BUFFER_REGION`], a stack from `keel_sys::thread`, and start registers
//! (RIP, RSP, RDI, RSI, RDX) written before it is resumed.

use keel_abi::fault::{USER_CONTEXT_WORDS, UserContext};
use keel_abi::message::CapRights;
use keel_abi::object::{ObjectType, PAGE_BITS};
use keel_sys::VmAttributes;
use keel_sys::cap::{CNode, Cap, Frame, Tcb, init};
use keel_sys::thread::{ThreadBlock, ThreadStack};

use crate::alloc::{Allocator, Error, Result};

/// How to set up a thread.
#[derive(Clone, Copy, Debug)]
pub struct ThreadConfig {
    /// Scheduling priority.
    pub priority: u8,
    /// Fault endpoint: a capability pointer in the thread's CSpace (the kernel looks it
    /// up there when the thread faults; 0: none).
    pub fault_ep: u64,
    /// CPU to run on (`None`: the creating CPU).
    pub affinity: Option<u64>,
    /// The thread's own CSpace (`None`: the root CNode, shared with its creator).
    pub cspace: Option<ThreadCSpace>,
}

impl Default for ThreadConfig {
    fn default() -> Self {
        Self {
            priority: 100,
            fault_ep: 0,
            affinity: None,
            cspace: None,
        }
    }
}

/// A CSpace of a thread's own: a CNode whose capability (held by the creator, in the
/// root CNode) carries a guard that makes it resolve 64-bit capability pointers in one
/// level, like the root CNode.
#[derive(Clone, Copy, Debug)]
pub struct ThreadCSpace {
    /// The guarded CNode capability, in the creator's root CNode.
    pub root: Cap<CNode>,
    /// The slot of that CNode where the runtime puts a copy of the thread's own TCB
    /// capability (the thread suspends itself through it when its entry returns).
    pub tcb_slot: u64,
}

/// A thread created by [`Allocator::create_thread`].
#[derive(Debug)]
pub struct Thread {
    /// Its TCB.
    pub tcb: Cap<Tcb>,
    /// Its IPC buffer frame.
    pub ipc_frame: Cap<Frame>,
    /// User address of its IPC buffer.
    pub ipc_buffer: u64,
    stack: Option<ThreadStack>,
}

impl Thread {
    /// Lowest address of the thread's stack.
    pub fn stack_base(&self) -> u64 {
        self.stack.as_ref().map_or(0, |s| s.base())
    }

    /// First address above the thread's stack.
    pub fn stack_top(&self) -> u64 {
        self.stack.as_ref().map_or(0, |s| s.top())
    }

    /// Makes the thread run.
    pub fn start(&self) -> Result<()> {
        Ok(self.tcb.resume()?)
    }

    /// Stops the thread and frees its TCB, IPC buffer frame, stack and slots.
    pub fn destroy(mut self, alloc: &mut Allocator) -> Result<()> {
        let _ = self.tcb.suspend();
        alloc.delete(self.tcb)?;
        let _ = self.ipc_frame.unmap();
        alloc.delete(self.ipc_frame)?;
        if let Some(s) = self.stack.take() {
            s.release();
        }
        Ok(())
    }
}

impl Allocator {
    /// Creates a thread that will run `entry(argument)` on its own stack in the root
    /// task's address space and CSpace, suspended until [`Thread::start`]. When `entry`
    /// returns, the thread suspends itself.
    pub fn create_thread(
        &mut self,
        entry: fn(u64),
        argument: u64,
        config: ThreadConfig,
    ) -> Result<Thread> {
        self.create_thread_in(init::VSPACE, entry, argument, config)
    }

    /// Like [`Allocator::create_thread`], but the thread runs in `vspace`, which must map
    /// the root task's image (see [`Allocator::clone_image_vspace`]): its stack lies in
    /// the image's shared data, its IPC buffer is mapped in `vspace`.
    pub fn create_thread_in(
        &mut self,
        vspace: Cap<keel_sys::cap::Pml4>,
        entry: fn(u64),
        argument: u64,
        config: ThreadConfig,
    ) -> Result<Thread> {
        let stack = ThreadStack::allocate().ok_or(Error::OutOfStacks)?;
        match self.build_thread(vspace, &stack, entry, argument, config) {
            Ok((tcb, ipc_frame, ipc_buffer)) => Ok(Thread {
                tcb,
                ipc_frame,
                ipc_buffer,
                stack: Some(stack),
            }),
            Err(e) => {
                stack.release();
                Err(e)
            }
        }
    }

    fn build_thread(
        &mut self,
        vspace: Cap<keel_sys::cap::Pml4>,
        stack: &ThreadStack,
        entry: fn(u64),
        argument: u64,
        config: ThreadConfig,
    ) -> Result<(Cap<Tcb>, Cap<Frame>, u64)> {
        let tcb = self.create::<Tcb>()?;
        let frame = self.frame(ObjectType::X86Page4K)?;
        let ipc_buffer = self.next_ipc_buffer;
        self.next_ipc_buffer += 1 << PAGE_BITS;
        assert!(self.next_ipc_buffer <= crate::IPC_BUFFER_REGION.end);
        self.map_frame(
            vspace,
            frame,
            ipc_buffer,
            CapRights::READ_WRITE,
            VmAttributes::DEFAULT,
            1,
        )?;
        let (cspace_root, own_tcb) = match config.cspace {
            Some(space) => {
                space.root.copy(
                    space.tcb_slot,
                    crate::alloc::ROOT_DEPTH,
                    init::CNODE,
                    tcb.cptr(),
                    crate::alloc::ROOT_DEPTH,
                    CapRights::ALL,
                )?;
                (space.root, Cap::<Tcb>::from_cptr(space.tcb_slot))
            }
            None => (init::CNODE, tcb),
        };
        tcb.configure(
            config.fault_ep,
            cspace_root,
            0,
            vspace,
            0,
            ipc_buffer,
            frame,
        )?;
        tcb.set_priority(init::TCB, config.priority as u64)?;
        if let Some(cpu) = config.affinity {
            tcb.set_affinity(cpu)?;
        }
        stack.prepare(ThreadBlock {
            ipc_buffer,
            tcb: own_tcb.cptr(),
            ..ThreadBlock::default()
        });
        let start = stack.start_registers(entry, argument, own_tcb);
        let context = UserContext {
            rip: start.rip,
            rsp: start.rsp,
            rflags: 0x202,
            rdi: start.rdi,
            rsi: start.rsi,
            rdx: start.rdx,
            ..UserContext::default()
        };
        tcb.write_registers(false, 0, USER_CONTEXT_WORDS, &context)?;
        Ok((tcb, frame, ipc_buffer))
    }
}
