//! Lease events: what changed, announced with NOTIFY once the change has committed.
//!
//! A call that changes a lease records an [`Event`] in this backend's list for the current
//! (sub)transaction. A subtransaction that aborts takes its events with it; a transaction that
//! aborts announces nothing. At commit the events go:
//! - into the shared event ring ([`crate::shared`]) when the library is preloaded and the
//!   expiry worker serves this database: the worker publishes them in batches, so callers'
//!   commits never queue behind NOTIFY's database-wide commit lock;
//! - otherwise straight to NOTIFY in the committing transaction (ordered by PostgreSQL itself).
//!
//! Events of one resource are appended while the resource's barrier lock is still held (it is
//! released after the commit callbacks run), so they are in commit order. Delivery is at most
//! once, like NOTIFY itself: a listener that is not connected misses events, and a full ring
//! drops events, which shows as a gap in `seq`.

use std::cell::RefCell;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::settings;
use crate::shared::{self, EventSlot};
use crate::store::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Acquired = 1,
    Renewed = 2,
    Released = 3,
    Expired = 4,
    Revoked = 5,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    None = 0,
    Ttl = 1,
    SessionEnded = 2,
}

/// One committed (or about to be committed) change of a lease.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: Kind,
    pub reason: Reason,
    pub resource: String,
    pub holder: String,
    pub token: i64,
    /// The lease's expiry after the change (acquired, renewed) or when it ended (expired).
    pub expires_at: Option<Timestamp>,
    /// Server time of the change.
    pub at: Timestamp,
}

thread_local! {
    /// This transaction's events, each with the nesting level of the subtransaction that made it.
    static PENDING: RefCell<Vec<(i32, Event)>> = const { RefCell::new(Vec::new()) };
}

/// Records an event of the current transaction, unless announcing is off.
pub fn record(event: Event) {
    if !settings::notify_enabled() || (event.kind == Kind::Renewed && !settings::notify_renewals()) {
        return;
    }
    // SAFETY: reads the current transaction's nesting level.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    PENDING.with(|pending| pending.borrow_mut().push((level, event)));
}

/// Registers the transaction callbacks; called from `_PG_init` in every backend.
pub fn register_callbacks() {
    // SAFETY: registering static callbacks with no argument.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_event), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if PENDING.with(|pending| pending.borrow().is_empty()) {
        return;
    }
    match event {
        XACT_EVENT_PRE_PREPARE => {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that changed leases",
                "lease",
            )
            .set_hint("Acquire, renew and release leases in ordinary transactions.")
            .report(PgLogLevel::ERROR);
        }
        XACT_EVENT_PRE_COMMIT if !ring_serves_this_database() => {
            for event in take_pending() {
                notify_now(&payload(&event, None));
            }
        }
        XACT_EVENT_COMMIT => publish_to_ring(take_pending()),
        XACT_EVENT_ABORT | XACT_EVENT_PREPARE => drop(take_pending()),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    _my_subid: pg_sys::SubTransactionId,
    _parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    // SAFETY: reads the level of the subtransaction that is ending.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        match event {
            SUBXACT_EVENT_ABORT_SUB => pending.retain(|(made_at, _)| *made_at < level),
            SUBXACT_EVENT_COMMIT_SUB => {
                for (made_at, _) in pending.iter_mut().filter(|(made_at, _)| *made_at >= level) {
                    *made_at = level - 1;
                }
            }
            _ => {}
        }
    });
}

fn take_pending() -> Vec<Event> {
    PENDING.with(|pending| pending.borrow_mut().drain(..).map(|(_, event)| event).collect())
}

/// Whether committed events of this backend go through the shared ring.
fn ring_serves_this_database() -> bool {
    // SAFETY: MyDatabaseId is fixed for the life of the backend.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    shared::get().is_some_and(|shared| shared.worker_database.load(Ordering::Acquire) == database)
}

/// At commit: appends the events to the ring and wakes the worker to publish them (and to
/// move its next sweep earlier if one of them expires before it).
fn publish_to_ring(events: Vec<Event>) {
    let Some(shared) = shared::get() else { return };
    if events.is_empty() {
        return;
    }
    // SAFETY: MyDatabaseId is fixed for the life of the backend.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    {
        let mut ring = shared.lock_ring();
        for event in &events {
            ring.push(|slot| fill_slot(slot, event, database));
        }
    }
    let earliest_expiry = events
        .iter()
        .filter(|event| matches!(event.kind, Kind::Acquired | Kind::Renewed))
        .filter_map(|event| event.expires_at)
        .min();
    let sweep_earlier = earliest_expiry.is_some_and(|at| at < shared.next_wakeup.load(Ordering::Acquire));
    let first_request = !shared.publish_requested.swap(true, Ordering::AcqRel);
    if first_request || sweep_earlier {
        shared.wake_worker();
    }
}

fn fill_slot(slot: &mut EventSlot, event: &Event, database: u32) {
    slot.database = database;
    slot.kind = event.kind as u8;
    slot.reason = event.reason as u8;
    slot.token = event.token;
    slot.expires_at = event.expires_at.unwrap_or(i64::MIN);
    slot.at = event.at;
    slot.resource_len = event.resource.len() as u16;
    slot.resource[..event.resource.len()].copy_from_slice(event.resource.as_bytes());
    slot.holder_len = event.holder.len() as u16;
    slot.holder[..event.holder.len()].copy_from_slice(event.holder.as_bytes());
}

/// Turns a ring slot back into an event and its sequence number.
pub fn from_slot(slot: &EventSlot) -> (u64, Event) {
    let kind = match slot.kind {
        1 => Kind::Acquired,
        2 => Kind::Renewed,
        3 => Kind::Released,
        4 => Kind::Expired,
        _ => Kind::Revoked,
    };
    let reason = match slot.reason {
        1 => Reason::Ttl,
        2 => Reason::SessionEnded,
        _ => Reason::None,
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let event = Event {
        kind,
        reason,
        resource: text(&slot.resource[..slot.resource_len as usize]),
        holder: text(&slot.holder[..slot.holder_len as usize]),
        token: slot.token,
        expires_at: (slot.expires_at != i64::MIN).then_some(slot.expires_at),
        at: slot.at,
    };
    (slot.seq, event)
}

/// Sends one notification on `lease.notify_channel` in the current transaction.
pub fn notify_now(payload: &str) {
    let channel = settings::notify_channel();
    // SAFETY: pg_notify is called through the guarded fmgr path with two text arguments.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[channel.as_str().into_datum(), payload.into_datum()],
        );
    }
}

/// The JSON payload of an event:
/// `{"seq":N,"event":"expired","reason":"ttl","resource":"...","holder":"...","token":N,
///   "expires_at":"2026-01-02T03:04:05.123456Z","at":"..."}`. `seq` is present when the event
/// went through the ring; `reason` only on `expired`; `expires_at` where it applies.
pub fn payload(event: &Event, seq: Option<u64>) -> String {
    let mut json = String::with_capacity(128 + 2 * (event.resource.len() + event.holder.len()));
    json.push('{');
    if let Some(seq) = seq {
        let _ = write!(json, "\"seq\":{seq},");
    }
    let name = match event.kind {
        Kind::Acquired => "acquired",
        Kind::Renewed => "renewed",
        Kind::Released => "released",
        Kind::Expired => "expired",
        Kind::Revoked => "revoked",
    };
    let _ = write!(json, "\"event\":\"{name}\",");
    match event.reason {
        Reason::Ttl => json.push_str("\"reason\":\"ttl\","),
        Reason::SessionEnded => json.push_str("\"reason\":\"session_ended\","),
        Reason::None => {}
    }
    json.push_str("\"resource\":");
    push_json_string(&mut json, &event.resource);
    json.push_str(",\"holder\":");
    push_json_string(&mut json, &event.holder);
    let _ = write!(json, ",\"token\":{}", event.token);
    if let Some(expires_at) = event.expires_at {
        let _ = write!(json, ",\"expires_at\":\"{}\"", iso8601(expires_at));
    }
    let _ = write!(json, ",\"at\":\"{}\"}}", iso8601(event.at));
    json
}

fn push_json_string(json: &mut String, text: &str) {
    json.push('"');
    for c in text.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '\n' => json.push_str("\\n"),
            '\r' => json.push_str("\\r"),
            '\t' => json.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(json, "\\u{:04x}", c as u32);
            }
            c => json.push(c),
        }
    }
    json.push('"');
}

/// A `timestamptz` as ISO 8601 in UTC with microseconds, e.g. `2026-01-02T03:04:05.000006Z`.
pub fn iso8601(timestamp: Timestamp) -> String {
    const USECS_PER_DAY: i64 = 86_400_000_000;
    // Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
    const POSTGRES_EPOCH_DAYS: i64 = 10_957;
    let days = timestamp.div_euclid(USECS_PER_DAY) + POSTGRES_EPOCH_DAYS;
    let usecs = timestamp.rem_euclid(USECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let seconds = usecs / 1_000_000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        usecs % 1_000_000
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn iso8601_matches_postgres() {
        for text in [
            "2000-01-01 00:00:00+00",
            "2026-11-26 04:05:06.000007+00",
            "1999-12-31 23:59:59.999999+00",
            "2400-02-29 12:00:00+00",
        ] {
            let expected: String = Spi::get_one(&format!(
                "SELECT to_char('{text}'::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            ))
            .unwrap()
            .unwrap();
            let micros: i64 = Spi::get_one(&format!(
                "SELECT ((extract(epoch FROM '{text}'::timestamptz) - 946684800) * 1000000)::bigint"
            ))
            .unwrap()
            .unwrap();
            assert_eq!(iso8601(micros), expected);
        }
    }

    #[pg_test]
    fn payload_escapes_strange_names() {
        let event = Event {
            kind: Kind::Expired,
            reason: Reason::Ttl,
            resource: "a\"b\\c\nd\u{1}é€".into(),
            holder: "h".into(),
            token: 7,
            expires_at: Some(0),
            at: 1,
        };
        assert_eq!(
            payload(&event, Some(3)),
            "{\"seq\":3,\"event\":\"expired\",\"reason\":\"ttl\",\"resource\":\"a\\\"b\\\\c\\nd\\u0001é€\",\
             \"holder\":\"h\",\"token\":7,\"expires_at\":\"2000-01-01T00:00:00.000000Z\",\
             \"at\":\"2000-01-01T00:00:00.000001Z\"}"
        );
        let parsed: bool = Spi::get_one(&format!(
            "SELECT ({}::jsonb ->> 'resource') = E'a\"b\\\\c\\nd\\u0001é€'",
            pgrx::spi::quote_literal(payload(&event, Some(3)))
        ))
        .unwrap()
        .unwrap();
        assert!(parsed);
    }
}
