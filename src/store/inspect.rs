//! What administrators and holders may see of a lease: the row `lease_info` shows, and whose
//! tokens a role may see.
//!
//! Uses the store's reads and vocabulary.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;

use super::{lease_table, Store};
use crate::vocabulary::clock_now;

/// Whether `role` may see the tokens of leases owned by `owner`: it has the privileges of
/// `owner` (the rule for checks, renewals and releases), or it may read `lease.leases`.
fn may_see_tokens(role: Oid, owner: Oid) -> bool {
    // SAFETY: role and ACL lookups on valid OIDs, inside a transaction.
    unsafe {
        pg_sys::has_privs_of_role(role, owner)
            || pg_sys::pg_class_aclcheck(lease_table(), role, pg_sys::ACL_SELECT as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// `lease._token_visible(owner)`: whether the current role has the privileges of `owner`, or
/// may read `lease.leases`: who sees a lease's token in `lease.active`.
#[pg_extern(sql = false)]
fn token_visible(owner: Oid) -> bool {
    // SAFETY: reads the current user id.
    may_see_tokens(unsafe { pg_sys::GetUserId() }, owner)
}

/// `lease._lease_row(resource)` as versions 0.4.0 declares it: [`lease_row_full`] without
/// the columns 0.5.0 added.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn lease_row(
    resource: &str,
) -> TableIterator<
    'static,
    (
        name!(resource, String),
        name!(holder, String),
        name!(token, Option<i64>),
        name!(owner, String),
        name!(acquired_at, TimestampWithTimeZone),
        name!(renewed_at, TimestampWithTimeZone),
        name!(expires_at, TimestampWithTimeZone),
        name!(session_pid, Option<i32>),
        name!(application_name, Option<String>),
    ),
> {
    TableIterator::new(
        lease_row_full(resource).map(|row| (row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8)),
    )
}

/// `lease._lease_row(resource)` as version 0.5.0 declares it: [`lease_rows`] without the
/// columns 0.6.0 added.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn lease_row_full(
    resource: &str,
) -> TableIterator<
    'static,
    (
        name!(resource, String),
        name!(holder, String),
        name!(token, Option<i64>),
        name!(owner, String),
        name!(acquired_at, TimestampWithTimeZone),
        name!(renewed_at, TimestampWithTimeZone),
        name!(expires_at, TimestampWithTimeZone),
        name!(session_pid, Option<i32>),
        name!(application_name, Option<String>),
        name!(lifeline, Option<i64>),
        name!(data, Option<pgrx::JsonB>),
        name!(released_at, Option<TimestampWithTimeZone>),
    ),
> {
    TableIterator::new(
        lease_rows(resource).map(|row| {
            (row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9, row.10, row.11)
        }),
    )
}

/// `lease._lease_rows(resource)`: the live leases on `resource` (one per holder: the exclusive
/// lease, or each shared lease or permit), as `lease_info` shows them: the token only to a
/// caller that [`may_see_tokens`] (the caller is the role that calls `lease_info`, which runs
/// as its caller). The rows are read as the table's owner.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn lease_rows(
    resource: &str,
) -> TableIterator<
    'static,
    (
        name!(resource, String),
        name!(holder, String),
        name!(token, Option<i64>),
        name!(owner, String),
        name!(acquired_at, TimestampWithTimeZone),
        name!(renewed_at, TimestampWithTimeZone),
        name!(expires_at, TimestampWithTimeZone),
        name!(session_pid, Option<i32>),
        name!(application_name, Option<String>),
        name!(lifeline, Option<i64>),
        name!(data, Option<pgrx::JsonB>),
        name!(released_at, Option<TimestampWithTimeZone>),
        name!(mode, String),
        name!(capacity, Option<i32>),
    ),
> {
    let store = Store::open();
    let rows: Vec<_> = store
        .info(resource, clock_now())
        .into_iter()
        .map(|lease| {
            let token = may_see_tokens(store.caller(), lease.owner).then_some(lease.token);
            (
                resource.to_owned(),
                lease.holder,
                token,
                lease.owner_name,
                lease.acquired_at,
                lease.renewed_at,
                lease.expires_at,
                lease.session_pid,
                lease.application_name,
                lease.lifeline,
                lease.data,
                lease.released_at,
                lease.mode,
                lease.capacity,
            )
        })
        .collect();
    TableIterator::new(rows)
}
