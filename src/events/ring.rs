//! The event ring: one database's committed lease events, waiting in shared memory for its
//! expiry worker to publish them.
//!
//! Locking: none; the ring is lock-free. A committing backend takes a position and a sequence
//! number together with one compare-and-swap of `head` (so committing backends never queue
//! behind each other, and sequence numbers follow commit order), fills the slot at that
//! position, then stores the position in the slot's `filled` entry (release). The worker, the
//! ring's only reader, takes a slot only once its `filled` entry names the position it expects
//! (acquire, pairing with the filler's release), and moves `read` past it only after copying
//! it (release; a backend reads `read` with acquire before it reuses the slot). When the ring
//! is full the event is dropped, but its sequence number is still used, so a listener sees the
//! gap; drops are counted in `dropped`.
//!
//! Uses vocabulary (the name limits) and [`super::Event`].

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Event, Kind, Reason};
use crate::store::LeaseMode;
use crate::vocabulary::{MAX_DATA_BYTES, MAX_HOLDER_BYTES, MAX_RESOURCE_BYTES};

/// Number of events each database's ring holds (about 5.4 MB of shared memory).
pub const RING_CAPACITY: usize = 4096;

/// Bits of a ring's head that hold its next position (wrapping); the bits above hold the next
/// sequence number. 2^20 positions are far more than a ring holds; 2^44 sequence numbers last
/// five years at 100,000 events a second, and they start again at 1 whenever the database's
/// worker is started.
const POSITION_BITS: u32 = 20;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;
/// The head of an empty ring: position 0, sequence number 1.
const EMPTY_HEAD: u64 = 1 << POSITION_BITS;
/// The `expires_at` of a slot whose event has none.
const NO_EXPIRY: i64 = i64::MIN;

/// One event as stored in shared memory: fixed size, names inline.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventSlot {
    seq: u64,
    kind: u8,
    reason: u8,
    resource_len: u16,
    holder_len: u16,
    /// Length of `data`, or [`NO_DATA`].
    data_len: u16,
    /// The lease's mode: 0 exclusive, 1 shared, 2 permit.
    mode: u8,
    /// A permit's capacity; 0 for none.
    capacity: i32,
    token: i64,
    /// 0: not attached to a lifeline (lifeline ids, like tokens, are positive).
    lifeline: i64,
    expires_at: i64,
    at: i64,
    resource: [u8; MAX_RESOURCE_BYTES],
    holder: [u8; MAX_HOLDER_BYTES],
    data: [u8; MAX_DATA_BYTES],
}

/// The `data_len` of a slot whose event carries no data.
const NO_DATA: u16 = u16::MAX;

/// What `lease_event_stats()` shows of a ring.
pub struct RingCounters {
    /// The last sequence number used.
    pub last_seq: u64,
    /// Events waiting to be taken.
    pub pending: u64,
    /// Events dropped because the ring was full.
    pub dropped: u64,
}

#[repr(C)]
pub struct EventRing {
    /// The next position and next sequence number, moved together (see [`POSITION_BITS`]).
    head: AtomicU64,
    /// Positions ever taken by the worker (not wrapping); only the worker moves it.
    read: AtomicU64,
    /// Events dropped because the ring was full.
    dropped: AtomicU64,
    /// Per slot, 1 + the (wrapped) position of the event it holds, stored once the event is
    /// complete: the worker takes an event only when its slot says so.
    filled: [AtomicU64; RING_CAPACITY],
    slots: UnsafeCell<[EventSlot; RING_CAPACITY]>,
}

// SAFETY: a slot is written only by the backend that took its position, and read only by the
// worker once `filled` says it is complete (see the module's header).
unsafe impl Sync for EventRing {}

impl EventRing {
    /// Empties the ring, for a new assignment of its database slot (no one else uses it then).
    pub fn reset(&self) {
        for filled in &self.filled {
            filled.store(0, Ordering::Relaxed);
        }
        self.read.store(0, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
        self.head.store(EMPTY_HEAD, Ordering::Release);
    }

    /// Stores an event with the next sequence number; drops it if the ring is full. Never
    /// waits and cannot fail: a slot taken and never completed would hold up every later event
    /// of the database.
    pub fn push(&self, event: &Event) {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let position = head & POSITION_MASK;
            let seq = head >> POSITION_BITS;
            // A stale `read` only makes the ring look fuller than it is.
            let unread = position.wrapping_sub(self.read.load(Ordering::Acquire)) & POSITION_MASK;
            let full = unread >= RING_CAPACITY as u64;
            let next = match full {
                true => head + (1 << POSITION_BITS),
                false => ((seq + 1) << POSITION_BITS) | ((position + 1) & POSITION_MASK),
            };
            match self.head.compare_exchange_weak(head, next, Ordering::AcqRel, Ordering::Acquire) {
                Err(actual) => head = actual,
                Ok(_) if full => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {
                    let index = (position % RING_CAPACITY as u64) as usize;
                    // SAFETY: the position is ours alone: no other backend takes it before the
                    // head wraps around, and the worker read the slot's previous event before
                    // moving `read` past it (that is what made the slot free above).
                    let slot = unsafe { &mut (*self.slots.get())[index] };
                    slot.fill(seq, event);
                    self.filled[index].store(position + 1, Ordering::Release);
                    return;
                }
            }
        }
    }

    /// Takes up to `max` of the oldest complete events, in order; only the database's worker
    /// calls it. An event whose backend is still filling its slot, and all after it, wait for
    /// the next call.
    pub fn take(&self, max: usize, into: &mut Vec<EventSlot>) {
        let mut read = self.read.load(Ordering::Relaxed);
        for _ in 0..max {
            let index = (read % RING_CAPACITY as u64) as usize;
            if self.filled[index].load(Ordering::Acquire) != (read & POSITION_MASK) + 1 {
                break;
            }
            // SAFETY: the slot is complete (the acquire above pairs with the filler's release)
            // and no backend writes it again until `read` has moved past it, below.
            into.push(unsafe { (*self.slots.get())[index] });
            read += 1;
        }
        self.read.store(read, Ordering::Release);
    }

    /// The ring's counters, from one reading of its head.
    pub fn counters(&self) -> RingCounters {
        let head = self.head.load(Ordering::Acquire);
        RingCounters {
            last_seq: (head >> POSITION_BITS).wrapping_sub(1),
            pending: (head & POSITION_MASK).wrapping_sub(self.read.load(Ordering::Acquire)) & POSITION_MASK,
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

impl EventSlot {
    fn fill(&mut self, seq: u64, event: &Event) {
        self.seq = seq;
        self.kind = event.kind as u8;
        self.reason = event.reason.map_or(0, |reason| reason as u8);
        self.token = event.token;
        self.expires_at = event.expires_at.unwrap_or(NO_EXPIRY);
        self.at = event.at;
        self.resource_len = copy_name(&mut self.resource, &event.resource);
        self.holder_len = copy_name(&mut self.holder, &event.holder);
        self.lifeline = event.lifeline.unwrap_or(0);
        self.mode = match event.mode {
            LeaseMode::Exclusive => 0,
            LeaseMode::Shared => 1,
            LeaseMode::Permit => 2,
        };
        self.capacity = event.capacity.unwrap_or(0);
        // Data the functions accept always fits; cut JSON would not be JSON.
        self.data_len = match &event.data {
            Some(data) if data.len() <= MAX_DATA_BYTES => {
                self.data[..data.len()].copy_from_slice(data.as_bytes());
                data.len() as u16
            }
            _ => NO_DATA,
        };
    }

    /// The event and its sequence number; None for a slot this version did not write (a kind
    /// it does not know).
    pub fn event(&self) -> Option<(u64, Event)> {
        let kind = Kind::from_repr(self.kind)?;
        let reason = match self.reason {
            0 => None,
            reason => Some(Reason::from_repr(reason)?),
        };
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let event = Event {
            kind,
            reason,
            resource: text(&self.resource[..self.resource_len as usize]),
            holder: text(&self.holder[..self.holder_len as usize]),
            token: self.token,
            expires_at: (self.expires_at != NO_EXPIRY).then_some(self.expires_at),
            at: self.at,
            lifeline: (self.lifeline != 0).then_some(self.lifeline),
            data: (self.data_len != NO_DATA).then(|| text(&self.data[..self.data_len as usize])),
            mode: match self.mode {
                1 => LeaseMode::Shared,
                2 => LeaseMode::Permit,
                _ => LeaseMode::Exclusive,
            },
            capacity: (self.capacity != 0).then_some(self.capacity),
        };
        Some((self.seq, event))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
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

    #[test]
    fn a_slot_gives_back_the_event_it_was_filled_with() {
        // SAFETY: an EventSlot is plain bytes; all zero is a valid one.
        let mut slot: EventSlot = unsafe { std::mem::zeroed() };
        let cases = [
            (None, None, None, None),
            (Some(Reason::SessionEnded), Some(-5), None, None),
            (Some(Reason::LifelineExpired), Some(3), Some(12), Some("{\"a\":[1,\"é\"]}".to_owned())),
        ];
        let modes = [(LeaseMode::Exclusive, None), (LeaseMode::Shared, None), (LeaseMode::Permit, Some(4))];
        for ((reason, expires_at, lifeline, data), (mode, capacity)) in cases.into_iter().zip(modes) {
            let event = Event {
                kind: Kind::Expired,
                reason,
                resource: "job:1".into(),
                holder: "w".into(),
                token: 9,
                expires_at,
                at: 7,
                lifeline,
                data,
                mode,
                capacity,
            };
            slot.fill(42, &event);
            assert_eq!(slot.event(), Some((42, event)));
        }
        slot.kind = 99;
        assert_eq!(slot.event(), None);
    }
}
