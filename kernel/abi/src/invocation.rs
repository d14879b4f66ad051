//! Invocation labels: the message label that selects a method of the invoked object.
//!
//! This module owns the one table of labels. seL4 numbers its labels by listing the
//! methods of `object-api.xml`, then the x86_64 `object-api-sel4-arch.xml`, then the
//! x86 `object-api-arch.xml`, keeping only methods whose build condition holds, starting
//! from `InvalidInvocation` = 0. The numbers below are that enumeration for seL4 16.0.0,
//! x86_64 pc99, non-MCS, SMP on, hardware debug API on, no VT-x, no IOMMU (see
//! `doc/abi.md` for each entry's condition and the methods left out). Keel's own
//! methods follow seL4's last label, from [`KEEL_FIRST`].
//!
//! Both the kernel's decoder and the user-side stubs take their numbers from
//! [`InvocationLabel`]; nothing else may spell a label as a number.

/// The object interface a method belongs to (the capability type it is invoked on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interface {
    /// No interface (label 0).
    None,
    /// seL4_Untyped.
    Untyped,
    /// seL4_TCB.
    Tcb,
    /// seL4_CNode.
    CNode,
    /// seL4_IRQControl.
    IrqControl,
    /// seL4_IRQHandler.
    IrqHandler,
    /// seL4_DomainSet.
    DomainSet,
    /// seL4_X86_PDPT.
    X86Pdpt,
    /// seL4_X86_PageDirectory.
    X86PageDirectory,
    /// seL4_X86_PageTable.
    X86PageTable,
    /// seL4_X86_Page (every frame size).
    X86Page,
    /// seL4_X86_ASIDControl.
    X86AsidControl,
    /// seL4_X86_ASIDPool.
    X86AsidPool,
    /// seL4_X86_IOPortControl.
    X86IoPortControl,
    /// seL4_X86_IOPort.
    X86IoPort,
    /// seL4_X64_PML4, the root of an address space (Keel gives it a method).
    X64Pml4,
    /// Keel's FsGsBaseControl capability.
    FsGsBaseControl,
    /// Keel's LDT object.
    X86Ldt,
}

impl Interface {
    /// The interface's name as seL4's XML (or Keel's documentation) spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Interface::None => "-",
            Interface::Untyped => "seL4_Untyped",
            Interface::Tcb => "seL4_TCB",
            Interface::CNode => "seL4_CNode",
            Interface::IrqControl => "seL4_IRQControl",
            Interface::IrqHandler => "seL4_IRQHandler",
            Interface::DomainSet => "seL4_DomainSet",
            Interface::X86Pdpt => "seL4_X86_PDPT",
            Interface::X86PageDirectory => "seL4_X86_PageDirectory",
            Interface::X86PageTable => "seL4_X86_PageTable",
            Interface::X86Page => "seL4_X86_Page",
            Interface::X86AsidControl => "seL4_X86_ASIDControl",
            Interface::X86AsidPool => "seL4_X86_ASIDPool",
            Interface::X86IoPortControl => "seL4_X86_IOPortControl",
            Interface::X86IoPort => "seL4_X86_IOPort",
            Interface::X64Pml4 => "seL4_X64_PML4",
            Interface::FsGsBaseControl => "keel_FsGsBaseControl",
            Interface::X86Ldt => "keel_X86_LDT",
        }
    }
}

macro_rules! invocation_labels {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $value:literal, $name:literal, $interface:ident, $method:literal,
        $condition:literal;
    )*) => {
        /// An invocation label (see the module documentation for the numbering).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u64)]
        pub enum InvocationLabel {
            $( $(#[doc = $doc])* $variant = $value, )*
        }

        impl InvocationLabel {
            /// Every label, in numeric order.
            pub const ALL: &'static [InvocationLabel] = &[$(InvocationLabel::$variant,)*];

            /// The label with this number, if there is one.
            pub const fn from_u64(value: u64) -> Option<Self> {
                match value {
                    $( $value => Some(InvocationLabel::$variant), )*
                    _ => None,
                }
            }

            /// The label's name as seL4 spells it (or, for Keel's, as Keel does).
            pub const fn name(self) -> &'static str {
                match self { $( InvocationLabel::$variant => $name, )* }
            }

            /// The interface (capability type) the method is invoked on.
            pub const fn interface(self) -> Interface {
                match self { $( InvocationLabel::$variant => Interface::$interface, )* }
            }

            /// The method's name within its interface (libsel4's stub is
            /// `<interface>_<method>`).
            pub const fn method(self) -> &'static str {
                match self { $( InvocationLabel::$variant => $method, )* }
            }

            /// The build condition of the method in seL4's XML, `always`, or `Keel`.
            pub const fn condition(self) -> &'static str {
                match self { $( InvocationLabel::$variant => $condition, )* }
            }
        }
    };
}

invocation_labels! {
    /// Label 0: no method; the kernel rejects it with IllegalOperation.
    InvalidInvocation = 0, "InvalidInvocation", None, "-", "always (enum start)";
    /// Create objects of one type and size from an untyped.
    UntypedRetype = 1, "UntypedRetype", Untyped, "Retype", "always";
    /// Read a thread's `UserContext`.
    TcbReadRegisters = 2, "TCBReadRegisters", Tcb, "ReadRegisters", "always";
    /// Write a thread's `UserContext`.
    TcbWriteRegisters = 3, "TCBWriteRegisters", Tcb, "WriteRegisters", "always";
    /// Copy registers from another thread.
    TcbCopyRegisters = 4, "TCBCopyRegisters", Tcb, "CopyRegisters", "always";
    /// Set fault endpoint, CSpace, VSpace and IPC buffer at once.
    TcbConfigure = 5, "TCBConfigure", Tcb, "Configure", "!CONFIG_KERNEL_MCS";
    /// Set the priority (bounded by the authority's MCP).
    TcbSetPriority = 6, "TCBSetPriority", Tcb, "SetPriority", "always";
    /// Set the maximum controlled priority.
    TcbSetMcPriority = 7, "TCBSetMCPriority", Tcb, "SetMCPriority", "always";
    /// Set priority and MCP together.
    TcbSetSchedParams = 8, "TCBSetSchedParams", Tcb, "SetSchedParams", "!CONFIG_KERNEL_MCS";
    /// Set the IPC buffer address and frame.
    TcbSetIpcBuffer = 9, "TCBSetIPCBuffer", Tcb, "SetIPCBuffer", "always";
    /// Set fault endpoint, CSpace root and VSpace root.
    TcbSetSpace = 10, "TCBSetSpace", Tcb, "SetSpace", "!CONFIG_KERNEL_MCS";
    /// Stop the thread.
    TcbSuspend = 11, "TCBSuspend", Tcb, "Suspend", "always";
    /// Make the thread runnable.
    TcbResume = 12, "TCBResume", Tcb, "Resume", "always";
    /// Bind a notification to the thread.
    TcbBindNotification = 13, "TCBBindNotification", Tcb, "BindNotification", "always";
    /// Unbind the thread's notification.
    TcbUnbindNotification = 14, "TCBUnbindNotification", Tcb, "UnbindNotification", "always";
    /// Move the thread to a CPU.
    TcbSetAffinity = 15, "TCBSetAffinity", Tcb, "SetAffinity", "!CONFIG_KERNEL_MCS && CONFIG_ENABLE_SMP_SUPPORT";
    /// Arm a hardware breakpoint or watchpoint.
    TcbSetBreakpoint = 16, "TCBSetBreakpoint", Tcb, "SetBreakpoint", "CONFIG_HARDWARE_DEBUG_API";
    /// Read a hardware breakpoint's settings.
    TcbGetBreakpoint = 17, "TCBGetBreakpoint", Tcb, "GetBreakpoint", "CONFIG_HARDWARE_DEBUG_API";
    /// Disarm a hardware breakpoint.
    TcbUnsetBreakpoint = 18, "TCBUnsetBreakpoint", Tcb, "UnsetBreakpoint", "CONFIG_HARDWARE_DEBUG_API";
    /// Single-step the thread (fault every N instructions).
    TcbConfigureSingleStepping = 19, "TCBConfigureSingleStepping", Tcb, "ConfigureSingleStepping", "CONFIG_HARDWARE_DEBUG_API";
    /// Set the TLS base (FS base on x86-64).
    TcbSetTlsBase = 20, "TCBSetTLSBase", Tcb, "SetTLSBase", "always";
    /// Clear and set TCB flags (`object::tcb_flags`: FPU disabled).
    TcbSetFlags = 21, "TCBSetFlags", Tcb, "SetFlags", "always";
    /// Delete every capability derived from one.
    CNodeRevoke = 22, "CNodeRevoke", CNode, "Revoke", "always";
    /// Delete one capability.
    CNodeDelete = 23, "CNodeDelete", CNode, "Delete", "always";
    /// Abort pending sends with one badge.
    CNodeCancelBadgedSends = 24, "CNodeCancelBadgedSends", CNode, "CancelBadgedSends", "always";
    /// Copy a capability, possibly with fewer rights.
    CNodeCopy = 25, "CNodeCopy", CNode, "Copy", "always";
    /// Copy with fewer rights and a badge or guard.
    CNodeMint = 26, "CNodeMint", CNode, "Mint", "always";
    /// Move a capability to another slot.
    CNodeMove = 27, "CNodeMove", CNode, "Move", "always";
    /// Move, changing badge or guard.
    CNodeMutate = 28, "CNodeMutate", CNode, "Mutate", "always";
    /// Move two capabilities in one step.
    CNodeRotate = 29, "CNodeRotate", CNode, "Rotate", "always";
    /// Move the thread's reply capability into a slot.
    CNodeSaveCaller = 30, "CNodeSaveCaller", CNode, "SaveCaller", "!CONFIG_KERNEL_MCS";
    /// Create a handler for a platform IRQ number.
    IrqIssueIrqHandler = 31, "IRQIssueIRQHandler", IrqControl, "Get", "always";
    /// Re-enable the interrupt after handling it.
    IrqAckIrq = 32, "IRQAckIRQ", IrqHandler, "Ack", "always";
    /// Set the notification the interrupt signals.
    IrqSetIrqHandler = 33, "IRQSetIRQHandler", IrqHandler, "SetNotification", "always";
    /// Remove the handler's notification.
    IrqClearIrqHandler = 34, "IRQClearIRQHandler", IrqHandler, "Clear", "always";
    /// Put a thread into a scheduling domain.
    DomainSetSet = 35, "DomainSetSet", DomainSet, "Set", "always";
    /// Set one entry of the domain schedule.
    DomainScheduleConfigure = 36, "DomainScheduleConfigure", DomainSet, "ScheduleConfigure", "always";
    /// Choose the domain schedule's starting entry.
    DomainScheduleSetStart = 37, "DomainScheduleSetStart", DomainSet, "ScheduleSetStart", "always";
    /// Map a PDPT into a PML4.
    X86PdptMap = 38, "X86PDPTMap", X86Pdpt, "Map", "always (x86_64 sel4_arch file)";
    /// Unmap a PDPT.
    X86PdptUnmap = 39, "X86PDPTUnmap", X86Pdpt, "Unmap", "always (x86_64 sel4_arch file)";
    /// Map a page directory into a PDPT.
    X86PageDirectoryMap = 40, "X86PageDirectoryMap", X86PageDirectory, "Map", "always";
    /// Unmap a page directory.
    X86PageDirectoryUnmap = 41, "X86PageDirectoryUnmap", X86PageDirectory, "Unmap", "always";
    /// Map a page table into a page directory.
    X86PageTableMap = 42, "X86PageTableMap", X86PageTable, "Map", "always";
    /// Unmap a page table.
    X86PageTableUnmap = 43, "X86PageTableUnmap", X86PageTable, "Unmap", "always";
    /// Map a frame (4 KiB, 2 MiB or 1 GiB) with rights and attributes.
    X86PageMap = 44, "X86PageMap", X86Page, "Map", "always";
    /// Unmap a frame.
    X86PageUnmap = 45, "X86PageUnmap", X86Page, "Unmap", "always";
    /// Read a frame's physical address.
    X86PageGetAddress = 46, "X86PageGetAddress", X86Page, "GetAddress", "always";
    /// Turn a 4 KiB untyped into an ASID pool.
    X86AsidControlMakePool = 47, "X86ASIDControlMakePool", X86AsidControl, "MakePool", "always";
    /// Give a PML4 an ASID from the pool.
    X86AsidPoolAssign = 48, "X86ASIDPoolAssign", X86AsidPool, "Assign", "always";
    /// Create an I/O port capability for a port range.
    X86IoPortControlIssue = 49, "X86IOPortControlIssue", X86IoPortControl, "Issue", "always";
    /// Read a byte from a port.
    X86IoPortIn8 = 50, "X86IOPortIn8", X86IoPort, "In8", "always";
    /// Read 16 bits from a port.
    X86IoPortIn16 = 51, "X86IOPortIn16", X86IoPort, "In16", "always";
    /// Read 32 bits from a port.
    X86IoPortIn32 = 52, "X86IOPortIn32", X86IoPort, "In32", "always";
    /// Write a byte to a port.
    X86IoPortOut8 = 53, "X86IOPortOut8", X86IoPort, "Out8", "always";
    /// Write 16 bits to a port.
    X86IoPortOut16 = 54, "X86IOPortOut16", X86IoPort, "Out16", "always";
    /// Write 32 bits to a port.
    X86IoPortOut32 = 55, "X86IOPortOut32", X86IoPort, "Out32", "always";
    /// Create a handler for an I/O APIC pin.
    X86IrqIssueIrqHandlerIoApic = 56, "X86IRQIssueIRQHandlerIOAPIC", IrqControl, "GetIOAPIC", "always";
    /// Create a handler for an MSI vector.
    X86IrqIssueIrqHandlerMsi = 57, "X86IRQIssueIRQHandlerMSI", IrqControl, "GetMSI", "always";
    /// Keel: allow or forbid a thread the user FSGSBASE instructions.
    FsGsBaseControlSetAccess = 58, "FsGsBaseControlSetAccess", FsGsBaseControl, "SetAccess", "Keel";
    /// Keel: set a thread's GS base (works on the caller itself).
    TcbSetGsBase = 59, "TCBSetGSBase", Tcb, "SetGSBase", "Keel";
    /// Keel: write validated descriptors into an LDT object.
    X86LdtSetEntries = 60, "X86LDTSetEntries", X86Ldt, "SetEntries", "Keel";
    /// Keel: attach an LDT object to an address space, or detach it.
    X86VSpaceSetLdt = 61, "X86VSpaceSetLDT", X64Pml4, "SetLDT", "Keel";
    /// Keel: register or unregister the thread's restartable-sequence area.
    TcbSetRseq = 62, "TCBSetRseq", Tcb, "SetRseq", "Keel";
}

/// seL4's last label in this configuration (`X86IRQIssueIRQHandlerMSI`);
/// seL4's `nArchInvocationLabels` is this + 1.
pub const SEL4_LAST: InvocationLabel = InvocationLabel::X86IrqIssueIrqHandlerMsi;
/// Number of seL4 labels, `InvalidInvocation` included (seL4's `nArchInvocationLabels`).
pub const SEL4_COUNT: u64 = SEL4_LAST as u64 + 1;
/// seL4's `nInvocationLabels`: first label of the x86_64 (sel4_arch) file.
pub const SEL4_GENERIC_COUNT: u64 = InvocationLabel::X86PdptMap as u64;
/// seL4's `nSeL4ArchInvocationLabels`: first label of the x86 (arch) file.
pub const SEL4_SEL4_ARCH_COUNT: u64 = InvocationLabel::X86PageDirectoryMap as u64;
/// First of Keel's own labels (= [`SEL4_COUNT`]).
pub const KEEL_FIRST: InvocationLabel = InvocationLabel::FsGsBaseControlSetAccess;
/// Number of labels in the table, Keel's included.
pub const COUNT: u64 = InvocationLabel::ALL.len() as u64;

/// seL4 methods whose condition is false in this configuration, with the condition, in
/// XML order. They take no number here.
pub const SEL4_EXCLUDED: &[(&str, &str)] = &[
    ("TCBConfigure (MCS form)", "CONFIG_KERNEL_MCS"),
    ("TCBSetSchedParams (MCS form)", "CONFIG_KERNEL_MCS"),
    ("TCBSetTimeoutEndpoint", "CONFIG_KERNEL_MCS"),
    ("TCBSetSpace (MCS form)", "CONFIG_KERNEL_MCS"),
    ("SchedControlConfigureFlags", "CONFIG_KERNEL_MCS"),
    ("SchedContextBind", "CONFIG_KERNEL_MCS"),
    ("SchedContextUnbind", "CONFIG_KERNEL_MCS"),
    ("SchedContextUnbindObject", "CONFIG_KERNEL_MCS"),
    ("SchedContextConsumed", "CONFIG_KERNEL_MCS"),
    ("SchedContextYieldTo", "CONFIG_KERNEL_MCS"),
    ("X86VCPUReadMSR", "CONFIG_X86_64_VTX_64BIT_GUESTS"),
    ("X86VCPUWriteMSR", "CONFIG_X86_64_VTX_64BIT_GUESTS"),
    ("X86PageDirectoryGetStatusBits", "CONFIG_ARCH_IA32"),
    ("X86IOPageTableMap", "CONFIG_IOMMU"),
    ("X86IOPageTableUnmap", "CONFIG_IOMMU"),
    ("X86PageMapIO", "CONFIG_IOMMU"),
    ("X86PageMapEPT", "CONFIG_VTX"),
    ("TCBSetEPTRoot", "CONFIG_VTX"),
    ("X86VCPUSetTCB", "CONFIG_VTX"),
    ("X86VCPUReadVMCS", "CONFIG_VTX"),
    ("X86VCPUWriteVMCS", "CONFIG_VTX"),
    ("X86VCPUEnableIOPort", "CONFIG_VTX"),
    ("X86VCPUDisableIOPort", "CONFIG_VTX"),
    ("X86VCPUWriteRegisters", "CONFIG_VTX"),
    ("X86EPTPDPTMap", "CONFIG_VTX"),
    ("X86EPTPDPTUnmap", "CONFIG_VTX"),
    ("X86EPTPDMap", "CONFIG_VTX"),
    ("X86EPTPDUnmap", "CONFIG_VTX"),
    ("X86EPTPTMap", "CONFIG_VTX"),
    ("X86EPTPTUnmap", "CONFIG_VTX"),
];

/// Arguments of Keel's own methods: message-register and extra-capability positions.
pub mod keel {
    /// FsGsBaseControlSetAccess, invoked on the FsGsBaseControl capability:
    /// extra capability 0 = the thread's TCB; MR0 = 1 to allow RDFSBASE, RDGSBASE,
    /// WRFSBASE and WRGSBASE in user mode, 0 to forbid them (a forbidden use is a #UD
    /// user exception). Errors: InvalidCapability 1 (not a TCB), InvalidArgument 0
    /// (MR0 not 0 or 1), TruncatedMessage, IllegalOperation (the CPU lacks FSGSBASE).
    pub mod fs_gs_base_control_set_access {
        /// MR holding 0 (forbid) or 1 (allow).
        pub const ALLOW: usize = 0;
        /// Extra capability index of the target TCB.
        pub const TCB_CAP: usize = 0;
    }

    /// TCBSetGSBase, invoked on a TCB (the caller's own included): MR0 = the new GS
    /// base, which must be canonical (InvalidArgument 0 otherwise). The counterpart of
    /// seL4's TCBSetTLSBase, which sets the FS base on x86-64.
    pub mod tcb_set_gs_base {
        /// MR holding the GS base.
        pub const GS_BASE: usize = 0;
    }

    /// X86LDTSetEntries, invoked on an LDT object: MR0 = first descriptor index,
    /// MR1 = count `n`, MR2..MR2+n = the descriptors (one 8-byte descriptor per word).
    /// Each descriptor must be not present, or a present code/data segment with DPL 3
    /// (no system descriptors, no gates); a bad one fails with InvalidArgument `2 + i`
    /// and nothing is written. Index and count outside the object give RangeError.
    pub mod x86_ldt_set_entries {
        /// MR holding the first index.
        pub const FIRST: usize = 0;
        /// MR holding the number of descriptors.
        pub const COUNT: usize = 1;
        /// MR of the first descriptor.
        pub const DESCRIPTORS: usize = 2;
        /// Most descriptors one invocation can write.
        pub const MAX_COUNT: usize = crate::message::MSG_MAX_LENGTH - DESCRIPTORS;
    }

    /// X86VSpaceSetLDT, invoked on a PML4 (address-space root) capability that has an
    /// ASID: extra capability 0 = the LDT object to attach; no extra capability
    /// detaches the current one. Threads of that address space load the LDT when they
    /// run; selectors that point into a detached LDT fault on their next load.
    pub mod x86_vspace_set_ldt {
        /// Extra capability index of the LDT object.
        pub const LDT_CAP: usize = 0;
    }

    /// TCBSetRseq, invoked on a TCB: MR0 = user address of the thread's
    /// [`crate::rseq::RseqArea`] (aligned to 32 bytes, inside the frame that holds the
    /// thread's IPC buffer), or 0 to unregister. Errors: TruncatedMessage,
    /// AlignmentError, InvalidArgument 0 (not in the IPC buffer's frame, or the thread
    /// has no IPC buffer).
    pub mod tcb_set_rseq {
        /// MR holding the area's address.
        pub const AREA: usize = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_contiguous_from_zero() {
        for (i, label) in InvocationLabel::ALL.iter().enumerate() {
            assert_eq!(*label as u64, i as u64, "{}", label.name());
            assert_eq!(InvocationLabel::from_u64(i as u64), Some(*label));
        }
        assert_eq!(InvocationLabel::from_u64(COUNT), None);
        assert_eq!(InvocationLabel::from_u64(u64::MAX), None);
    }

    #[test]
    fn names_are_unique() {
        let all = InvocationLabel::ALL;
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.name(), b.name());
                assert!(
                    a.interface() != b.interface() || a.method() != b.method(),
                    "{} and {} share an interface method",
                    a.name(),
                    b.name()
                );
            }
        }
    }

    #[test]
    fn sel4_boundaries() {
        assert_eq!(InvocationLabel::InvalidInvocation as u64, 0);
        assert_eq!(InvocationLabel::UntypedRetype as u64, 1);
        assert_eq!(InvocationLabel::TcbSetAffinity as u64, 15);
        assert_eq!(InvocationLabel::TcbConfigureSingleStepping as u64, 19);
        assert_eq!(InvocationLabel::CNodeRevoke as u64, 22);
        assert_eq!(SEL4_GENERIC_COUNT, 38);
        assert_eq!(SEL4_SEL4_ARCH_COUNT, 40);
        assert_eq!(SEL4_COUNT, 58);
        assert_eq!(KEEL_FIRST as u64, SEL4_COUNT);
        for label in InvocationLabel::ALL {
            let keel = label.condition() == "Keel";
            assert_eq!(keel, *label as u64 >= SEL4_COUNT, "{}", label.name());
        }
    }

    #[test]
    fn excluded_methods_take_no_number() {
        for (name, _) in SEL4_EXCLUDED {
            let bare = name.split(' ').next().unwrap();
            let present = InvocationLabel::ALL.iter().any(|l| l.name() == bare);
            // The three MCS forms share their id with a non-MCS method that is present.
            assert_eq!(present, name.contains("(MCS form)"), "{name}");
        }
    }
}
