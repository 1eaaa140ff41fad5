//! Compact lifecycle events grouped by (family, id): what the engine keeps of
//! each record between `push` and `finish`.

use std::collections::HashMap;

use super::ids::{self, IdMap, INLINE};
use super::{Family, UnixNanos};
use crate::record::{Entry, Kind, Shape};

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// The fields of a shape that a family bills, the others left out:
/// `[cpu, mem_bytes]` for compute, `[storage_bytes, 0]` for both storage
/// families. "Same shape" in the pairing rules means equal `Billed`: a start
/// that changes only a field the family does not bill is not a resize.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Billed([u64; 2]);

// === impl Billed ===

impl Billed {
    /// Negative values (which validation never lets into the ledger, but a
    /// hand-written ledger might hold) bill as zero rather than wrap.
    pub fn of(family: Family, shape: &Shape) -> Billed {
        let v = |x: i64| u64::try_from(x).unwrap_or(0);
        match family {
            Family::VmCompute => Billed([v(shape.cpu), v(shape.mem_bytes)]),
            Family::VmStorage | Family::SnapStorage => Billed([v(shape.storage_bytes), 0]),
        }
    }

    /// True when a stop with this shape disagrees with the open interval's.
    /// A zero field is "not given" (the Go encoding omits zero fields, so a
    /// stop cannot tell 0 from absent); only given fields are compared. An
    /// all-zero stop never mismatches.
    pub fn mismatches(self, open: Billed) -> bool {
        self.0
            .iter()
            .zip(open.0)
            .any(|(&stop, open)| stop != 0 && stop != open)
    }

    /// `(cpu, mem_bytes, storage_bytes)`, zero where the family does not bill.
    pub fn rates(self, family: Family) -> (u64, u64, u64) {
        match family {
            Family::VmCompute => (self.0[0], self.0[1], 0),
            Family::VmStorage | Family::SnapStorage => (0, 0, self.0[0]),
        }
    }

    /// The billed fields as a `Shape` (unbilled fields zero).
    pub fn to_shape(self, family: Family) -> Shape {
        let (cpu, mem, storage) = self.rates(family);
        let i = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        Shape {
            cpu: i(cpu),
            mem_bytes: i(mem),
            storage_bytes: i(storage),
        }
    }
}

/// Set in `Event::nanos_flag` for a start; nanoseconds need only 30 bits.
const START_FLAG: u32 = 1 << 31;

/// One record as the pairing needs it: 40 bytes, no strings. The hypervisor
/// is an index into the engine's `Interner`.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `emitted_at` as whole seconds and (below) nanoseconds, so the event
    /// needs no 16-byte-aligned `i128`.
    secs: i64,
    pub position: u64,
    pub billed: Billed,
    /// Nanoseconds of `emitted_at`, with `START_FLAG` for a start.
    nanos_flag: u32,
    pub hypervisor: u32,
}

// === impl Event ===

impl Event {
    pub fn new(
        at: UnixNanos,
        position: u64,
        start: bool,
        billed: Billed,
        hypervisor: u32,
    ) -> Event {
        // Times of years 1678..=2261 fit an i64 of nanoseconds, whose
        // division is a few instructions; an `i128` division is a call into
        // the compiler's runtime, once per record of a scan.
        let (secs, nanos) = match i64::try_from(at) {
            Ok(t) => (
                t.div_euclid(1_000_000_000),
                t.rem_euclid(1_000_000_000) as u32,
            ),
            // Entries hold years 0001..=9999, far inside i64 seconds.
            Err(_) => (
                i64::try_from(at.div_euclid(NANOS_PER_SECOND)).unwrap_or(i64::MAX),
                at.rem_euclid(NANOS_PER_SECOND) as u32,
            ),
        };
        Event {
            secs,
            position,
            billed,
            nanos_flag: nanos | if start { START_FLAG } else { 0 },
            hypervisor,
        }
    }

    /// `emitted_at` in Unix nanoseconds.
    pub fn at(&self) -> UnixNanos {
        i128::from(self.secs) * NANOS_PER_SECOND + i128::from(self.nanos_flag & !START_FLAG)
    }

    pub fn is_start(&self) -> bool {
        self.nanos_flag & START_FLAG != 0
    }

    /// The pairing order: `emitted_at`, ties by position. Positions are
    /// unique in a stream, so this is a total order and arrival order can
    /// never change the result.
    pub fn order(&self) -> (i64, u32, u64) {
        (self.secs, self.nanos_flag & !START_FLAG, self.position)
    }
}

/// Whether an entry kind opens or closes an interval, and its family.
pub fn classify(kind: Kind) -> (Family, bool) {
    match kind {
        Kind::VmComputeStart => (Family::VmCompute, true),
        Kind::VmComputeStop => (Family::VmCompute, false),
        Kind::VmStorageStart => (Family::VmStorage, true),
        Kind::VmStorageStop => (Family::VmStorage, false),
        Kind::SnapStorageStart => (Family::SnapStorage, true),
        Kind::SnapStorageStop => (Family::SnapStorage, false),
    }
}

/// The fields of an entry that the engine reads, borrowed: what a reader
/// decodes from a ledger line without allocating (see `crate::read`).
#[derive(Clone, Copy, Debug)]
pub struct EntryRef<'a> {
    pub kind: Kind,
    pub vm_id: &'a str,
    pub snapshot_id: &'a str,
    pub hypervisor: &'a str,
    pub shape: Shape,
    /// `emitted_at` in Unix nanoseconds.
    pub emitted_at: UnixNanos,
}

// === impl EntryRef ===

impl<'a> From<&'a Entry> for EntryRef<'a> {
    fn from(e: &'a Entry) -> Self {
        EntryRef {
            kind: e.kind,
            vm_id: &e.vm_id,
            snapshot_id: &e.snapshot_id,
            hypervisor: &e.hypervisor,
            shape: e.shape,
            emitted_at: e.emitted_at.unix_timestamp_nanos(),
        }
    }
}

impl<'a> EntryRef<'a> {
    /// The id the entry is paired by: `vm_id` for the VM families,
    /// `snapshot_id` for snapshots.
    pub fn id(&self, family: Family) -> &'a str {
        match family {
            Family::VmCompute | Family::VmStorage => self.vm_id,
            Family::SnapStorage => self.snapshot_id,
        }
    }
}

/// Strings stored once and referred to by index (hypervisor names: a few
/// distinct values over millions of records).
#[derive(Debug, Default)]
pub struct Interner {
    index: HashMap<Box<str>, u32, rustc_hash::FxBuildHasher>,
    names: Vec<Box<str>>,
}

// === impl Interner ===

impl Interner {
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        // More than 2³² distinct names cannot fit in memory anyway.
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.into());
        self.index.insert(name.into(), i);
        i
    }

    pub fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("", |n| n)
    }
}

/// Events grouped by (family, id). A push appends to one log (its slot
/// beside it), so pushing touches no per-id memory but the id's table
/// entry: per-id vectors cost two cache misses per record on a month of
/// ledger (their headers and their tails are all over the heap). The log is
/// grouped by slot once, at the end, with a counting sort.
///
/// The table entry itself misses the cache too (60,000 ids of a month do
/// not fit), so a push only hashes its id, prefetches the entry and queues
/// the record; it is looked up [`DEPTH`] pushes later, when the entry has
/// arrived. Slots and the log's order may then differ from push order,
/// which nothing depends on (events are sorted per slot, ids by bytes).
#[derive(Debug)]
pub struct Groups<T> {
    /// Per family (indexed by `Family::index`): id → slot.
    ids: [IdMap; 3],
    /// Per slot: what the owner seeds it with.
    seeds: Vec<Option<T>>,
    /// Every event, in push order, and its slot (kept apart, so that an
    /// event costs 44 bytes, not 48).
    events: Vec<Event>,
    slot_of: Vec<u32>,
    /// Pushes waiting for their prefetched table entry: a ring, the
    /// oldest at `oldest` once it is full.
    queue: Vec<Queued>,
    oldest: usize,
}

/// Pushes in flight: enough to cover a miss to memory, few enough that
/// the queue stays in the first-level cache.
const DEPTH: usize = 8;

/// A push waiting for its table entry: the id copied (the caller's line
/// is gone by the time it is looked up).
#[derive(Debug)]
struct Queued {
    family: Family,
    hash: u64,
    len: u8,
    id: [u8; INLINE],
    event: Event,
}

/// A (family, id) and the index of its slot.
pub type Key = (Family, Box<str>, usize);

/// The events of every slot, contiguous per slot.
#[derive(Debug)]
pub struct Grouped<T> {
    seeds: Vec<Option<T>>,
    events: Vec<Event>,
    /// Slot `i`'s events are `events[starts[i]..starts[i + 1]]`.
    starts: Vec<usize>,
}

// === impl Groups ===

// Not derived: a derive would demand `T: Default`.
impl<T> Default for Groups<T> {
    fn default() -> Self {
        Groups {
            ids: Default::default(),
            seeds: Vec::new(),
            events: Vec::new(),
            slot_of: Vec::new(),
            queue: Vec::with_capacity(DEPTH),
            oldest: 0,
        }
    }
}

impl<T> Groups<T> {
    fn slot(&mut self, family: Family, id: &[u8], hash: u64) -> u32 {
        let ids = &mut self.ids[family.index()];
        match ids.get(id, hash) {
            Some(i) => i,
            None => {
                // Slots are counted in u32: 4 billion distinct ids do not
                // fit in memory anyway.
                let i = u32::try_from(self.seeds.len()).unwrap_or(u32::MAX);
                ids.insert(id, hash, i);
                self.seeds.push(None);
                i
            }
        }
    }

    pub fn push(&mut self, family: Family, id: &str, event: Event) {
        let id = id.as_bytes();
        let hash = ids::hash(id);
        if id.len() > INLINE {
            let slot = self.slot(family, id, hash);
            self.slot_of.push(slot);
            self.events.push(event);
            return;
        }
        self.ids[family.index()].prefetch(hash);
        let mut q = Queued {
            family,
            hash,
            // At most INLINE, checked above.
            len: id.len() as u8,
            id: [0; INLINE],
            event,
        };
        q.id[..id.len()].copy_from_slice(id);
        if self.queue.len() < DEPTH {
            self.queue.push(q);
            return;
        }
        let q = std::mem::replace(&mut self.queue[self.oldest], q);
        self.oldest = (self.oldest + 1) % DEPTH;
        self.resolve(&q);
    }

    fn resolve(&mut self, q: &Queued) {
        let slot = self.slot(q.family, &q.id[..usize::from(q.len)], q.hash);
        self.slot_of.push(slot);
        self.events.push(q.event);
    }

    /// Looks up every queued push.
    fn flush(&mut self) {
        for q in std::mem::take(&mut self.queue) {
            self.resolve(&q);
        }
        self.oldest = 0;
    }

    /// Events pushed so far.
    pub fn pushed(&self) -> usize {
        self.events.len() + self.queue.len()
    }

    /// Makes room for `more` ids of `family` (a checkpoint's, before it
    /// seeds them).
    pub fn reserve(&mut self, family: Family, more: usize) {
        self.ids[family.index()].reserve(more);
        self.seeds.reserve(more);
    }

    pub fn seed(&mut self, family: Family, id: &str, seed: T) {
        let slot = self.slot(family, id.as_bytes(), ids::hash(id.as_bytes()));
        self.seeds[slot as usize] = Some(seed);
    }

    /// Every (family, id) with its slot index, ordered by family, then id
    /// (byte order): the order of the answer; and the events by slot.
    pub fn into_sorted(mut self) -> (Vec<Key>, Grouped<T>) {
        self.flush();
        let mut keys = Vec::with_capacity(self.seeds.len());
        for (family, ids) in Family::ALL.into_iter().zip(self.ids) {
            keys.extend(ids.into_sorted().into_iter().map(|(id, i)| (family, id, i)));
        }
        let mut starts = vec![0usize; self.seeds.len() + 1];
        for &s in &self.slot_of {
            starts[s as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut events = self.events.clone();
        for (&s, e) in self.slot_of.iter().zip(&self.events) {
            let at = &mut next[s as usize];
            events[*at] = *e;
            *at += 1;
        }
        (
            keys,
            Grouped {
                seeds: self.seeds,
                events,
                starts,
            },
        )
    }
}

// === impl Grouped ===

impl<T> Grouped<T> {
    /// Slot `i`'s seed (taken: a second call gives `None`) and its events.
    pub fn take(&mut self, i: usize) -> (Option<T>, &mut [Event]) {
        let seed = self.seeds.get_mut(i).and_then(Option::take);
        let (a, b) = (self.starts[i], self.starts[i + 1]);
        (seed, &mut self.events[a..b])
    }
}
