//! Internal subtransactions: running a step so that its locks and changes can be given back
//! on their own. Uses nothing of the crate.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// Runs `work` in an internal subtransaction, kept (its changes and locks belong to the
/// caller's transaction) if `keep` says so and rolled back otherwise; an error rolls it back
/// and is raised again. Rolled back, its locks are released; what it did to shared memory and
/// sequences stays.
pub fn in_subtransaction<R>(work: impl FnOnce() -> R, keep: impl FnOnce(&R) -> bool) -> R {
    // SAFETY: the pattern PL/pgSQL uses for exception blocks: start a subtransaction, and after
    // it ends (kept, rolled back, or rolled back because of an error that is then re-raised)
    // restore the caller's memory context and resource owner. Rolling back our own
    // subtransaction on error matters when the caller catches the error (a PL/pgSQL exception
    // block): its own subtransaction must be the one it rolls back.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        let restore = move || {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        };
        let roll_back = move || {
            restore();
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            restore();
        };
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let work = std::panic::AssertUnwindSafe(work);
        let outcome = PgTryBuilder::new(work)
            .catch_others(|error| {
                roll_back();
                error.rethrow()
            })
            .execute();
        if keep(&outcome) {
            pg_sys::ReleaseCurrentSubTransaction();
            restore();
        } else {
            roll_back();
        }
        outcome
    }
}
