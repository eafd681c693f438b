//! The JSON payload of an event, as `NOTIFY` sends it:
//! `{"seq":N,"event":"expired","reason":"ttl","resource":"...","holder":"...","token":N,
//!   "mode":"permit","capacity":N,"expires_at":"2026-01-02T03:04:05.123456Z","at":"...",
//!   "lifeline":N,"data":{...}}`. `seq` is present when the event went through the ring; `reason`
//! only on `expired`; `mode` for a shared lease or a permit (never for an exclusive lease), and
//! `capacity` for a permit; `expires_at` where it applies; `lifeline` for a lease attached to
//! one; `data` when the lease has data and
//! `lease.notify_data` is on. Times are UTC with microseconds, dated by PostgreSQL's own
//! calendar. The longest payload (names of the longest, every byte escaped, the longest data)
//! stays under NOTIFY's 8000-byte limit.
//!
//! Uses [`super::Event`]; serde_json writes the JSON.

use std::io::{self, Write};

use pgrx::pg_sys;
use serde::{Serialize, Serializer};
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};

use super::{Event, Kind, Reason};
use crate::store::LeaseMode;
use crate::vocabulary::Timestamp;

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    event: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Reason>,
    resource: &'a str,
    holder: &'a str,
    token: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "iso8601_or_none")]
    expires_at: Option<Timestamp>,
    #[serde(serialize_with = "iso8601")]
    at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    lifeline: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::value::RawValue>,
}

/// The payload of `event`, with its sequence number if it went through the ring.
pub fn payload(event: &Event, seq: Option<u64>) -> String {
    let payload = Payload {
        seq,
        event: event.kind,
        reason: event.reason,
        resource: &event.resource,
        holder: &event.holder,
        token: event.token,
        // An exclusive lease's payload is as it always was.
        mode: (event.mode != LeaseMode::Exclusive).then(|| event.mode.name()),
        capacity: event.capacity.filter(|_| event.mode == LeaseMode::Permit),
        expires_at: event.expires_at,
        at: event.at,
        lifeline: event.lifeline,
        // Data is JSON already (the compact text of a jsonb value); anything else is left out.
        data: event.data.as_deref().and_then(|data| serde_json::from_str(data).ok()),
    };
    let data_len = event.data.as_ref().map_or(0, String::len);
    let mut json = Vec::with_capacity(160 + event.resource.len() + event.holder.len() + data_len);
    let mut serializer = serde_json::Serializer::with_formatter(&mut json, Escapes);
    payload.serialize(&mut serializer).expect("a payload of strings and numbers serialises");
    String::from_utf8(json).expect("JSON of UTF-8 strings is UTF-8")
}

/// serde_json's compact JSON, escaping as the payload always has: every control character and
/// DEL as `\u00xx` (serde_json itself writes `\b` and `\f`, and DEL as it is), so that the bytes
/// a listener receives are those documented.
struct Escapes;

impl Formatter for Escapes {
    fn write_char_escape<W: ?Sized + Write>(&mut self, writer: &mut W, escape: CharEscape) -> io::Result<()> {
        match escape {
            CharEscape::Backspace => writer.write_all(b"\\u0008"),
            CharEscape::FormFeed => writer.write_all(b"\\u000c"),
            escape => CompactFormatter.write_char_escape(writer, escape),
        }
    }

    fn write_string_fragment<W: ?Sized + Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        for (index, part) in fragment.split('\u{7f}').enumerate() {
            if index > 0 {
                writer.write_all(b"\\u007f")?;
            }
            writer.write_all(part.as_bytes())?;
        }
        Ok(())
    }
}

fn iso8601<S: Serializer>(timestamp: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_timestamp(*timestamp))
}

fn iso8601_or_none<S: Serializer>(timestamp: &Option<Timestamp>, serializer: S) -> Result<S::Ok, S::Error> {
    match timestamp {
        Some(timestamp) => iso8601(timestamp, serializer),
        None => serializer.serialize_none(),
    }
}

/// A `timestamptz` as ISO 8601 in UTC with microseconds, e.g. `2026-01-02T03:04:05.000006Z`;
/// `infinity` or `-infinity` for the values PostgreSQL prints so, and for dates it cannot
/// place.
pub fn format_timestamp(timestamp: Timestamp) -> String {
    // SAFETY: pg_tm is plain integers; timestamp2tm only computes (with no time zone asked
    // for, it reads no time zone data) and reports a value out of range with -1.
    let (ok, tm, microseconds) = unsafe {
        let mut tm: pg_sys::pg_tm = std::mem::zeroed();
        let mut microseconds: pg_sys::fsec_t = 0;
        let ok = pg_sys::timestamp2tm(
            timestamp,
            std::ptr::null_mut(),
            &mut tm,
            &mut microseconds,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        ) == 0;
        (ok, tm, microseconds)
    };
    if !ok || timestamp == i64::MIN || timestamp == i64::MAX {
        return if timestamp < 0 { "-infinity" } else { "infinity" }.into();
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{microseconds:06}Z",
        tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use super::*;

    #[pg_test]
    fn timestamps_are_formatted_as_postgres_formats_them() {
        for text in [
            "2000-01-01 00:00:00+00",
            "2026-11-26 04:05:06.000007+00",
            "1999-12-31 23:59:59.999999+00",
            "1969-07-20 20:17:40.5+00",
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
            assert_eq!(format_timestamp(micros), expected);
        }
        assert_eq!(format_timestamp(i64::MAX), "infinity");
        assert_eq!(format_timestamp(i64::MIN), "-infinity");
    }

    #[pg_test]
    fn payload_escapes_strange_names() {
        let event = Event {
            kind: Kind::Expired,
            reason: Some(Reason::Ttl),
            resource: "a\"b\\c\nd\u{1}é€".into(),
            holder: "h".into(),
            token: 7,
            expires_at: Some(0),
            at: 1,
            lifeline: None,
            data: None,
            mode: LeaseMode::Exclusive,
            capacity: None,
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

    #[pg_test]
    fn payload_escapes_every_control_character_and_del_as_u00xx() {
        let event = Event {
            kind: Kind::Acquired,
            reason: None,
            resource: "a\u{8}b\u{c}c\u{7f}d\u{1f}\t".into(),
            holder: "h\u{7f}".into(),
            token: 1,
            expires_at: Some(0),
            at: 0,
            lifeline: None,
            data: None,
            mode: LeaseMode::Exclusive,
            capacity: None,
        };
        assert_eq!(
            payload(&event, None),
            "{\"event\":\"acquired\",\"resource\":\"a\\u0008b\\u000cc\\u007fd\\u001f\\t\",\"holder\":\"h\\u007f\",\
             \"token\":1,\"expires_at\":\"2000-01-01T00:00:00.000000Z\",\"at\":\"2000-01-01T00:00:00.000000Z\"}"
        );
    }

    #[pg_test]
    fn payload_leaves_out_what_does_not_apply() {
        let event = Event {
            kind: Kind::Released,
            reason: None,
            resource: "r".into(),
            holder: "h".into(),
            token: 1,
            expires_at: None,
            at: 0,
            lifeline: None,
            data: None,
            mode: LeaseMode::Exclusive,
            capacity: None,
        };
        assert_eq!(
            payload(&event, None),
            "{\"event\":\"released\",\"resource\":\"r\",\"holder\":\"h\",\"token\":1,\"at\":\"2000-01-01T00:00:00.000000Z\"}"
        );
    }

    #[pg_test]
    fn payload_carries_lifeline_and_data_and_stays_under_the_notify_limit() {
        let data = format!("{{\"k\":\"{}\"}}", "\\b".repeat((crate::vocabulary::MAX_DATA_BYTES - 8) / 2));
        assert!(data.len() <= crate::vocabulary::MAX_DATA_BYTES);
        let event = Event {
            kind: Kind::Expired,
            reason: Some(Reason::LifelineExpired),
            resource: "\u{1}".repeat(crate::vocabulary::MAX_RESOURCE_BYTES),
            holder: "\u{1}".repeat(crate::vocabulary::MAX_HOLDER_BYTES),
            token: i64::MAX,
            expires_at: Some(0),
            at: 0,
            lifeline: Some(i64::MAX),
            data: Some(data.clone()),
            mode: LeaseMode::Permit,
            capacity: Some(i32::MAX),
        };
        let text = payload(&event, Some(u64::MAX));
        assert!(text.len() < 8000, "{} bytes", text.len());
        assert!(text.contains(&format!("\"lifeline\":{},\"data\":{data}}}", i64::MAX)), "{text}");
        assert!(text.contains(&format!("\"mode\":\"permit\",\"capacity\":{},", i32::MAX)), "{text}");
        let lifeline: i64 = Spi::get_one(&format!(
            "SELECT ({}::jsonb ->> 'lifeline')::bigint",
            pgrx::spi::quote_literal(&text)
        ))
        .unwrap()
        .unwrap();
        assert_eq!(lifeline, i64::MAX);
    }
}
