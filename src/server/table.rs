//! The connections of one port, what each is waiting for, and which one goes when the port
//! is full.
//!
//! Every connection is in one [`Phase`] at a time, entered at a known instant. When a new
//! connection arrives at the cap, one connection is evicted: never one in
//! [`Phase::Handler`] (then our own code is working, not the client); among the others, one
//! of the peer address holding the most connections (a flood comes from few addresses, the
//! kubelet and the API server hold few), and of those the one longest in its current phase
//! (least recently active). A slow or idle connection ages from the moment its phase began,
//! whatever it trickles, so an attacker's connections are older than a legitimate client's
//! fresh one even from the same address. The cap is therefore a bound on memory that never
//! makes a new client wait.

use std::collections::HashMap;
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

#[derive(Clone, Copy, Debug)]
struct State {
    phase: Phase,
    since: Instant,
}

/// One connection's entry: its phase, the body bytes it holds, and its eviction signal.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    peer: IpAddr,
    state: Mutex<State>,
    /// Body bytes this connection holds from the port's budget.
    held: AtomicUsize,
    /// Woken on every phase change (the connection's deadline moves).
    pub changed: Notify,
    /// Woken when the table evicts this connection.
    pub evicted: Notify,
}

impl Slot {
    fn new(id: u64, peer: IpAddr, phase: Phase) -> Slot {
        Slot {
            id,
            peer,
            state: Mutex::new(State {
                phase,
                since: Instant::now(),
            }),
            held: AtomicUsize::new(0),
            changed: Notify::new(),
            evicted: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current phase and when it began.
    pub fn phase(&self) -> (Phase, Instant) {
        let s = *self.lock();
        (s.phase, s.since)
    }

    /// Moves to `phase` now.
    pub fn enter(&self, phase: Phase) {
        *self.lock() = State {
            phase,
            since: Instant::now(),
        };
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle keep-alive connection starts a new request head, whose
    /// deadline runs from here rather than from the end of the previous response.
    pub fn on_bytes(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Idle {
            *state = State {
                phase: Phase::Head,
                since: Instant::now(),
            };
            drop(state);
            self.changed.notify_one();
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

/// The connections of one port.
#[derive(Debug)]
pub struct Table {
    cap: usize,
    next_id: AtomicU64,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
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
        self.table.lock().remove(&self.slot.id);
        self.table.freed.notify_one();
    }
}

/// What eviction knows of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub id: u64,
    pub peer: IpAddr,
    pub phase: Phase,
    pub since: Instant,
}

/// Picks the connection to evict: of the peer with the most connections, the one longest in
/// its phase; never one in its handler.
pub fn victim(candidates: &[Candidate]) -> Option<u64> {
    let mut per_peer: HashMap<IpAddr, usize> = HashMap::new();
    for c in candidates {
        *per_peer.entry(c.peer).or_default() += 1;
    }
    candidates
        .iter()
        .filter(|c| c.phase != Phase::Handler)
        .min_by_key(|c| {
            let held = per_peer.get(&c.peer).copied().unwrap_or(0);
            (std::cmp::Reverse(held), c.since, c.id)
        })
        .map(|c| c.id)
}

impl Table {
    pub fn new(cap: usize) -> Arc<Table> {
        Arc::new(Table {
            cap: cap.max(1),
            next_id: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// A place for a new connection starting in `phase`, evicting one if the port is full.
    /// `None` when full and every connection is in its handler: the caller waits for
    /// [`Table::freed`].
    pub fn admit(self: &Arc<Self>, peer: IpAddr, phase: Phase) -> Option<(Entry, bool)> {
        let mut slots = self.lock();
        let mut evicted = false;
        if slots.len() >= self.cap {
            let candidates: Vec<Candidate> = slots
                .values()
                .map(|s| {
                    let (phase, since) = s.phase();
                    Candidate {
                        id: s.id,
                        peer: s.peer,
                        phase,
                        since,
                    }
                })
                .collect();
            let id = victim(&candidates)?;
            if let Some(old) = slots.remove(&id) {
                old.evicted.notify_one();
                evicted = true;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new(id, peer, phase));
        slots.insert(id, slot.clone());
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
        let mut slow: Vec<(Instant, u64, usize)> = slots
            .values()
            .filter(|s| s.id != me.id)
            .filter_map(|s| {
                let (phase, since) = s.phase();
                let held = s.held.load(Ordering::Relaxed);
                (phase == Phase::Body && held > 0 && now.duration_since(since) >= slow_after)
                    .then_some((since, s.id, held))
            })
            .collect();
        slow.sort_unstable();
        let (mut freed, mut count) = (0, 0);
        for (_, id, held) in slow {
            if freed >= need {
                break;
            }
            if let Some(old) = slots.remove(&id) {
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

    fn c(id: u64, peer: IpAddr, phase: Phase, since: Instant) -> Candidate {
        Candidate {
            id,
            peer,
            phase,
            since,
        }
    }

    #[test]
    fn the_longest_waiting_connection_goes_first_but_never_a_working_handler() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(
            victim(&[
                c(1, A, Phase::Handler, at(0)),
                c(2, A, Phase::Idle, at(3)),
                c(3, A, Phase::Head, at(1)),
                c(4, A, Phase::Body, at(2)),
            ]),
            Some(3)
        );
        assert_eq!(victim(&[c(1, A, Phase::Handler, at(0))]), None);
        assert_eq!(victim(&[]), None);
    }

    #[test]
    fn the_peer_holding_the_most_connections_loses_one_first() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        // B's connection is the oldest, but A holds more.
        assert_eq!(
            victim(&[
                c(1, B, Phase::Idle, at(0)),
                c(2, A, Phase::Head, at(2)),
                c(3, A, Phase::Head, at(1)),
            ]),
            Some(3)
        );
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
