//! The SQL entry points: `lease_acquire`, `lease_acquire_any` ([`claims`]), `lease_renew`,
//! `lease_release`, `lease_set_data`, `lease_check`, `lease_assert`, `lease_force_release`,
//! `lease_sweep`, and the lifelines' ([`lifelines`]). Where a version changed a signature, the
//! entry point of the older one stays, for databases not updated yet.
//!
//! The public signatures (argument names, defaults, comments, grants) live in the SQL scripts
//! (`sql/lease--0.1.0.sql` and the version steps after it); the functions here are their C
//! entry points. Each one checks every argument ([`arguments`]) and that the server is the
//! primary before it touches anything, then hands over to the concern that does the work:
//! [`crate::grant`] for acquires, [`crate::holding`] for calls with a token,
//! [`crate::expiry`] for the sweep. The introspection functions behind `lease_info`,
//! `lease.active` and `lease.stats` sit beside what they show (store, waiting, events, stats).
//!
//! Uses errors, settings, waiting, grant, holding, lifeline and expiry.

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::errors::{LeaseError, LeaseResult, OrRaise};
use crate::grant;
use crate::store::LeaseMode;
use crate::{expiry, holding, settings, waiting};

pub mod arguments;
mod claims;
mod lifelines;
mod modes;

use arguments::ensure_primary;

/// `lease_acquire` as versions 0.1.0 to 0.4.0 declare it (five arguments): the C entry point
/// their SQL names, kept for databases not updated yet.
#[pg_extern(sql = false)]
fn lease_acquire(
    resource: Option<&str>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    wait: Option<Interval>,
    session_bound: Option<bool>,
) -> Option<i64> {
    acquire(resource, holder, ttl, wait, session_bound, None, None).or_raise()
}

/// Grants `resource` to `holder` for `ttl` and returns a fencing token, or NULL when another
/// holder has it. Re-acquiring a lease one already holds (same holder name, same role) returns
/// the same token and moves the expiry to now + ttl. With `wait` > 0 it queues (first come,
/// first served) until granted or the wait runs out; with `session_bound` the lease also ends
/// when the calling session ends; with `lifeline` it is attached to that lifeline and ends with
/// it (no ttl of its own); `data` is stored with it.
#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn lease_acquire_with(
    resource: Option<&str>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    wait: Option<Interval>,
    session_bound: Option<bool>,
    lifeline: Option<i64>,
    data: Option<JsonB>,
) -> Option<i64> {
    acquire(resource, holder, ttl, wait, session_bound, lifeline, data.as_ref()).or_raise()
}

/// Grants `resource` to `holder` for `ttl` and returns a fencing token, or NULL when it cannot
/// be had: as [`lease_acquire_with`], in `mode` (`exclusive`, `shared`, or `permit`) and, for a
/// permit of a counting semaphore, with `capacity` (which the resource's declared capacity
/// overrides; the first permit request declares it).
#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn lease_acquire_in_mode(
    resource: Option<&str>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    wait: Option<Interval>,
    session_bound: Option<bool>,
    lifeline: Option<i64>,
    data: Option<JsonB>,
    mode: Option<&str>,
    capacity: Option<i32>,
) -> Option<i64> {
    (|| {
        let mode = arguments::mode(mode, capacity)?;
        acquire_in(resource, holder, (ttl, wait, session_bound), lifeline, data.as_ref(), mode)
    })()
    .or_raise()
}

#[allow(clippy::too_many_arguments)]
fn acquire(
    resource: Option<&str>,
    holder: Option<&str>,
    ttl: Option<Interval>,
    wait: Option<Interval>,
    session_bound: Option<bool>,
    lifeline: Option<i64>,
    data: Option<&JsonB>,
) -> LeaseResult<Option<i64>> {
    acquire_in(resource, holder, (ttl, wait, session_bound), lifeline, data, (LeaseMode::Exclusive, None))
}

/// `lease_acquire` with its argument checks, in a mode.
fn acquire_in(
    resource: Option<&str>,
    holder: Option<&str>,
    (ttl, wait, session_bound): (Option<Interval>, Option<Interval>, Option<bool>),
    lifeline: Option<i64>,
    data: Option<&JsonB>,
    (mode, capacity): (LeaseMode, Option<i32>),
) -> LeaseResult<Option<i64>> {
    let resource = arguments::resource(resource, "resource")?;
    let mut request = arguments::request(resource, holder, ttl, session_bound, lifeline, data)?;
    (request.mode, request.capacity) = (mode, capacity);
    let wait = arguments::wait(wait)?;
    if wait > 0 && !waiting::can_wait() {
        return Err(LeaseError::NeedsPreload("waiting for a lease"));
    }
    ensure_primary()?;
    modes::ensure_served(&request)?;
    grant::acquire(&request, wait)
}

/// Moves the expiry of a held lease to now + ttl; false if `token` no longer holds `resource`.
#[pg_extern(sql = false)]
fn lease_renew(resource: Option<&str>, token: Option<i64>, ttl: Option<Interval>) -> bool {
    (|| {
        let resource = arguments::resource(resource, "resource")?;
        let token = arguments::token(token)?;
        let ttl = arguments::ttl(ttl)?;
        ensure_primary()?;
        holding::renew(resource, token, ttl)
    })()
    .or_raise()
}

/// Ends a held lease; true once, false if `token` no longer holds `resource`.
#[pg_extern(sql = false)]
fn lease_release(resource: Option<&str>, token: Option<i64>) -> bool {
    release(resource, token, None).or_raise()
}

/// Ends a held lease but keeps the resource from everyone, its holder included, until at least
/// `keep_for` after the lease was acquired (ShedLock's `lockAtLeastFor`); NULL `keep_for`
/// releases at once. True once, false if `token` no longer holds `resource`.
#[pg_extern(sql = false)]
fn lease_release_keeping(resource: Option<&str>, token: Option<i64>, keep_for: Option<Interval>) -> bool {
    release(resource, token, keep_for).or_raise()
}

fn release(resource: Option<&str>, token: Option<i64>, keep_for: Option<Interval>) -> LeaseResult<bool> {
    let resource = arguments::resource(resource, "resource")?;
    let token = arguments::token(token)?;
    let keep_for = keep_for.map(|keep_for| arguments::duration(&keep_for, "keep_for")).transpose()?;
    ensure_primary()?;
    holding::release(resource, token, keep_for)
}

/// Replaces the data of a held lease (NULL removes it); false if `token` no longer holds
/// `resource`. Fenced as a renewal is.
#[pg_extern(sql = false)]
fn lease_set_data(resource: Option<&str>, token: Option<i64>, data: Option<JsonB>) -> bool {
    (|| {
        let resource = arguments::resource(resource, "resource")?;
        let token = arguments::token(token)?;
        let data = arguments::data(data.as_ref())?;
        ensure_primary()?;
        holding::set_data(resource, token, data)
    })()
    .or_raise()
}

/// The fence: true if `token` holds `resource` now, and then no other holder can be granted
/// the resource until the calling transaction ends.
#[pg_extern(sql = false)]
fn lease_check(resource: Option<&str>, token: Option<i64>) -> bool {
    check(resource, token).or_raise()
}

/// `lease_check` with its argument checks; also what the `lease_fence` trigger asks of a row.
pub fn check(resource: Option<&str>, token: Option<i64>) -> LeaseResult<bool> {
    let resource = arguments::resource(resource, "resource")?;
    let token = arguments::token(token)?;
    ensure_primary()?;
    holding::check(resource, token)
}

/// What the `lease_fence` trigger asks of a row: `lease_check`, passing only an exclusive
/// lease's token.
pub fn check_exclusive(resource: Option<&str>, token: Option<i64>) -> LeaseResult<bool> {
    let resource = arguments::resource(resource, "resource")?;
    let token = arguments::token(token)?;
    ensure_primary()?;
    holding::check_exclusive(resource, token)
}

/// The fence as a statement: raises 55000 unless `token` holds `resource`.
#[pg_extern(sql = false)]
fn lease_assert(resource: Option<&str>, token: Option<i64>) {
    (|| {
        let resource = arguments::resource(resource, "resource")?;
        let token = arguments::token(token)?;
        ensure_primary()?;
        holding::assert_held(resource, token)
    })()
    .or_raise()
}

/// Administrator's release: ends the live lease on `resource` whatever its holder, announcing
/// `revoked`; true if there was one. Not executable by PUBLIC.
#[pg_extern(sql = false)]
fn lease_force_release(resource: Option<&str>) -> bool {
    (|| {
        let resource = arguments::resource(resource, "resource")?;
        ensure_primary()?;
        Ok(holding::force_release(resource))
    })()
    .or_raise()
}

/// Removes up to `max_count` expired leases (NULL: `lease.expire_batch`), announcing each as
/// `expired`; returns how many it removed. The expiry worker runs the same sweep.
#[pg_extern(sql = false)]
fn lease_sweep(max_count: Option<i32>) -> i32 {
    let limit = match max_count {
        None => settings::expire_batch(),
        Some(count) if count < 1 => LeaseError::invalid("max_count", "must be at least 1").raise(),
        Some(count) => i64::from(count),
    };
    ensure_primary().or_raise();
    expiry::sweep(limit).removed as i32
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn acquire(sql_args: &str) -> Option<i64> {
        Spi::get_one(&format!("SELECT lease_acquire({sql_args})")).unwrap()
    }

    fn boolean(sql: &str) -> bool {
        Spi::get_one::<bool>(sql).unwrap().unwrap()
    }

    /// Waits (without guessing a duration) until the server clock is past the lease's expiry.
    fn wait_until_expired(resource: &str) {
        Spi::run(&format!(
            "DO $$ BEGIN
               WHILE clock_timestamp() <= (SELECT expires_at FROM lease.leases WHERE resource = '{resource}') LOOP
                 PERFORM pg_sleep(0.001);
               END LOOP;
             END $$"
        ))
        .unwrap();
    }

    #[pg_test]
    fn tokens_increase_across_resources() {
        let a = acquire("'r:a', 'h'").unwrap();
        let b = acquire("'r:b', 'h'").unwrap();
        let c = acquire("'r:c', 'other'").unwrap();
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[pg_test]
    fn second_holder_is_refused() {
        assert!(acquire("'t:second_holder_is_refused', 'one', '1 min'").is_some());
        assert_eq!(acquire("'t:second_holder_is_refused', 'two', '1 min'"), None);
    }

    #[pg_test]
    fn reacquire_by_same_holder_returns_same_token_and_extends() {
        let token =
            acquire("'t:reacquire_by_same_holder_returns_same_token_and_extends', 'one', '1 min'").unwrap();
        assert_eq!(
            acquire("'t:reacquire_by_same_holder_returns_same_token_and_extends', 'one', '2 min'"),
            Some(token)
        );
        assert!(boolean(
            "SELECT expires_at > clock_timestamp() + interval '90 s' FROM lease.leases WHERE resource = 't:reacquire_by_same_holder_returns_same_token_and_extends'"
        ));
    }

    #[pg_test]
    fn expired_lease_is_taken_over_with_a_larger_token() {
        let old = acquire("'t:expired_lease_is_taken_over_with_a_larger_token', 'one', '1 ms'").unwrap();
        wait_until_expired("t:expired_lease_is_taken_over_with_a_larger_token");
        let new = acquire("'t:expired_lease_is_taken_over_with_a_larger_token', 'two', '1 min'").unwrap();
        assert!(new > old);
        assert!(!boolean(&format!(
            "SELECT lease_renew('t:expired_lease_is_taken_over_with_a_larger_token', {old})"
        )));
        assert!(!boolean(&format!(
            "SELECT lease_release('t:expired_lease_is_taken_over_with_a_larger_token', {old})"
        )));
        assert!(!boolean(&format!(
            "SELECT lease_check('t:expired_lease_is_taken_over_with_a_larger_token', {old})"
        )));
        assert!(boolean(&format!(
            "SELECT lease_check('t:expired_lease_is_taken_over_with_a_larger_token', {new})"
        )));
    }

    #[pg_test]
    fn expired_lease_cannot_be_renewed_even_if_nobody_took_it() {
        let token =
            acquire("'t:expired_lease_cannot_be_renewed_even_if_nobody_took_it', 'one', '1 ms'").unwrap();
        wait_until_expired("t:expired_lease_cannot_be_renewed_even_if_nobody_took_it");
        assert!(!boolean(&format!("SELECT lease_renew('t:expired_lease_cannot_be_renewed_even_if_nobody_took_it', {token}, '1 min')")));
        assert!(!boolean(&format!(
            "SELECT lease_release('t:expired_lease_cannot_be_renewed_even_if_nobody_took_it', {token})"
        )));
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM lease_info('t:expired_lease_cannot_be_renewed_even_if_nobody_took_it')"
            )
            .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn release_is_true_once() {
        let token = acquire("'t:release_is_true_once', 'one'").unwrap();
        assert!(boolean(&format!("SELECT lease_release('t:release_is_true_once', {token})")));
        assert!(!boolean(&format!("SELECT lease_release('t:release_is_true_once', {token})")));
        assert!(acquire("'t:release_is_true_once', 'two'").is_some());
    }

    #[pg_test]
    fn null_ttl_uses_lease_default_ttl() {
        Spi::run("SET LOCAL lease.default_ttl = '5min'").unwrap();
        acquire("'t:null_ttl_uses_lease_default_ttl', 'one'").unwrap();
        assert!(boolean(
            "SELECT expires_at - acquired_at = interval '5 min' FROM lease.leases WHERE resource = 't:null_ttl_uses_lease_default_ttl'"
        ));
    }

    #[pg_test(
        error = "lease on resource \"t:assert_raises_for_a_token_that_does_not_hold\" is not held with token 999"
    )]
    fn assert_raises_for_a_token_that_does_not_hold() {
        acquire("'t:assert_raises_for_a_token_that_does_not_hold', 'one'").unwrap();
        Spi::run("SELECT lease_assert('t:assert_raises_for_a_token_that_does_not_hold', 999)").unwrap();
    }

    #[pg_test(error = "resource must not be null")]
    fn null_resource_is_rejected() {
        acquire("NULL, 'h'");
    }

    #[pg_test(error = "holder must not be empty or blank")]
    fn blank_holder_is_rejected() {
        acquire("'t:blank_holder_is_rejected', E' \\t\\n'");
    }

    #[pg_test(error = "resource is 513 bytes long; the limit is 512 bytes")]
    fn long_resource_is_rejected() {
        acquire("repeat('x', 513), 'h'");
    }

    #[pg_test(error = "ttl must not exceed lease.max_ttl (86400 s)")]
    fn ttl_over_max_is_rejected() {
        acquire("'t:ttl_over_max_is_rejected', 'h', '1 day 1 second'");
    }

    #[pg_test(error = "lease.default_ttl must not exceed lease.max_ttl (86400 s)")]
    fn default_ttl_over_max_is_rejected() {
        Spi::run("SET LOCAL lease.default_ttl = '2d'").unwrap();
        acquire("'t:default_ttl_over_max_is_rejected', 'h'");
    }

    #[pg_test(error = "waiting for a lease requires lease in shared_preload_libraries")]
    fn waiting_needs_preloading() {
        acquire("'t:waiting_needs_preloading', 'h', '1 min', '1 s'");
    }

    #[pg_test]
    fn session_bound_lease_works_without_preloading() {
        let token =
            acquire("'t:session_bound_lease_works_without_preloading', 'h', '1 min', NULL, true").unwrap();
        let pid: i32 = Spi::get_one(
            "SELECT session_pid FROM lease_info('t:session_bound_lease_works_without_preloading')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(pid, Spi::get_one::<i32>("SELECT pg_backend_pid()").unwrap().unwrap());
        assert!(boolean(&format!(
            "SELECT lease_release('t:session_bound_lease_works_without_preloading', {token})"
        )));
    }

    #[pg_test(error = "token must be positive, not 0")]
    fn zero_token_is_rejected() {
        Spi::run("SELECT lease_check('t:zero_token_is_rejected', 0)").unwrap();
    }
}
