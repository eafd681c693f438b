//! Lease events: what changed, announced with NOTIFY once the change has committed.
//!
//! A call that changes a lease records an [`Event`] in this backend's list for the current
//! (sub)transaction. A subtransaction that aborts takes its events with it; a transaction that
//! aborts announces nothing ([`crate::transaction`] calls the hooks below). At commit the
//! waiters of every freed resource are woken, and the events go:
//! - into this database's event ring ([`crate::shared`]) when the library is preloaded and an
//!   expiry worker serves this database: the worker publishes them in batches, so callers'
//!   commits never queue behind NOTIFY's database-wide commit lock;
//! - otherwise straight to NOTIFY in the committing transaction (ordered by PostgreSQL itself),
//!   and the launcher is asked to start a worker for this database.
//!
//! Events of one resource are appended while the resource's barrier lock is still held (it is
//! released after the commit callbacks run), so they are in commit order. Delivery is at most
//! once, like NOTIFY itself: a listener that is not connected misses events, and a full ring
//! drops events, which shows as a gap in `seq`.

use std::cell::RefCell;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::settings;
use crate::shared::{self, EventSlot};
use crate::stats::{self, Counter};
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

/// An event of the current transaction: the level of the subtransaction that made it, and
/// whether it is to be announced. Every event is kept, announced or not: at commit the ones
/// that free a resource wake its waiters, and new expiries may wake the expiry worker.
struct Pending {
    level: i32,
    announce: bool,
    event: Event,
}

thread_local! {
    /// This transaction's events.
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
}

impl Kind {
    /// Whether a waiter for the resource must look again: it was freed, or its expiry (which
    /// the head of the queue sleeps until) moved.
    fn wakes_waiters(self) -> bool {
        matches!(self, Kind::Released | Kind::Expired | Kind::Revoked | Kind::Renewed)
    }
}

/// Records an event of the current transaction.
pub fn record(event: Event) {
    let announce = settings::notify_enabled() && (event.kind != Kind::Renewed || settings::notify_renewals());
    // SAFETY: reads the current transaction's nesting level.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    PENDING.with(|pending| pending.borrow_mut().push(Pending { level, announce, event }));
}

/// Whether this transaction has recorded events.
pub fn any_pending() -> bool {
    PENDING.with(|pending| !pending.borrow().is_empty())
}

/// Before commit: where the ring does not serve this database, announce with NOTIFY now (in
/// the committing transaction), and mark those events as announced.
pub fn before_commit() {
    if !any_pending() || ring_serves_this_database() {
        return;
    }
    let to_send: Vec<Event> = PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        pending
            .iter_mut()
            .filter(|p| p.announce)
            .map(|p| {
                p.announce = false;
                p.event.clone()
            })
            .collect()
    });
    if to_send.is_empty() || !notify_channel_is_valid() {
        return;
    }
    if settings::notify_queue_too_full() {
        // A failed commit would be worse than a lost event: drop them, and count them.
        stats::add(Counter::EventsDropped, to_send.len() as u64);
        return;
    }
    for event in &to_send {
        notify_now(&payload(event, None));
    }
}

/// At commit: count the changes, wake the worker for an earlier expiry, and hand the events to
/// announce to the ring. Returns the lock keys of the freed (or renewed) resources, whose
/// waiters are woken once this transaction's locks are released.
pub fn at_commit() -> Vec<u64> {
    let pending = take_pending();
    if pending.is_empty() {
        return Vec::new();
    }
    let Some(shared) = shared::get() else { return Vec::new() };
    for p in &pending {
        let counter = match (p.event.kind, p.event.reason) {
            (Kind::Acquired, _) => Counter::Acquired,
            (Kind::Renewed, _) => Counter::Renewed,
            (Kind::Released, _) => Counter::Released,
            (Kind::Expired, Reason::SessionEnded) => Counter::ExpiredSessionEnd,
            (Kind::Expired, _) => Counter::ExpiredTtl,
            (Kind::Revoked, _) => Counter::Revoked,
        };
        stats::add(counter, 1);
    }
    let freed: Vec<u64> = match shared.waiting.load(Ordering::Acquire) {
        0 => Vec::new(),
        _ => pending
            .iter()
            .filter(|p| p.event.kind.wakes_waiters())
            .map(|p| crate::barrier::resource_key(&p.event.resource))
            .collect(),
    };
    // The slot chosen before commit (events not sent then are for its ring), even if its worker
    // stopped since: it publishes them when it is back.
    let Some(state) = shared.assigned_to_my_database() else {
        // Announced before commit already, unless the slot was freed since then (its worker
        // could not be started): those are lost, and counted. A worker must still expire
        // these leases on time.
        let lost = pending.iter().filter(|p| p.announce).count();
        stats::add(Counter::EventsDropped, lost as u64);
        shared.request_worker();
        return freed;
    };
    let earliest_expiry = pending
        .iter()
        .filter(|p| matches!(p.event.kind, Kind::Acquired | Kind::Renewed))
        .filter_map(|p| p.event.expires_at)
        .min();
    if let Some(at) = earliest_expiry {
        state.earliest_expiry.fetch_min(at, Ordering::AcqRel);
    }
    let sweep_earlier = earliest_expiry.is_some_and(|at| at < state.next_wakeup.load(Ordering::Acquire));
    let announced: Vec<Event> = pending.into_iter().filter(|p| p.announce).map(|p| p.event).collect();
    let first_request = !announced.is_empty() && push_to_ring(state, &announced);
    if first_request || sweep_earlier {
        state.wake_worker();
    }
    freed
}

/// At abort: nothing happened.
pub fn at_abort() {
    drop(take_pending());
}

/// At subtransaction abort: its events never happened.
pub fn at_subtransaction_abort(level: i32) {
    PENDING.with(|pending| pending.borrow_mut().retain(|p| p.level < level));
}

/// At subtransaction commit: its events belong to the parent now.
pub fn at_subtransaction_commit(level: i32) {
    PENDING.with(|pending| {
        for p in pending.borrow_mut().iter_mut().filter(|p| p.level >= level) {
            p.level = level - 1;
        }
    });
}

fn take_pending() -> Vec<Pending> {
    PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()))
}

/// Whether committed events of this backend go through the shared ring.
fn ring_serves_this_database() -> bool {
    shared::get().and_then(shared::Shared::serving_my_database).is_some()
}

/// Appends the events to the ring; true if the worker had not been asked to publish yet.
fn push_to_ring(state: &shared::DatabaseState, events: &[Event]) -> bool {
    for event in events {
        state.push(|slot| fill_slot(slot, event));
    }
    // Pairs with the worker's fence between clearing the flag and reading the ring: either it
    // sees these events or we see the flag cleared and wake it.
    std::sync::atomic::fence(Ordering::SeqCst);
    !state.publish_requested.load(Ordering::Acquire) && !state.publish_requested.swap(true, Ordering::AcqRel)
}

/// Fills a ring slot. Cannot fail: a slot taken and never completed would hold up every later
/// event of the database.
fn fill_slot(slot: &mut EventSlot, event: &Event) {
    slot.kind = event.kind as u8;
    slot.reason = event.reason as u8;
    slot.token = event.token;
    slot.expires_at = event.expires_at.unwrap_or(i64::MIN);
    slot.at = event.at;
    slot.resource_len = copy_name(&mut slot.resource, &event.resource);
    slot.holder_len = copy_name(&mut slot.holder, &event.holder);
}

/// Copies as much of `name` as fits into `into`, cut at a character boundary, and returns the
/// length copied. Names the functions accept always fit; a row written into the table by hand
/// need not.
fn copy_name(into: &mut [u8], name: &str) -> u16 {
    let mut len = name.len().min(into.len());
    while !name.is_char_boundary(len) {
        len -= 1;
    }
    into[..len].copy_from_slice(&name.as_bytes()[..len]);
    len as u16
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

/// Whether `lease.notify_channel` is a name NOTIFY accepts (1 to 63 bytes); warns if not, so
/// that a bad setting loses events instead of failing every lease transaction.
pub fn notify_channel_is_valid() -> bool {
    let channel = settings::notify_channel();
    let valid = !channel.is_empty() && channel.len() < pg_sys::NAMEDATALEN as usize;
    if !valid {
        warning!("lease.notify_channel \"{channel}\" is not a valid channel name; lease events are not sent");
    }
    valid
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
    fn names_too_long_for_a_slot_are_cut_at_a_character_boundary() {
        let mut into = [0u8; 4];
        assert_eq!(copy_name(&mut into, "abc"), 3);
        assert_eq!(&into[..3], b"abc");
        assert_eq!(copy_name(&mut into, "abcdef"), 4);
        assert_eq!(&into, b"abcd");
        // "aé€": 1 + 2 + 3 bytes; 4 bytes would split the euro sign
        assert_eq!(copy_name(&mut into, "aé€"), 3);
        assert_eq!(std::str::from_utf8(&into[..3]).unwrap(), "aé");
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
