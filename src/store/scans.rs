//! Statements over many leases: the sweeps' candidates and removals, the next expiry, the
//! session-bound leases, and the claim's first test of its candidates.
//!
//! Uses `plans`.

use std::collections::HashSet;

use pgrx::prelude::*;

use super::plans::{self, column, nullable_column, Statement};
use super::row::{Lease, LeaseMode, Listed};
use super::Store;
use crate::vocabulary::Timestamp;

impl Store {
    /// Up to `limit` leases expired at `now`, earliest expiry first.
    pub fn expired_candidates(&self, now: Timestamp, limit: i64) -> Vec<Listed> {
        let count =
            self.execute(Statement::ExpiredCandidates, &[now.into_datum(), limit.into_datum()], false, 0);
        listed(count)
    }

    /// Deletes the lease with `token` if it expired at `now` (by its own expiry); returns it.
    pub fn delete_expired(&self, resource: &str, token: i64, now: Timestamp) -> Option<Lease> {
        let args = [resource.into_datum(), token.into_datum(), now.into_datum()];
        // SAFETY: the statement returns a lease's columns.
        (self.execute(Statement::DeleteExpired, &args, false, 1) == 1)
            .then(|| unsafe { plans::lease(0, self.shape()) })
    }

    /// The earliest expiry in the table, if any lease exists.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.execute(Statement::NextExpiry, &[], false, 0);
        // SAFETY: an aggregate returns exactly one row; min() is NULL on an empty table.
        unsafe { nullable_column::<i64>(0, 1) }
    }

    /// Every session-bound lease.
    pub fn session_bound(&self) -> Vec<Listed> {
        let count = self.execute(Statement::SessionBound, &[], false, 0);
        listed(count)
    }

    /// Deletes the lease with `token`, whatever its expiry; returns it (with the expiry of its
    /// row: the end of time for a lease attached to a lifeline).
    pub fn delete_grant(&self, resource: &str, token: i64) -> Option<Lease> {
        let args = [resource.into_datum(), token.into_datum()];
        // SAFETY: the statement returns a lease's columns.
        (self.execute(Statement::DeleteGrant, &args, false, 1) == 1)
            .then(|| unsafe { plans::lease(0, self.shape()) })
    }

    /// Which of `tokens` still name a session-bound lease or lifeline.
    pub fn session_tokens_alive(&self, tokens: &[i64]) -> Vec<i64> {
        let count = self.execute(Statement::SessionTokensAlive, &[tokens.to_vec().into_datum()], false, 0);
        // SAFETY: the statement returned `count` rows of one int8 column, never NULL.
        (0..count as usize).map(|row| unsafe { column::<i64>(row, 1) }).collect()
    }

    /// A test of whether another holder (another name or another role) has a live lease on a
    /// resource at `now` that is not session-bound: the hint `lease_acquire_any` skips
    /// candidates by without taking their locks. Read directly, each candidate is looked up
    /// when it is tested, so a claim stops reading once it has what it wants; through SQL, all
    /// of `resources` are read at once, in one statement.
    pub fn leased_to_others<'a>(
        &'a self,
        resources: &[&str],
        holder: &'a str,
        now: Timestamp,
    ) -> Box<dyn FnMut(&str) -> bool + 'a> {
        let caller = self.caller;
        if self.direct {
            return Box::new(move |resource| {
                self.find(resource).unwrap_or_default().into_iter().any(|found| {
                    let lease = found.lease;
                    // Leases whose (lifeline's) session may have ended are decided under the lock.
                    let ours = lease.holder == holder && lease.owner == caller && !lease.released;
                    let session_bound =
                        lease.session_bound || lease.lifeline.is_some_and(|lifeline| lifeline.session_bound);
                    lease.expires_at > now && !session_bound && !ours
                })
            });
        }
        let args =
            [resources.to_vec().into_datum(), now.into_datum(), holder.into_datum(), caller.into_datum()];
        let count = self.execute(Statement::LeasedToOthers, &args, self.transaction_snapshot, 0);
        // SAFETY: the statement returned `count` rows of one text column, never NULL.
        let leased: HashSet<String> =
            (0..count as usize).map(|row| unsafe { column::<String>(row, 1) }).collect();
        Box::new(move |resource| leased.contains(resource))
    }
}

/// The `count` rows (resource, token, slot, mode) the last statement listed.
pub(super) fn listed(count: u64) -> Vec<Listed> {
    // SAFETY: the statement returned `count` rows of (text, int8, int4, text), none NULL.
    (0..count as usize)
        .map(|row| unsafe {
            Listed {
                resource: column(row, 1),
                token: column(row, 2),
                slot: column(row, 3),
                mode: LeaseMode::named(&column::<String>(row, 4)).unwrap_or(LeaseMode::Exclusive),
            }
        })
        .collect()
}
