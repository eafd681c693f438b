//! The `lease.*` configuration settings.
//!
//! Durations are kept in the units PostgreSQL shows for them (`lease.default_ttl` in
//! milliseconds so that short test leases are possible, `lease.max_ttl` in seconds so that the
//! limit can reach years), and read through the accessors below as microseconds, the unit of
//! `timestamptz` arithmetic.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `lease.default_ttl`: the ttl of an acquire or renew called with a NULL ttl.
pub static DEFAULT_TTL_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);

/// `lease.max_ttl`: the longest ttl a caller may ask for.
pub static MAX_TTL_S: GucSetting<i32> = GucSetting::<i32>::new(86_400);

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
