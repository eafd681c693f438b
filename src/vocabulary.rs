//! The words every module shares, and the few values that go with them. Uses nothing of the
//! crate: it is the bottom layer.
//!
//! - *resource*: the name of the thing leased, the primary key of `lease.leases`.
//! - *holder*: the name the application gives itself when it acquires.
//! - *owner*: the role that acquired the lease (the caller's `current_user`).
//! - *token*: the fencing token of one grant, larger than every token granted before it in the
//!   database.
//! - *expiry*: `expires_at`; a lease is live while the server clock is before it.
//! - *grant*: a new lease, a new token: inserted for a free resource or taken over from an
//!   ended lease. A holder's re-acquire of its live lease is an *extension*, like a renewal.
//! - *barrier lock*: the per-resource lock every call takes before it decides (`barrier`).
//! - *proof*: a transaction's record that it showed it holds a resource's lease.
//! - *binding*: a lease's tie to the holder's session (session-bound leases).

use pgrx::pg_sys;

/// Microseconds since 2000-01-01 UTC, PostgreSQL's `timestamptz` representation.
pub type Timestamp = i64;

/// Longest resource name, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 512;
/// Longest holder name, in bytes.
pub const MAX_HOLDER_BYTES: usize = 256;
/// Longest data a lease may carry, in bytes of compact JSON.
pub const MAX_DATA_BYTES: usize = 512;

/// The server clock now (`clock_timestamp()`), the one clock every lease decision uses.
pub fn clock_now() -> Timestamp {
    // SAFETY: GetCurrentTimestamp only reads the system clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// This backend's database: resources, queues and token blocks are per database.
pub fn my_database() -> pg_sys::Oid {
    // SAFETY: MyDatabaseId is set once at backend start and only read afterwards.
    unsafe { pg_sys::MyDatabaseId }
}

/// The current (sub)transaction's nesting level: 1 for the top transaction.
pub fn nesting_level() -> i32 {
    // SAFETY: reads the current transaction state's nesting level.
    unsafe { pg_sys::GetCurrentTransactionNestLevel() }
}
