//! The per-resource barrier between fences, extensions and grants.
//!
//! Every row of `lease.leases` has one transaction-scoped advisory lock in PostgreSQL's lock
//! manager: the resource's lock for its exclusive lease (slot 0), and a slot lock for each
//! shared lease or permit (slots 1 and up). Each is taken in one of these modes:
//! - [`Mode::Change`] (`ExclusiveLock`): a grant, a takeover, a release, a revocation, the
//!   sweep's removal. Conflicts with every mode.
//! - [`Mode::Extend`] (`ShareUpdateExclusiveLock`): a renewal, or the holder's re-acquire of its
//!   live lease. Conflicts with changes and other extensions, not with fences: a fence keeps
//!   other holders out, it never keeps the lease from living longer.
//! - [`Mode::Fence`] (`RowExclusiveLock`): `lease_check`, `lease_assert`, the `lease_fence`
//!   trigger. Conflicts with changes (and on the resource's lock with joins), so fences never
//!   block each other or a renewal.
//! - [`Mode::Join`] (`ShareLock`, the resource's lock only): the grant of a shared lease or a
//!   permit, which must keep the exclusive lease's grants and fences out (and be kept out by
//!   them), but not other shared grants or permits, nor their fences, which lock their own
//!   slots. Shared leases and permits keep out each other through the resource's kind lock
//!   ([`lock_kind`]).
//!
//! The locks cost no row writes, are released at commit or abort (or with the savepoint that
//! took them), and a wait for one honours `lock_timeout`, `statement_timeout`, cancellation and
//! deadlock detection. In PostgreSQL's lock manager a queued request holds up every later
//! request that conflicts with it, so a queued change would make the holder's renewals wait for
//! a fence after all: only calls that will change the lease queue in change mode (a release or
//! a revocation of a lease that holds, by a caller allowed to make it); acquires never queue,
//! they try and, when they may wait, sleep on their latch. A fence that passed therefore keeps
//! every grant of that resource out until the fencing transaction ends.
//!
//! The lock key is a 64-bit hash of the resource name, in a lock space of its own
//! (`pg_locks.objsubid` = [`LOCK_SPACE`]) that never collides with the application's own
//! `pg_advisory_lock` keys. Two names with the same hash only share a queue: correctness never
//! depends on the hash being unique, because the lease row is always read after the lock.
//!
//! Uses [`crate::vocabulary`].

use pgrx::pg_sys;

use crate::vocabulary::my_database;

mod proofs;

pub use proofs::{at_subtransaction_abort, at_subtransaction_commit, at_transaction_end, prove, proven};

/// `locktag_field4` of lease locks; `pg_advisory_lock` uses 1 and 2.
pub const LOCK_SPACE: u16 = 0x4C45;

/// What a call is about to do to a resource, which decides what it must wait for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Change,
    Extend,
    Fence,
    Join,
}

impl Mode {
    fn lock_mode(self) -> pg_sys::LOCKMODE {
        (match self {
            Mode::Change => pg_sys::ExclusiveLock,
            Mode::Extend => pg_sys::ShareUpdateExclusiveLock,
            Mode::Fence => pg_sys::RowExclusiveLock,
            Mode::Join => pg_sys::ShareLock,
        }) as pg_sys::LOCKMODE
    }
}

/// `locktag_field4` of slot locks (a shared lease's or a permit's row): "LO" (not the session
/// locks' "LS").
const SLOT_SPACE: u16 = 0x4C4F;
/// `locktag_field4` of a resource's kind lock: shared leases against permits.
const KIND_SPACE: u16 = 0x4C4B;

/// Every lock space of this module; each must be distinct from the others and from the
/// session locks' (`crate::session`), or two kinds of lock would share keys.
#[cfg(test)]
pub const SPACES: [u16; 6] = [
    LOCK_SPACE,
    SLOT_SPACE,
    KIND_SPACE,
    LIFELINE_MEMBERS_SPACE,
    LIFELINE_RENEWAL_SPACE,
    TOKEN_RESERVATION_SPACE,
];

/// The lock of the row at `slot` of `resource`: the resource's own lock for slot 0 (its
/// exclusive lease), a slot lock of its own for the others.
fn slot_tag(resource: &str, slot: i32) -> pg_sys::LOCKTAG {
    match slot {
        0 => advisory_tag(LOCK_SPACE, resource_key(resource)),
        // Mixed so that the slots of one resource spread over the lock manager's partitions;
        // two rows sharing a key only share a queue.
        slot => advisory_tag(
            SLOT_SPACE,
            resource_key(resource) ^ (slot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ),
    }
}

/// As [`lock`], for the row at `slot` of `resource`.
pub fn lock_slot(resource: &str, slot: i32, mode: Mode) -> Taken {
    take(slot_tag(resource, slot), mode.lock_mode(), false).expect("a waiting lock is granted")
}

/// As [`try_lock`], for the row at `slot` of `resource`.
pub fn try_lock_slot(resource: &str, slot: i32, mode: Mode) -> Option<Taken> {
    take(slot_tag(resource, slot), mode.lock_mode(), true)
}

/// What kind of non-exclusive grant a call makes of a resource: shared leases and permits never
/// hold one resource at once, so their grants keep each other out through the resource's kind
/// lock.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// A shared lease's grant (`ShareLock`): other shared grants go on.
    Shared,
    /// A permit's grant (`RowExclusiveLock`): other permits' grants go on.
    Permit,
    /// A permit's grant that must count alone (`ExclusiveLock`): while the capacity is being
    /// declared, or permits above it are still live after it was lowered.
    PermitAlone,
}

impl Kind {
    fn lock_mode(self) -> pg_sys::LOCKMODE {
        (match self {
            Kind::Shared => pg_sys::ShareLock,
            Kind::Permit => pg_sys::RowExclusiveLock,
            Kind::PermitAlone => pg_sys::ExclusiveLock,
        }) as pg_sys::LOCKMODE
    }
}

fn kind_tag(resource: &str) -> pg_sys::LOCKTAG {
    advisory_tag(KIND_SPACE, resource_key(resource))
}

/// Tries the kind lock of `resource` for `kind`, until the end of the (sub)transaction.
pub fn try_lock_kind(resource: &str, kind: Kind) -> Option<Taken> {
    take(kind_tag(resource), kind.lock_mode(), true)
}

/// Takes the kind lock of `resource` exclusively, waiting: a change of its capacity waits for
/// the permit grants in progress.
pub fn lock_kind_alone(resource: &str) -> Taken {
    take(kind_tag(resource), Kind::PermitAlone.lock_mode(), false).expect("a waiting lock is granted")
}

/// The locks a call took on one row: the row's lock, and for a change of a shared lease's or a
/// permit's row (a release, a removal by the sweep: [`lock_row_change`]) first the resource's
/// lock in join mode and the kind lock in the row's kind's mode, as its grant takes them. Held
/// until the transaction ends, those two keep a grant that would find the row gone (an
/// exclusive grant; a grant of the other kind) waiting until this transaction's events are
/// recorded, so that per resource the events come in commit order.
pub struct RowLocks {
    row: Taken,
    membership: Option<[Taken; 2]>,
}

impl From<Taken> for RowLocks {
    fn from(row: Taken) -> RowLocks {
        RowLocks { row, membership: None }
    }
}

impl RowLocks {
    /// Gives back what this call took, if it changed nothing.
    pub fn release_if_unused_before(self) {
        self.row.release_if_unused_before();
        for taken in self.membership.into_iter().flatten() {
            taken.release_if_unused_before();
        }
    }
}

/// Takes the locks of a change of the row at `slot` of `resource` ([`RowLocks`]), waiting for
/// them; with `dont_wait`, None instead (nothing kept).
pub fn lock_row_change(resource: &str, slot: i32, kind: Option<Kind>, dont_wait: bool) -> Option<RowLocks> {
    let membership = match kind.filter(|_| slot != 0) {
        None => None,
        Some(kind) => {
            let join = acquire(resource, Mode::Join, dont_wait)?;
            let Some(kind) = take(kind_tag(resource), kind.lock_mode(), dont_wait) else {
                join.release_if_unused_before();
                return None;
            };
            Some([join, kind])
        }
    };
    match take(slot_tag(resource, slot), Mode::Change.lock_mode(), dont_wait) {
        Some(row) => Some(RowLocks { row, membership }),
        None => {
            for taken in membership.into_iter().flatten() {
                taken.release_if_unused_before();
            }
            None
        }
    }
}

/// Tries the lock under which a grant of a shared lease or a permit removes the resource's
/// ended exclusive lease (slot 0): those grants hold the resource's lock in compatible modes,
/// so they remove it one at a time under this one.
pub fn try_lock_removal(resource: &str) -> Option<Taken> {
    take(advisory_tag(SLOT_SPACE, resource_key(resource)), Mode::Change.lock_mode(), true)
}

/// A barrier lock this transaction took: it can be given back early when the call that took
/// it changed nothing (a refused acquire, a failed fence), unless the transaction held it
/// already.
pub struct Taken {
    tag: pg_sys::LOCKTAG,
    mode: pg_sys::LOCKMODE,
    first_time: bool,
}

impl Taken {
    /// Releases the lock now if this call was the one that took it.
    pub fn release_if_unused_before(self) {
        if self.first_time {
            // SAFETY: releases a transaction-level lock this backend holds.
            unsafe { pg_sys::LockRelease(&self.tag, self.mode, false) };
        }
    }

    /// Keeps the resource in the weaker `mode` instead, for the rest of the transaction: a call
    /// that took the change lock and only extended the lease must not keep fences out. Keeps
    /// the stronger lock if the weaker one cannot be had at once (a request that conflicts with
    /// it is queued), which keeps out more than needed but never less.
    pub fn downgrade(self, mode: Mode) {
        // SAFETY: a try-lock on the same fully initialised tag; released at transaction end.
        let result = unsafe { pg_sys::LockAcquire(&self.tag, mode.lock_mode(), false, true) };
        if result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL {
            self.release_if_unused_before();
        }
    }
}

/// Blocks until no conflicting lock of another transaction is held on `resource`, then keeps
/// the conflicting ones out until this transaction ends.
pub fn lock(resource: &str, mode: Mode) -> Taken {
    acquire(resource, mode, false).expect("a waiting lock is granted")
}

/// `locktag_field4` of a lifeline's membership lock: attaches against its end.
const LIFELINE_MEMBERS_SPACE: u16 = 0x4C4C;
/// `locktag_field4` of a lifeline's renewal lock: renewals against acting on its lapse.
const LIFELINE_RENEWAL_SPACE: u16 = 0x4C52;

/// What a call is about to do to a lifeline (see `crate::lifeline`). Each lifeline has two
/// locks, so that a lapse is acted on without waiting for attaches, and an end without waiting
/// for renewals.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LifelineMode {
    /// Attaching a lease: the membership lock, shared (`RowShareLock`).
    Attach,
    /// Closing it, or removing its leases once it lapsed: the membership lock, exclusive
    /// (`ExclusiveLock`), so that no lease is attached meanwhile.
    End,
    /// Renewing it: the renewal lock, shared.
    Renew,
    /// Acting on its lapse (taking over or removing its leases): the renewal lock, exclusive,
    /// so that no renewal that found it live is in progress.
    Lapse,
}

/// Takes a lock of the lifeline `id` for `mode` until the end of the (sub)transaction, waiting
/// for conflicting ones; with `dont_wait`, None instead of waiting.
pub fn lock_lifeline(id: i64, mode: LifelineMode, dont_wait: bool) -> Option<Taken> {
    let (space, lock) = match mode {
        LifelineMode::Attach => (LIFELINE_MEMBERS_SPACE, pg_sys::RowShareLock),
        LifelineMode::End => (LIFELINE_MEMBERS_SPACE, pg_sys::ExclusiveLock),
        LifelineMode::Renew => (LIFELINE_RENEWAL_SPACE, pg_sys::RowShareLock),
        LifelineMode::Lapse => (LIFELINE_RENEWAL_SPACE, pg_sys::ExclusiveLock),
    };
    take(advisory_tag(space, id as u64), lock as pg_sys::LOCKMODE, dont_wait)
}

/// `locktag_field4` of the lock that lets one backend at a time reserve token numbers.
const TOKEN_RESERVATION_SPACE: u16 = 0x4C54;

/// Takes, until the end of the (sub)transaction, the lock under which a backend reserves a
/// block of token numbers of `sequence` (see `store::tokens`); waits for another backend's
/// reservation.
pub fn lock_token_reservation(sequence: pg_sys::Oid) {
    let tag = advisory_tag(TOKEN_RESERVATION_SPACE, u64::from(sequence.to_u32()) << 32);
    // SAFETY: a fully initialised advisory tag; a transaction-scoped lock, released with the
    // subtransaction that takes it.
    unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false, false) };
}

/// As [`lock`], but gives up at once (returning None) if it would have to wait.
pub fn try_lock(resource: &str, mode: Mode) -> Option<Taken> {
    acquire(resource, mode, true)
}

fn acquire(resource: &str, mode: Mode, dont_wait: bool) -> Option<Taken> {
    take(slot_tag(resource, 0), mode.lock_mode(), dont_wait)
}

fn take(tag: pg_sys::LOCKTAG, mode: pg_sys::LOCKMODE, dont_wait: bool) -> Option<Taken> {
    // SAFETY: the tag is a fully initialised advisory tag; a transaction-scoped lock is released
    // by the lock manager at transaction end, and errors (cancel, deadlock, timeouts) are raised
    // through the guarded FFI boundary.
    let result = unsafe { pg_sys::LockAcquire(&tag, mode, false, dont_wait) };
    match result {
        pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL => None,
        result => Some(Taken { tag, mode, first_time: result == pg_sys::LockAcquireResult::LOCKACQUIRE_OK }),
    }
}

/// An advisory lock tag of this database in one of the extension's lock spaces
/// (`pg_locks.objsubid` = `space`), keyed by 64 bits: the one way every lock of the extension
/// (barrier, token reservation, session binding) is named.
pub fn advisory_tag(space: u16, key: u64) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        locktag_field1: my_database().to_u32(),
        locktag_field2: (key >> 32) as u32,
        locktag_field3: key as u32,
        locktag_field4: space,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

mod sql {
    use pgrx::prelude::*;

    /// `lease._resource_key(resource)`: the 64-bit lock key of a resource name; `lease.active`
    /// joins the waiter counts on it.
    #[pg_extern(sql = false)]
    fn resource_key(resource: &str) -> i64 {
        super::resource_key(resource) as i64
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

#[cfg(test)]
mod tests {
    use super::resource_key;

    #[test]
    fn resource_keys_differ_for_similar_names() {
        assert_eq!(resource_key("job:1"), resource_key("job:1"));
        assert_ne!(resource_key("job:1"), resource_key("job:2"));
        assert_ne!(resource_key(""), resource_key("\0"));
    }
}
