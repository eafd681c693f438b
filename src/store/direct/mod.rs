//! Direct access to `lease.leases` for the calls that run most often: find a lease by its
//! resource through the primary key, insert a new one, delete one. The same statements exist
//! as kept SPI plans (the store's `plans`); going to the heap and its indexes directly saves each
//! call a second executor start-up, which is most of what a lease call costs beyond the work
//! itself.
//!
//! It is only used where its decisions are exactly those of the SPI statements:
//! - every caller that decides holds the resource's barrier lock (change mode to insert or
//!   delete; any mode for a read), so no other transaction can insert or delete that resource's
//!   row meanwhile; reads made without the lock (an acquire's look before it takes the lock, a
//!   claim's first test of its candidates, a renewal's or release's look before it queues) are
//!   hints, and every decision is made again under the lock;
//! - the transaction runs at READ COMMITTED, where each statement reads the latest committed
//!   state; REPEATABLE READ and SERIALIZABLE keep the SPI statements, whose conflicts with a
//!   transaction's older snapshot raise serialization failures;
//! - the table has the shape this version created: its columns in their places and its primary
//!   key, and nothing a direct write would bypass (triggers, row-level security, CHECK
//!   constraints, rules). Otherwise [`Layout::check`] says no and the SPI statements serve
//!   every call. Index entries are made by the executor's own index insertion, so any index an administrator
//!   adds (partial, on expressions) is maintained as an INSERT would maintain it.
//!
//! A private child of the store: nothing else may read or write the table behind SQL's back.

use pgrx::pg_sys;

mod layout;
mod lifeline;
mod lookup;
mod write;

pub(super) use layout::Layout;
pub(super) use lifeline::LifelineLookup;
pub(super) use lookup::{Found, Lookup};
pub(super) use write::{delete, Inserter};

/// Whether this transaction reads the latest committed state in each statement.
pub(super) fn read_committed() -> bool {
    // SAFETY: XactIsoLevel is a backend-local global, read only.
    let level = unsafe { pg_sys::XactIsoLevel };
    level < pg_sys::XACT_REPEATABLE_READ as i32
}
