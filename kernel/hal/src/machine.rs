//! The object layer's view of the machine: `keel_kern::memory::Memory` over the direct
//! map, and `keel_kern::kernel::Hardware` (TLB flushes, IPIs, I/O ports, IRQ routing).
//!
//! Soundness of the typed accessors rests on the object layer's invariant that it only
//! names addresses of live objects of the requested type (every capability it follows
//! was created by Retype for that type); the records are `repr(C)` plain data that fit
//! their objects (checked at compile time in `keel-kern`).

use keel_kern::kernel::Hardware;
use keel_kern::memory::{Memory, Record};

use crate::layout;

/// The machine, as `keel-kern` uses it.
pub struct Machine {
    on_thread_exit: fn(u64, u64),
    on_test_report: fn(u64, u64),
    test_hooks: bool,
}

impl Machine {
    /// A machine whose debug thread-exit and test-report calls go to these functions.
    pub const fn new(on_thread_exit: fn(u64, u64), on_test_report: fn(u64, u64)) -> Self {
        Self {
            on_thread_exit,
            on_test_report,
            test_hooks: false,
        }
    }

    /// Offers the test images' hooks (KeelDebugKernelStackCount) when `on`.
    pub const fn with_test_hooks(mut self, on: bool) -> Self {
        self.test_hooks = on;
        self
    }
}

fn virt(phys: u64) -> u64 {
    layout::phys_to_virt(phys)
}

impl Memory for Machine {
    fn read(&self, phys: u64) -> u64 {
        // SAFETY: the direct map covers all RAM; the object layer reads only words of
        // objects it owns (8-byte aligned).
        unsafe { (virt(phys) as *const u64).read() }
    }
    fn write(&mut self, phys: u64, value: u64) {
        // SAFETY: as in `read`; the address is a word of an object the caller owns.
        unsafe { (virt(phys) as *mut u64).write(value) }
    }
    fn zero(&mut self, phys: u64, bytes: u64) {
        // SAFETY: the range is a retyped object the caller owns, in the direct map.
        unsafe { core::ptr::write_bytes(virt(phys) as *mut u8, 0, bytes as usize) }
    }
    fn create<T: Record>(&mut self, phys: u64) {
        // SAFETY: `phys` is the start of a new object of type T (sized and aligned for it
        // by Retype), owned by the caller.
        unsafe { (virt(phys) as *mut T).write(T::default()) }
    }
    fn destroy<T: Record>(&mut self, phys: u64) {
        // SAFETY: the record of a dying object; zeroing plain data is always valid.
        unsafe { core::ptr::write_bytes(virt(phys) as *mut u8, 0, core::mem::size_of::<T>()) }
    }
    fn get<T: Record>(&self, phys: u64) -> &T {
        // SAFETY: see the module comment: a live T is at `phys`; the shared borrow of
        // `self` keeps mutable access through this Machine out while it lives.
        unsafe { &*(virt(phys) as *const T) }
    }
    fn get_mut<T: Record>(&mut self, phys: u64) -> &mut T {
        // SAFETY: as in `get`; the exclusive borrow of `self` makes this the only
        // reference the object layer holds.
        unsafe { &mut *(virt(phys) as *mut T) }
    }
    fn exists<T: Record>(&self, phys: u64) -> bool {
        self.get::<T>(phys).live()
    }
}

impl Hardware for Machine {
    fn current_cpu(&self) -> usize {
        crate::percpu::cpu_index()
    }
    fn kernel_pml4(&self) -> u64 {
        crate::paging::kernel_pml4()
    }
    fn console_write(&mut self, bytes: &[u8]) {
        crate::console::print_bytes(bytes);
    }
    fn tcb_deleted(&mut self, tcb: u64) {
        crate::fpu::release(tcb, false);
    }
    fn fpu_release(&mut self, tcb: u64) {
        crate::fpu::release(tcb, true);
    }
    fn stall_cpu(&mut self, cpu: usize, tcb_record: u64) {
        let context = crate::layout::phys_to_virt(tcb_record);
        let Some(area) = crate::percpu::area(cpu) else {
            return;
        };
        use core::sync::atomic::Ordering::{Acquire, Release};
        if area.running.load(Acquire) == context {
            // In user mode there: the IPI brings it into the kernel, whose entry saves
            // the FPU registers first and clears `running` last.
            area.fpu_save_request.store(true, Release);
            crate::apic::send_ipi(area.apic_id, crate::trap::WAKE_VECTOR);
            while area.running.load(Acquire) == context {
                crate::tlb::service_request();
                core::hint::spin_loop();
            }
        }
        if area.fpu_owner.load(Acquire) == context {
            // Already in the kernel there, waiting for the lock this CPU holds, with the
            // thread's FPU state still in its registers: that CPU saves it while it
            // spins (`fpu::service_save_request`), before the thread can run elsewhere.
            area.fpu_save_request.store(true, Release);
            while area.fpu_save_request.load(Acquire) {
                crate::tlb::service_request();
                core::hint::spin_loop();
            }
        }
    }
    fn reschedule_cpu(&mut self, cpu: usize) {
        if cpu != crate::percpu::cpu_index()
            && let Some(area) = crate::percpu::area(cpu)
        {
            crate::apic::send_ipi(area.apic_id, crate::trap::WAKE_VECTOR);
        }
    }
    #[inline]
    fn flush_page(&mut self, asid: u16, pml4: u64, vaddr: u64) {
        crate::tlb::flush_local_page(asid, vaddr);
        crate::tlb::flush_others_for(pml4);
    }
    fn flush_address_space(&mut self, asid: u16, pml4: u64) {
        crate::tlb::flush_local_address_space(asid);
        crate::tlb::flush_others_for(pml4);
    }
    fn address_space_deleted(&mut self, _asid: u16, pml4: u64) {
        crate::tlb::drop_address_space(pml4);
    }
    fn set_vspace_ldt(&mut self, pml4: u64, ldt: u64) {
        crate::ldt::set(pml4, ldt);
    }
    fn port_read(&mut self, port: u16, size: u8) -> u32 {
        // SAFETY: the object layer checked that the caller holds an I/O port capability
        // covering this port; port I/O has no effect on kernel memory.
        unsafe {
            match size {
                1 => x86::io::inb(port) as u32,
                2 => x86::io::inw(port) as u32,
                _ => x86::io::inl(port),
            }
        }
    }
    fn port_write(&mut self, port: u16, size: u8, value: u32) {
        // SAFETY: as in `port_read`.
        unsafe {
            match size {
                1 => x86::io::outb(port, value as u8),
                2 => x86::io::outw(port, value as u16),
                _ => x86::io::outl(port, value),
            }
        }
    }
    fn irq_route(&mut self, irq: u16, route: keel_kern::object::irq::IrqRoute, enabled: bool) {
        crate::apic::route_irq(irq, route, enabled);
    }
    fn preemption_window(&self) -> bool {
        crate::cpu::preemption_window()
    }
    fn ticks(&self) -> u64 {
        crate::percpu::current()
            .ticks
            .load(core::sync::atomic::Ordering::Relaxed)
    }
    fn kernel_stack_count(&self, complement: u64) -> Option<u64> {
        self.test_hooks
            .then(|| crate::entry::kernel_stack_count(complement))
    }
    fn thread_exited(&mut self, tcb: u64, value: u64) {
        (self.on_thread_exit)(tcb, value)
    }
    fn test_report(&mut self, passed: u64, failed: u64) {
        (self.on_test_report)(passed, failed)
    }
    fn halt(&mut self) -> ! {
        crate::qemu::exit(keel_abi::exit::HALTED)
    }
}
