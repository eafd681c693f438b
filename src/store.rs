//! The lease store: every statement that reads or writes `lease.leases`, and the token sequence.
//!
//! Words used here:
//! - *resource*: the name of the thing leased, the table's primary key.
//! - *holder*: the name the application gives itself when it acquires.
//! - *owner*: the role that acquired the lease (the caller's `current_user`).
//! - *token*: the fencing token of one grant, from `lease.token_seq`.
//! - *expiry*: `expires_at`; a lease is held while the server clock is before it.
//!
//! Each statement is prepared once per backend and kept (`SPI_keepplan`); PostgreSQL's plan
//! cache replans it if the table is recreated or its statistics change. Plans are made with
//! sequential and bitmap scans disabled: a generic plan made while the table happened to be
//! empty (right after an ANALYZE of an empty table) would otherwise scan the whole table on
//! every call for the rest of the backend's life, however large the table grows. Statements
//! name every object and operator with its schema, so the caller's `search_path` cannot change
//! what they do. They run as the owner of `lease.leases` (ordinary roles have no rights on it),
//! inside a [`Store`] that switches the user and restores it when dropped.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::ptr::NonNull;

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;

use crate::direct;

/// Microseconds since 2000-01-01 UTC, PostgreSQL's `timestamptz` representation.
pub type Timestamp = i64;

/// Bits of a token that come from the token sequence; the timeline is above them.
pub const TOKEN_SEQUENCE_BITS: u32 = 48;
/// The token sequence's MAXVALUE.
const MAX_TOKEN_NUMBER: i64 = (1 << TOKEN_SEQUENCE_BITS) - 1;
/// Token numbers reserved in the sequence at a time (see [`Store::next_token`]).
const TOKEN_BLOCK: i64 = 10_000;

/// A lease as stored, the fields a decision needs.
pub struct LeaseRow {
    pub holder: String,
    pub token: i64,
    pub owner: Oid,
    pub expires_at: Timestamp,
    /// Bound to its holder's session (see [`crate::session`]).
    pub session_bound: bool,
}

/// The session a session-bound lease is bound to, as shown to administrators.
#[derive(Clone, Copy)]
pub struct Binding<'a> {
    pub pid: i32,
    pub application_name: &'a str,
}

/// A live lease as `lease_info` shows it.
pub struct LeaseInfo {
    pub holder: String,
    pub token: i64,
    pub owner: Oid,
    pub owner_name: String,
    pub acquired_at: pgrx::datum::TimestampWithTimeZone,
    pub renewed_at: pgrx::datum::TimestampWithTimeZone,
    pub expires_at: pgrx::datum::TimestampWithTimeZone,
    pub session_pid: Option<i32>,
    pub application_name: Option<String>,
}

/// Who held a lease that a call just changed or ended.
pub struct Holder {
    pub owner: Oid,
    pub holder: String,
}

/// The statements, in the order of [`PLAN_SOURCES`].
#[derive(Clone, Copy)]
enum Statement {
    Insert,
    Current,
    TakeOver,
    Extend,
    Delete,
    Holds,
    ExpiredCandidates,
    DeleteExpired,
    NextExpiry,
    SessionBound,
    DeleteGrant,
    SessionTokensAlive,
    HeldByOthers,
    Bind,
    Info,
}

const TEXT: Oid = pg_sys::TEXTOID;
const INT8: Oid = pg_sys::INT8OID;
const ROLE: Oid = pg_sys::REGROLEOID;
const TSTZ: Oid = pg_sys::TIMESTAMPTZOID;

const INT4: Oid = pg_sys::INT4OID;
const INT8_ARRAY: Oid = pg_sys::INT8ARRAYOID;
const TEXT_ARRAY: Oid = pg_sys::TEXTARRAYOID;

/// SQL text and parameter types of each [`Statement`].
const PLAN_SOURCES: [(&CStr, &[Oid]); 15] = [
    (
        c"INSERT INTO lease.leases (resource, holder, token, owner, acquired_at, renewed_at, expires_at,
                                   session_pid, application_name)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (resource) DO NOTHING",
        &[TEXT, TEXT, INT8, ROLE, TSTZ, TSTZ, TSTZ, INT4, TEXT],
    ),
    (
        c"SELECT holder, token, owner, expires_at, session_pid IS NOT NULL FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) $1",
        &[TEXT],
    ),
    (
        c"UPDATE lease.leases
          SET holder = $3, token = $4, owner = $5, acquired_at = $6, renewed_at = $6, expires_at = $7,
              session_pid = $8, application_name = $9
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2",
        &[TEXT, INT8, TEXT, INT8, ROLE, TSTZ, TSTZ, INT4, TEXT],
    ),
    (
        c"UPDATE lease.leases SET renewed_at = $3, expires_at = $4
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
            AND expires_at OPERATOR(pg_catalog.>) $3
          RETURNING owner, holder",
        &[TEXT, INT8, TSTZ, TSTZ],
    ),
    (
        c"DELETE FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
            AND expires_at OPERATOR(pg_catalog.>) $3
          RETURNING owner, holder",
        &[TEXT, INT8, TSTZ],
    ),
    (
        c"SELECT owner FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
            AND expires_at OPERATOR(pg_catalog.>) $3",
        &[TEXT, INT8, TSTZ],
    ),
    (
        c"SELECT resource, token FROM lease.leases
          WHERE expires_at OPERATOR(pg_catalog.<=) $1 ORDER BY expires_at LIMIT $2",
        &[TSTZ, INT8],
    ),
    (
        c"DELETE FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
            AND expires_at OPERATOR(pg_catalog.<=) $3
          RETURNING holder, expires_at",
        &[TEXT, INT8, TSTZ],
    ),
    (c"SELECT pg_catalog.min(expires_at) FROM lease.leases", &[]),
    (c"SELECT resource, token FROM lease.leases WHERE session_pid IS NOT NULL", &[]),
    (
        c"DELETE FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2
          RETURNING holder, expires_at",
        &[TEXT, INT8],
    ),
    (
        c"SELECT token FROM lease.leases
          WHERE token OPERATOR(pg_catalog.=) ANY ($1) AND session_pid IS NOT NULL",
        &[INT8_ARRAY],
    ),
    (
        c"SELECT resource FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) ANY ($1) AND expires_at OPERATOR(pg_catalog.>) $2
            AND session_pid IS NULL
            AND NOT (holder OPERATOR(pg_catalog.=) $3 AND owner OPERATOR(pg_catalog.=) $4)",
        &[TEXT_ARRAY, TSTZ, TEXT, ROLE],
    ),
    (
        c"UPDATE lease.leases SET session_pid = $3, application_name = $4
          WHERE resource OPERATOR(pg_catalog.=) $1 AND token OPERATOR(pg_catalog.=) $2",
        &[TEXT, INT8, INT4, TEXT],
    ),
    (
        c"SELECT holder, token, owner, owner::pg_catalog.text, acquired_at, renewed_at, expires_at, session_pid,
                 application_name
          FROM lease.leases
          WHERE resource OPERATOR(pg_catalog.=) $1 AND expires_at OPERATOR(pg_catalog.>) $2",
        &[TEXT, TSTZ],
    ),
];

thread_local! {
    /// This backend's kept plans, prepared on first use.
    static PLANS: Cell<Option<[NonNull<pg_sys::_SPI_plan>; 15]>> = const { Cell::new(None) };
    /// The lease table's and the token sequence's OIDs and the table's owner, looked up on
    /// first use and forgotten whenever the relation cache says either may have changed.
    static CATALOG: Cell<Option<Catalog>> = const { Cell::new(None) };
}

#[derive(Clone, Copy)]
struct Catalog {
    table: Oid,
    token_sequence: Oid,
    table_owner: Oid,
    primary_key: Oid,
}

impl Catalog {
    fn get() -> Catalog {
        if let Some(catalog) = CATALOG.with(Cell::get) {
            return catalog;
        }
        // SAFETY: catalog lookups; a missing schema raises an error (the functions exist only
        // while the extension does). The relcache callback is registered once per backend.
        let catalog = unsafe {
            static REGISTERED: std::sync::Once = std::sync::Once::new();
            REGISTERED
                .call_once(|| pg_sys::CacheRegisterRelcacheCallback(Some(forget_catalog), Datum::from(0)));
            let namespace = pg_sys::get_namespace_oid(c"lease".as_ptr(), false);
            let table = pg_sys::get_relname_relid(c"leases".as_ptr(), namespace);
            let token_sequence = pg_sys::get_relname_relid(c"token_seq".as_ptr(), namespace);
            if table == Oid::INVALID || token_sequence == Oid::INVALID {
                error!("the lease extension's objects are missing; recreate the extension");
            }
            let relation = pg_sys::RelationIdGetRelation(table);
            let table_owner = (*(*relation).rd_rel).relowner;
            let primary_key = pg_sys::RelationGetPrimaryKeyIndex(relation);
            pg_sys::RelationClose(relation);
            Catalog { table, token_sequence, table_owner, primary_key }
        };
        CATALOG.with(|cell| cell.set(Some(catalog)));
        catalog
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_catalog(_argument: Datum, relation: Oid) {
    CATALOG.with(|cell| {
        let stale = cell.get().is_some_and(|catalog| {
            relation == Oid::INVALID || relation == catalog.table || relation == catalog.token_sequence
        });
        if stale {
            cell.set(None);
        }
    });
}

/// The OID of `lease.leases` (looked up once per backend, forgotten on relation invalidation).
pub fn lease_table() -> Oid {
    Catalog::get().table
}

/// The server clock now (`clock_timestamp()`), the one clock every lease decision uses.
pub fn clock_now() -> Timestamp {
    // SAFETY: GetCurrentTimestamp only reads the system clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// An open SPI connection running as the owner of `lease.leases`.
pub struct Store {
    caller: Oid,
    saved_security_context: i32,
    catalog: Catalog,
    /// Whether this call reads and writes the table directly ([`crate::direct`]).
    direct: bool,
    /// See [`Store::transaction_snapshot`].
    transaction_snapshot: bool,
    /// Connected to SPI (on the first statement that needs it).
    spi_connected: Cell<bool>,
    saved_scan_settings: Cell<Option<(bool, bool)>>,
    /// The direct lookup and insert of this store, opened on first use and kept for the
    /// store's life: a call that grants many leases opens the table and its indexes once.
    lookup: RefCell<Option<direct::Lookup>>,
    inserter: RefCell<Option<direct::Inserter>>,
}

impl Store {
    /// Switches to the table owner; dropping the store switches back (and disconnects from
    /// SPI if a statement connected).
    pub fn open() -> Store {
        let mut caller = Oid::INVALID;
        let mut saved_security_context = 0;
        let catalog = Catalog::get();
        // SAFETY: user-id bookkeeping. The user id is restored in Drop, and by PostgreSQL
        // itself if the transaction aborts first.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut caller, &mut saved_security_context);
            pg_sys::SetUserIdAndSecContext(
                catalog.table_owner,
                saved_security_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
            );
        }
        Store {
            caller,
            saved_security_context,
            catalog,
            // SAFETY: the lease table, opened (and its layout checked) under the reader's lock.
            direct: direct::read_committed()
                && unsafe {
                    direct::Layout::check(catalog.table, pg_sys::AccessShareLock as pg_sys::LOCKMODE)
                },
            transaction_snapshot: !direct::read_committed(),
            spi_connected: Cell::new(false),
            saved_scan_settings: Cell::new(None),
            lookup: RefCell::new(None),
            inserter: RefCell::new(None),
        }
    }

    /// Connects to SPI with sequential and bitmap scans off (see the module's header), once.
    fn connect(&self) {
        if self.spi_connected.replace(true) {
            return;
        }
        // SAFETY: planner settings are plain backend-local globals, restored in Drop; the SPI
        // connection is closed in Drop (or by transaction abort).
        unsafe {
            self.saved_scan_settings.set(Some((pg_sys::enable_seqscan, pg_sys::enable_bitmapscan)));
            pg_sys::enable_seqscan = false;
            pg_sys::enable_bitmapscan = false;
            pg_sys::SPI_connect();
        }
    }

    /// The role that called the lease function.
    pub fn caller(&self) -> Oid {
        self.caller
    }

    /// The next fencing token: larger than every token granted before in this database.
    ///
    /// A token is `(timeline - 1) << 48 | n`, with `n` from `lease.token_seq` (at most 2^48 - 1)
    /// and `timeline` the WAL timeline this server writes on. A standby promoted after an
    /// asynchronous primary granted tokens it never received starts a new timeline, so every
    /// token it grants is larger than any token of the old primary. On the first timeline
    /// tokens are the sequence's values.
    ///
    /// With the library preloaded, numbers come from a block of [`TOKEN_BLOCK`] values that
    /// one call reserves in the sequence (moving it to the block's end) and makes durable by
    /// flushing WAL before any number of the block is handed out; the block lives in shared
    /// memory, so a crash loses only numbers never handed out, and the sequence's durable value
    /// is beyond every number that was. One flush per block, whatever `synchronous_commit` the
    /// callers use: a commit that does not flush WAL can never leak a number that a crash would
    /// hand out again.
    ///
    /// Without shared memory every number comes from `nextval`. The sequence writes WAL only
    /// once per batch of values (whichever backend crosses into the next batch writes it); if
    /// that record were lost in a crash, the values after it would be handed out again, so with
    /// `synchronous_commit = off` WAL is flushed up to the sequence page's LSN before the value
    /// leaves the server: a no-op unless the batch's record is not on disk yet.
    pub fn next_token(&self) -> i64 {
        let sequence = self.catalog.token_sequence;
        let number = crate::shared::get()
            .and_then(|shared| shared.take_token(sequence, || self.reserve_tokens(shared)))
            .unwrap_or_else(|| self.nextval_durable());
        // SAFETY: reads the timeline this server inserts WAL on (it is not in recovery).
        let timeline = i64::from(unsafe { pg_sys::GetWALInsertionTimeLine() });
        ((timeline - 1) << TOKEN_SEQUENCE_BITS) | number
    }

    /// Reserves the next block of token numbers and installs it in shared memory, durable first.
    ///
    /// One backend at a time: under a lock of the database's token sequence (in a lock space
    /// of its own), taken in an internal subtransaction that is rolled back at once, which
    /// releases the lock and keeps what `nextval` and `setval` did (sequences are not
    /// transactional). A backend that waited for the lock finds the block refilled and reserves
    /// nothing. Two reservations at once could otherwise end with the earlier `setval` last,
    /// leaving the sequence below numbers of the later block, which a restart would hand out
    /// again. The wait for the lock (or for an open `ALTER SEQUENCE`) is an ordinary lock wait:
    /// `statement_timeout` and cancellation end it.
    fn reserve_tokens(&self, shared: &crate::shared::Shared) {
        let sequence = self.catalog.token_sequence;
        crate::transaction::in_subtransaction(
            || {
                crate::barrier::lock_token_reservation(sequence);
                if shared.has_tokens(sequence) {
                    return;
                }
                // SAFETY: nextval and setval through the guarded fmgr path with a valid sequence
                // OID; XactLastRecEnd is the end of the WAL this backend inserted last (setval's
                // record).
                unsafe {
                    let datum = sequence.into_datum();
                    let start = pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[datum])
                        .expect("nextval returned NULL");
                    let last = (start + TOKEN_BLOCK - 1).min(MAX_TOKEN_NUMBER);
                    if last > start {
                        pgrx::direct_function_call::<i64>(pg_sys::setval_oid, &[datum, last.into_datum()]);
                    }
                    pg_sys::XLogFlush(pg_sys::XactLastRecEnd);
                    shared.install_block(sequence, start, last + 1);
                }
            },
            |_| false,
        );
    }

    /// One number straight from the sequence, durable before it leaves the server.
    fn nextval_durable(&self) -> i64 {
        let sequence = self.catalog.token_sequence;
        // SAFETY: synchronous_commit is a backend-local global; nextval_oid is called through
        // the guarded fmgr path with a valid sequence OID.
        unsafe {
            let number = pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[sequence.into_datum()])
                .expect("nextval returned NULL");
            if pg_sys::synchronous_commit == pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_OFF as i32 {
                pg_sys::XLogFlush(sequence_page_lsn(sequence));
            }
            number
        }
    }

    /// Inserts a new lease after [`Store::current`] found no row under the resource's lock; false
    /// when a row exists after all (only a transaction-wide snapshot can miss one, and then the
    /// insert raises a serialization failure instead).
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        resource: &str,
        holder: &str,
        token: i64,
        owner: Oid,
        now: Timestamp,
        expires_at: Timestamp,
        binding: Option<Binding>,
    ) -> bool {
        // The table's columns in order; also the INSERT statement's parameters.
        let values = [
            resource.into_datum(),
            holder.into_datum(),
            token.into_datum(),
            owner.into_datum(),
            now.into_datum(),
            now.into_datum(),
            expires_at.into_datum(),
            binding.map(|b| b.pid).into_datum(),
            binding.map(|b| b.application_name).into_datum(),
        ];
        if self.direct {
            let mut inserter = self.inserter.borrow_mut();
            if inserter.is_none() {
                // SAFETY: the lease table; the layout is checked again under the writer's lock.
                *inserter = unsafe { direct::Inserter::open(self.catalog.table) };
            }
            if let Some(inserter) = inserter.as_mut() {
                // SAFETY: the table's shape was checked; the caller holds the resource's lock
                // and found no row.
                unsafe { inserter.insert(&values) };
                return true;
            }
        }
        self.execute(Statement::Insert, &values, false, 1) == 1
    }

    /// Runs `read` on this store's lookup, opening it on first use.
    fn with_lookup<R>(&self, read: impl FnOnce(&mut direct::Lookup) -> R) -> R {
        let Catalog { table, primary_key, .. } = self.catalog;
        if primary_key == Oid::INVALID {
            error!("lease.leases has no primary key; recreate the extension");
        }
        let mut lookup = self.lookup.borrow_mut();
        // SAFETY: the lease table and its primary key; `find` reads rows only when the table's
        // shape was checked.
        read(lookup.get_or_insert_with(|| unsafe { direct::Lookup::open(table, primary_key) }))
    }

    /// The resource's row as [`crate::direct`] finds it, when this call reads directly. Exact
    /// when the caller holds the resource's lock; a hint otherwise.
    fn find(&self, resource: &str) -> Option<Option<direct::FoundRow>> {
        self.direct.then(|| self.with_lookup(|lookup| lookup.get(resource)))
    }

    /// Whether the resource's lease changed after the snapshot of the calling statement was
    /// taken ([`direct::Lookup::changed_since`]). The caller holds the resource's lock.
    pub fn changed_since_snapshot(&self, resource: &str) -> bool {
        // SAFETY: the active snapshot is the calling statement's (a function always runs with
        // one).
        self.with_lookup(|lookup| unsafe { lookup.changed_since(resource, pg_sys::GetActiveSnapshot()) })
    }

    /// The resource's row, expired or not, as last committed (and as changed by this
    /// transaction).
    pub fn current(&self, resource: &str) -> Option<LeaseRow> {
        if let Some(found) = self.find(resource) {
            return found.map(|row| LeaseRow {
                holder: row.holder,
                token: row.token,
                owner: row.owner,
                expires_at: row.expires_at,
                session_bound: row.session_bound,
            });
        }
        if self.execute(Statement::Current, &[resource.into_datum()], self.transaction_snapshot, 1) == 0 {
            return None;
        }
        // SAFETY: the statement returned one row of (text, int8, regrole, timestamptz), none NULL.
        unsafe {
            Some(LeaseRow {
                holder: column::<String>(0, 1),
                token: column::<i64>(0, 2),
                owner: column::<Oid>(0, 3),
                expires_at: column::<i64>(0, 4),
                session_bound: column::<bool>(0, 5),
            })
        }
    }

    /// Replaces the lease with token `old_token` by a new grant.
    #[allow(clippy::too_many_arguments)]
    pub fn take_over(
        &self,
        resource: &str,
        old_token: i64,
        holder: &str,
        token: i64,
        owner: Oid,
        now: Timestamp,
        expires_at: Timestamp,
        binding: Option<Binding>,
    ) -> bool {
        let args = [
            resource.into_datum(),
            old_token.into_datum(),
            holder.into_datum(),
            token.into_datum(),
            owner.into_datum(),
            now.into_datum(),
            expires_at.into_datum(),
            binding.map(|b| b.pid).into_datum(),
            binding.map(|b| b.application_name).into_datum(),
        ];
        self.execute(Statement::TakeOver, &args, false, 1) == 1
    }

    /// Moves the expiry of an unexpired lease; returns its holder, or None if the token does
    /// not hold the resource.
    pub fn extend(
        &self,
        resource: &str,
        token: i64,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Option<Holder> {
        let args = [resource.into_datum(), token.into_datum(), now.into_datum(), expires_at.into_datum()];
        self.returned_holder(Statement::Extend, &args)
    }

    /// Deletes an unexpired lease; returns its holder, or None if the token does not hold it.
    pub fn delete(&self, resource: &str, token: i64, now: Timestamp) -> Option<Holder> {
        if let Some(found) = self.find(resource) {
            let row = found.filter(|row| row.token == token && row.expires_at > now)?;
            // SAFETY: the row was just found under the resource's lock.
            if unsafe { direct::delete(self.catalog.table, &row) } {
                return Some(Holder { owner: row.owner, holder: row.holder });
            }
        }
        self.returned_holder(
            Statement::Delete,
            &[resource.into_datum(), token.into_datum(), now.into_datum()],
        )
    }

    /// The owner of the lease if `token` holds `resource` at `now`. Under a transaction-wide
    /// snapshot the row is read as last committed: a REPEATABLE READ transaction must not be
    /// told that a superseded token still holds.
    pub fn holds(&self, resource: &str, token: i64, now: Timestamp) -> Option<Oid> {
        if let Some(found) = self.find(resource) {
            return found.filter(|row| row.token == token && row.expires_at > now).map(|row| row.owner);
        }
        let args = [resource.into_datum(), token.into_datum(), now.into_datum()];
        // SAFETY: the statement returns one row of one regrole column, never NULL.
        (self.execute(Statement::Holds, &args, self.transaction_snapshot, 1) == 1)
            .then(|| unsafe { column::<Oid>(0, 1) })
    }

    /// The live lease on `resource` at `now`, every column (read through SQL, so also on a hot
    /// standby).
    pub fn info(&self, resource: &str, now: Timestamp) -> Option<LeaseInfo> {
        if self.execute(Statement::Info, &[resource.into_datum(), now.into_datum()], false, 1) == 0 {
            return None;
        }
        // SAFETY: one row of the statement's columns; only the last two may be NULL.
        unsafe {
            Some(LeaseInfo {
                holder: column(0, 1),
                token: column(0, 2),
                owner: column(0, 3),
                owner_name: column(0, 4),
                acquired_at: column(0, 5),
                renewed_at: column(0, 6),
                expires_at: column(0, 7),
                session_pid: nullable_column(0, 8),
                application_name: nullable_column(0, 9),
            })
        }
    }

    /// Binds the lease with `token` to a session, as shown to administrators.
    pub fn bind(&self, resource: &str, token: i64, binding: Binding) -> bool {
        let args = [
            resource.into_datum(),
            token.into_datum(),
            binding.pid.into_datum(),
            binding.application_name.into_datum(),
        ];
        self.execute(Statement::Bind, &args, false, 1) == 1
    }

    /// Whether this transaction reads through one snapshot for its whole life (REPEATABLE READ
    /// or SERIALIZABLE): its decisions then read the lease as last committed, and a write on a
    /// lease changed since that snapshot is a serialization failure.
    pub fn transaction_snapshot(&self) -> bool {
        self.transaction_snapshot
    }

    /// Up to `limit` leases expired at `now`, earliest expiry first.
    pub fn expired_candidates(&self, now: Timestamp, limit: i64) -> Vec<(String, i64)> {
        let count =
            self.execute(Statement::ExpiredCandidates, &[now.into_datum(), limit.into_datum()], false, 0);
        // SAFETY: the statement returned `count` rows of (text, int8), none NULL.
        (0..count as usize).map(|row| unsafe { (column::<String>(row, 1), column::<i64>(row, 2)) }).collect()
    }

    /// Deletes the lease with `token` if it expired at `now`; returns its holder and expiry.
    pub fn delete_expired(&self, resource: &str, token: i64, now: Timestamp) -> Option<(String, Timestamp)> {
        let args = [resource.into_datum(), token.into_datum(), now.into_datum()];
        // SAFETY: the statement returns one row of (text, timestamptz), none NULL.
        (self.execute(Statement::DeleteExpired, &args, false, 1) == 1)
            .then(|| unsafe { (column::<String>(0, 1), column::<i64>(0, 2)) })
    }

    /// The earliest expiry in the table, if any lease exists.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.execute(Statement::NextExpiry, &[], false, 0);
        // SAFETY: an aggregate returns exactly one row; min() is NULL on an empty table.
        unsafe { nullable_column::<i64>(0, 1) }
    }

    /// Every session-bound lease, as (resource, token).
    pub fn session_bound(&self) -> Vec<(String, i64)> {
        let count = self.execute(Statement::SessionBound, &[], false, 0);
        // SAFETY: the statement returned `count` rows of (text, int8), none NULL.
        (0..count as usize).map(|row| unsafe { (column::<String>(row, 1), column::<i64>(row, 2)) }).collect()
    }

    /// Deletes the lease with `token`, whatever its expiry; returns its holder and expiry.
    pub fn delete_grant(&self, resource: &str, token: i64) -> Option<(String, Timestamp)> {
        let args = [resource.into_datum(), token.into_datum()];
        // SAFETY: the statement returns one row of (text, timestamptz), none NULL.
        (self.execute(Statement::DeleteGrant, &args, false, 1) == 1)
            .then(|| unsafe { (column::<String>(0, 1), column::<i64>(0, 2)) })
    }

    /// Which of `tokens` still name a session-bound lease.
    pub fn session_tokens_alive(&self, tokens: &[i64]) -> Vec<i64> {
        let count = self.execute(Statement::SessionTokensAlive, &[tokens.to_vec().into_datum()], false, 0);
        // SAFETY: the statement returned `count` rows of one int8 column, never NULL.
        (0..count as usize).map(|row| unsafe { column::<i64>(row, 1) }).collect()
    }

    /// A test of whether another holder (another name or another role) holds a resource at
    /// `now` with a lease that is not session-bound: the hint `lease_acquire_any` skips held
    /// candidates by without taking their locks. Read directly, each candidate is looked up
    /// when it is tested, so a claim stops reading once it has what it wants; through SQL, all
    /// of `resources` are read at once, in one statement.
    pub fn held_by_others<'a>(
        &'a self,
        resources: &[&str],
        holder: &'a str,
        now: Timestamp,
    ) -> Box<dyn FnMut(&str) -> bool + 'a> {
        let caller = self.caller;
        if self.direct {
            return Box::new(move |resource| {
                self.find(resource).flatten().is_some_and(|row| {
                    row.expires_at > now
                        && !row.session_bound
                        && !(row.holder == holder && row.owner == caller)
                })
            });
        }
        let args =
            [resources.to_vec().into_datum(), now.into_datum(), holder.into_datum(), caller.into_datum()];
        let count = self.execute(Statement::HeldByOthers, &args, self.transaction_snapshot, 0);
        // SAFETY: the statement returned `count` rows of one text column, never NULL.
        let held: std::collections::HashSet<String> =
            (0..count as usize).map(|row| unsafe { column::<String>(row, 1) }).collect();
        Box::new(move |resource| held.contains(resource))
    }

    fn returned_holder(&self, statement: Statement, args: &[Option<Datum>]) -> Option<Holder> {
        // SAFETY: both statements return one row of (regrole, text), never NULL.
        (self.execute(statement, args, false, 1) == 1)
            .then(|| unsafe { Holder { owner: column::<Oid>(0, 1), holder: column::<String>(0, 2) } })
    }

    /// Runs a kept plan with the given arguments, processing at most `limit` rows (0: all);
    /// returns the number of rows processed.
    fn execute(&self, statement: Statement, args: &[Option<Datum>], latest: bool, limit: i64) -> u64 {
        self.connect();
        let plan = plan(statement);
        let mut values: Vec<Datum> = args.iter().map(|a| a.unwrap_or(Datum::from(0))).collect();
        let nulls: Vec<std::ffi::c_char> =
            args.iter().map(|a| if a.is_some() { b' ' } else { b'n' } as std::ffi::c_char).collect();
        // SAFETY: the plan was prepared with exactly these argument types and counts; values and
        // nulls outlive the call. SPI errors are raised through the guarded FFI boundary.
        unsafe {
            let status = if latest {
                pg_sys::SPI_execute_snapshot(
                    plan.as_ptr(),
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    pg_sys::GetLatestSnapshot(),
                    std::ptr::null_mut(),
                    false,
                    false,
                    limit,
                )
            } else {
                pg_sys::SPI_execute_plan(plan.as_ptr(), values.as_mut_ptr(), nulls.as_ptr(), false, limit)
            };
            if status < 0 {
                error!("lease store statement failed with SPI status {status}");
            }
            pg_sys::SPI_processed
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Before SPI_finish: they may have been opened in the SPI connection's memory context.
        drop(self.lookup.take());
        drop(self.inserter.take());
        // SAFETY: undoes exactly what `open` did. While unwinding from a PostgreSQL error the
        // SPI connection is left for transaction abort to close, as PostgreSQL expects; the
        // planner settings are plain backend-local globals, restored on every path.
        unsafe {
            if let Some(settings) = self.saved_scan_settings.get() {
                if !std::thread::panicking() {
                    pg_sys::SPI_finish();
                }
                (pg_sys::enable_seqscan, pg_sys::enable_bitmapscan) = settings;
            }
            pg_sys::SetUserIdAndSecContext(self.caller, self.saved_security_context);
        }
    }
}

/// The LSN of the last WAL record that changed the sequence's page: the record that logged
/// ahead the batch of values `nextval` just handed out from.
///
/// # Safety
/// `sequence` must be a sequence (one permanent page in shared buffers) that the caller has
/// just called `nextval` on.
unsafe fn sequence_page_lsn(sequence: Oid) -> pg_sys::XLogRecPtr {
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    let relation = pg_sys::relation_open(sequence, lock);
    let buffer = pg_sys::ReadBuffer(relation, 0);
    // Pinned, not content-locked: taking the page lock here would queue every acquire behind
    // every nextval. Our nextval already synchronised with the writer of the LSN we need; a
    // later nextval may be setting a newer LSN (two 32-bit halves) while we read, so read
    // until two reads agree. A newer LSN than needed only flushes a little more.
    let lsn = loop {
        let first = pg_sys::BufferGetLSNAtomic(buffer);
        if pg_sys::BufferGetLSNAtomic(buffer) == first {
            break first;
        }
    };
    pg_sys::ReleaseBuffer(buffer);
    pg_sys::relation_close(relation, lock);
    lsn
}

/// Column `number` (1-based) of row `row` (0-based) of the last statement's result.
///
/// # Safety
/// The last SPI statement must have returned more than `row` rows, with a non-NULL column
/// `number` of a type that `T` reads.
unsafe fn column<T: FromDatum>(row: usize, number: i32) -> T {
    nullable_column(row, number).expect("lease store column is never NULL")
}

/// As [`column`], for a column that may be NULL.
///
/// # Safety
/// As for [`column`], except that the column may be NULL.
unsafe fn nullable_column<T: FromDatum>(row: usize, number: i32) -> Option<T> {
    let table = pg_sys::SPI_tuptable;
    let mut is_null = false;
    let datum = pg_sys::SPI_getbinval(*(*table).vals.add(row), (*table).tupdesc, number, &mut is_null);
    T::from_polymorphic_datum(datum, is_null, pg_sys::InvalidOid)
}

/// The kept plan for `statement`, preparing all of them on first use.
fn plan(statement: Statement) -> NonNull<pg_sys::_SPI_plan> {
    let plans = PLANS.with(|cell| match cell.get() {
        Some(plans) => plans,
        None => {
            let plans = PLAN_SOURCES.map(|(sql, types)| {
                let mut types = types.to_vec();
                // SAFETY: called inside an SPI connection with a valid NUL-terminated query and
                // an argument type array of the stated length. The kept plan lives in
                // CacheMemoryContext for the life of the backend.
                unsafe {
                    let plan = pg_sys::SPI_prepare(sql.as_ptr(), types.len() as i32, types.as_mut_ptr());
                    let plan = NonNull::new(plan)
                        .unwrap_or_else(|| error!("could not prepare a lease store statement"));
                    pg_sys::SPI_keepplan(plan.as_ptr());
                    plan
                }
            });
            cell.set(Some(plans));
            plans
        }
    });
    plans[statement as usize]
}
