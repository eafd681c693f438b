//! Which backends may listen for lease events: one entry per backend (indexed by `pgprocno`),
//! holding the database of a backend that has run `LISTEN`, 0 otherwise. A committing backend
//! hands its events to the ring only if some backend of its database may listen; while none
//! does, events cost no ring slot, no worker wake-up and no NOTIFY.
//!
//! An entry is set when a `LISTEN` statement runs, on any channel (so a listener that starts
//! before `lease.notify_channel` is changed to its channel counts), before its transaction
//! commits (even if it then aborts), and cleared only when the backend exits: it never says
//! "nobody" while someone listens. Every event that commits after a `LISTEN` has committed sees
//! the entry (the entry's store comes before that commit, and that commit before the event's;
//! the event's backend looks after its own commit), and reaches the listener as it would with
//! NOTIFY sent in the committing transaction. An event that commits before the `LISTEN` commits
//! is not promised to that listener: PostgreSQL promises a new listener what commits after its
//! `LISTEN` (it may deliver a few earlier notifications too, by the way it reads its queue).
//!
//! Locking: none. Entries are atomics, each written only by its own backend (and by its exit
//! callback); the `unknown` flag is only ever set. All are stored and loaded with sequentially
//! consistent ordering.
//!
//! Uses shmem and vocabulary.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use pgrx::pg_sys;

use crate::shmem::{self, Attached};
use crate::vocabulary::my_database;

/// The entries, one per backend, preceded by their count.
#[repr(C)]
struct Listeners {
    count: usize,
    /// Set for good if a backend without an entry ever listened (none can: every process that
    /// runs statements has a `pgprocno` below `MaxBackends`); then every event is published.
    unknown: AtomicBool,
}

static LISTENERS: Attached<Listeners> = Attached::new();

/// The listeners' part of shared memory.
pub const SHMEM: shmem::Part = shmem::Part {
    name: c"lease listeners",
    bytes: || shmem::with_trailing::<Listeners, AtomicU32>(shmem::backend_count()),
    locks: 0,
    init: |memory, _| {
        // SAFETY: the part's memory, `bytes()` long; zero is "not listening" for every entry.
        unsafe {
            std::ptr::write_bytes(
                memory,
                0,
                shmem::with_trailing::<Listeners, AtomicU32>(shmem::backend_count()),
            );
            (*memory.cast::<Listeners>()).count = shmem::backend_count();
        }
    },
    attach: |memory| LISTENERS.set(memory),
};

impl Listeners {
    fn entries(&self) -> &[AtomicU32] {
        // SAFETY: `count` atomics follow the header, laid out at initialisation; they live as
        // long as the server.
        unsafe {
            std::slice::from_raw_parts(
                shmem::trailing::<Listeners, AtomicU32>(self as *const _ as *mut _),
                self.count,
            )
        }
    }
}

/// Whether some backend of this backend's database may listen for lease events. Without the
/// part (the library not preloaded) the answer is always yes.
pub fn anyone_listens_here() -> bool {
    let Some(listeners) = LISTENERS.get() else { return true };
    let database = my_database().to_u32();
    // Pairs with the store in `mark`: see the module's header.
    std::sync::atomic::fence(Ordering::SeqCst);
    listeners.unknown.load(Ordering::SeqCst)
        || listeners.entries().iter().any(|entry| entry.load(Ordering::SeqCst) == database)
}

static mut PREVIOUS_PROCESS_UTILITY_HOOK: pg_sys::ProcessUtility_hook_type = None;

/// Installs the hook that sees `LISTEN`; called from `_PG_init` while preloading.
pub fn install_hook() {
    // SAFETY: _PG_init runs once per process before any statement; chaining the hook is the
    // documented way for a library to see utility statements.
    unsafe {
        PREVIOUS_PROCESS_UTILITY_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(on_utility);
    }
}

unsafe extern "C-unwind" {
    /// PostgreSQL's own `standard_ProcessUtility`, called without pgrx's error boundary (see
    /// [`on_utility`]).
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        statement: *mut pg_sys::PlannedStmt,
        query: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        environment: *mut pg_sys::QueryEnvironment,
        destination: *mut pg_sys::DestReceiver,
        completion: *mut pg_sys::QueryCompletion,
    );
}

/// The hook runs for every utility statement of the server, so it must leave their errors
/// exactly as PostgreSQL raises them (position, context, constraint and table names). It is
/// therefore not a `#[pg_guard]` function and passes the statement on as a C hook does: an error
/// raised further down jumps over this frame, which owns nothing that needs dropping. Only
/// the marking, which is Rust, runs behind a guard of its own.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn on_utility(
    statement: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    environment: *mut pg_sys::QueryEnvironment,
    destination: *mut pg_sys::DestReceiver,
    completion: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the arguments are PostgreSQL's, passed on unchanged; the next hook, or
    // standard_ProcessUtility, is called as PostgreSQL calls a hook.
    unsafe {
        let utility = (*statement).utilityStmt;
        if !utility.is_null() && (*utility).type_ == pg_sys::NodeTag::T_ListenStmt {
            mark();
        }
        let next = PREVIOUS_PROCESS_UTILITY_HOOK.unwrap_or(standard_process_utility);
        next(statement, query, read_only_tree, context, params, environment, destination, completion);
    }
}

/// Records that this backend listens, until it exits.
#[pgrx::pg_guard]
extern "C-unwind" fn mark() {
    let Some(listeners) = LISTENERS.get() else { return };
    // SAFETY: MyProc is this backend's PGPROC while it runs statements.
    let index = unsafe { (*pg_sys::MyProc).pgprocno as usize };
    let Some(entry) = listeners.entries().get(index) else {
        listeners.unknown.store(true, Ordering::SeqCst);
        return;
    };
    if entry.swap(my_database().to_u32(), Ordering::SeqCst) == 0 {
        // SAFETY: registers a callback with this backend's index, which clears its entry on any
        // exit.
        unsafe { pg_sys::before_shmem_exit(Some(unmark), pg_sys::Datum::from(index)) };
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn unmark(_code: i32, index: pg_sys::Datum) {
    if let Some(entry) = LISTENERS.get().and_then(|listeners| listeners.entries().get(index.value())) {
        entry.store(0, Ordering::SeqCst);
    }
}
