//! A [`Memory`] for host tests: words and typed records in maps, checked on every use.

extern crate std;

use std::any::Any;
use std::boxed::Box;
use std::collections::HashMap;

use crate::memory::{Memory, Record};

/// Host memory for tests of the object layer.
#[derive(Default)]
pub struct TestMemory {
    words: HashMap<u64, u64>,
    records: HashMap<u64, Box<dyn Any>>,
}

impl TestMemory {
    /// Empty memory (every word reads as zero).
    pub fn new() -> Self {
        Self::default()
    }
    /// Whether a record of type `T` lives at `phys`.
    pub fn has<T: Record>(&self, phys: u64) -> bool {
        self.records.get(&phys).is_some_and(|r| r.is::<T>())
    }
}

impl Memory for TestMemory {
    fn read(&self, phys: u64) -> u64 {
        assert_eq!(phys % 8, 0, "unaligned word read at {phys:#x}");
        self.words.get(&phys).copied().unwrap_or(0)
    }
    fn write(&mut self, phys: u64, value: u64) {
        assert_eq!(phys % 8, 0, "unaligned word write at {phys:#x}");
        if value == 0 {
            self.words.remove(&phys);
        } else {
            self.words.insert(phys, value);
        }
    }
    fn zero(&mut self, phys: u64, bytes: u64) {
        self.words.retain(|a, _| *a < phys || *a >= phys + bytes);
    }
    fn create<T: Record>(&mut self, phys: u64) {
        self.records.insert(phys, Box::new(T::default()));
    }
    fn destroy<T: Record>(&mut self, phys: u64) {
        let old = self.records.remove(&phys);
        assert!(
            old.is_some_and(|r| r.is::<T>()),
            "destroying a missing record at {phys:#x}"
        );
    }
    fn exists<T: Record>(&self, phys: u64) -> bool {
        self.records
            .get(&phys)
            .and_then(|r| r.downcast_ref::<T>())
            .is_some_and(|r| r.live())
    }
    fn get<T: Record>(&self, phys: u64) -> &T {
        self.records
            .get(&phys)
            .and_then(|r| r.downcast_ref::<T>())
            .unwrap_or_else(|| panic!("no {} at {phys:#x}", core::any::type_name::<T>()))
    }
    fn get_mut<T: Record>(&mut self, phys: u64) -> &mut T {
        self.records
            .get_mut(&phys)
            .and_then(|r| r.downcast_mut::<T>())
            .unwrap_or_else(|| panic!("no {} at {phys:#x}", core::any::type_name::<T>()))
    }
}
