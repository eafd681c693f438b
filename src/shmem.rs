//! Shared memory: asks the postmaster for it, and lets each part size and initialise its own
//! (as PostgreSQL's `ipci.c` adds up subsystems that size themselves). Exists only when the
//! library is in `shared_preload_libraries`; every part's accessor returns `None` otherwise,
//! and callers work without it.
//!
//! The parts, listed once in `lib.rs`: the counters of `lease.stats` (`stats`), the waiter
//! table (`waiting::table`), the token blocks (`store::tokens`), the per-database event
//! streams (`events::database`) and the backends that may listen (`events::listeners`). Each part is one named `ShmemInitStruct` allocation, with a
//! tranche of its own LWLocks if it needs any, and says at its top which lock guards what
//! (or that it needs none).
//!
//! Uses nothing of the crate. Owns no shared data itself: only the hooks, [`Attached`] (where a
//! part finds its memory) and [`Exclusive`] (the one LWLock guard).

use std::ffi::CStr;
use std::sync::atomic::{AtomicPtr, Ordering};

use pgrx::pg_sys;

/// One part of the extension's shared memory.
pub struct Part {
    /// Its name in PostgreSQL's shared memory index, also the name of its LWLock tranche (the
    /// `wait_event` of a backend waiting for one of its locks).
    pub name: &'static CStr,
    /// Its size in bytes; called once the settings it depends on are final.
    pub bytes: fn() -> usize,
    /// How many LWLocks it needs.
    pub locks: usize,
    /// Initialises a new segment's memory (`bytes()` long, zero) with its LWLocks (`locks` of
    /// them, null if none).
    ///
    /// # Safety
    /// Called once per server start, in the postmaster, before any process uses the part.
    pub init: unsafe fn(memory: *mut u8, locks: *mut pg_sys::LWLockPadded),
    /// Publishes the part's address to its accessor, in every process.
    pub attach: fn(memory: *mut u8),
}

static PARTS: std::sync::OnceLock<&'static [Part]> = std::sync::OnceLock::new();
static mut PREVIOUS_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREVIOUS_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// Asks for the parts' shared memory; called from `_PG_init` while preloading.
pub fn request(parts: &'static [Part]) {
    // SAFETY: _PG_init runs once in the postmaster while preloading, before any hook runs;
    // chaining the hooks is the documented way for a library to reserve shared memory.
    let _ = PARTS.set(parts);
    unsafe {
        PREVIOUS_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(on_shmem_request);
        PREVIOUS_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_shmem_startup);
    }
}

/// The parts registered by [`request`].
fn parts() -> &'static [Part] {
    PARTS.get().copied().unwrap_or_default()
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_shmem_request() {
    // SAFETY: called by the postmaster at shared memory sizing time.
    unsafe {
        if let Some(previous) = PREVIOUS_SHMEM_REQUEST_HOOK {
            previous();
        }
        for part in parts() {
            pg_sys::RequestAddinShmemSpace((part.bytes)());
            if part.locks > 0 {
                pg_sys::RequestNamedLWLockTranche(part.name.as_ptr(), part.locks as i32);
            }
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_shmem_startup() {
    // SAFETY: called in the postmaster (and in each backend on EXEC_BACKEND builds) after
    // shared memory exists; AddinShmemInitLock serialises the initialisation. The memory of a
    // new segment is zero.
    unsafe {
        if let Some(previous) = PREVIOUS_SHMEM_STARTUP_HOOK {
            previous();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        for part in parts() {
            let mut found = false;
            let memory = pg_sys::ShmemInitStruct(part.name.as_ptr(), (part.bytes)(), &mut found).cast::<u8>();
            if !found {
                let locks = match part.locks {
                    0 => std::ptr::null_mut(),
                    _ => pg_sys::GetNamedLWLockTranche(part.name.as_ptr()),
                };
                (part.init)(memory, locks);
            }
            (part.attach)(memory);
        }
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Where a part of type `T` finds its shared memory: null until attached.
pub struct Attached<T>(AtomicPtr<T>);

impl<T> Attached<T> {
    pub const fn new() -> Self {
        Attached(AtomicPtr::new(std::ptr::null_mut()))
    }

    /// Records the part's address ([`Part::attach`]).
    pub fn set(&self, memory: *mut u8) {
        self.0.store(memory.cast(), Ordering::Release);
    }

    /// The part, if the library was preloaded.
    pub fn get(&self) -> Option<&'static T> {
        // SAFETY: null, or the part's memory, which lives as long as the server; a part's type
        // makes every field atomic or guarded by one of its LWLocks.
        unsafe { self.0.load(Ordering::Acquire).as_ref() }
    }
}

/// How many processes can run SQL (backends, background workers, walsenders): the size of a
/// part with one entry per such process, indexed by `pgprocno` (every such process has one
/// below this count).
pub fn backend_count() -> usize {
    // SAFETY: MaxBackends is final by the time shared memory is sized.
    unsafe { pg_sys::MaxBackends as usize }
}

/// Size of a header `H` followed by `count` elements `E`, the layout of [`trailing`].
pub const fn with_trailing<H, E>(count: usize) -> usize {
    trailing_offset::<H, E>() + count * std::mem::size_of::<E>()
}

const fn trailing_offset<H, E>() -> usize {
    std::mem::size_of::<H>().next_multiple_of(std::mem::align_of::<E>())
}

/// The elements that follow a header in a part laid out by [`with_trailing`].
///
/// # Safety
/// `header` must start an allocation of `with_trailing::<H, E>(count)` bytes, aligned for `H`
/// (shared memory is aligned for every type the parts use).
pub unsafe fn trailing<H, E>(header: *mut H) -> *mut E {
    header.cast::<u8>().add(trailing_offset::<H, E>()).cast::<E>()
}

/// An LWLock held in exclusive mode, released when dropped, unless an error is unwinding
/// (PostgreSQL releases every LWLock then). Nothing that can wait, raise or do unbounded work
/// may run while one is held.
pub struct Exclusive(*mut pg_sys::LWLock);

impl Exclusive {
    /// Waits for `lock` (briefly: every holder follows the rule above).
    ///
    /// # Safety
    /// `lock` must be an initialised LWLock in shared memory.
    pub unsafe fn acquire(lock: *mut pg_sys::LWLock) -> Exclusive {
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        Exclusive(lock)
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: the lock was acquired by `acquire` and not released since.
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
