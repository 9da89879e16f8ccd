//! The connections of one port, what each is waiting for, and which one goes when the port
//! is full.
//!
//! Every connection is in one [`Phase`] at a time, entered at a known instant (the phase
//! sets its deadline, see `conn`). When a new connection arrives at the cap, one connection
//! is evicted: never one in [`Phase::Handler`] (then our own code is working, not the
//! client); among the others, one of the peer address holding the most connections (a flood
//! comes from few addresses, the kubelet and the API server hold few), and of those the
//! oldest. A legitimate client's connection is its peer's newest, so even a flood from its
//! own address reaches it last. The cap is therefore a bound on memory that never makes a
//! new client wait.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What a connection is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The client's TLS handshake.
    Handshake,
    /// The rest of a request head.
    Head,
    /// Nothing: a keep-alive connection between requests.
    Idle,
    /// The rest of a request body.
    Body,
    /// The handler's answer (never evicted, no deadline).
    Handler,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Handshake,
        Phase::Head,
        Phase::Idle,
        Phase::Body,
        Phase::Handler,
    ];
}

/// A phase and the instant it began, packed in one word so that a request's phase changes
/// are single atomic stores instead of lock round trips (three per request, on the endpoint's
/// hot path): the low 3 bits are the phase, the rest nanoseconds since [`epoch`], which lasts
/// for 73 years of uptime.
fn pack(phase: Phase, since: Instant) -> u64 {
    let nanos = u64::try_from(since.saturating_duration_since(epoch()).as_nanos())
        .unwrap_or(u64::MAX)
        .min(u64::MAX >> 3);
    (nanos << 3) | phase as u64
}

fn unpack(word: u64) -> (Phase, Instant) {
    let phase = Phase::ALL
        .get((word & 0b111) as usize)
        .copied()
        .unwrap_or(Phase::Handler);
    (phase, epoch() + Duration::from_nanos(word >> 3))
}

/// The instant phase times count from, read at the first [`pack`] (the very first phase, begun
/// a moment before, reads as begun at it).
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// One connection's entry: its phase, the body bytes it holds, and its eviction signal.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    peer: IpAddr,
    /// The phase and since when, [`pack`]ed. Written only by the connection's own task; read
    /// by its watchdog and by the table choosing whom to evict.
    state: AtomicU64,
    /// Body bytes this connection holds from the port's budget.
    held: AtomicUsize,
    /// Woken when the table evicts this connection.
    pub evicted: Notify,
}

impl Slot {
    fn new(id: u64, peer: IpAddr, phase: Phase) -> Slot {
        Slot {
            id,
            peer,
            state: AtomicU64::new(pack(phase, Instant::now())),
            held: AtomicUsize::new(0),
            evicted: Notify::new(),
        }
    }

    /// The current phase and when it began.
    pub fn phase(&self) -> (Phase, Instant) {
        unpack(self.state.load(Ordering::Acquire))
    }

    /// Moves to `phase` now (the connection's watchdog reads it when it next wakes).
    pub fn enter(&self, phase: Phase) {
        self.state
            .store(pack(phase, Instant::now()), Ordering::Release);
    }

    /// Bytes arrived: an idle keep-alive connection starts a new request head, whose
    /// deadline runs from here rather than from the end of the previous response.
    pub fn on_bytes(&self) {
        if unpack(self.state.load(Ordering::Acquire)).0 == Phase::Idle {
            self.enter(Phase::Head);
        }
    }

    /// Counts `n` more body bytes held by this connection (the reader frees them all at once
    /// with [`Slot::release`]).
    pub fn hold(&self, n: usize) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    pub fn release(&self) {
        self.held.store(0, Ordering::Relaxed);
    }
}

/// The connections of one port, grouped by peer address and ordered by age within each.
#[derive(Debug, Default)]
struct Slots {
    by_peer: HashMap<IpAddr, BTreeMap<u64, Arc<Slot>>>,
    len: usize,
}

impl Slots {
    fn insert(&mut self, slot: Arc<Slot>) {
        self.by_peer
            .entry(slot.peer)
            .or_default()
            .insert(slot.id, slot);
        self.len += 1;
    }

    fn remove(&mut self, peer: IpAddr, id: u64) -> Option<Arc<Slot>> {
        let of_peer = self.by_peer.get_mut(&peer)?;
        let slot = of_peer.remove(&id)?;
        if of_peer.is_empty() {
            self.by_peer.remove(&peer);
        }
        self.len -= 1;
        Some(slot)
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.by_peer.values().flat_map(BTreeMap::values)
    }

    /// The connection to evict: the oldest of the peer holding the most, never one in its
    /// handler. Costs a look at each peer, not at each connection, so a port under a flood
    /// of new connections accepts them as fast as it can.
    fn victim(&self) -> Option<(IpAddr, u64)> {
        let mut peers: Vec<(&IpAddr, &BTreeMap<u64, Arc<Slot>>)> = self.by_peer.iter().collect();
        peers.sort_unstable_by_key(|(_, slots)| std::cmp::Reverse(slots.len()));
        peers.into_iter().find_map(|(peer, slots)| {
            slots
                .values()
                .find(|s| s.phase().0 != Phase::Handler)
                .map(|s| (*peer, s.id))
        })
    }
}

/// The connections of one port.
#[derive(Debug)]
pub struct Table {
    cap: usize,
    next_id: AtomicU64,
    slots: Mutex<Slots>,
    /// Woken when a slot is freed (the accept loop waits on it only when every connection
    /// is in its handler).
    pub freed: Notify,
}

/// A connection's place in the table; leaving it (drop) frees the place.
#[derive(Debug)]
pub struct Entry {
    table: Arc<Table>,
    pub slot: Arc<Slot>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.table.lock().remove(self.slot.peer, self.slot.id);
        self.table.freed.notify_one();
    }
}

impl Table {
    pub fn new(cap: usize) -> Arc<Table> {
        Arc::new(Table {
            cap: cap.max(1),
            next_id: AtomicU64::new(0),
            slots: Mutex::new(Slots::default()),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len
    }

    /// A place for a new connection from `peer` starting in `phase`, evicting one if the
    /// port is full. `None` when full and every connection is in its handler: the caller
    /// waits for [`Table::freed`].
    pub fn admit(self: &Arc<Self>, peer: IpAddr, phase: Phase) -> Option<(Entry, bool)> {
        let mut slots = self.lock();
        let mut evicted = false;
        if slots.len >= self.cap {
            let (old_peer, id) = slots.victim()?;
            if let Some(old) = slots.remove(old_peer, id) {
                old.evicted.notify_one();
                evicted = true;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new(id, peer, phase));
        slots.insert(slot.clone());
        drop(slots);
        Some((
            Entry {
                table: self.clone(),
                slot,
            },
            evicted,
        ))
    }

    /// Makes room for `need` body bytes by evicting connections other than `me` whose body
    /// has been arriving for longer than `slow_after`, oldest first, until what they hold
    /// covers `need`. Returns how many were evicted.
    pub fn evict_slow_bodies(&self, me: &Slot, need: usize, slow_after: Duration) -> usize {
        let now = Instant::now();
        let mut slots = self.lock();
        let mut slow: Vec<(Instant, u64, IpAddr, usize)> = slots
            .iter()
            .filter(|s| s.id != me.id)
            .filter_map(|s| {
                let (phase, since) = s.phase();
                let held = s.held.load(Ordering::Relaxed);
                (phase == Phase::Body && held > 0 && now.duration_since(since) >= slow_after)
                    .then_some((since, s.id, s.peer, held))
            })
            .collect();
        slow.sort_unstable();
        let (mut freed, mut count) = (0, 0);
        for (_, id, peer, held) in slow {
            if freed >= need {
                break;
            }
            if let Some(old) = slots.remove(peer, id) {
                old.evicted.notify_one();
                freed += held;
                count += 1;
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_oldest_connection_of_the_busiest_peer_goes_first_but_never_a_working_handler() {
        let table = Table::new(4);
        let (b_old, _) = table.admit(B, Phase::Idle).unwrap();
        let (a1, _) = table.admit(A, Phase::Head).unwrap();
        a1.slot.enter(Phase::Handler);
        let (a2, _) = table.admit(A, Phase::Head).unwrap();
        let (a3, _) = table.admit(A, Phase::Idle).unwrap();
        // Full: A holds the most; its oldest works in its handler, so its next one goes,
        // although B's connection is older.
        let (_new, evicted) = table.admit(B, Phase::Head).unwrap();
        assert!(evicted);
        let told =
            |e: &Entry| futures::FutureExt::now_or_never(e.slot.evicted.notified()).is_some();
        assert!(told(&a2));
        assert!(!told(&a1) && !told(&a3) && !told(&b_old));
    }

    #[test]
    fn a_full_table_evicts_rather_than_refuses() {
        let table = Table::new(2);
        let (a, _) = table.admit(A, Phase::Head).unwrap();
        let (b, _) = table.admit(A, Phase::Head).unwrap();
        b.slot.enter(Phase::Handler);
        let (_c, evicted) = table.admit(A, Phase::Head).unwrap();
        assert!(evicted);
        assert_eq!(table.len(), 2);
        // `a` was told, and its own drop later does not disturb the table.
        assert!(futures::FutureExt::now_or_never(a.slot.evicted.notified()).is_some());
        drop(a);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_table_of_working_handlers_makes_the_new_connection_wait() {
        let table = Table::new(1);
        let (a, _) = table.admit(A, Phase::Head).unwrap();
        a.slot.enter(Phase::Handler);
        assert!(table.admit(A, Phase::Head).is_none());
        drop(a);
        assert!(table.admit(A, Phase::Head).is_some());
    }

    #[test]
    fn a_packed_phase_keeps_its_phase_and_its_instant_to_the_nanosecond() {
        let start = epoch() + Duration::from_nanos(123_456_789_012);
        for phase in Phase::ALL {
            assert_eq!(unpack(pack(phase, start)), (phase, start));
        }
        // An instant before the epoch reads as the epoch.
        let (phase, since) = unpack(pack(Phase::Idle, epoch() - Duration::from_millis(1)));
        assert_eq!((phase, since), (Phase::Idle, epoch()));
    }

    #[test]
    fn bytes_on_an_idle_connection_start_a_new_head() {
        let table = Table::new(1);
        let (a, _) = table.admit(A, Phase::Idle).unwrap();
        a.slot.on_bytes();
        assert_eq!(a.slot.phase().0, Phase::Head);
        a.slot.enter(Phase::Body);
        a.slot.on_bytes();
        assert_eq!(a.slot.phase().0, Phase::Body);
    }

    #[test]
    fn slow_bodies_make_room_only_if_slow_and_only_as_much_as_needed() {
        let table = Table::new(8);
        let (me, _) = table.admit(A, Phase::Body).unwrap();
        let mut others = Vec::new();
        for _ in 0..3 {
            let (e, _) = table.admit(A, Phase::Body).unwrap();
            e.slot.hold(100);
            others.push(e);
        }
        assert_eq!(
            table.evict_slow_bodies(&me.slot, 150, Duration::from_secs(60)),
            0,
            "nothing is slow yet"
        );
        assert_eq!(table.evict_slow_bodies(&me.slot, 150, Duration::ZERO), 2);
        assert_eq!(table.len(), 2);
    }
}
