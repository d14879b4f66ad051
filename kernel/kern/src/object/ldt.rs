//! Keel's LDT object: 512 segment descriptors an address space may carry (DESIGN §5.4).
//!
//! An LDT object is 4 KiB of retyped memory holding 512 eight-byte descriptors, zeroed
//! (all empty) on creation. X86LDTSetEntries writes descriptors after checking every
//! one ([`check_descriptor`]); X86VSpaceSetLDT attaches an LDT to an address space
//! (a PML4 with an ASID) or detaches it. The CPU reads the object directly (LDTR points
//! at its direct-map address), so only checked descriptors are ever stored, and a
//! descriptor is always stored with its accessed bit set so the CPU never writes it.
//!
//! Which address space carries which LDT is a kernel table, [`Kernel::ldts`], keyed by
//! ASID (PML4s are plain page-table frames with no room for it); at most
//! [`MAX_LDT_ATTACHMENTS`] address spaces carry one at a time. Every change is passed
//! to the machine ([`Hardware::set_vspace_ldt`]), which makes every CPU drop an LDT
//! it no longer may use before the change is reported done: the object's memory can be
//! retyped only after its last capability is deleted, and deletion detaches it.
//!
//! Descriptor rules (each bad descriptor is InvalidArgument `2 + i`, nothing written):
//! - all-zero (an empty entry) is allowed;
//! - otherwise S = 1 (code or data; no system descriptors, TSS, LDT or gates), DPL 3,
//!   present or not (a not-present one makes a later load fault with #NP/#SS);
//! - code segments: 16/32-bit (L = 0) and 64-bit (L = 1, D = 0) allowed, L = D = 1
//!   (reserved) refused; conforming code refused (nothing needs it, and it is the one
//!   code type whose privilege check differs);
//! - data segments: any type (expand-up or down, read-only or writable), B = 0 or 1.

use keel_abi::error::Error;
use keel_abi::invocation::InvocationLabel as L;
use keel_abi::invocation::keel::x86_ldt_set_entries as set_entries;
use keel_abi::object::LDT_ENTRIES;

use crate::invocation::{Args, InvocationError, Invoked};
use crate::kernel::{Hardware, Kernel};
use crate::object::cap::Cap;

/// Most address spaces that carry an LDT at one time.
pub const MAX_LDT_ATTACHMENTS: usize = 64;

/// One address space that carries an LDT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LdtAttachment {
    /// The address space's ASID (0 = unused entry).
    pub asid: u16,
    /// Its PML4.
    pub pml4: u64,
    /// The LDT object.
    pub ldt: u64,
}

/// Descriptor bits.
const ACCESSED: u64 = 1 << 40;
const CODE: u64 = 1 << 43;
const CONFORMING: u64 = 1 << 42;
const S: u64 = 1 << 44;
const DPL_SHIFT: u32 = 45;
const LONG: u64 = 1 << 53;
const DEFAULT_BIG: u64 = 1 << 54;

/// Whether `d` may be stored in an LDT (see the module documentation).
pub fn check_descriptor(d: u64) -> bool {
    if d == 0 {
        return true;
    }
    let dpl = (d >> DPL_SHIFT) & 3;
    if d & S == 0 || dpl != 3 {
        return false;
    }
    if d & CODE != 0 {
        if d & CONFORMING != 0 {
            return false;
        }
        if d & LONG != 0 && d & DEFAULT_BIG != 0 {
            return false;
        }
    }
    true
}

/// The form of a checked descriptor the kernel stores (accessed bit set).
pub fn stored_descriptor(d: u64) -> u64 {
    if d == 0 { 0 } else { d | ACCESSED }
}

impl<H: Hardware> Kernel<H> {
    /// X86LDTSetEntries on an LDT object.
    pub fn invoke_ldt(&mut self, cap: Cap, label: L, args: &Args) -> Invoked {
        let Cap::Ldt { base } = cap else {
            return Err(InvocationError::capability(0));
        };
        if label != L::X86LdtSetEntries {
            return Err(InvocationError::simple(Error::IllegalOperation));
        }
        if args.length < set_entries::DESCRIPTORS {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        }
        let (first, count) = (args.mr(set_entries::FIRST), args.mr(set_entries::COUNT));
        let entries = LDT_ENTRIES as u64;
        if first >= entries {
            return Err(InvocationError::range(0, entries - 1));
        }
        let most = (set_entries::MAX_COUNT as u64).min(entries - first);
        if count == 0 || count > most {
            return Err(InvocationError::range(1, most));
        }
        if args.length < set_entries::DESCRIPTORS + count as usize {
            return Err(InvocationError::simple(Error::TruncatedMessage));
        }
        let descriptor = |k: &Self, i: u64| {
            let mr = set_entries::DESCRIPTORS + i as usize;
            if mr < Args::EAGER {
                args.mr(mr)
            } else {
                k.message_register(args.thread, args.buffer, mr)
            }
        };
        for i in 0..count {
            if !check_descriptor(descriptor(self, i)) {
                return Err(InvocationError::argument(
                    set_entries::DESCRIPTORS as u64 + i,
                ));
            }
        }
        for i in 0..count {
            let d = stored_descriptor(descriptor(self, i));
            self.hw.write(base + 8 * (first + i), d);
        }
        Ok(0)
    }

    /// X86VSpaceSetLDT on a PML4: attach extra capability 0 (an LDT) or, without one,
    /// detach.
    pub fn set_vspace_ldt(&mut self, pml4: u64, asid: Option<u16>, args: &Args) -> Invoked {
        let Some(asid) = asid else {
            return Err(InvocationError::capability(0));
        };
        if self.vspace_of_asid(asid) != Some(pml4) {
            return Err(InvocationError::capability(0));
        }
        let ldt = match args.extra_cap(0) {
            Some(Cap::Ldt { base }) => base,
            Some(_) => return Err(InvocationError::capability(1)),
            None => 0,
        };
        let existing = self.ldts.iter().position(|a| a.asid == asid);
        if ldt == 0 {
            if let Some(i) = existing {
                self.detach_ldt_entry(i);
            }
            return Ok(0);
        }
        let Some(i) = existing.or_else(|| self.ldts.iter().position(|a| a.asid == 0)) else {
            // The error's word, memory still free, is 0: the table is full.
            return Err(InvocationError::memory(0));
        };
        self.ldts[i] = LdtAttachment { asid, pml4, ldt };
        self.hw.set_vspace_ldt(pml4, ldt);
        Ok(0)
    }

    /// The LDT attached to address space `asid` (0 = none).
    pub fn ldt_of_asid(&self, asid: u16) -> u64 {
        self.ldts
            .iter()
            .find(|a| a.asid == asid && asid != 0)
            .map_or(0, |a| a.ldt)
    }

    fn detach_ldt_entry(&mut self, i: usize) {
        let a = self.ldts[i];
        self.ldts[i] = LdtAttachment::default();
        self.hw.set_vspace_ldt(a.pml4, 0);
    }

    /// Detaches every attachment `matches` selects (deletion of an LDT, a PML4 or an
    /// ASID pool).
    pub fn detach_ldts(&mut self, matches: impl Fn(&LdtAttachment) -> bool) {
        for i in 0..self.ldts.len() {
            if self.ldts[i].asid != 0 && matches(&self.ldts[i]) {
                self.detach_ldt_entry(i);
            }
        }
    }
}
