//! Reading and changing one resource's lease. Every change is made under the resource's
//! barrier lock (held by the caller); reads without it are hints.
//!
//! Uses `plans`, `row` and `direct`.

use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

use super::plans::{self, column, nullable_column, Statement};
use super::row::{Binding, Lease, LeaseInfo, NewGrant};
use super::{direct, Store};
use crate::vocabulary::Timestamp;

impl Store {
    /// The resource's row, expired or not, as last committed (and as changed by this
    /// transaction).
    pub fn current(&self, resource: &str) -> Option<Lease> {
        if let Some(found) = self.find(resource) {
            return found.map(|found| found.lease);
        }
        let latest = self.transaction_snapshot;
        // SAFETY: the statement returns a lease's columns.
        (self.execute(Statement::Current, &[resource.into_datum()], latest, 1) == 1)
            .then(|| unsafe { plans::lease(0) })
    }

    /// Inserts a new lease after [`Store::current`] found no row under the resource's lock;
    /// false when a row exists after all (only a transaction-wide snapshot can miss one, and
    /// then the insert raises a serialization failure instead).
    pub fn insert(&self, grant: &NewGrant) -> bool {
        let values = grant.values();
        if self.direct {
            let mut inserter = self.inserter.borrow_mut();
            if inserter.is_none() {
                // SAFETY: the lease table; the layout is checked again under the writer's lock.
                *inserter = unsafe { direct::Inserter::open(self.catalog.table) };
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
        let mut args = grant.values().to_vec();
        args.push(old_token.into_datum());
        self.execute(Statement::TakeOver, &args, false, 1) == 1
    }

    /// Moves the expiry of an unexpired lease; returns the lease as extended, or None if the
    /// token does not hold the resource.
    pub fn extend(&self, resource: &str, token: i64, now: Timestamp, expires_at: Timestamp) -> Option<Lease> {
        let args = [resource.into_datum(), token.into_datum(), now.into_datum(), expires_at.into_datum()];
        // SAFETY: the statement returns a lease's columns.
        (self.execute(Statement::Extend, &args, false, 1) == 1).then(|| unsafe { plans::lease(0) })
    }

    /// Deletes an unexpired lease; returns it, or None if the token does not hold it.
    pub fn delete(&self, resource: &str, token: i64, now: Timestamp) -> Option<Lease> {
        if let Some(found) = self.find(resource) {
            let found = found.filter(|found| found.lease.token == token && found.lease.expires_at > now)?;
            // SAFETY: the row was just found under the resource's lock.
            if unsafe { direct::delete(self.catalog.table, &found) } {
                return Some(found.lease);
            }
        }
        let args = [resource.into_datum(), token.into_datum(), now.into_datum()];
        // SAFETY: the statement returns a lease's columns.
        (self.execute(Statement::Delete, &args, false, 1) == 1).then(|| unsafe { plans::lease(0) })
    }

    /// The owner of the lease if `token` holds `resource` at `now`. Under a transaction-wide
    /// snapshot the row is read as last committed: a REPEATABLE READ transaction must not be
    /// told that a superseded token still holds.
    pub fn holds(&self, resource: &str, token: i64, now: Timestamp) -> Option<Oid> {
        if let Some(found) = self.find(resource) {
            return found
                .filter(|found| found.lease.token == token && found.lease.expires_at > now)
                .map(|found| found.lease.owner);
        }
        let args = [resource.into_datum(), token.into_datum(), now.into_datum()];
        // SAFETY: the statement returns one row of one regrole column, never NULL.
        (self.execute(Statement::Holds, &args, self.transaction_snapshot, 1) == 1)
            .then(|| unsafe { column::<Oid>(0, 1) })
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

    /// The live lease on `resource` at `now`, every column (read through SQL, so also on a hot
    /// standby).
    pub(super) fn info(&self, resource: &str, now: Timestamp) -> Option<LeaseInfo> {
        if self.execute(Statement::Info, &[resource.into_datum(), now.into_datum()], false, 1) == 0 {
            return None;
        }
        // SAFETY: one row of the statement's columns; only the last two may be NULL.
        unsafe {
            Some(LeaseInfo {
                holder: column(0, 1),
                token: column(0, 2),
                owner: column(0, 3),
                owner_name: column(0, 4),
                acquired_at: column(0, 5),
                renewed_at: column(0, 6),
                expires_at: column(0, 7),
                session_pid: nullable_column(0, 8),
                application_name: nullable_column(0, 9),
            })
        }
    }
}
