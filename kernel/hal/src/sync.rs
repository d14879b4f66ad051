//! The big kernel lock.
//!
//! One lock serialises the object layer across CPUs. Waiting for it also services
//! TLB-shootdown requests ([`crate::tlb`]) and FPU-save requests ([`crate::fpu`]: the
//! holder moves a thread whose FPU state is still in this CPU's registers), because a
//! CPU spinning here has interrupts disabled and would otherwise deadlock a lock holder
//! that waits for it.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

/// A spin lock that polls for TLB-flush requests while it waits.
pub struct BigKernelLock<T> {
    /// Bit 0 set while held (a 32-bit word, so that taking it is one `lock bts`).
    locked: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked` (acquire/release).
unsafe impl<T: Send> Sync for BigKernelLock<T> {}

impl<T> BigKernelLock<T> {
    /// A new, unlocked lock.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock (interrupts must be disabled). One atomic instruction (`lock
    /// bts`: only bit 0 of the old value is used) and a branch when the lock is free;
    /// the waiting loop is out of line.
    #[inline(always)]
    pub fn lock(&self) -> Guard<'_, T> {
        if self.locked.fetch_or(1, Ordering::Acquire) & 1 != 0 {
            self.lock_contended();
        }
        Guard { lock: self }
    }

    /// Waits for the lock, serving TLB-shootdown and FPU-save requests meanwhile.
    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        loop {
            crate::tlb::service_request();
            crate::fpu::service_save_request();
            core::hint::spin_loop();
            // Read-only while it is held (no cache-line ping-pong), then try again.
            if self.locked.load(Ordering::Relaxed) & 1 == 0
                && self.locked.fetch_or(1, Ordering::Acquire) & 1 == 0
            {
                return;
            }
        }
    }
}

/// Holds the big kernel lock.
pub struct Guard<'a, T> {
    lock: &'a BigKernelLock<T>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves exclusive access.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves exclusive access.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(0, Ordering::Release);
    }
}
