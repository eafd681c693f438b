//! The SQL entry points of lifelines: `lease_lifeline_open`, `lease_lifeline_renew` and
//! `lease_lifeline_close` (see [`crate::lifeline`]).
//!
//! Uses errors, lifeline and the argument checks.

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

use super::arguments::{self, ensure_primary};
use crate::errors::OrRaise;
use crate::lifeline;

/// Opens a lifeline named `name` that lapses `ttl` from now (NULL: `lease.default_ttl`) unless
/// renewed, and returns its id; with `session_bound` it also lapses when the calling session
/// ends. Leases acquired with `lifeline => id` end when it lapses or is closed.
#[pg_extern(sql = false)]
fn lease_lifeline_open(name: Option<&str>, ttl: Option<Interval>, session_bound: Option<bool>) -> i64 {
    (|| {
        let name = arguments::name(name, "name", crate::vocabulary::MAX_HOLDER_BYTES)?;
        let ttl = arguments::ttl(ttl)?;
        ensure_primary()?;
        lifeline::open(name, ttl, session_bound.unwrap_or(false))
    })()
    .or_raise()
}

/// Moves the lifeline's expiry to now + `ttl` (NULL: the ttl it was opened with), and with it
/// the end of every lease attached to it, in one row write; returns the new expiry. 55000 if
/// the lifeline lapsed, was closed or never existed.
#[pg_extern(sql = false)]
fn lease_lifeline_renew(lifeline: Option<i64>, ttl: Option<Interval>) -> TimestampWithTimeZone {
    (|| {
        let id = arguments::lifeline(lifeline)?;
        let ttl = ttl.map(|ttl| arguments::ttl(Some(ttl))).transpose()?;
        ensure_primary()?;
        let expires_at = lifeline::renew(id, ttl)?;
        // SAFETY: a timestamptz is its microseconds since 2000-01-01.
        Ok(unsafe { TimestampWithTimeZone::from_datum(expires_at.into(), false) }.expect("not null"))
    })()
    .or_raise()
}

/// Releases every lease attached to the lifeline and ends it; returns how many leases it
/// released. 55000 if the lifeline lapsed, was closed or never existed.
#[pg_extern(sql = false)]
fn lease_lifeline_close(lifeline: Option<i64>) -> i64 {
    (|| {
        let id = arguments::lifeline(lifeline)?;
        ensure_primary()?;
        lifeline::close(id)
    })()
    .or_raise()
}
