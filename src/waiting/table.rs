//! The waiter table: one slot per backend (indexed by `pgprocno`), saying which resources of
//! which database it waits for (one, or up to [`MAX_KEYS`] for `lease_acquire_all`) and with
//! which ticket. Tickets are handed out in order, so the waiter of a resource with the smallest
//! ticket is the head of its queue; a waiter for several resources has one ticket, its place in
//! every one of their queues.
//!
//! Locking: the waiter lock (the one LWLock of the part "lease waiters") guards the slots and
//! the ticket counter; it is held only to read or write slots and to set latches, never across
//! anything that waits or raises. `waiting` (the number of active slots) is changed under the
//! lock and read without it as a hint that lets calls skip the table when nobody waits.
//!
//! Uses shmem.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, Ordering};

use pgrx::pg_sys;

use crate::shmem::{self, Attached, Exclusive};

/// The most resources one backend waits for at once.
pub const MAX_KEYS: usize = 16;

/// One backend's wait.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct WaiterSlot {
    pub active: bool,
    /// The database of the resources (resource names are per database).
    pub database: u32,
    /// How many of `keys` are used.
    pub key_count: u16,
    /// Waits for a shared lease: shared waiters next to each other in a queue are served
    /// together, and none passes a waiter for an exclusive lease or a permit.
    pub shared: bool,
    /// The resources' lock keys.
    pub keys: [u64; MAX_KEYS],
    pub ticket: u64,
    pub latch: *mut pg_sys::Latch,
}

impl WaiterSlot {
    /// The lock keys of the resources this slot waits for.
    pub fn keys(&self) -> &[u64] {
        &self.keys[..(self.key_count as usize).min(MAX_KEYS)]
    }

    /// Whether the slot waits for the resource with lock key `key` in database `database`.
    pub fn waits_for(&self, database: u32, key: u64) -> bool {
        self.active && self.database == database && self.keys().contains(&key)
    }
}

#[repr(C)]
pub(super) struct WaiterTable {
    /// Number of active slots.
    waiting: AtomicU32,
    lock: *mut pg_sys::LWLock,
    next_ticket: UnsafeCell<u64>,
    /// The slots, which follow the header (a pointer taken from the segment's own, so valid in
    /// every process: they all map the segment at one address).
    slots: *mut WaiterSlot,
    count: usize,
}

// SAFETY: the slots and the ticket counter are only touched under `lock`; `waiting` is atomic.
unsafe impl Sync for WaiterTable {}

static TABLE: Attached<WaiterTable> = Attached::new();

/// The waiter table's part of shared memory.
pub const SHMEM: shmem::Part = shmem::Part {
    name: c"lease waiters",
    bytes: || shmem::with_trailing::<WaiterTable, WaiterSlot>(shmem::backend_count()),
    locks: 1,
    init: |memory, locks| {
        // SAFETY: the part's memory, `bytes()` long, and its one lock; zero is every slot
        // inactive and no ticket taken.
        unsafe {
            std::ptr::write_bytes(
                memory,
                0,
                shmem::with_trailing::<WaiterTable, WaiterSlot>(shmem::backend_count()),
            );
            let table = memory.cast::<WaiterTable>();
            (*table).lock = &raw mut (*locks).lock;
            (*table).slots = shmem::trailing::<WaiterTable, WaiterSlot>(table);
            (*table).count = shmem::backend_count();
        }
    },
    attach: |memory| TABLE.set(memory),
};

/// The waiter table, if the library was preloaded.
pub(super) fn table() -> Option<&'static WaiterTable> {
    TABLE.get()
}

impl WaiterTable {
    /// Whether any backend waits (a hint: the count may change at once).
    pub fn anyone_waits(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Exclusive access to the slots.
    pub fn lock(&self) -> Locked<'_> {
        // SAFETY: the part's lock, set at initialisation.
        Locked { table: self, _lock: unsafe { Exclusive::acquire(self.lock) } }
    }
}

/// The waiter table with its lock held; released when dropped.
pub(super) struct Locked<'a> {
    table: &'a WaiterTable,
    _lock: Exclusive,
}

impl Locked<'_> {
    /// All slots, indexed by `pgprocno`.
    pub fn slots(&mut self) -> &mut [WaiterSlot] {
        // SAFETY: `count` slots at `slots`, laid out at initialisation; the lock is held.
        unsafe { std::slice::from_raw_parts_mut(self.table.slots, self.table.count) }
    }

    /// The next ticket (tickets only grow).
    pub fn take_ticket(&mut self) -> u64 {
        // SAFETY: guarded by the lock, which `self` holds.
        unsafe {
            let next = &mut *self.table.next_ticket.get();
            *next += 1;
            *next
        }
    }

    /// Counts a slot becoming active (+1) or inactive (-1).
    pub fn count_waiting(&mut self, change: i32) {
        match change {
            1 => self.table.waiting.fetch_add(1, Ordering::AcqRel),
            _ => self.table.waiting.fetch_sub(1, Ordering::AcqRel),
        };
    }

    /// Sets the latches of the head of the queue for `key` in `database`, if anyone waits: its
    /// first waiter, and when that one waits for a shared lease, every shared waiter after it up
    /// to the first that does not.
    pub fn wake_head(&mut self, database: u32, key: u64) {
        let waits = |slot: &&WaiterSlot| slot.waits_for(database, key);
        let Some(first) = self.slots().iter().filter(waits).min_by_key(|slot| slot.ticket).copied() else {
            return;
        };
        // Everyone before the first waiter that is not shared (only the first, if it is not).
        let before = match first.shared {
            true => {
                self.slots().iter().filter(waits).filter(|slot| !slot.shared).map(|slot| slot.ticket).min()
            }
            false => Some(first.ticket + 1),
        };
        for waiter in
            self.slots().iter().filter(waits).filter(|slot| before.is_none_or(|before| slot.ticket < before))
        {
            // SAFETY: the latch belongs to a live backend (its slot is active; a backend leaves
            // the table before it exits).
            unsafe { pg_sys::SetLatch(waiter.latch) };
        }
    }
}
