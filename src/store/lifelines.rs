//! The lifeline table, `lease.lifelines`: one row per lifeline, whose expiry every lease
//! attached to it shares. Every statement here exists only in the current shape.
//!
//! Uses `plans` and `row`.

use pgrx::datum::Interval;
use pgrx::pg_sys::Oid;
use pgrx::prelude::*;

use super::plans::{self, column, Statement};
use super::row::Listed;
use super::row::{Binding, Lease};
use super::{direct, Store};
use crate::vocabulary::Timestamp;

/// A lifeline as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifeline {
    pub owner: Oid,
    pub expires_at: Timestamp,
    /// Bound to the database session that opened it.
    pub session_bound: bool,
    /// Its ttl, in microseconds: what a renewal without one uses.
    pub ttl: i64,
}

impl Store {
    /// Inserts a new lifeline.
    #[allow(clippy::too_many_arguments)]
    pub fn open_lifeline(
        &self,
        id: i64,
        name: &str,
        ttl: i64,
        at: Timestamp,
        expires_at: Timestamp,
        binding: Option<Binding>,
    ) {
        let ttl = Interval::new(0, 0, ttl).expect("a ttl in range is an interval");
        let args = [
            id.into_datum(),
            name.into_datum(),
            self.caller.into_datum(),
            ttl.into_datum(),
            at.into_datum(),
            expires_at.into_datum(),
            binding.map(|binding| binding.pid).into_datum(),
            binding.map(|binding| binding.application_name).into_datum(),
        ];
        self.execute(Statement::LifelineOpen, &args, false, 1);
    }

    /// The lifeline `id`, lapsed or not, if it exists (read as last committed under a
    /// transaction-wide snapshot too: a lifeline's end is decided on the latest state). Read
    /// directly when the table allows (`direct::LifelineLookup`), through SQL otherwise.
    pub fn lifeline(&self, id: i64) -> Option<Lifeline> {
        let lifelines = self.catalog.lifelines;
        let mut lookup = self.lifeline_lookup.borrow_mut();
        // SAFETY: the lifeline table, from the catalog.
        let lookup = lookup.get_or_insert_with(|| unsafe { direct::LifelineLookup::open(lifelines) });
        if let Some(lookup) = lookup.as_mut() {
            return lookup.get(id);
        }
        // SAFETY: one row of (regrole, timestamptz, bool, int8), none NULL.
        (self.execute(Statement::LifelineGet, &[id.into_datum()], self.transaction_snapshot, 1) == 1).then(
            || unsafe {
                Lifeline {
                    owner: column(0, 1),
                    expires_at: column(0, 2),
                    session_bound: column(0, 3),
                    ttl: column(0, 4),
                }
            },
        )
    }

    /// Moves the expiry of the lifeline `id` if it has not lapsed at `now`; false otherwise.
    pub fn renew_lifeline(&self, id: i64, now: Timestamp, expires_at: Timestamp) -> bool {
        let args = [id.into_datum(), now.into_datum(), expires_at.into_datum()];
        self.execute(Statement::LifelineRenew, &args, false, 1) == 1
    }

    /// Deletes the lifeline `id`; false if it was gone.
    pub fn delete_lifeline(&self, id: i64) -> bool {
        self.execute(Statement::LifelineDelete, &[id.into_datum()], false, 1) == 1
    }

    /// Up to `limit` of the leases attached to the lifeline `id`, as (resource, token), in
    /// resource order; read as last committed whatever the isolation level (the caller holds
    /// the lifeline's membership lock, or found it lapsed: either way no attach is in progress).
    pub fn attached(&self, id: i64, limit: i64) -> Vec<Listed> {
        let count = self.execute(Statement::LifelineLeases, &[id.into_datum(), limit.into_datum()], true, 0);
        super::scans::listed(count)
    }

    /// Deletes the lease with `token` on `resource` if it is still attached to the lifeline
    /// `id` (not re-attached, detached or kept since it was listed); returns it.
    pub fn delete_attached(&self, resource: &str, token: i64, id: i64) -> Option<Lease> {
        let args = [resource.into_datum(), token.into_datum(), id.into_datum()];
        // SAFETY: the statement returns a lease's columns.
        (self.execute(Statement::DeleteAttached, &args, false, 1) == 1)
            .then(|| unsafe { plans::lease(0, self.shape()) })
    }

    /// Up to `limit` lifelines lapsed at `now`, earliest first.
    pub fn lapsed_lifelines(&self, now: Timestamp, limit: i64) -> Vec<i64> {
        let count =
            self.execute(Statement::LapsedLifelines, &[now.into_datum(), limit.into_datum()], false, 0);
        // SAFETY: the statement returned `count` rows of one int8 column, never NULL.
        (0..count as usize).map(|row| unsafe { column::<i64>(row, 1) }).collect()
    }

    /// Every lifeline bound to a database session.
    pub fn session_bound_lifelines(&self) -> Vec<i64> {
        let count = self.execute(Statement::SessionBoundLifelines, &[], false, 0);
        // SAFETY: the statement returned `count` rows of one int8 column, never NULL.
        (0..count as usize).map(|row| unsafe { column::<i64>(row, 1) }).collect()
    }
}
