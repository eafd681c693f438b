//! Shared memory: the event rings and what backends, the launcher and the expiry workers tell
//! each other.
//!
//! Exists only when the library is in `shared_preload_libraries`; every accessor returns
//! `None` otherwise, and callers fall back to working without it.
//!
//! - One [`DatabaseState`] per database an expiry worker serves (at most `lease.max_databases`);
//!   the launcher assigns a free one to a database before it starts that database's worker.
//! - Its *event ring* holds the database's committed lease events until the worker publishes
//!   them. A backend appends its transaction's events at commit, taking a position and a
//!   sequence number together with one compare-and-swap (no lock: committing backends never
//!   queue behind each other), so sequence numbers follow commit order. When the ring is full
//!   the event is dropped, but its sequence number is still used, so a listener sees the gap;
//!   drops are counted.
//! - `next_wakeup` is when the worker plans to wake next; a backend that commits an earlier
//!   expiry sets the worker's latch. While the worker is awake it is `i64::MAX`, so no change
//!   made during a sweep can be missed.
//! - `sessions_ended` tells the worker that a backend holding session-bound leases exited.
//! - The *waiter table* has one slot per backend (indexed by `pgprocno`): the database and
//!   resource key a backend waits for and its ticket. Tickets are handed out in order, so the
//!   waiter of a resource with the smallest ticket is its queue's head ([`crate::waiting`]).
//! - `requested_database` is a database whose backends committed lease changes while no worker
//!   served it: the launcher starts one.
//! - The *token blocks*: per database, a block of token numbers reserved durably in the token
//!   sequence, handed out one by one in the order calls ask ([`crate::store`]).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use pgrx::pg_sys;

use crate::api::{MAX_HOLDER_BYTES, MAX_RESOURCE_BYTES};

/// Number of events each database's ring holds (about 3.3 MB of shared memory).
pub const RING_CAPACITY: usize = 4096;

/// One event as stored in shared memory: fixed size, names inline.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventSlot {
    pub seq: u64,
    pub kind: u8,
    pub reason: u8,
    pub resource_len: u16,
    pub holder_len: u16,
    pub token: i64,
    pub expires_at: i64,
    pub at: i64,
    pub resource: [u8; MAX_RESOURCE_BYTES],
    pub holder: [u8; MAX_HOLDER_BYTES],
}

/// Bits of a ring's head that hold its next position (wrapping); the bits above hold the next
/// sequence number. 2^20 positions are far more than a ring holds; 2^44 sequence numbers last
/// five years at 100,000 events a second, and they start again at 1 whenever the database's
/// worker is started.
const POSITION_BITS: u32 = 20;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;
/// The head of an empty ring: position 0, sequence number 1.
const EMPTY_HEAD: u64 = 1 << POSITION_BITS;

/// What one database's expiry worker and that database's backends share.
#[repr(C)]
pub struct DatabaseState {
    /// The database served (`InvalidOid`: the slot is free). Set by the launcher, cleared by
    /// the worker when the extension is gone.
    pub database: AtomicU32,
    /// The worker's latch, or null while its worker does not run.
    pub worker_latch: AtomicPtr<pg_sys::Latch>,
    /// Set once a worker has run for this assignment; events go to the ring only then.
    pub worker_started: AtomicBool,
    /// The pid of the worker that owns the slot (0: none). A worker claims it first thing and
    /// gives it back when it exits in any way, so at most one worker consumes the ring.
    pub worker_pid: AtomicI32,
    /// When the worker will wake next (server clock); `i64::MAX` while it is awake.
    pub next_wakeup: AtomicI64,
    /// Set by backends that added events since the worker last drained the ring.
    pub publish_requested: AtomicBool,
    /// Events published since the slot was assigned.
    pub published: AtomicU64,
    /// The earliest expiry committed since the worker last looked (`i64::MAX`: none).
    pub earliest_expiry: AtomicI64,
    /// Set when a backend that held session-bound leases exits; the worker clears it.
    pub sessions_ended: AtomicBool,
    /// The ring's next position and next sequence number, moved together (see POSITION_BITS).
    head: AtomicU64,
    /// Positions ever taken by the worker (not wrapping); only the worker moves it.
    read: AtomicU64,
    /// Events dropped because the ring was full.
    dropped: AtomicU64,
    /// Per slot, 1 + the (wrapped) position of the event it holds, stored once the event is
    /// complete: the worker takes an event only when its slot says so.
    filled: [AtomicU64; RING_CAPACITY],
    slots: std::cell::UnsafeCell<[EventSlot; RING_CAPACITY]>,
}

/// Token numbers `next..end` of one database's sequence, reserved and not handed out yet.
#[repr(C)]
#[derive(Clone, Copy)]
struct TokenBlock {
    database: u32,
    sequence: u32,
    next: i64,
    end: i64,
}

/// Databases whose token blocks are kept at once; others take every token from the sequence.
const TOKEN_BLOCKS: usize = 64;

#[repr(C)]
pub struct Shared {
    /// The launcher's latch, or null while it does not run.
    pub launcher_latch: AtomicPtr<pg_sys::Latch>,
    /// A database that needs a worker (`InvalidOid`: none asked).
    pub requested_database: AtomicU32,
    /// The counters of `lease.stats` ([`crate::stats`]).
    pub counters: [AtomicU64; crate::stats::COUNTERS],
    /// Number of active waiter slots: lets acquires skip the table when nobody waits.
    pub waiting: AtomicU32,
    waiters_lock: *mut pg_sys::LWLock,
    next_ticket: std::cell::UnsafeCell<u64>,
    waiters: *mut WaiterSlot,
    waiter_slots: usize,
    databases: *mut DatabaseState,
    database_slots: usize,
    token_lock: *mut pg_sys::LWLock,
    token_blocks: std::cell::UnsafeCell<[TokenBlock; TOKEN_BLOCKS]>,
}

/// One backend's wait: guarded by the waiter lock.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WaiterSlot {
    pub active: bool,
    /// The database of the resource (resource names are per database).
    pub database: u32,
    pub key: u64,
    pub ticket: u64,
    pub latch: *mut pg_sys::Latch,
}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
static mut PREVIOUS_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREVIOUS_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

const SHMEM_NAME: &std::ffi::CStr = c"lease shared state";
const LOCK_TRANCHE: &std::ffi::CStr = c"lease";

/// Asks for shared memory; called from `_PG_init` while preloading.
pub fn request() {
    // SAFETY: _PG_init runs once in the postmaster while preloading; chaining the hooks is the
    // documented way for a library to reserve shared memory and initialise it.
    unsafe {
        PREVIOUS_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(on_shmem_request);
        PREVIOUS_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_shmem_startup);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_shmem_request() {
    // SAFETY: called by the postmaster at shared memory sizing time.
    unsafe {
        if let Some(previous) = PREVIOUS_SHMEM_REQUEST_HOOK {
            previous();
        }
        pg_sys::RequestAddinShmemSpace(shared_bytes());
        pg_sys::RequestNamedLWLockTranche(LOCK_TRANCHE.as_ptr(), 2);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_shmem_startup() {
    // SAFETY: called in the postmaster (and in each backend on EXEC_BACKEND builds) after
    // shared memory exists; AddinShmemInitLock serialises the initialisation. The memory of a
    // new segment is zero, a valid state for every field; the headers are zeroed again
    // explicitly, the event slots (most of the size) are left untouched until used.
    unsafe {
        if let Some(previous) = PREVIOUS_SHMEM_STARTUP_HOOK {
            previous();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let shared =
            pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), shared_bytes(), &mut found).cast::<Shared>();
        if !found {
            std::ptr::write_bytes(shared.cast::<u8>(), 0, std::mem::size_of::<Shared>() + waiter_bytes());
            let locks = pg_sys::GetNamedLWLockTranche(LOCK_TRANCHE.as_ptr());
            (*shared).waiters_lock = &raw mut (*locks).lock;
            (*shared).token_lock = &raw mut (*locks.add(1)).lock;
            (*shared).waiters = shared.add(1).cast::<WaiterSlot>();
            (*shared).waiter_slots = waiter_count();
            let databases = shared.cast::<u8>().add(std::mem::size_of::<Shared>() + waiter_bytes());
            let databases = databases.add(databases.align_offset(std::mem::align_of::<DatabaseState>()));
            (*shared).databases = databases.cast::<DatabaseState>();
            (*shared).database_slots = database_count();
            for index in 0..database_count() {
                let state = (*shared).databases.add(index);
                let header = std::mem::offset_of!(DatabaseState, slots);
                std::ptr::write_bytes(state.cast::<u8>(), 0, header);
                (*state).head.store(EMPTY_HEAD, Ordering::Relaxed);
                (*state).next_wakeup.store(i64::MAX, Ordering::Relaxed);
                (*state).earliest_expiry.store(i64::MAX, Ordering::Relaxed);
            }
        }
        SHARED.store(shared, Ordering::Release);
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Databases that can have an expiry worker at once (`lease.max_databases`).
fn database_count() -> usize {
    crate::settings::max_databases()
}

fn shared_bytes() -> usize {
    std::mem::size_of::<Shared>()
        + waiter_bytes()
        + std::mem::align_of::<DatabaseState>()
        + database_count() * std::mem::size_of::<DatabaseState>()
}

/// One waiter slot per process that can call SQL functions.
fn waiter_count() -> usize {
    // SAFETY: MaxBackends is final by the time shared memory is sized.
    unsafe { pg_sys::MaxBackends as usize }
}

fn waiter_bytes() -> usize {
    waiter_count() * std::mem::size_of::<WaiterSlot>()
}

/// The shared state, if the library was preloaded.
pub fn get() -> Option<&'static Shared> {
    // SAFETY: the pointer is either null or points to shared memory that lives as long as the
    // server; every field is atomic or guarded by `lock`.
    unsafe { SHARED.load(Ordering::Acquire).as_ref() }
}

// SAFETY: the waiter table and token blocks are only touched under their LWLocks; a ring's
// slots are handed between backends and the worker through its atomics (see DatabaseState);
// everything else is atomic.
unsafe impl Sync for Shared {}
// SAFETY: as for Shared.
unsafe impl Sync for DatabaseState {}

impl Shared {
    /// Exclusive access to the waiter table.
    pub fn lock_waiters(&self) -> WaitersGuard<'_> {
        // SAFETY: `waiters_lock` was set at initialisation.
        unsafe { pg_sys::LWLockAcquire(self.waiters_lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        WaitersGuard { shared: self }
    }

    /// Every database slot, free or not.
    pub fn database_slots(&self) -> &[DatabaseState] {
        // SAFETY: the slots were laid out at initialisation and live as long as the server.
        unsafe { std::slice::from_raw_parts(self.databases, self.database_slots) }
    }

    /// The slot assigned to `database`, if one is, whether or not its worker runs.
    pub fn assigned(&self, database: pg_sys::Oid) -> Option<&DatabaseState> {
        let database = database.to_u32();
        self.database_slots().iter().find(|slot| slot.database.load(Ordering::Acquire) == database)
    }

    /// The slot assigned to this backend's database, if one is.
    pub fn assigned_to_my_database(&self) -> Option<&DatabaseState> {
        // SAFETY: MyDatabaseId is fixed for the life of the backend.
        self.assigned(unsafe { pg_sys::MyDatabaseId })
    }

    /// The slot of this backend's database if its worker has started: only then do committed
    /// events go to the ring. A worker that stops later (terminated, restarting) publishes what
    /// is left in the ring when it is back; one that never started would publish nothing.
    pub fn serving_my_database(&self) -> Option<&DatabaseState> {
        self.assigned_to_my_database().filter(|slot| slot.worker_started.load(Ordering::Acquire))
    }

    /// The next token number of `sequence` in this backend's database, from the database's
    /// reserved block; when the block is used up (or belongs to another sequence), `refill`
    /// reserves a new one ([`Shared::install_block`]) and the call takes from that. None when no
    /// block can be kept for this database (more databases than [`TOKEN_BLOCKS`]). Numbers
    /// leave in the order calls take them, across backends.
    ///
    /// `refill` runs without the token lock: it may wait for the sequence's lock (an open
    /// `ALTER SEQUENCE`), flush WAL or raise, and an LWLock must be held across none of these.
    /// It must let one backend reserve at a time (see `Store::next_token`): two reservations at
    /// once could leave the sequence below a block in use.
    pub fn take_token(&self, sequence: pg_sys::Oid, mut refill: impl FnMut()) -> Option<i64> {
        loop {
            {
                let _guard = self.lock_tokens();
                let block = self.block_of_my_database()?;
                if block.sequence == sequence.to_u32() && block.next < block.end {
                    let token = block.next;
                    block.next += 1;
                    return Some(token);
                }
            }
            refill();
        }
    }

    /// Whether this database's block of `sequence` has numbers left.
    pub fn has_tokens(&self, sequence: pg_sys::Oid) -> bool {
        let _guard = self.lock_tokens();
        self.block_of_my_database()
            .is_some_and(|block| block.sequence == sequence.to_u32() && block.next < block.end)
    }

    /// Installs the newly reserved numbers `start..end` of `sequence` as this database's block.
    pub fn install_block(&self, sequence: pg_sys::Oid, start: i64, end: i64) {
        let _guard = self.lock_tokens();
        if let Some(block) = self.block_of_my_database() {
            *block = TokenBlock { database: block.database, sequence: sequence.to_u32(), next: start, end };
        }
    }

    /// This database's token block, claiming a free one if it has none. The caller holds the
    /// token lock.
    #[allow(clippy::mut_from_ref)]
    fn block_of_my_database(&self) -> Option<&mut TokenBlock> {
        // SAFETY: MyDatabaseId is fixed for the life of the backend.
        let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
        // SAFETY: guarded by token_lock, which every caller holds.
        let blocks = unsafe { &mut *self.token_blocks.get() };
        let index = blocks
            .iter()
            .position(|block| block.database == database)
            .or_else(|| blocks.iter().position(|block| block.database == 0))?;
        let block = &mut blocks[index];
        if block.database != database {
            *block = TokenBlock { database, sequence: 0, next: 0, end: 0 };
        }
        Some(block)
    }

    /// Takes the token lock; the guard releases it. Nothing that can wait or raise may run
    /// while it is held.
    fn lock_tokens(&self) -> LockGuard {
        // SAFETY: token_lock was set at initialisation.
        unsafe { pg_sys::LWLockAcquire(self.token_lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        LockGuard(self.token_lock)
    }

    /// Asks the launcher to start a worker for this backend's database.
    pub fn request_worker(&self) {
        // SAFETY: MyDatabaseId is fixed for the life of the backend.
        let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
        if self.requested_database.swap(database, Ordering::AcqRel) != database {
            set_latch(self.launcher_latch.load(Ordering::Acquire));
        }
    }
}

/// Releases an LWLock when dropped, unless unwinding from an error (PostgreSQL releases every
/// LWLock then).
struct LockGuard(*mut pg_sys::LWLock);

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: the lock was acquired by the code that made the guard.
            unsafe { pg_sys::LWLockRelease(self.0) };
        }
    }
}

/// Sets a process latch, if there is one.
pub fn set_latch(latch: *mut pg_sys::Latch) {
    if !latch.is_null() {
        // SAFETY: a process latch in shared memory; setting the latch of a process that has
        // exited is harmless.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

impl DatabaseState {
    /// Empties the slot's state for a new assignment (the launcher calls it with the slot free).
    pub fn reset(&self) {
        for filled in &self.filled {
            filled.store(0, Ordering::Relaxed);
        }
        self.read.store(0, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
        self.head.store(EMPTY_HEAD, Ordering::Release);
        self.worker_latch.store(std::ptr::null_mut(), Ordering::Release);
        self.worker_started.store(false, Ordering::Release);
        self.next_wakeup.store(i64::MAX, Ordering::Release);
        self.publish_requested.store(false, Ordering::Release);
        self.published.store(0, Ordering::Release);
        self.earliest_expiry.store(i64::MAX, Ordering::Release);
        // Sessions may have ended while no worker ran (a crash restarts every backend).
        self.sessions_ended.store(true, Ordering::Release);
    }

    /// Stores an event (filled in by `fill`) with the next sequence number; drops it if the
    /// ring is full. Never waits: the position and sequence number are taken with one
    /// compare-and-swap, the slot is filled, then marked complete for the worker.
    pub fn push(&self, fill: impl FnOnce(&mut EventSlot)) {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let position = head & POSITION_MASK;
            let seq = head >> POSITION_BITS;
            // A stale `read` only makes the ring look fuller than it is.
            let unread = position.wrapping_sub(self.read.load(Ordering::Acquire)) & POSITION_MASK;
            let full = unread >= RING_CAPACITY as u64;
            let next = match full {
                true => head + (1 << POSITION_BITS),
                false => ((seq + 1) << POSITION_BITS) | ((position + 1) & POSITION_MASK),
            };
            match self.head.compare_exchange_weak(head, next, Ordering::AcqRel, Ordering::Acquire) {
                Err(actual) => head = actual,
                Ok(_) if full => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {
                    let index = (position % RING_CAPACITY as u64) as usize;
                    // SAFETY: the position is ours alone: no other backend takes it before the
                    // head wraps around, and the worker read the slot's previous event before
                    // moving `read` past it (that is what made the slot free above).
                    let slot = unsafe { &mut (*self.slots.get())[index] };
                    slot.seq = seq;
                    fill(slot);
                    self.filled[index].store(position + 1, Ordering::Release);
                    return;
                }
            }
        }
    }

    /// Takes up to `max` of the oldest complete events, in order; only the database's worker
    /// calls it. An event whose backend is still filling its slot, and all after it, wait for
    /// the next call.
    pub fn take(&self, max: usize, into: &mut Vec<EventSlot>) {
        let mut read = self.read.load(Ordering::Relaxed);
        for _ in 0..max {
            let index = (read % RING_CAPACITY as u64) as usize;
            if self.filled[index].load(Ordering::Acquire) != (read & POSITION_MASK) + 1 {
                break;
            }
            // SAFETY: the slot is complete (the acquire above pairs with the filler's release)
            // and no backend writes it again until `read` has moved past it, below.
            into.push(unsafe { (*self.slots.get())[index] });
            read += 1;
        }
        self.read.store(read, Ordering::Release);
    }

    /// Wakes the worker, if it is running.
    pub fn wake_worker(&self) {
        set_latch(self.worker_latch.load(Ordering::Acquire));
    }

    /// The ring's counters: last sequence number, events waiting, events dropped.
    pub fn ring_counters(&self) -> (u64, u64, u64) {
        let head = self.head.load(Ordering::Acquire);
        let pending = (head & POSITION_MASK).wrapping_sub(self.read.load(Ordering::Acquire)) & POSITION_MASK;
        ((head >> POSITION_BITS).wrapping_sub(1), pending, self.dropped.load(Ordering::Relaxed))
    }
}

/// Exclusive access to the waiter table; released when dropped.
pub struct WaitersGuard<'a> {
    shared: &'a Shared,
}

impl WaitersGuard<'_> {
    /// All slots, indexed by `pgprocno`.
    pub fn slots(&mut self) -> &mut [WaiterSlot] {
        // SAFETY: the slots follow the struct in shared memory; the guard holds their lock.
        unsafe { std::slice::from_raw_parts_mut(self.shared.waiters, self.shared.waiter_slots) }
    }

    /// The next ticket (tickets only grow).
    pub fn take_ticket(&mut self) -> u64 {
        // SAFETY: guarded by the waiter lock.
        unsafe {
            let next = &mut *self.shared.next_ticket.get();
            *next += 1;
            *next
        }
    }
}

impl Drop for WaitersGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: as for RingGuard.
        if !std::thread::panicking() {
            unsafe { pg_sys::LWLockRelease(self.shared.waiters_lock) };
        }
    }
}
