//! Global state for a single CPU that never takes interrupts.

use core::cell::UnsafeCell;

/// A static that is initialised once at boot and then accessed from one
/// place at a time. The guest runs on one CPU with interrupts off, so the only
/// re-entry is an exception; callers that can be re-entered that way guard
/// themselves (see `report`).
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: there is one CPU and no interrupt handler touches a `Global` except
// the trap dispatcher, whose users document how they avoid overlapping access.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(v: T) -> Self {
        Global(UnsafeCell::new(v))
    }

    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}
