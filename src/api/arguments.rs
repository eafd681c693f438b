//! The checks every SQL entry point makes of its arguments before it touches anything: bad
//! input gets a specific SQLSTATE and changes nothing.
//!
//! Uses errors, settings and vocabulary.

use pgrx::datum::Interval;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::{LeaseError, LeaseResult, OrRaise};
use crate::grant::Request;
use crate::settings;
use crate::store::LeaseMode;
use crate::vocabulary::{MAX_DATA_BYTES, MAX_HOLDER_BYTES, MAX_RESOURCE_BYTES};

const USECS_PER_DAY: i128 = 86_400_000_000;
/// How `extract(epoch from interval)` counts a month.
const DAYS_PER_MONTH: i128 = 30;

/// A resource name: not NULL, not blank, at most [`MAX_RESOURCE_BYTES`].
pub fn resource<'a>(value: Option<&'a str>, argument: &'static str) -> LeaseResult<&'a str> {
    name(value, argument, MAX_RESOURCE_BYTES)
}

/// A holder name: not NULL, not blank, at most [`MAX_HOLDER_BYTES`].
pub fn holder(value: Option<&str>) -> LeaseResult<&str> {
    name(value, "holder", MAX_HOLDER_BYTES)
}

pub fn name<'a>(value: Option<&'a str>, argument: &'static str, max_bytes: usize) -> LeaseResult<&'a str> {
    let value = value.ok_or(LeaseError::NullArgument(argument))?;
    if value.trim().is_empty() {
        return Err(LeaseError::invalid(argument, "must not be empty or blank"));
    }
    if value.len() > max_bytes {
        return Err(LeaseError::invalid(
            argument,
            format_args!("is {} bytes long; the limit is {max_bytes} bytes", value.len()),
        ));
    }
    Ok(value)
}

/// A token: not NULL, positive.
pub fn token(token: Option<i64>) -> LeaseResult<i64> {
    positive(token, "token")
}

/// A number that names something (a token, a lifeline): not NULL, positive.
pub(super) fn positive(value: Option<i64>, argument: &'static str) -> LeaseResult<i64> {
    match value {
        None => Err(LeaseError::NullArgument(argument)),
        Some(value) if value <= 0 => {
            Err(LeaseError::invalid(argument, format_args!("must be positive, not {value}")))
        }
        Some(value) => Ok(value),
    }
}

/// The ttl in microseconds: NULL means `lease.default_ttl`; it must be positive and at most
/// `lease.max_ttl`.
pub fn ttl(ttl: Option<Interval>) -> LeaseResult<i64> {
    let (usecs, argument) = match ttl {
        None => (i128::from(settings::default_ttl_usecs()), "lease.default_ttl"),
        Some(ttl) => (interval_usecs(&ttl), "ttl"),
    };
    if usecs <= 0 {
        return Err(LeaseError::invalid(argument, "must be greater than zero"));
    }
    let max = settings::max_ttl_usecs();
    if usecs > i128::from(max) {
        return Err(LeaseError::invalid(
            argument,
            format_args!("must not exceed lease.max_ttl ({} s)", max / 1_000_000),
        ));
    }
    Ok(usecs as i64)
}

/// What an acquire of `resource` (checked already) asks for. With a lifeline the lease has no
/// ttl of its own and cannot also be session-bound.
pub fn request<'a>(
    resource: &'a str,
    holder: Option<&'a str>,
    ttl: Option<Interval>,
    session_bound: Option<bool>,
    lifeline: Option<i64>,
    data: Option<&'a pgrx::JsonB>,
) -> LeaseResult<Request<'a>> {
    let holder = self::holder(holder)?;
    let lifeline = lifeline.map(|id| self::lifeline(Some(id))).transpose()?;
    let session_bound = session_bound.unwrap_or(false);
    let ttl = match lifeline {
        Some(_) if ttl.is_some() => {
            return Err(LeaseError::invalid("ttl", "must be NULL for a lease attached to a lifeline"))
        }
        Some(_) if session_bound => {
            return Err(LeaseError::invalid(
                "session_bound",
                "must be false for a lease attached to a lifeline (bind the lifeline instead)",
            ))
        }
        Some(_) => 0,
        None => self::ttl(ttl)?,
    };
    Ok(Request {
        resource,
        holder,
        ttl,
        session_bound,
        only_if_free: false,
        lifeline: lifeline.map(|id| (id, std::cell::Cell::new(0))),
        data: self::data(data)?,
        mode: LeaseMode::Exclusive,
        capacity: None,
    })
}

/// How an acquire asks to hold: `mode` (`exclusive`, `shared` or `permit`) and `capacity`. A
/// capacity asks for a permit (whatever the mode but shared); a permit without one uses the
/// resource's declared capacity.
pub fn mode(mode: Option<&str>, capacity: Option<i32>) -> LeaseResult<(LeaseMode, Option<i32>)> {
    let mode = mode.ok_or(LeaseError::NullArgument("mode"))?;
    let capacity = at_least_one(capacity, "capacity")?;
    match (LeaseMode::named(mode), capacity) {
        (Some(LeaseMode::Shared), Some(_)) => Err(LeaseError::invalid(
            "capacity",
            "must be NULL for a shared lease (a permit is asked for with capacity alone)",
        )),
        (Some(LeaseMode::Exclusive), Some(capacity)) => Ok((LeaseMode::Permit, Some(capacity))),
        (Some(mode), capacity) => Ok((mode, capacity)),
        (None, _) => Err(LeaseError::invalid(
            "mode",
            format_args!("must be exclusive, shared or permit, not \"{}\"", mode.escape_default()),
        )),
    }
}

/// A lifeline id: not NULL, positive.
pub fn lifeline(id: Option<i64>) -> LeaseResult<i64> {
    positive(id, "lifeline")
}

/// A lease's data: at most [`MAX_DATA_BYTES`] as compact JSON.
pub fn data(data: Option<&pgrx::JsonB>) -> LeaseResult<Option<&serde_json::Value>> {
    let Some(pgrx::JsonB(value)) = data else { return Ok(None) };
    let length = serde_json::to_string(value).map_or(usize::MAX, |text| text.len());
    if length > MAX_DATA_BYTES {
        return Err(LeaseError::invalid(
            "data",
            format_args!("is {length} bytes of JSON; the limit is {MAX_DATA_BYTES} bytes"),
        ));
    }
    Ok(Some(value))
}

/// A duration in microseconds such as `keep_for`: not negative, at most `lease.max_ttl`.
pub fn duration(interval: &Interval, argument: &str) -> LeaseResult<i64> {
    let usecs = interval_usecs(interval);
    if usecs < 0 {
        return Err(LeaseError::invalid(argument, "must not be negative"));
    }
    let max = settings::max_ttl_usecs();
    if usecs > i128::from(max) {
        return Err(LeaseError::invalid(
            argument,
            format_args!("must not exceed lease.max_ttl ({} s)", max / 1_000_000),
        ));
    }
    Ok(usecs as i64)
}

/// The wait in microseconds: NULL means no wait; it must not be negative.
pub fn wait(wait: Option<Interval>) -> LeaseResult<i64> {
    let usecs = wait.map_or(0, |wait| interval_usecs(&wait));
    if usecs < 0 {
        return Err(LeaseError::invalid("wait", "must not be negative"));
    }
    Ok(usecs.min(i128::from(i64::MAX)) as i64)
}

/// A count of at least 1: `default` when NULL.
pub fn count(count: Option<i32>, argument: &str, default: usize) -> LeaseResult<usize> {
    Ok(at_least_one(count, argument)?.map_or(default, |count| count as usize))
}

/// A number that must be at least 1 when given (a count, a capacity); NULL stays NULL.
pub fn at_least_one(value: Option<i32>, argument: &str) -> LeaseResult<Option<i32>> {
    match value {
        Some(value) if value < 1 => {
            Err(LeaseError::invalid(argument, format_args!("must be at least 1, not {value}")))
        }
        value => Ok(value),
    }
}

/// An interval's length as a duration: a day is 24 hours and a month 30 days, as
/// `extract(epoch from interval)` counts them.
fn interval_usecs(interval: &Interval) -> i128 {
    (i128::from(interval.months()) * DAYS_PER_MONTH + i128::from(interval.days())) * USECS_PER_DAY
        + i128::from(interval.micros())
}

/// Leases are granted, renewed and checked on the primary only (25006 during recovery).
pub fn ensure_primary() -> LeaseResult<()> {
    // SAFETY: RecoveryInProgress reads shared state under its own lock.
    match unsafe { pg_sys::RecoveryInProgress() } {
        true => Err(LeaseError::ReadOnlyServer),
        false => Ok(()),
    }
}

/// `lease._valid_resource(resource)`: returns `resource` if it is a valid resource name and
/// raises the documented error otherwise; `lease_info` filters through it.
#[pg_extern(sql = false)]
fn valid_resource(resource: Option<&str>) -> String {
    self::resource(resource, "resource").or_raise().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_length_counts_months_as_30_days() {
        let interval = Interval::new(1, 2, 3).unwrap();
        assert_eq!(interval_usecs(&interval), (32 * USECS_PER_DAY) + 3);
    }

    #[test]
    fn names_are_checked_in_bytes() {
        assert_eq!(resource(Some("é"), "resource"), Ok("é"));
        assert_eq!(
            resource(Some(&"é".repeat(257)), "resource"),
            Err(LeaseError::InvalidArgument("resource is 514 bytes long; the limit is 512 bytes".into()))
        );
        assert_eq!(holder(None), Err(LeaseError::NullArgument("holder")));
        assert_eq!(holder(Some(" \t")), Err(LeaseError::invalid("holder", "must not be empty or blank")));
    }

    #[test]
    fn a_capacity_asks_for_a_permit_and_never_goes_with_shared() {
        assert_eq!(mode(Some("exclusive"), None), Ok((LeaseMode::Exclusive, None)));
        assert_eq!(mode(Some("exclusive"), Some(4)), Ok((LeaseMode::Permit, Some(4))));
        assert_eq!(mode(Some("permit"), None), Ok((LeaseMode::Permit, None)));
        assert_eq!(mode(Some("shared"), None), Ok((LeaseMode::Shared, None)));
        assert!(mode(Some("shared"), Some(2)).is_err());
        assert_eq!(mode(None, None), Err(LeaseError::NullArgument("mode")));
        assert_eq!(
            mode(Some("permit"), Some(0)),
            Err(LeaseError::invalid("capacity", "must be at least 1, not 0"))
        );
        assert_eq!(
            mode(Some("Shared"), None),
            Err(LeaseError::invalid("mode", "must be exclusive, shared or permit, not \"Shared\""))
        );
    }

    #[test]
    fn tokens_and_counts_must_be_positive() {
        assert_eq!(token(Some(1)), Ok(1));
        assert_eq!(token(Some(0)), Err(LeaseError::invalid("token", "must be positive, not 0")));
        assert_eq!(count(None, "max_count", 1), Ok(1));
        assert_eq!(
            count(Some(0), "max_count", 1),
            Err(LeaseError::invalid("max_count", "must be at least 1, not 0"))
        );
    }
}
