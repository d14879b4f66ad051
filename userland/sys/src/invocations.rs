//! Every kernel-object method, as a method of the `Cap<T>` it is invoked on.
//!
//! The [`invocations!`] table below is the one place a method is defined: its Rust name,
//! its arguments in libsel4's order (x86_64 stubs generated from seL4's object-api XML)
//! and its label, named by `keel_abi::invocation::InvocationLabel` variant — no label is
//! spelled as a number. Each argument is either a word (it becomes the next message
//! register) or a `Cap<_>` (it becomes the next extra capability), so the message
//! layout follows from the argument list exactly as in libsel4. The few methods whose
//! message registers pack several arguments (TCB register access) are written out
//! below the table and listed in it.
//!
//! An invocation is a Call on the capability; a reply label of 0 is success, any other
//! is a [`crate::Error`] with its detail words.

use keel_abi::fault::{USER_CONTEXT_WORDS, UserContext};
use keel_abi::invocation::InvocationLabel;
use keel_abi::message::{CapRights, MSG_MAX_EXTRA_CAPS, MSG_REGISTERS_IN_CPU, MessageInfo};
use keel_abi::object::{CNodeCapData, ObjectType, vm_attributes};

use crate::cap::*;
use crate::error::{Error, Result};
use crate::ipc;
use crate::syscall;

/// Most message registers an invocation here sends.
const MAX_ARGS: usize = 24;

/// The message of an invocation being built: up to `N` words (by default
/// [`MAX_ARGS`]; the generated methods use exactly their argument count, so building
/// the message clears no more words than it sends).
#[derive(Clone, Copy, Debug)]
pub struct Args<const N: usize = MAX_ARGS> {
    words: [u64; N],
    length: usize,
    caps: [u64; MSG_MAX_EXTRA_CAPS],
    cap_count: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self::new()
    }
}

impl Args {
    /// An empty message of up to [`MAX_ARGS`] words.
    pub const fn new() -> Self {
        Args::with_capacity()
    }
}

impl<const N: usize> Args<N> {
    /// An empty message of up to `N` words.
    pub const fn with_capacity() -> Self {
        Self {
            words: [0; N],
            length: 0,
            caps: [0; MSG_MAX_EXTRA_CAPS],
            cap_count: 0,
        }
    }

    /// Appends a word.
    pub fn word(&mut self, w: u64) {
        self.words[self.length] = w;
        self.length += 1;
    }

    /// Appends a capability pointer.
    pub fn cap(&mut self, cptr: u64) {
        self.caps[self.cap_count] = cptr;
        self.cap_count += 1;
    }
}

/// An argument of an invocation: a word (next message register) or a capability (next
/// extra capability).
pub trait Arg {
    /// Appends the argument to the message.
    fn push<const N: usize>(self, args: &mut Args<N>);
}

macro_rules! word_args {
    ($($t:ty => |$v:ident| $e:expr;)*) => {
        $(impl Arg for $t {
            fn push<const N: usize>(self, args: &mut Args<N>) {
                let $v = self;
                args.word($e);
            }
        })*
    };
}

word_args! {
    u64 => |v| v;
    u16 => |v| v as u64;
    u8 => |v| v as u64;
    bool => |v| v as u64;
    CapRights => |v| v.0;
    CNodeCapData => |v| v.0;
    ObjectType => |v| v as u64;
    VmAttributes => |v| v.0;
}

impl<T: CapType> Arg for Cap<T> {
    fn push<const N: usize>(self, args: &mut Args<N>) {
        args.cap(self.cptr());
    }
}

/// A successful reply.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    /// The reply's message info (label 0).
    pub info: MessageInfo,
    regs: [u64; MSG_REGISTERS_IN_CPU],
}

impl Reply {
    /// Reply word `i`.
    pub fn mr(&self, i: usize) -> u64 {
        if i < MSG_REGISTERS_IN_CPU {
            self.regs[i]
        } else {
            ipc::buffer_mr(i)
        }
    }
}

/// What an invocation returns on success.
pub trait FromReply: Sized {
    /// Reads the value from the reply.
    fn from_reply(reply: &Reply) -> Self;
}

impl FromReply for () {
    fn from_reply(_: &Reply) -> Self {}
}
impl FromReply for u64 {
    fn from_reply(reply: &Reply) -> Self {
        reply.mr(0)
    }
}
impl FromReply for u32 {
    fn from_reply(reply: &Reply) -> Self {
        reply.mr(0) as u32
    }
}
impl FromReply for u16 {
    fn from_reply(reply: &Reply) -> Self {
        reply.mr(0) as u16
    }
}
impl FromReply for u8 {
    fn from_reply(reply: &Reply) -> Self {
        reply.mr(0) as u8
    }
}

/// Invokes the capability at `service` with `label` and `args` (seL4_Call). Inline, like
/// libsel4's stubs: with the message built just before, the loops over its words and
/// capabilities have constant bounds and unroll into plain stores; the error reply is
/// decoded out of line.
#[inline(always)]
pub fn invoke<const N: usize>(
    service: u64,
    label: InvocationLabel,
    args: &Args<N>,
) -> Result<Reply> {
    let (length, cap_count) = (args.length.min(N), args.cap_count.min(MSG_MAX_EXTRA_CAPS));
    for i in MSG_REGISTERS_IN_CPU..length {
        ipc::set_buffer_mr(i, args.words[i]);
    }
    for i in 0..cap_count {
        ipc::set_cap(i, args.caps[i]);
    }
    let info = MessageInfo::new(label as u64, 0, cap_count as u64, length as u64);
    let regs: [u64; MSG_REGISTERS_IN_CPU] =
        core::array::from_fn(|i| if i < length { args.words[i] } else { 0 });
    let r = syscall::call(service, info, regs);
    if r.info.label() == 0 {
        return Ok(Reply {
            info: r.info,
            regs: r.mrs,
        });
    }
    // The reply's words as separate arguments (in registers): a `RawReceive` argument
    // would be stored to memory before the label test, on the success path too.
    let [m0, m1, m2, m3] = r.mrs;
    Err(error_reply(r.info, m0, m1, m2, m3))
}

/// The error an invocation's reply (label not 0; `m0`–`m3` its message registers in
/// CPU registers) carries, with its detail words.
#[cold]
#[inline(never)]
fn error_reply(info: MessageInfo, m0: u64, m1: u64, m2: u64, m3: u64) -> Error {
    let mrs = [m0, m1, m2, m3];
    let mut words = [0u64; 8];
    let length = (info.length() as usize).min(words.len());
    let has_buffer = ipc::buffer_address() != 0;
    for (i, w) in words.iter_mut().enumerate().take(length) {
        *w = if i < MSG_REGISTERS_IN_CPU {
            mrs[i]
        } else if has_buffer {
            ipc::buffer_mr(i)
        } else {
            0
        };
    }
    Error::from_reply(info.label(), &words[..length])
}

/// seL4_X86_VMAttributes, plus Keel's execute-never bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmAttributes(pub u64);

impl VmAttributes {
    /// seL4_X86_Default_VMAttributes (write-back).
    pub const DEFAULT: Self = Self(vm_attributes::DEFAULT);
    /// seL4_X86_WriteThrough.
    pub const WRITE_THROUGH: Self = Self(vm_attributes::WRITE_THROUGH);
    /// seL4_X86_CacheDisabled.
    pub const CACHE_DISABLED: Self = Self(vm_attributes::CACHE_DISABLED);
    /// seL4_X86_Uncacheable.
    pub const UNCACHEABLE: Self = Self(vm_attributes::UNCACHEABLE);
    /// seL4_X86_WriteCombining.
    pub const WRITE_COMBINING: Self = Self(vm_attributes::WRITE_COMBINING);
    /// Keel: map no-execute (bit 8, `KEEL_EXECUTE_NEVER` in the kernel's vspace code).
    pub const EXECUTE_NEVER: Self = Self(1 << 8);

    /// Both sets of attributes.
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Defines invocation methods and the [`TABLE`] of every method.
macro_rules! invocations {
    (
        $(
            impl $ty:ident {
                $(
                    $(#[doc = $doc:literal])*
                    fn $method:ident($($arg:ident : $argty:ty),* $(,)?) $(-> $ret:ty)? = $label:ident;
                )*
            }
        )*
        written_out {
            $($wty:ident :: $wmethod:ident = $wlabel:ident;)*
        }
    ) => {
        $(
            impl Cap<$ty> {
                $(
                    $(#[doc = $doc])*
                    #[doc = ""]
                    #[doc = concat!("Label: `InvocationLabel::", stringify!($label), "`.")]
                    #[allow(clippy::too_many_arguments)]
                    #[inline]
                    pub fn $method(self, $($arg: $argty),*) -> Result<invocations!(@ret $($ret)?)> {
                        #[allow(unused_mut)]
                        let mut args =
                            Args::<{ invocations!(@count $($arg)*) }>::with_capacity();
                        $( Arg::push($arg, &mut args); )*
                        let reply = invoke(self.cptr(), InvocationLabel::$label, &args)?;
                        Ok(FromReply::from_reply(&reply))
                    }
                )*
            }
        )*

        /// Every method of this module: (capability type, method, label).
        pub const TABLE: &[(&str, &str, InvocationLabel)] = &[
            $($( (stringify!($ty), stringify!($method), InvocationLabel::$label), )*)*
            $( (stringify!($wty), stringify!($wmethod), InvocationLabel::$wlabel), )*
        ];
    };
    (@count) => { 0 };
    (@count $head:ident $($tail:ident)*) => { 1 + invocations!(@count $($tail)*) };
    (@ret) => { () };
    (@ret $ret:ty) => { $ret };
}

invocations! {
    impl Untyped {
        /// Creates `num_objects` objects of `object_type` (size `size_bits` for Untyped
        /// and CNode) in consecutive empty slots from `node_offset` of the CNode found
        /// at (`node_index`, `node_depth`) in `root` (depth 0: `root` itself).
        fn retype(object_type: ObjectType, size_bits: u64, root: Cap<CNode>, node_index: u64,
            node_depth: u64, node_offset: u64, num_objects: u64) = UntypedRetype;
    }

    impl CNode {
        /// Deletes every capability derived from the one at (`index`, `depth`).
        fn revoke(index: u64, depth: u8) = CNodeRevoke;
        /// Deletes the capability at (`index`, `depth`).
        fn delete(index: u64, depth: u8) = CNodeDelete;
        /// Aborts the pending sends with the badge of the endpoint capability there.
        fn cancel_badged_sends(index: u64, depth: u8) = CNodeCancelBadgedSends;
        /// Copies a capability with rights masked by `rights`.
        fn copy(dest_index: u64, dest_depth: u8, src_root: Cap<CNode>, src_index: u64,
            src_depth: u8, rights: CapRights) = CNodeCopy;
        /// Copies with masked rights and a badge (endpoints, notifications) or guard
        /// (CNodes, see `CNodeCapData`).
        fn mint(dest_index: u64, dest_depth: u8, src_root: Cap<CNode>, src_index: u64,
            src_depth: u8, rights: CapRights, badge: u64) = CNodeMint;
        /// Moves a capability.
        fn move_(dest_index: u64, dest_depth: u8, src_root: Cap<CNode>, src_index: u64,
            src_depth: u8) = CNodeMove;
        /// Moves a capability, setting its badge or guard.
        fn mutate(dest_index: u64, dest_depth: u8, src_root: Cap<CNode>, src_index: u64,
            src_depth: u8, badge: u64) = CNodeMutate;
        /// Moves pivot → dest (with badge `dest_badge`) and src → pivot (with badge
        /// `pivot_badge`) in one step; dest may be src (a swap).
        fn rotate(
            dest_index: u64,
            dest_depth: u8,
            dest_badge: u64,
            pivot_root: Cap<CNode>,
            pivot_index: u64,
            pivot_depth: u8,
            pivot_badge: u64,
            src_root: Cap<CNode>,
            src_index: u64,
            src_depth: u8
        ) = CNodeRotate;
        /// Moves the caller's reply capability into (`index`, `depth`).
        fn save_caller(index: u64, depth: u8) = CNodeSaveCaller;
    }

    impl Tcb {
        /// Sets fault endpoint (a capability pointer in the thread's CSpace), CSpace,
        /// VSpace and IPC buffer.
        fn configure(fault_ep: u64, cspace_root: Cap<CNode>, cspace_root_data: u64,
            vspace_root: Cap<Pml4>, vspace_root_data: u64, buffer: u64,
            buffer_frame: Cap<Frame>) = TcbConfigure;
        /// Sets the priority; `authority`'s MCP bounds it.
        fn set_priority(authority: Cap<Tcb>, priority: u64) = TcbSetPriority;
        /// Sets the maximum controlled priority; `authority`'s MCP bounds it.
        fn set_mc_priority(authority: Cap<Tcb>, mcp: u64) = TcbSetMcPriority;
        /// Sets MCP and priority.
        fn set_sched_params(authority: Cap<Tcb>, mcp: u64, priority: u64) = TcbSetSchedParams;
        /// Sets the IPC buffer (address and frame).
        fn set_ipc_buffer(buffer: u64, buffer_frame: Cap<Frame>) = TcbSetIpcBuffer;
        /// Sets fault endpoint, CSpace and VSpace.
        fn set_space(fault_ep: u64, cspace_root: Cap<CNode>, cspace_root_data: u64,
            vspace_root: Cap<Pml4>, vspace_root_data: u64) = TcbSetSpace;
        /// Stops the thread.
        fn suspend() = TcbSuspend;
        /// Makes the thread runnable.
        fn resume() = TcbResume;
        /// Binds a notification to the thread.
        fn bind_notification(notification: Cap<Notification>) = TcbBindNotification;
        /// Unbinds the thread's notification.
        fn unbind_notification() = TcbUnbindNotification;
        /// Moves the thread to CPU `affinity`.
        fn set_affinity(affinity: u64) = TcbSetAffinity;
        /// Sets the FS base (the TLS base on x86-64).
        fn set_tls_base(tls_base: u64) = TcbSetTlsBase;
        /// Keel: sets the GS base.
        fn set_gs_base(gs_base: u64) = TcbSetGsBase;
        /// Clears then sets TCB flags (`keel_abi::object::tcb_flags`); returns the flags.
        fn set_flags(clear: u64, set: u64) -> u64 = TcbSetFlags;
        /// Keel: registers the thread's rseq area (`keel_abi::rseq`; 0 unregisters).
        fn set_rseq(area: u64) = TcbSetRseq;
    }

    impl IrqControl {
        /// Creates a handler for platform IRQ `irq` at (`index`, `depth`) in `root`.
        fn get(irq: u64, root: Cap<CNode>, index: u64, depth: u8) = IrqIssueIrqHandler;
        /// Creates a handler for an I/O APIC pin delivered at relative `vector`.
        fn get_ioapic(root: Cap<CNode>, index: u64, depth: u8, ioapic: u64, pin: u64,
            level: u64, polarity: u64, vector: u64) = X86IrqIssueIrqHandlerIoApic;
        /// Creates a handler for an MSI delivered at relative `vector`.
        fn get_msi(root: Cap<CNode>, index: u64, depth: u8, pci_bus: u64, pci_dev: u64,
            pci_func: u64, handle: u64, vector: u64) = X86IrqIssueIrqHandlerMsi;
    }

    impl IrqHandler {
        /// Re-enables the interrupt.
        fn ack() = IrqAckIrq;
        /// Sets the notification the interrupt signals.
        fn set_notification(notification: Cap<Notification>) = IrqSetIrqHandler;
        /// Removes the notification.
        fn clear() = IrqClearIrqHandler;
    }

    impl IoPortControl {
        /// Creates an I/O port capability for ports `first_port..=last_port` at
        /// (`index`, `depth`) in `root`.
        fn issue(first_port: u64, last_port: u64, root: Cap<CNode>, index: u64, depth: u8)
            = X86IoPortControlIssue;
    }

    impl IoPort {
        /// Reads a byte.
        fn in8(port: u16) -> u8 = X86IoPortIn8;
        /// Reads 16 bits.
        fn in16(port: u16) -> u16 = X86IoPortIn16;
        /// Reads 32 bits.
        fn in32(port: u16) -> u32 = X86IoPortIn32;
        /// Writes a byte.
        fn out8(port: u64, data: u64) = X86IoPortOut8;
        /// Writes 16 bits.
        fn out16(port: u64, data: u64) = X86IoPortOut16;
        /// Writes 32 bits.
        fn out32(port: u64, data: u64) = X86IoPortOut32;
    }

    impl AsidControl {
        /// Turns a 4 KiB untyped into an ASID pool at (`index`, `depth`) in `root`.
        fn make_pool(untyped: Cap<Untyped>, root: Cap<CNode>, index: u64, depth: u8)
            = X86AsidControlMakePool;
    }

    impl AsidPool {
        /// Gives an address space an ASID from this pool.
        fn assign(vspace: Cap<Pml4>) = X86AsidPoolAssign;
    }

    impl Frame {
        /// Maps the frame at `vaddr` of `vspace`.
        fn map(vspace: Cap<Pml4>, vaddr: u64, rights: CapRights, attr: VmAttributes) = X86PageMap;
        /// Unmaps the frame.
        fn unmap() = X86PageUnmap;
        /// The frame's physical address.
        fn get_address() -> u64 = X86PageGetAddress;
    }

    impl PageTable {
        /// Maps the page table for the 2 MiB region containing `vaddr`.
        fn map(vspace: Cap<Pml4>, vaddr: u64, attr: VmAttributes) = X86PageTableMap;
        /// Unmaps it.
        fn unmap() = X86PageTableUnmap;
    }

    impl PageDirectory {
        /// Maps the page directory for the 1 GiB region containing `vaddr`.
        fn map(vspace: Cap<Pml4>, vaddr: u64, attr: VmAttributes) = X86PageDirectoryMap;
        /// Unmaps it.
        fn unmap() = X86PageDirectoryUnmap;
    }

    impl Pdpt {
        /// Maps the PDPT for the 512 GiB region containing `vaddr`.
        fn map(vspace: Cap<Pml4>, vaddr: u64, attr: VmAttributes) = X86PdptMap;
        /// Unmaps it.
        fn unmap() = X86PdptUnmap;
    }

    impl Domain {
        /// Puts `thread` into scheduling domain `domain`.
        fn set(domain: u8, thread: Cap<Tcb>) = DomainSetSet;
    }

    impl FsGsBaseControl {
        /// Keel: allows (or forbids) `tcb` the user FSGSBASE instructions.
        fn set_access(tcb: Cap<Tcb>, allow: bool) = FsGsBaseControlSetAccess;
    }

    written_out {
        Tcb::read_registers = TcbReadRegisters;
        Tcb::write_registers = TcbWriteRegisters;
        Tcb::copy_registers = TcbCopyRegisters;
        Ldt::set_entries = X86LdtSetEntries;
        Pml4::set_ldt = X86VSpaceSetLdt;
    }
}

impl Cap<crate::cap::Ldt> {
    /// Keel: writes `descriptors` into the LDT from index `first` (every one checked:
    /// empty, or a DPL-3 code/data segment; a bad one is InvalidArgument `2 + i` and
    /// nothing is written). MR0 = `first`, MR1 = count, MR2.. = the descriptors.
    pub fn set_entries(self, first: u64, descriptors: &[u64]) -> Result<()> {
        let mut args = Args::new();
        args.word(first);
        args.word(descriptors.len() as u64);
        for d in descriptors {
            args.word(*d);
        }
        invoke(self.cptr(), InvocationLabel::X86LdtSetEntries, &args)?;
        Ok(())
    }
}

impl Cap<Pml4> {
    /// Keel: attaches `ldt` to this address space, or detaches its LDT (`None`).
    pub fn set_ldt(self, ldt: Option<Cap<crate::cap::Ldt>>) -> Result<()> {
        let mut args = Args::new();
        if let Some(l) = ldt {
            args.cap(l.cptr());
        }
        invoke(self.cptr(), InvocationLabel::X86VSpaceSetLdt, &args)?;
        Ok(())
    }
}

impl Cap<Tcb> {
    /// Reads the first `count` registers of the thread's `UserContext` (the rest are
    /// 0); suspends it first if `suspend_source`. MR0 = `suspend_source | arch_flags
    /// << 8`, MR1 = `count`.
    pub fn read_registers(
        self,
        suspend_source: bool,
        arch_flags: u8,
        count: usize,
    ) -> Result<UserContext> {
        let mut args = Args::new();
        args.word(suspend_source as u64 | (arch_flags as u64) << 8);
        args.word(count as u64);
        let reply = invoke(self.cptr(), InvocationLabel::TcbReadRegisters, &args)?;
        let n = count
            .min(USER_CONTEXT_WORDS)
            .min(reply.info.length() as usize);
        let mut words = [0u64; USER_CONTEXT_WORDS];
        for (i, w) in words.iter_mut().enumerate().take(n) {
            *w = reply.mr(i);
        }
        Ok(UserContext::from_words(&words))
    }

    /// Writes the first `count` registers of `context` (UserContext order); resumes
    /// the thread afterwards if `resume_target`. MR0 = `resume_target | arch_flags <<
    /// 8`, MR1 = `count`, MR2.. = all 20 words (as libsel4 sends them).
    pub fn write_registers(
        self,
        resume_target: bool,
        arch_flags: u8,
        count: usize,
        context: &UserContext,
    ) -> Result<()> {
        let mut args = Args::new();
        args.word(resume_target as u64 | (arch_flags as u64) << 8);
        args.word(count as u64);
        for w in context.to_words() {
            args.word(w);
        }
        invoke(self.cptr(), InvocationLabel::TcbWriteRegisters, &args).map(|_| ())
    }

    /// Copies registers from `source`: MR0 = `suspend_source | resume_target << 1 |
    /// transfer_frame << 2 | transfer_integer << 3 | arch_flags << 8`, extra cap 0 =
    /// `source`.
    pub fn copy_registers(
        self,
        source: Cap<Tcb>,
        suspend_source: bool,
        resume_target: bool,
        transfer_frame: bool,
        transfer_integer: bool,
        arch_flags: u8,
    ) -> Result<()> {
        let mut args = Args::new();
        args.word(
            suspend_source as u64
                | (resume_target as u64) << 1
                | (transfer_frame as u64) << 2
                | (transfer_integer as u64) << 3
                | (arch_flags as u64) << 8,
        );
        args.cap(source.cptr());
        invoke(self.cptr(), InvocationLabel::TcbCopyRegisters, &args).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_abi::invocation::Interface;

    fn interface_of(cap_type: &str) -> Interface {
        match cap_type {
            "Untyped" => Interface::Untyped,
            "CNode" => Interface::CNode,
            "Tcb" => Interface::Tcb,
            "IrqControl" => Interface::IrqControl,
            "IrqHandler" => Interface::IrqHandler,
            "IoPortControl" => Interface::X86IoPortControl,
            "IoPort" => Interface::X86IoPort,
            "AsidControl" => Interface::X86AsidControl,
            "AsidPool" => Interface::X86AsidPool,
            "Frame" => Interface::X86Page,
            "PageTable" => Interface::X86PageTable,
            "PageDirectory" => Interface::X86PageDirectory,
            "Pdpt" => Interface::X86Pdpt,
            "Domain" => Interface::DomainSet,
            "FsGsBaseControl" => Interface::FsGsBaseControl,
            other => panic!("unknown capability type {other}"),
        }
    }

    #[test]
    fn every_method_is_on_its_labels_interface() {
        for (cap_type, method, label) in TABLE {
            assert_eq!(
                label.interface(),
                interface_of(cap_type),
                "{cap_type}::{method}"
            );
        }
    }

    #[test]
    fn labels_are_unique_and_cover_the_sel4_methods_keel_implements() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert_ne!(a.2, b.2, "{} and {}", a.1, b.1);
            }
        }
        let covered = |l: InvocationLabel| TABLE.iter().any(|e| e.2 == l);
        for label in InvocationLabel::ALL {
            let skip = matches!(
                label,
                InvocationLabel::InvalidInvocation
                    | InvocationLabel::TcbSetBreakpoint
                    | InvocationLabel::TcbGetBreakpoint
                    | InvocationLabel::TcbUnsetBreakpoint
                    | InvocationLabel::TcbConfigureSingleStepping
                    | InvocationLabel::DomainScheduleConfigure
                    | InvocationLabel::DomainScheduleSetStart
            );
            assert!(skip || covered(*label), "{} has no method", label.name());
        }
    }

    #[test]
    fn words_and_caps_keep_their_own_order() {
        let mut a = Args::new();
        Arg::push(5u64, &mut a);
        Arg::push(64u8, &mut a);
        Arg::push(Cap::<CNode>::from_cptr(2), &mut a);
        Arg::push(7u64, &mut a);
        Arg::push(CapRights::READ, &mut a);
        assert_eq!(&a.words[..a.length], &[5, 64, 7, 2]);
        assert_eq!(&a.caps[..a.cap_count], &[2]);
    }
}
