//! How the object layer reaches kernel objects: physical memory, through a trait.
//!
//! Every kernel object lives in memory retyped from an Untyped capability and is named
//! by its physical address. The object layer never holds a pointer: it asks a
//! [`Memory`] for the words or typed records at an address. In the kernel the
//! implementation (in the trusted core) goes through the direct map; on the host,
//! tests use [`TestMemory`](crate::testing_memory::TestMemory), which keeps every
//! object in a map and panics on any access to an address that does not hold the
//! requested kind of object, so type confusion in the object layer fails host tests.
//!
//! Two kinds of access, never mixed for the same bytes:
//! - words (`read`/`write`): capability slots, page tables, ASID pools, IPC buffers and
//!   other frames;
//! - typed records (`get`/`get_mut`): [`Tcb`](crate::object::tcb::Tcb),
//!   [`Endpoint`](crate::object::endpoint::Endpoint),
//!   [`Notification`](crate::object::notification::Notification).

/// A record type that lives in retyped memory.
pub trait Record: Default + 'static {
    /// Whether this record is a live object (a destroyed one reads as all zeroes).
    fn live(&self) -> bool {
        true
    }
}

/// Physical memory as the object layer sees it.
pub trait Memory {
    /// Reads the 64-bit word at `phys` (8-byte aligned).
    fn read(&self, phys: u64) -> u64;
    /// Writes the 64-bit word at `phys` (8-byte aligned).
    fn write(&mut self, phys: u64, value: u64);
    /// Zeroes `bytes` bytes at `phys` (both 8-byte aligned); word-accessed memory.
    fn zero(&mut self, phys: u64, bytes: u64);
    /// Creates a default record of type `T` at `phys` (retype).
    fn create<T: Record>(&mut self, phys: u64);
    /// Forgets the record at `phys` (the object was deleted).
    fn destroy<T: Record>(&mut self, phys: u64);
    /// The record of type `T` at `phys`.
    fn get<T: Record>(&self, phys: u64) -> &T;
    /// The record of type `T` at `phys`, mutably.
    fn get_mut<T: Record>(&mut self, phys: u64) -> &mut T;
    /// Whether a live record of type `T` is at `phys`.
    fn exists<T: Record>(&self, phys: u64) -> bool;
}
