//! Typed capability pointers: [`Cap<T>`] names a slot of the caller's CSpace and says,
//! through `T`, which kind of object the capability in it is for. Methods exist only on
//! the `Cap<T>` whose object has them ([`crate::invocations`]), so invoking a method on
//! the wrong kind of capability is a compile error:
//!
//! ```compile_fail,E0599
//! use keel_sys::cap::{Cap, Endpoint};
//! let ep: Cap<Endpoint> = Cap::from_cptr(20);
//! // An endpoint has no Retype: does not compile.
//! let _ = ep.retype(keel_abi::object::ObjectType::Tcb, 0, Cap::from_cptr(2), 0, 0, 30, 1);
//! ```
//!
//! The same call on an untyped capability compiles:
//!
//! ```no_run
//! use keel_sys::cap::{Cap, Untyped};
//! let ut: Cap<Untyped> = Cap::from_cptr(20);
//! let _ = ut.retype(keel_abi::object::ObjectType::Tcb, 0, Cap::from_cptr(2), 0, 0, 30, 1);
//! ```
//!
//! The type is a claim the kernel checks: a `Cap<T>` whose slot holds something else
//! gets the kernel's error (or capability fault) at run time, never memory unsafety.

use core::fmt;
use core::marker::PhantomData;

use keel_abi::bootinfo::cap as slot;
use keel_abi::object::ObjectType;

/// A kind of capability (a zero-sized marker type).
pub trait CapType: Copy + fmt::Debug {
    /// Name for diagnostics.
    const NAME: &'static str;
    /// The Untyped Retype object type that creates this kind of object, if any.
    const OBJECT_TYPE: Option<ObjectType> = None;
}

macro_rules! cap_types {
    ($($(#[doc = $doc:literal])* $name:ident $(= $object:ident)?;)*) => {
        $(
            $(#[doc = $doc])*
            #[derive(Clone, Copy, Debug, PartialEq, Eq)]
            pub enum $name {}
            impl CapType for $name {
                const NAME: &'static str = stringify!($name);
                $(const OBJECT_TYPE: Option<ObjectType> = Some(ObjectType::$object);)?
            }
        )*
    };
}

cap_types! {
    /// Untyped memory (seL4_Untyped).
    Untyped = Untyped;
    /// A thread control block (seL4_TCB).
    Tcb = Tcb;
    /// An IPC endpoint.
    Endpoint = Endpoint;
    /// A notification.
    Notification = Notification;
    /// A CNode (seL4_CapTableObject).
    CNode = CapTable;
    /// A reply capability saved with CNode SaveCaller (non-MCS).
    Reply;
    /// The IRQ control capability.
    IrqControl;
    /// A handler for one interrupt.
    IrqHandler;
    /// The ASID control capability.
    AsidControl;
    /// An ASID pool.
    AsidPool;
    /// The I/O port control capability.
    IoPortControl;
    /// A range of I/O ports.
    IoPort;
    /// An address-space root (seL4_X64_PML4).
    Pml4 = X64Pml4;
    /// A page-directory-pointer table.
    Pdpt = X86Pdpt;
    /// A page directory.
    PageDirectory = X86PageDirectory;
    /// A page table.
    PageTable = X86PageTable;
    /// A frame of any size (4 KiB, 2 MiB or 1 GiB; the retype size decides).
    Frame = X86Page4K;
    /// The DomainSet capability.
    Domain;
    /// Keel's FsGsBaseControl capability.
    FsGsBaseControl;
    /// Keel's LDT object (512 segment descriptors an address space may carry).
    Ldt = KeelX86Ldt;
    /// A capability of unknown kind (cast it with [`Cap::cast`]).
    Unknown;
}

/// seL4_X64_PML4 is the address space root; seL4 calls it the VSpace.
pub type VSpace = Pml4;

/// A capability pointer to a `T` capability in the caller's CSpace.
pub struct Cap<T: CapType> {
    cptr: u64,
    kind: PhantomData<T>,
}

impl<T: CapType> Clone for Cap<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: CapType> Copy for Cap<T> {}
impl<T: CapType> PartialEq for Cap<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cptr == other.cptr
    }
}
impl<T: CapType> Eq for Cap<T> {}

impl<T: CapType> fmt::Debug for Cap<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cap<{}>({:#x})", T::NAME, self.cptr)
    }
}

impl<T: CapType> Cap<T> {
    /// The capability at `cptr` (resolved with the full word as depth).
    pub const fn from_cptr(cptr: u64) -> Self {
        Self {
            cptr,
            kind: PhantomData,
        }
    }

    /// The capability pointer.
    pub const fn cptr(self) -> u64 {
        self.cptr
    }

    /// The same slot, claimed to hold another kind of capability.
    pub const fn cast<U: CapType>(self) -> Cap<U> {
        Cap::from_cptr(self.cptr)
    }

    /// The slot as a capability of unknown kind.
    pub const fn erase(self) -> Cap<Unknown> {
        self.cast()
    }

    /// The kernel's type tag of what the slot really holds (seL4_DebugCapIdentify).
    pub fn identify(self) -> u64 {
        crate::debug_cap_identify(self.cptr)
    }
}

/// The capabilities seL4 puts in the root task's CNode, typed.
pub mod init {
    use super::*;

    /// seL4_CapNull: slot 0, always empty.
    pub const NULL: Cap<Unknown> = Cap::from_cptr(slot::NULL);
    /// The root task's TCB.
    pub const TCB: Cap<Tcb> = Cap::from_cptr(slot::INIT_THREAD_TCB);
    /// The root CNode.
    pub const CNODE: Cap<CNode> = Cap::from_cptr(slot::INIT_THREAD_CNODE);
    /// The root task's address space.
    pub const VSPACE: Cap<Pml4> = Cap::from_cptr(slot::INIT_THREAD_VSPACE);
    /// IRQ control.
    pub const IRQ_CONTROL: Cap<IrqControl> = Cap::from_cptr(slot::IRQ_CONTROL);
    /// ASID control.
    pub const ASID_CONTROL: Cap<AsidControl> = Cap::from_cptr(slot::ASID_CONTROL);
    /// The ASID pool of the root task's address space.
    pub const ASID_POOL: Cap<AsidPool> = Cap::from_cptr(slot::INIT_THREAD_ASID_POOL);
    /// I/O port control.
    pub const IO_PORT_CONTROL: Cap<IoPortControl> = Cap::from_cptr(slot::IO_PORT_CONTROL);
    /// The boot-info frame.
    pub const BOOT_INFO_FRAME: Cap<Frame> = Cap::from_cptr(slot::BOOT_INFO_FRAME);
    /// The root task's IPC buffer frame.
    pub const IPC_BUFFER: Cap<Frame> = Cap::from_cptr(slot::INIT_THREAD_IPC_BUFFER);
    /// The DomainSet capability.
    pub const DOMAIN: Cap<Domain> = Cap::from_cptr(slot::DOMAIN);
    /// Keel's FsGsBaseControl capability.
    pub const FS_GS_BASE_CONTROL: Cap<FsGsBaseControl> =
        Cap::from_cptr(slot::KEEL_FS_GS_BASE_CONTROL);
}
