//! The `lease.*` configuration settings.
//!
//! Durations are kept in the units PostgreSQL shows for them (`lease.default_ttl` in
//! milliseconds so that short test leases are possible, `lease.max_ttl` in seconds so that the
//! limit can reach years), and read through the accessors below as microseconds, the unit of
//! `timestamptz` arithmetic.
//!
//! Uses nothing of the crate.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `lease.default_ttl`: the ttl of an acquire or renew called with a NULL ttl.
pub static DEFAULT_TTL_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);

/// `lease.max_ttl`: the longest ttl a caller may ask for.
pub static MAX_TTL_S: GucSetting<i32> = GucSetting::<i32>::new(86_400);

/// `lease.notify`: announce lease changes at all.
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `lease.notify_renewals`: also announce renewals (frequent, so off by default).
pub static NOTIFY_RENEWALS: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `lease.notify_channel`: the NOTIFY channel of lease events.
pub static NOTIFY_CHANNEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"lease_events"));

/// `lease.notify_queue_limit`: the percentage of PostgreSQL's NOTIFY queue in use above which
/// lease events are held back (by the worker) or dropped and counted (without a worker).
pub static NOTIFY_QUEUE_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(50);

/// `lease.database`: if set, the only database that gets an expiry worker.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `lease.max_databases`: how many databases can have an expiry worker at once.
pub static MAX_DATABASES: GucSetting<i32> = GucSetting::<i32>::new(8);

/// `lease.notify_data`: whether events carry the lease's data.
pub static NOTIFY_DATA: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `lease.max_naptime`: the longest the worker sleeps when no lease is due.
pub static MAX_NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1_000);

/// `lease.expire_batch`: leases removed per sweep transaction.
pub static EXPIRE_BATCH: GucSetting<i32> = GucSetting::<i32>::new(100);

pub fn register() {
    GucRegistry::define_int_guc(
        c"lease.default_ttl",
        c"Lease duration used when a call passes a NULL ttl.",
        c"Any user may change it for a session or transaction. It may not exceed lease.max_ttl.",
        &DEFAULT_TTL_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"lease.max_ttl",
        c"Longest lease duration a call may ask for.",
        c"Only superusers may change it. Calls with a longer ttl are rejected.",
        &MAX_TTL_S,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"lease.notify",
        c"Announces lease changes with NOTIFY.",
        c"When off, no lease event is recorded or sent.",
        &NOTIFY,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    GucRegistry::define_bool_guc(
        c"lease.notify_renewals",
        c"Also announces renewals (event renewed).",
        c"Renewals are frequent; they are not announced unless this is on.",
        &NOTIFY_RENEWALS,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    GucRegistry::define_bool_guc(
        c"lease.notify_data",
        c"Also puts a lease's data (at most 512 bytes of JSON) in its events.",
        c"Off by default: data may be more than every listener should see.",
        &NOTIFY_DATA,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    GucRegistry::define_string_guc(
        c"lease.notify_channel",
        c"NOTIFY channel on which lease events are sent.",
        c"Clients LISTEN on this channel; it must be a valid channel name (1 to 63 bytes).",
        &NOTIFY_CHANNEL,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    GucRegistry::define_int_guc(
        c"lease.notify_queue_limit",
        c"Percentage of the NOTIFY queue in use above which lease events are held back or dropped.",
        c"A listener that stops reading fills PostgreSQL's NOTIFY queue, and a full queue makes every committing transaction that notifies fail. Above this level the expiry worker keeps events in its ring (dropping, and counting, what does not fit) and a transaction without a worker drops its events and counts them in lease.stats, so lease changes never fail at commit.",
        &NOTIFY_QUEUE_LIMIT,
        0,
        90,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    // A restart-only setting can only be defined while the server starts; it matters only to
    // the worker, which exists only when the library is preloaded.
    // SAFETY: a flag the postmaster sets while it loads shared_preload_libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_string_guc(
            c"lease.database",
            c"If set, the only database that gets an expiry worker.",
            c"Empty (the default): every database where the extension is created gets one. Changing it takes a server restart.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::empty(),
        );
        GucRegistry::define_int_guc(
            c"lease.max_databases",
            c"Most databases that can have an expiry worker at once.",
            c"Each takes a background worker process (see max_worker_processes) and about 5.4 MB of shared memory for its event ring. Changing it takes a server restart.",
            &MAX_DATABASES,
            1,
            1_000,
            GucContext::Postmaster,
            GucFlags::empty(),
        );
    }
    GucRegistry::define_int_guc(
        c"lease.max_naptime",
        c"Longest time the expiry worker sleeps when no lease is due earlier.",
        c"The worker wakes at the earliest expiry, when woken by a backend, or after this long.",
        &MAX_NAPTIME_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"lease.expire_batch",
        c"Most expired leases removed in one sweep transaction.",
        c"Each removed lease holds its resource's lock until the batch commits.",
        &EXPIRE_BATCH,
        1,
        10_000,
        GucContext::Sighup,
        GucFlags::empty(),
    );
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix; reserving the prefix
    // turns later misspelled `lease.*` settings into errors instead of silent placeholders.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"lease".as_ptr()) };
}

pub fn default_ttl_usecs() -> i64 {
    i64::from(DEFAULT_TTL_MS.get()) * 1_000
}

pub fn max_ttl_usecs() -> i64 {
    i64::from(MAX_TTL_S.get()) * 1_000_000
}

pub fn notify_enabled() -> bool {
    NOTIFY.get()
}

pub fn notify_renewals() -> bool {
    NOTIFY_RENEWALS.get()
}

pub fn notify_data() -> bool {
    NOTIFY_DATA.get()
}

/// Whether PostgreSQL's NOTIFY queue is fuller than `lease.notify_queue_limit` allows.
pub fn notify_queue_too_full() -> bool {
    // SAFETY: pg_notification_queue_usage takes no argument and reads the queue's head and tail
    // under its own lock.
    let usage = unsafe { pgrx::direct_function_call::<f64>(pgrx::pg_sys::pg_notification_queue_usage, &[]) };
    usage.unwrap_or(0.0) * 100.0 >= f64::from(NOTIFY_QUEUE_LIMIT.get())
}

pub fn notify_channel() -> String {
    NOTIFY_CHANNEL.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The only database to serve, if `lease.database` is set.
pub fn database() -> Option<String> {
    DATABASE.get().map(|c| c.to_string_lossy().into_owned()).filter(|name| !name.is_empty())
}

pub fn max_databases() -> usize {
    MAX_DATABASES.get().max(1) as usize
}

pub fn max_naptime_ms() -> i64 {
    i64::from(MAX_NAPTIME_MS.get())
}

pub fn expire_batch() -> i64 {
    i64::from(EXPIRE_BATCH.get())
}
