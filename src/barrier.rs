//! The per-resource barrier between fences and grants.
//!
//! Every call that changes a lease first takes the resource's lock in exclusive mode; every fence
//! (`lease_check`, `lease_assert`) takes it in share mode. Both are transaction-scoped advisory
//! locks in PostgreSQL's lock manager, so they cost no row writes, are released at commit or
//! abort, and waiting for one honours `lock_timeout`, `statement_timeout`, cancellation and
//! deadlock detection. A fence that passed therefore keeps every grant of that resource out
//! until the fencing transaction ends.
//!
//! The lock key is a 64-bit hash of the resource name, in a lock space of its own
//! (`pg_locks.objsubid` = [`LOCK_SPACE`]) that never collides with the application's own
//! `pg_advisory_lock` keys. Two names with the same hash only share a queue: correctness never
//! depends on the hash being unique, because the lease row is always read after the lock.

use pgrx::pg_sys;

/// `locktag_field4` of lease locks; `pg_advisory_lock` uses 1 and 2.
pub const LOCK_SPACE: u16 = 0x4C45;

/// A barrier lock this transaction took: it can be given back early when the call that took
/// it changed nothing (a refused acquire, a failed fence), unless the transaction held it
/// already.
pub struct Held {
    tag: pg_sys::LOCKTAG,
    mode: pg_sys::LOCKMODE,
    first_time: bool,
}

impl Held {
    /// Releases the lock now if this call was the one that took it.
    pub fn release_if_unused_before(self) {
        if self.first_time {
            // SAFETY: releases a transaction-level lock this backend holds.
            unsafe { pg_sys::LockRelease(&self.tag, self.mode, false) };
        }
    }
}

/// Blocks until no fence and no other change of `resource` is in progress, then keeps them out
/// until this transaction ends.
pub fn lock_for_change(resource: &str) -> Held {
    acquire(resource, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false).expect("a waiting lock is granted")
}

/// Blocks while a change of `resource` is in progress, then keeps changes out until this
/// transaction ends. Fences do not block each other.
pub fn lock_for_fence(resource: &str) -> Held {
    acquire(resource, pg_sys::ShareLock as pg_sys::LOCKMODE, false).expect("a waiting lock is granted")
}

/// As [`lock_for_change`], but gives up at once (returning None) if it would have to wait.
pub fn try_lock_for_change(resource: &str) -> Option<Held> {
    acquire(resource, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, true)
}

fn acquire(resource: &str, mode: pg_sys::LOCKMODE, dont_wait: bool) -> Option<Held> {
    let key = resource_key(resource);
    let tag = pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set once at backend start and only read afterwards.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: (key >> 32) as u32,
        locktag_field3: key as u32,
        locktag_field4: LOCK_SPACE,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    // SAFETY: the tag is a fully initialised advisory tag; a transaction-scoped lock is released
    // by the lock manager at transaction end, and errors (cancel, deadlock, timeouts) are raised
    // through the guarded FFI boundary.
    let result = unsafe { pg_sys::LockAcquire(&tag, mode, false, dont_wait) };
    match result {
        pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL => None,
        result => Some(Held { tag, mode, first_time: result == pg_sys::LockAcquireResult::LOCKACQUIRE_OK }),
    }
}

/// FNV-1a over the name's bytes, then a 64-bit finaliser so that similar names spread across
/// the lock manager's partitions.
pub fn resource_key(resource: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in resource.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}
