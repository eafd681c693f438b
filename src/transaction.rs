//! Transaction callbacks: what happens to a transaction's lease work when it commits, aborts,
//! or a subtransaction ends. Events ([`crate::events`]), session locks ([`crate::session`]),
//! waiter slots ([`crate::waiting`]) and fence proofs ([`crate::barrier`]) each keep their
//! part; this module only dispatches.
//!
//! Waiters of the resources a transaction held locks on are woken once its locks are released
//! (a resource-release callback after the lock phase), so that a woken waiter finds the lock
//! free instead of finding it still held for a few microseconds and sleeping again.
//!
//! Uses barrier, events, session and waiting: the top layer, next to the SQL entry points.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::{barrier, events, session, waiting};

/// Registers the callbacks; called from `_PG_init` in every backend that loads the library.
pub fn register_callbacks() {
    // SAFETY: registering static callbacks with no argument.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_event), std::ptr::null_mut());
        pg_sys::RegisterResourceReleaseCallback(Some(on_resource_release), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_resource_release(
    phase: pg_sys::ResourceReleasePhase::Type,
    _is_commit: bool,
    is_top_level: bool,
    _arg: *mut std::ffi::c_void,
) {
    if is_top_level && phase == pg_sys::ResourceReleasePhase::RESOURCE_RELEASE_AFTER_LOCKS {
        waiting::wake_deferred();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_PREPARE if events::any_pending() || session::any_pending() => {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that changed leases",
                "lease",
            )
            .set_hint("Acquire, renew and release leases in ordinary transactions.")
            .report(PgLogLevel::ERROR);
        }
        XACT_EVENT_PRE_COMMIT => events::before_commit(),
        // A prepared transaction keeps its locks, fences included, but they are no longer this
        // session's: neither are the proofs they back.
        XACT_EVENT_PREPARE => drop(barrier::at_transaction_end()),
        XACT_EVENT_COMMIT => {
            waiting::leave_queue_on_abort(1); // a wait never outlives its transaction
            session::at_commit();
            let freed = events::at_commit(waiting::anyone_waits());
            waiting::wake_after_locks(freed.into_iter().chain(barrier::at_transaction_end()));
        }
        XACT_EVENT_ABORT => {
            waiting::leave_queue_on_abort(1);
            session::at_abort();
            events::at_abort();
            waiting::wake_after_locks(barrier::at_transaction_end());
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    _my_subid: pg_sys::SubTransactionId,
    _parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    // The level of the subtransaction that is ending.
    let level = crate::vocabulary::nesting_level();
    match event {
        SUBXACT_EVENT_ABORT_SUB => {
            waiting::leave_queue_on_abort(level);
            session::at_subtransaction_abort(level);
            events::at_subtransaction_abort(level);
            barrier::at_subtransaction_abort(level);
        }
        SUBXACT_EVENT_COMMIT_SUB => {
            session::at_subtransaction_commit(level);
            events::at_subtransaction_commit(level);
            barrier::at_subtransaction_commit(level);
        }
        _ => {}
    }
}
