//! The SQL entry points of calls on several resources: `lease_acquire_any`, in the signature
//! of each version, `lease_acquire_all` and `lease_release_each`.
//!
//! Uses errors, grant, holding, waiting and the argument checks.

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::arguments::{self, ensure_primary};
use crate::errors::{LeaseError, LeaseResult, OrRaise};
use crate::grant;
use crate::holding;
use crate::store::LeaseMode;
use crate::waiting;

/// `lease_acquire_any` as versions 0.3.0 and 0.4.0 declare it (six arguments).
#[pg_extern(sql = false)]
fn lease_acquire_any(
    resources: Option<Array<&str>>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    max_count: Option<i32>,
    session_bound: Option<bool>,
    snapshot_consistent: Option<bool>,
) -> TableIterator<'static, (name!(resource, String), name!(token, i64))> {
    let options = (max_count, session_bound, snapshot_consistent);
    let exclusive = (LeaseMode::Exclusive, None);
    TableIterator::new(acquire_any(resources, holder, ttl, options, None, None, exclusive).or_raise())
}

/// Takes up to `max_count` of `resources` that are free (or expired), in the order given, and
/// returns each with its token. Never waits: resources that another transaction is changing at
/// this moment, or that are held, or that queued waiters are owed, are skipped. A resource the
/// caller already holds (same holder, same role) is returned again with its expiry extended.
/// With `snapshot_consistent`, only resources without a lease row whose lease has not changed
/// since the calling statement's snapshot are taken, so what that statement read is current.
/// `lifeline` and `data` are as for `lease_acquire`.
#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn lease_acquire_any_with(
    resources: Option<Array<&str>>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    max_count: Option<i32>,
    session_bound: Option<bool>,
    snapshot_consistent: Option<bool>,
    lifeline: Option<i64>,
    data: Option<JsonB>,
) -> TableIterator<'static, (name!(resource, String), name!(token, i64))> {
    let options = (max_count, session_bound, snapshot_consistent);
    let exclusive = (LeaseMode::Exclusive, None);
    TableIterator::new(
        acquire_any(resources, holder, ttl, options, lifeline, data.as_ref(), exclusive).or_raise(),
    )
}

/// As [`lease_acquire_any_with`], in `mode` and with `capacity` as for `lease_acquire`: shared
/// leases, or a permit of each resource taken.
#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn lease_acquire_any_in_mode(
    resources: Option<Array<&str>>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    max_count: Option<i32>,
    session_bound: Option<bool>,
    snapshot_consistent: Option<bool>,
    lifeline: Option<i64>,
    data: Option<JsonB>,
    mode: Option<&str>,
    capacity: Option<i32>,
) -> TableIterator<'static, (name!(resource, String), name!(token, i64))> {
    let options = (max_count, session_bound, snapshot_consistent);
    (|| {
        let mode = arguments::mode(mode, capacity)?;
        acquire_any(resources, holder, ttl, options, lifeline, data.as_ref(), mode)
    })()
    .map(TableIterator::new)
    .or_raise()
}

/// `lease_acquire_any` with its argument checks; `options` are max_count, session_bound and
/// snapshot_consistent.
fn acquire_any(
    resources: Option<Array<&str>>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    (max_count, session_bound, snapshot_consistent): (Option<i32>, Option<bool>, Option<bool>),
    lifeline: Option<i64>,
    data: Option<&JsonB>,
    (mode, capacity): (LeaseMode, Option<i32>),
) -> LeaseResult<Vec<(String, i64)>> {
    let candidates = resource_list(resources.as_ref().map(Array::iter))?;
    let mut request = arguments::request("", holder, ttl, session_bound, lifeline, data)?;
    request.only_if_free = snapshot_consistent.unwrap_or(false);
    (request.mode, request.capacity) = (mode, capacity);
    let max_count = arguments::count(max_count, "max_count", 1)?;
    ensure_primary()?;
    super::modes::ensure_served(&request)?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    grant::acquire_any(&candidates, &request, max_count)
}

/// Every element of `resources`, checked before anything is granted: bad input changes nothing.
fn resource_list<'a>(resources: Option<impl Iterator<Item = Option<&'a str>>>) -> LeaseResult<Vec<&'a str>> {
    let resources = resources.ok_or(LeaseError::NullArgument("resources"))?;
    resources.map(|resource| arguments::resource(resource, "resources element")).collect()
}

/// Grants every one of `resources` to `holder` for `ttl`, each with its own fencing token, or
/// none of them: returns each resource with its token, in the order given (a name listed twice
/// is taken once), or no rows when some are held by others (or owed to queued waiters). With
/// `wait` > 0 it queues once, first come first served in the queue of every resource it names,
/// until it is granted all of them together or the wait runs out; it never holds some while it
/// waits for the rest, so claims cannot deadlock whatever the order of their lists. A resource
/// the caller already holds is kept and its lease extended. `session_bound`, `lifeline` and
/// `data` are as for `lease_acquire`.
#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn lease_acquire_all(
    resources: Option<Array<&str>>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    wait: Option<Interval>,
    session_bound: Option<bool>,
    lifeline: Option<i64>,
    data: Option<JsonB>,
) -> TableIterator<'static, (name!(resource, String), name!(token, i64))> {
    (|| {
        let listed = resource_list(resources.as_ref().map(Array::iter))?;
        let mut distinct = Vec::with_capacity(listed.len());
        for resource in listed {
            if !distinct.contains(&resource) {
                distinct.push(resource);
            }
        }
        if distinct.is_empty() {
            return Err(LeaseError::invalid("resources", "must name at least one resource"));
        }
        let request = arguments::request("", holder, ttl, session_bound, lifeline, data.as_ref())?;
        let wait = arguments::wait(wait)?;
        if wait > 0 && distinct.len() > waiting::MAX_KEYS {
            return Err(LeaseError::TooManyToWait { count: distinct.len(), limit: waiting::MAX_KEYS });
        }
        if wait > 0 && !waiting::can_wait() {
            return Err(LeaseError::NeedsPreload("waiting for a lease"));
        }
        ensure_primary()?;
        Ok(grant::acquire_all(&distinct, &request, wait)?.unwrap_or_default())
    })()
    .map(TableIterator::new)
    .or_raise()
}

/// Releases each of `resources` held with the token at the same position of `tokens`, in the
/// order given, and returns the resources it released; one whose token no longer holds it is
/// left out (`lease_release` would return false for it). Each release is a fence as
/// `lease_release` is: until the calling transaction ends nobody else can be granted a returned
/// resource, so work completed in the same transaction for exactly those resources (a queue's
/// batch of jobs) is fenced. Every argument is checked before anything is released.
#[pg_extern(sql = false)]
fn lease_release_each(
    resources: Option<Array<&str>>,
    tokens: Option<Array<i64>>,
) -> SetOfIterator<'static, String> {
    (|| {
        let listed = resource_list(resources.as_ref().map(Array::iter))?;
        let tokens = tokens.ok_or(LeaseError::NullArgument("tokens"))?;
        if tokens.len() != listed.len() {
            return Err(LeaseError::invalid(
                "tokens",
                format_args!("has {} elements for {} resources", tokens.len(), listed.len()),
            ));
        }
        let tokens = tokens
            .iter()
            .map(|token| arguments::positive(token, "tokens element"))
            .collect::<LeaseResult<Vec<_>>>()?;
        ensure_primary()?;
        let pairs: Vec<(&str, i64)> = listed.into_iter().zip(tokens).collect();
        holding::release_each(&pairs)
    })()
    .map(SetOfIterator::new)
    .or_raise()
}
