//! The launcher and the expiry workers.
//!
//! The *launcher* (`pg_stat_activity.backend_type` = `lease launcher`) is registered when the
//! library is preloaded, starts once the server accepts writes (on a standby: after promotion)
//! and connects to no database. It starts one *expiry worker* (`lease expirer`) per database
//! that has the extension, each in a slot of shared memory ([`crate::events::database::DatabaseSlot`]):
//! - at start, for every database that accepts connections (`lease.database`, if set, names the
//!   only one); a worker whose database lacks the extension exits at once and frees its slot;
//! - later, for a database whose backends commit lease changes while no worker serves it (the
//!   extension was created since);
//! - again, if a worker stopped while its slot is still assigned (terminated, or an error) and
//!   its database still exists.
//!
//! An expiry worker loops:
//! 1. publish the committed events waiting in its database's ring, with NOTIFY, in batches;
//! 2. sweep expired leases ([`crate::expiry::sweep`]) in transactions of at most
//!    `lease.expire_batch` leases, then publish their events;
//! 3. sleep until the earliest expiry, at most `lease.max_naptime`; a backend that adds events
//!    or commits an earlier expiry sets its latch.
//!
//! It exits, freeing its slot, when it finds the extension dropped. SIGHUP reloads the
//! configuration; SIGTERM ends either process.
//!
//! Files: [`launcher`] and [`expirer`], one per process kind; this module has what both do with
//! signals and exits. Uses vocabulary, settings, stats, store (through expiry), events (the
//! database slots and NOTIFY) and expiry: the top layer.

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;

mod expirer;
mod launcher;

pub use launcher::register;

/// SIGHUP reloads the configuration (pgrx sets a flag the loops look at); SIGTERM is
/// PostgreSQL's own `die`, as for any backend: the next interrupt check ends the process with a
/// FATAL error, also while it waits for a lock, which pgrx's handler (a flag and the latch)
/// cannot interrupt. A FATAL exit has status 1, so the worker is started again (see
/// [`exit_to_be_restarted`]).
fn attach_signal_handlers() {
    const SIGTERM: std::ffi::c_int = 15;
    // The server's own handler, not pgrx's wrapper of it: a signal handler must be the C
    // function itself.
    unsafe extern "C-unwind" {
        fn die(signal: std::ffi::c_int);
    }
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SAFETY: installs PostgreSQL's standard termination handler before signals are unblocked.
    unsafe { pg_sys::pqsignal(SIGTERM, Some(die)) };
}

/// Ends a worker on SIGTERM with a non-zero status: the postmaster restarts a worker that
/// exited 0 never, and one that failed after its restart time, except while the server shuts
/// down, when it restarts none. So `pg_terminate_backend` of a worker is healed, shutdown is not.
fn exit_to_be_restarted() -> ! {
    // SAFETY: proc_exit runs the exit callbacks and ends the process; nothing is held here.
    unsafe { pg_sys::proc_exit(1) }
}
