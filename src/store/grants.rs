//! Reading and changing one resource's lease. Every change is made under the resource's
//! barrier lock (held by the caller); reads without it are hints.
//!
//! Uses `plans`, `row`, `lifelines` and `direct`.

use pgrx::prelude::*;
use pgrx::JsonB;

use super::plans::{self, column, nullable_column, Statement};
use super::row::{Binding, Lease, LeaseInfo, NewGrant};
use super::{direct, Store};
use crate::vocabulary::Timestamp;

/// A lease's row as read, with where it is (when read directly).
pub struct Located {
    pub lease: Lease,
    tid: Option<pgrx::pg_sys::ItemPointerData>,
}

impl Store {
    /// The resource's rows (one per slot, in slot order), expired or not, as last committed
    /// (and as changed by this transaction), with their lifelines' expiry in place.
    pub fn rows(&self, resource: &str) -> Vec<Lease> {
        if let Some(found) = self.find(resource) {
            return found.into_iter().map(|found| found.lease).collect();
        }
        let latest = self.transaction_snapshot;
        let count = self.execute(Statement::Current, &[resource.into_datum()], latest, 0);
        // SAFETY: the statement returns `count` rows of a lease's columns.
        let leases: Vec<Lease> =
            (0..count as usize).map(|row| unsafe { plans::lease(row, self.shape()) }).collect();
        leases.into_iter().map(|lease| self.resolve(lease)).collect()
    }

    /// The resource's exclusive lease (its row at slot 0), expired or not, as [`Store::rows`]
    /// reads it.
    pub fn current(&self, resource: &str) -> Option<Lease> {
        self.rows(resource).into_iter().find(|lease| lease.slot == 0)
    }

    /// The resource's row of `token` (whatever its slot), expired or not, as [`Store::rows`]
    /// reads it.
    pub fn row_of(&self, resource: &str, token: i64) -> Option<Lease> {
        self.row_located(resource, token).map(|located| located.lease)
    }

    /// As [`Store::row_of`], with where the row is when this call reads directly: read under
    /// the resource's lock, a [`Store::delete`] under that same lock may use it instead of
    /// reading the row again.
    pub fn row_located(&self, resource: &str, token: i64) -> Option<Located> {
        if let Some(found) = self.find(resource) {
            return found
                .into_iter()
                .find(|found| found.lease.token == token)
                .map(|found| Located { lease: found.lease, tid: Some(found.tid) });
        }
        self.rows(resource)
            .into_iter()
            .find(|lease| lease.token == token)
            .map(|lease| Located { lease, tid: None })
    }

    /// A lease attached to a lifeline ends with it: its expiry is the lifeline's, and a lifeline
    /// that is gone ended before anything else.
    pub(super) fn resolve(&self, mut lease: Lease) -> Lease {
        if let Some(attachment) = lease.lifeline.as_mut() {
            match self.lifeline(attachment.id) {
                Some(lifeline) => {
                    lease.expires_at = lifeline.expires_at;
                    attachment.session_bound = lifeline.session_bound;
                }
                None => lease.expires_at = Timestamp::MIN,
            }
        }
        lease
    }

    /// Inserts a new lease after [`Store::current`] found no row under the resource's lock;
    /// false when a row exists after all (only a transaction-wide snapshot can miss one, and
    /// then the insert raises a serialization failure instead).
    pub fn insert(&self, grant: &NewGrant) -> bool {
        let values = grant.values(self.shape());
        if self.direct {
            let mut inserter = self.inserter.borrow_mut();
            if inserter.is_none() {
                // SAFETY: the lease table; the layout is checked again under the writer's lock.
                *inserter = unsafe { direct::Inserter::open(self.catalog.table, self.shape()) };
            }
            if let Some(inserter) = inserter.as_mut() {
                // SAFETY: the table's shape was checked; the caller holds the resource's lock
                // and found no row.
                unsafe { inserter.insert(&values) };
                return true;
            }
        }
        self.execute(Statement::Insert, &values, false, 1) == 1
    }

    /// Replaces the lease with token `old_token` by a new grant.
    pub fn take_over(&self, old_token: i64, grant: &NewGrant) -> bool {
        let mut args = grant.values(self.shape());
        args.push(old_token.into_datum());
        self.execute(Statement::TakeOver, &args, false, 1) == 1
    }

    /// Moves the expiry of an unexpired lease of its own; returns the lease as extended, or
    /// None if the token does not hold the resource or the lease is attached to a lifeline.
    pub fn extend(&self, resource: &str, token: i64, now: Timestamp, expires_at: Timestamp) -> Option<Lease> {
        let args = [resource.into_datum(), token.into_datum(), now.into_datum(), expires_at.into_datum()];
        // SAFETY: the statement returns a lease's columns.
        (self.execute(Statement::Extend, &args, false, 1) == 1)
            .then(|| unsafe { plans::lease(0, self.shape()) })
    }

    /// The holder's re-acquire of its live lease, in a table with lifelines: its own expiry
    /// and its lifeline become what the call asked for, and its data too if the call gave some.
    pub fn reacquire(
        &self,
        resource: &str,
        token: i64,
        now: Timestamp,
        expires_at: Timestamp,
        lifeline: Option<i64>,
        data: Option<&serde_json::Value>,
    ) -> Option<Lease> {
        let args = [
            resource.into_datum(),
            token.into_datum(),
            now.into_datum(),
            expires_at.into_datum(),
            lifeline.into_datum(),
            data.and_then(|data| JsonB(data.clone()).into_datum()),
        ];
        // SAFETY: the statement returns a lease's columns.
        (self.execute(Statement::Reacquire, &args, false, 1) == 1)
            .then(|| unsafe { plans::lease(0, self.shape()) })
    }

    /// Replaces the data of the lease `token` holds (the caller checked that it holds).
    pub fn set_data(&self, resource: &str, token: i64, data: Option<&serde_json::Value>) -> Option<Lease> {
        let args = [
            resource.into_datum(),
            token.into_datum(),
            data.and_then(|data| JsonB(data.clone()).into_datum()),
        ];
        // SAFETY: the statement returns a lease's columns.
        (self.execute(Statement::SetData, &args, false, 1) == 1)
            .then(|| unsafe { plans::lease(0, self.shape()) })
    }

    /// Deletes a lease that `token` holds at `now`; returns it, or None if the token does not
    /// hold it.
    ///
    /// `located`: the row as the caller read it under the lock it still holds, with nothing
    /// written since (see [`Store::row_located`]); read again if None.
    pub fn delete(
        &self,
        resource: &str,
        token: i64,
        now: Timestamp,
        located: Option<Located>,
    ) -> Option<Lease> {
        let found = match located {
            // A lifeline's expiry is read again: it may have moved since (its renewals do not
            // take the resource's lock), and the caller decides on it after its clock.
            Some(Located { lease, tid: Some(tid) }) => {
                Some(vec![direct::Found { tid, lease: self.resolve(lease) }])
            }
            _ => self.find(resource),
        };
        if let Some(found) = found {
            let found = found.into_iter().find(|found| found.lease.held_by(token, now))?;
            // SAFETY: the row was found under the resource's lock, which the caller still holds.
            if unsafe { direct::delete(self.catalog.table, self.shape(), &found) } {
                return Some(found.lease);
            }
        }
        let args = [resource.into_datum(), token.into_datum(), now.into_datum()];
        // As the row was decided on: the latest (the caller holds its lock, and a change of it
        // since a transaction-wide snapshot was refused), its lifeline's expiry too.
        let latest = self.transaction_snapshot;
        // SAFETY: the statement returns a lease's columns.
        let lease = (self.execute(Statement::Delete, &args, latest, 1) == 1)
            .then(|| unsafe { plans::lease(0, self.shape()) });
        lease.map(|lease| self.resolve(lease))
    }

    /// Releases the lease that `token` holds but keeps the resource from everyone until
    /// `until`: the row stays, marked released at `now`, detached from its lifeline and its
    /// session.
    pub fn keep(&self, resource: &str, token: i64, until: Timestamp, now: Timestamp) -> Option<Lease> {
        let args = [resource.into_datum(), token.into_datum(), until.into_datum(), now.into_datum()];
        // SAFETY: the statement returns a lease's columns.
        (self.execute(Statement::Keep, &args, false, 1) == 1)
            .then(|| unsafe { plans::lease(0, self.shape()) })
    }

    /// The lease `token` holds on `resource` at `now`, if it does. Under a transaction-wide
    /// snapshot the row is read as last committed: a REPEATABLE READ transaction must not be
    /// told that a superseded token still holds.
    pub fn holds(&self, resource: &str, token: i64, now: Timestamp) -> Option<Lease> {
        self.row_of(resource, token).filter(|lease| lease.held_by(token, now))
    }

    /// Binds the lease with `token` to a session, as shown to administrators.
    pub fn bind(&self, resource: &str, token: i64, binding: Binding) -> bool {
        let args = [
            resource.into_datum(),
            token.into_datum(),
            binding.pid.into_datum(),
            binding.application_name.into_datum(),
        ];
        self.execute(Statement::Bind, &args, false, 1) == 1
    }

    /// The live leases on `resource` at `now` (one per holder, in slot order), every column
    /// (read through SQL, so also on a hot standby).
    pub(super) fn info(&self, resource: &str, now: Timestamp) -> Vec<LeaseInfo> {
        let count = self.execute(Statement::Info, &[resource.into_datum(), now.into_datum()], false, 0);
        // SAFETY: `count` rows of the statement's columns; only those read as nullable may be NULL.
        (0..count as usize)
            .map(|row| unsafe {
                LeaseInfo {
                    holder: column(row, 1),
                    token: column(row, 2),
                    owner: column(row, 3),
                    owner_name: column(row, 4),
                    acquired_at: column(row, 5),
                    renewed_at: column(row, 6),
                    expires_at: column(row, 7),
                    session_pid: nullable_column(row, 8),
                    application_name: nullable_column(row, 9),
                    lifeline: nullable_column(row, 10),
                    data: nullable_column(row, 11),
                    released_at: nullable_column(row, 12),
                    mode: column(row, 13),
                    capacity: nullable_column(row, 14),
                }
            })
            .collect()
    }

    /// The capacity declared for `resource` (`lease.capacities`), if any.
    pub fn capacity(&self, resource: &str) -> Option<i32> {
        // As the rows are read: the latest, also under a transaction-wide snapshot.
        if self.execute(Statement::CapacityGet, &[resource.into_datum()], self.transaction_snapshot, 1) == 0 {
            return None;
        }
        // SAFETY: one row of one int4 column, never NULL.
        Some(unsafe { column(0, 1) })
    }

    /// Declares the capacity of `resource` if none is (the caller holds its kind lock
    /// exclusively, so the insert never waits for another).
    pub fn declare_capacity(&self, resource: &str, capacity: i32) {
        let args = [resource.into_datum(), capacity.into_datum()];
        self.execute(Statement::CapacityDeclare, &args, self.transaction_snapshot, 0);
    }

    /// Sets (or with None, removes) the capacity of `resource`.
    pub fn set_capacity(&self, resource: &str, capacity: Option<i32>) {
        // The latest, as it is read (under a transaction-wide snapshot too).
        let latest = self.transaction_snapshot;
        match capacity {
            Some(capacity) => {
                let args = [resource.into_datum(), capacity.into_datum()];
                self.execute(Statement::CapacitySet, &args, latest, 0)
            }
            None => self.execute(Statement::CapacityRemove, &[resource.into_datum()], latest, 0),
        };
    }
}
