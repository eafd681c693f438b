//! Fencing tokens: each larger than every token granted before it in the database.
//!
//! A token is `(timeline - 1) << 48 | n`, with `n` from `lease.token_seq` (at most 2^48 - 1)
//! and `timeline` the WAL timeline this server writes on. A standby promoted after an
//! asynchronous primary granted tokens it never received starts a new timeline, so every
//! token it grants is larger than any token of the old primary. On the first timeline tokens
//! are the sequence's values.
//!
//! With the library preloaded, numbers come from a block of [`TOKEN_BLOCK`] values that one
//! call reserves in the sequence (moving it to the block's end) and makes durable by flushing
//! WAL before any number of the block is handed out; the block lives in shared memory, so a
//! crash loses only numbers never handed out, and the sequence's durable value is beyond every
//! number that was. One flush per block, whatever `synchronous_commit` the callers use: a
//! commit that does not flush WAL can never leak a number that a crash would hand out again.
//!
//! Without shared memory every number comes from `nextval`. The sequence writes WAL only once
//! per batch of values (whichever backend crosses into the next batch writes it); if that
//! record were lost in a crash, the values after it would be handed out again, so with
//! `synchronous_commit = off` WAL is flushed up to the sequence page's LSN before the value
//! leaves the server: a no-op unless the batch's record is not on disk yet.
//!
//! Locking: the token lock (the one LWLock of the part "lease token blocks") guards every
//! block; it is held only to read or move a block's bounds, never across the reservation
//! (which may wait for the sequence's lock, flush WAL or raise).

use std::cell::UnsafeCell;

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;

use super::Store;
use crate::barrier;
use crate::shmem::{self, Attached, Exclusive};
use crate::subtransaction::in_subtransaction;
use crate::vocabulary::my_database;

/// Bits of a token that come from the token sequence; the timeline is above them.
const TOKEN_SEQUENCE_BITS: u32 = 48;
/// The token sequence's MAXVALUE.
const MAX_TOKEN_NUMBER: i64 = (1 << TOKEN_SEQUENCE_BITS) - 1;
/// Token numbers reserved in the sequence at a time.
const TOKEN_BLOCK: i64 = 10_000;
/// Databases whose token blocks are kept at once; others take every token from the sequence.
const TOKEN_BLOCKS: usize = 64;

/// Token numbers `next..end` of one database's sequence, reserved and not handed out yet.
#[derive(Clone, Copy)]
struct TokenBlock {
    database: u32,
    sequence: u32,
    next: i64,
    end: i64,
}

/// The token blocks of every database, in shared memory.
struct TokenBlocks {
    lock: *mut pg_sys::LWLock,
    blocks: UnsafeCell<[TokenBlock; TOKEN_BLOCKS]>,
}

// SAFETY: `blocks` is only touched under `lock`.
unsafe impl Sync for TokenBlocks {}

static BLOCKS: Attached<TokenBlocks> = Attached::new();

/// The token blocks' part of shared memory.
pub const SHMEM: shmem::Part = shmem::Part {
    name: c"lease token blocks",
    bytes: || std::mem::size_of::<TokenBlocks>(),
    locks: 1,
    init: |memory, locks| {
        // SAFETY: the part's memory, `bytes()` long, and its one lock; zero is every block free.
        unsafe {
            std::ptr::write_bytes(memory, 0, std::mem::size_of::<TokenBlocks>());
            (*memory.cast::<TokenBlocks>()).lock = &raw mut (*locks).lock;
        }
    },
    attach: |memory| BLOCKS.set(memory),
};

impl TokenBlocks {
    /// The next token number of `sequence` in this backend's database, from the database's
    /// reserved block; when the block is used up (or belongs to another sequence), `refill`
    /// reserves a new one ([`TokenBlocks::install`]) and the call takes from that. None when no
    /// block can be kept for this database (more databases than [`TOKEN_BLOCKS`]). Numbers
    /// leave in the order calls take them, across backends.
    fn take(&self, sequence: Oid, mut refill: impl FnMut()) -> Option<i64> {
        loop {
            {
                let _lock = self.lock();
                let block = self.block_of_my_database()?;
                if block.sequence == sequence.to_u32() && block.next < block.end {
                    let token = block.next;
                    block.next += 1;
                    return Some(token);
                }
            }
            refill();
        }
    }

    /// Whether this database's block of `sequence` has numbers left.
    fn has_numbers(&self, sequence: Oid) -> bool {
        let _lock = self.lock();
        self.block_of_my_database()
            .is_some_and(|block| block.sequence == sequence.to_u32() && block.next < block.end)
    }

    /// Installs the newly reserved numbers `start..end` of `sequence` as this database's block.
    fn install(&self, sequence: Oid, start: i64, end: i64) {
        let _lock = self.lock();
        if let Some(block) = self.block_of_my_database() {
            *block = TokenBlock { database: block.database, sequence: sequence.to_u32(), next: start, end };
        }
    }

    /// This database's token block, claiming a free one if it has none. The caller holds the
    /// token lock.
    #[allow(clippy::mut_from_ref)]
    fn block_of_my_database(&self) -> Option<&mut TokenBlock> {
        let database = my_database().to_u32();
        // SAFETY: guarded by the token lock, which every caller holds.
        let blocks = unsafe { &mut *self.blocks.get() };
        let index = blocks
            .iter()
            .position(|block| block.database == database)
            .or_else(|| blocks.iter().position(|block| block.database == 0))?;
        let block = &mut blocks[index];
        if block.database != database {
            *block = TokenBlock { database, sequence: 0, next: 0, end: 0 };
        }
        Some(block)
    }

    fn lock(&self) -> Exclusive {
        // SAFETY: the part's lock, set at initialisation.
        unsafe { Exclusive::acquire(self.lock) }
    }
}

impl Store {
    /// The next fencing token (see the module's header).
    pub fn next_token(&self) -> i64 {
        let sequence = self.catalog.token_sequence;
        let number = BLOCKS
            .get()
            .and_then(|blocks| blocks.take(sequence, || reserve(blocks, sequence)))
            .unwrap_or_else(|| nextval_durable(sequence));
        // SAFETY: reads the timeline this server inserts WAL on (it is not in recovery).
        let timeline = i64::from(unsafe { pg_sys::GetWALInsertionTimeLine() });
        ((timeline - 1) << TOKEN_SEQUENCE_BITS) | number
    }
}

/// Reserves the next block of token numbers and installs it in shared memory, durable first.
///
/// One backend at a time: under a lock of the database's token sequence (in a lock space of
/// its own), taken in an internal subtransaction that is rolled back at once, which releases
/// the lock and keeps what `nextval` and `setval` did (sequences are not transactional). A
/// backend that waited for the lock finds the block refilled and reserves nothing. Two
/// reservations at once could otherwise end with the earlier `setval` last, leaving the
/// sequence below numbers of the later block, which a restart would hand out again. The wait
/// for the lock (or for an open `ALTER SEQUENCE`) is an ordinary lock wait: `statement_timeout`
/// and cancellation end it.
fn reserve(blocks: &TokenBlocks, sequence: Oid) {
    in_subtransaction(
        || {
            barrier::lock_token_reservation(sequence);
            if blocks.has_numbers(sequence) {
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
                blocks.install(sequence, start, last + 1);
            }
        },
        |_| false,
    );
}

/// One number straight from the sequence, durable before it leaves the server.
fn nextval_durable(sequence: Oid) -> i64 {
    // SAFETY: synchronous_commit is a backend-local global; nextval_oid is called through the
    // guarded fmgr path with a valid sequence OID.
    unsafe {
        let number = pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[sequence.into_datum()])
            .expect("nextval returned NULL");
        if pg_sys::synchronous_commit == pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_OFF as i32 {
            pg_sys::XLogFlush(sequence_page_lsn(sequence));
        }
        number
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
