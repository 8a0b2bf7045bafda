//! Presence and typing: ephemeral room state, gathered, never queued.
//!
//! Joins, leaves and typing notices do not travel through a room's fan-out
//! ring (where each would cost a write per stream and count against the
//! stream buffer, so a crowd of n cost n² writes and cut readers off).
//! Instead the hub gathers them per room for a window ([`PRESENCE_GATHER`]),
//! then publishes the window on the room's [`Board`]: one pre-encoded event
//! for everyone who saw the room as it was before the window, and the
//! room's [`Tally`] after it. A stream compares the board's position with
//! the tally it last told its client about (one atomic load per look), and
//! writes at most one presence event per window; a stream that missed
//! windows writes one summary from the tallies: what it could not write is
//! replaced by the current state, never queued, so presence never makes a
//! stream lag.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::message::{presence_frames, typing_frame, Change, Format, Tally};
use super::types::{ClientId, DisplayName};

/// How long presence changes and typing notices wait for company before a
/// room's streams are woken (a message wakes them at once, with whatever
/// is pending written first). A tenth of a second is not seen by people;
/// a crowd of thousands arriving costs each stream ten writes a second.
pub const PRESENCE_GATHER: Duration = Duration::from_millis(100);

/// On a busy node, a room's windows are spaced by this much per stream of
/// the node (beyond [`PRESENCE_GATHER`]): publishing a window wakes every
/// stream of the room for one write, so a room of n streams flushed every
/// 0.1 s through a crowd's arrival costs n writes per window, n² over the
/// storm, and a room of 10,000 then spends more CPU writing presence than
/// the window lasts; a hundred rooms of 100 filling up at once, the same.
/// With this spacing the node's presence costs at most about 10,000 stream
/// writes a second however its streams are spread: windows stay 0.1 s up
/// to 1,000 streams, 1 s at 10,000. A lone change in a quiet room still
/// goes out after [`PRESENCE_GATHER`]: the spacing is counted from the
/// room's previous window.
pub const SPACING_PER_STREAM: Duration = Duration::from_micros(100);

/// The least time between two published windows of a room on a node of
/// `streams`.
pub fn spacing(streams: usize) -> Duration {
    let per = SPACING_PER_STREAM.saturating_mul(u32::try_from(streams).unwrap_or(u32::MAX));
    PRESENCE_GATHER.max(per)
}

/// Typing notices a board keeps for streams that have not looked yet;
/// older ones are simply not shown (they are stale by then anyway).
const TYPING_KEPT: usize = 8;

/// One typing notice per client per this long.
pub const TYPING_EVERY: Duration = Duration::from_secs(2);
/// Typing notices per address per [`TYPING_EVERY`]: people behind one NAT
/// share it, and it bounds a script that mints a token per notice.
const TYPING_PER_IP: u32 = 16;
/// Clients and addresses remembered by the typing limiter before expired
/// entries are swept.
const TYPING_REMEMBERED: usize = 50_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A room's published presence and typing, shared by the hub and the
/// room's streams.
pub struct Board {
    /// `latest.end.seq()`, readable without the lock.
    flushed: AtomicU64,
    latest: Mutex<Arc<Flushed>>,
    /// How many typing notices were ever published here.
    typing_seq: AtomicU64,
    typing: Mutex<VecDeque<Typing>>,
}

struct Typing {
    seq: u64,
    about: ClientId,
    frame: Bytes,
}

/// One flushed window.
pub struct Flushed {
    /// The room as it was before the window, and after.
    pub start: Tally,
    pub end: Tally,
    pub online: usize,
    /// The window's changes in arrival order (the last of them, if some
    /// are unknown: a cluster node that missed a batch knows only counts).
    changes: Vec<Change>,
    /// For a viewer at `start`: JSON and text.
    frames: Option<(Bytes, Bytes)>,
}

impl Flushed {
    /// The presence event for a viewer whose client was told about the
    /// room up to `seen`, or `None` if nothing is new to it. Viewers at
    /// the window's start share the pre-encoded bytes; others (a stream
    /// that opened during the window, or fell behind) get theirs made.
    pub fn frame_for(&self, seen: Tally, format: Format) -> Option<Bytes> {
        if seen.seq() >= self.end.seq() {
            return None;
        }
        let pick = |(json, text): &(Bytes, Bytes)| match format {
            Format::Json => json.clone(),
            Format::Text => text.clone(),
        };
        if seen == self.start {
            return self.frames.as_ref().map(pick);
        }
        presence_frames(seen, self.end, &self.changes, self.online).map(|f| pick(&f))
    }
}

impl Board {
    pub fn new(at: Tally, online: usize) -> Self {
        Board {
            flushed: AtomicU64::new(at.seq()),
            latest: Mutex::new(Arc::new(Flushed {
                start: at,
                end: at,
                online,
                changes: Vec::new(),
                frames: None,
            })),
            typing_seq: AtomicU64::new(0),
            typing: Mutex::new(VecDeque::with_capacity(TYPING_KEPT)),
        }
    }

    /// Whether a stream that saw `seen` has presence to write: one atomic load.
    pub fn presence_after(&self, seen: Tally) -> bool {
        self.flushed.load(SeqCst) > seen.seq()
    }

    pub fn latest(&self) -> Arc<Flushed> {
        lock(&self.latest).clone()
    }

    /// Typing notices published so far.
    pub fn typing_seq(&self) -> u64 {
        self.typing_seq.load(SeqCst)
    }

    /// The typing notices after `seen` that are not about `viewer`, as one
    /// chunk (`None` if there are none), and the new position.
    pub fn typing_after(&self, seen: u64, viewer: ClientId) -> (Option<Bytes>, u64) {
        let kept = lock(&self.typing);
        let mut out: Option<BytesMut> = None;
        let mut to = seen;
        for t in kept.iter().filter(|t| t.seq > seen) {
            to = t.seq;
            if t.about != viewer {
                out.get_or_insert_with(BytesMut::new)
                    .extend_from_slice(&t.frame);
            }
        }
        (out.map(BytesMut::freeze), to)
    }

    /// Publishes a window: presence first (if any changed), then typing.
    fn publish(&self, window: Flushed, typing: Vec<(ClientId, Bytes)>) {
        if window.end.seq() > window.start.seq() {
            let end = window.end.seq();
            *lock(&self.latest) = Arc::new(window);
            // After the window is in place: a stream that sees the new
            // position finds the window that goes with it.
            self.flushed.store(end, SeqCst);
        }
        if typing.is_empty() {
            return;
        }
        let mut kept = lock(&self.typing);
        let mut seq = self.typing_seq.load(SeqCst);
        for (about, frame) in typing {
            seq += 1;
            if kept.len() == TYPING_KEPT {
                kept.pop_front();
            }
            kept.push_back(Typing { seq, about, frame });
        }
        self.typing_seq.store(seq, SeqCst);
    }
}

/// The changes and typing notices of a room's current window, and the
/// room's tally including them.
#[derive(Default)]
pub struct Window {
    /// The room's tally now, pending changes included.
    pub tally: Tally,
    /// The tally at the window's start.
    start: Tally,
    changes: Vec<Change>,
    typing: Vec<(ClientId, Bytes)>,
    /// A flush is scheduled.
    pub timer: bool,
    /// When the previous window was published.
    flushed_at: Option<tokio::time::Instant>,
}

impl Window {
    pub fn new(at: Tally) -> Self {
        Window {
            tally: at,
            start: at,
            ..Window::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.typing.is_empty() && self.start == self.tally
    }

    /// When a window whose first change comes `now` is published, in a
    /// room of `streams`: [`PRESENCE_GATHER`] later, and not before
    /// [`spacing`] after the previous window.
    pub fn due(&self, now: tokio::time::Instant, streams: usize) -> tokio::time::Instant {
        let gathered = now + PRESENCE_GATHER;
        match self.flushed_at {
            Some(at) => gathered.max(at + spacing(streams)),
            None => gathered,
        }
    }

    pub fn change(&mut self, change: Change) {
        self.tally.count(change.kind);
        self.changes.push(change);
    }

    /// Changes that happened elsewhere (cluster mode): `from` is the tally
    /// before them, `to` after. A gap (a batch this node missed) keeps the
    /// counts right; the names in the gap are unknown.
    pub fn changes_between(&mut self, from: Tally, to: Tally, changes: Vec<Change>) {
        if to.seq() <= self.tally.seq() {
            return; // already counted (a batch heard twice)
        }
        if self.tally == Tally::default() && self.start == self.tally && self.changes.is_empty() {
            // A room this node just started to watch: its history is
            // what the streams' hellos counted, not news.
            self.start = from;
            self.tally = from;
        }
        if from != self.tally {
            self.changes.clear();
        }
        self.changes.extend(changes);
        self.tally = to;
    }

    pub fn typing(&mut self, about: ClientId, name: &DisplayName) {
        // A crowd typing at once: the board keeps the last few anyway.
        if self.typing.len() == TYPING_KEPT {
            self.typing.remove(0);
        }
        self.typing.push((about, typing_frame(name)));
    }

    /// Publishes the window on `board` and starts the next one.
    pub fn flush(&mut self, board: &Board, online: usize) {
        let changes = std::mem::take(&mut self.changes);
        let frames = presence_frames(self.start, self.tally, &changes, online);
        let window = Flushed {
            start: self.start,
            end: self.tally,
            online,
            changes,
            frames,
        };
        board.publish(window, std::mem::take(&mut self.typing));
        self.start = self.tally;
        self.flushed_at = Some(tokio::time::Instant::now());
    }
}

/// One typing notice per client per [`TYPING_EVERY`], and at most
/// [`TYPING_PER_IP`] per address in that time. Memory is bounded: beyond
/// [`TYPING_REMEMBERED`] entries the expired ones are swept, and if none
/// has expired new clients are refused until some do.
#[derive(Default)]
pub struct TypingLimiter {
    clients: HashMap<ClientId, Instant>,
    ips: HashMap<IpAddr, (Instant, u32)>,
}

impl TypingLimiter {
    /// `Err(seconds to wait)` when over the limit; a refusal counts nothing.
    pub fn check(&mut self, client: ClientId, ip: Option<IpAddr>, now: Instant) -> Result<(), u64> {
        let expired = |at: Instant| now.duration_since(at) >= TYPING_EVERY;
        let wait = |at: Instant| (TYPING_EVERY - now.duration_since(at)).as_secs().max(1);
        if self.clients.len() >= TYPING_REMEMBERED {
            self.clients.retain(|_, at| !expired(*at));
            self.ips.retain(|_, (at, _)| !expired(*at));
        }
        if let Some(&at) = self.clients.get(&client) {
            if !expired(at) {
                return Err(wait(at));
            }
        } else if self.clients.len() >= TYPING_REMEMBERED {
            return Err(TYPING_EVERY.as_secs());
        }
        if let Some(ip) = ip {
            let entry = self.ips.entry(ip).or_insert((now, 0));
            if expired(entry.0) {
                *entry = (now, 0);
            }
            if entry.1 >= TYPING_PER_IP {
                return Err(wait(entry.0));
            }
            entry.1 += 1;
        }
        self.clients.insert(client, now);
        Ok(())
    }
}

/// The pieces a room keeps for presence: the board its streams read and
/// the window being gathered.
pub struct RoomPresence {
    pub board: Arc<Board>,
    pub window: Window,
}

impl RoomPresence {
    pub fn new() -> Self {
        RoomPresence {
            board: Arc::new(Board::new(Tally::default(), 0)),
            window: Window::new(Tally::default()),
        }
    }
}

impl Default for RoomPresence {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::message::PresenceKind;
    use crate::sse::{Item, Parser};

    fn join(name: &str, about: u128) -> Change {
        Change {
            kind: PresenceKind::Join,
            name: DisplayName::parse(name).unwrap(),
            about: ClientId::test(about),
        }
    }

    fn events(b: &Bytes) -> Vec<(String, String)> {
        Parser::new()
            .feed(b)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some((e.event, e.data)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn viewers_at_the_start_share_bytes_and_others_get_their_part() {
        let board = Board::new(Tally::default(), 0);
        let mut w = Window::new(Tally::default());
        w.change(join("a", 1));
        let after_a = w.tally;
        w.change(join("b", 2));
        w.change(join("c", 3));
        w.flush(&board, 3);
        assert!(board.presence_after(Tally::default()));
        let f = board.latest();
        let x = f.frame_for(Tally::default(), Format::Json).unwrap();
        let y = f.frame_for(Tally::default(), Format::Json).unwrap();
        assert_eq!(x.as_ptr(), y.as_ptr(), "shared, not re-encoded");
        assert_eq!(events(&x)[0].0, "presence");
        // a opened its stream after its own join: it hears of b and c only.
        let mine = f.frame_for(after_a, Format::Text).unwrap();
        assert_eq!(
            events(&mine),
            [("presence".into(), ">> 2 joined (3 online)".into())]
        );
        // c's stream counted everything in its hello: nothing to say.
        assert!(!board.presence_after(w.tally));
        assert!(f.frame_for(w.tally, Format::Json).is_none());
    }

    #[test]
    fn a_gap_in_what_a_node_heard_keeps_counts_right() {
        let mut w = Window::new(Tally::default());
        let board = Board::new(Tally::default(), 0);
        w.changes_between(
            Tally::default(),
            Tally { joined: 1, left: 0 },
            vec![join("a", 1)],
        );
        // A batch was missed: 5 joins nobody here heard of, then one we did.
        w.changes_between(
            Tally { joined: 6, left: 0 },
            Tally { joined: 7, left: 0 },
            vec![join("g", 7)],
        );
        w.flush(&board, 7);
        let f = board.latest();
        let e = events(&f.frame_for(Tally::default(), Format::Text).unwrap());
        assert_eq!(e[0].1, ">> 7 joined (7 online)");
        let e = events(
            &f.frame_for(Tally { joined: 6, left: 0 }, Format::Json)
                .unwrap(),
        );
        assert_eq!(e[0], ("join".into(), r#"{"name":"g","online":7}"#.into()));
    }

    #[tokio::test(start_paused = true)]
    async fn big_rooms_space_their_windows_and_a_lone_change_still_goes_out_soon() {
        use tokio::time::{advance, Instant};
        assert_eq!(spacing(0), PRESENCE_GATHER);
        assert_eq!(spacing(1_000), PRESENCE_GATHER, "0.1 s up to 1,000 streams");
        assert_eq!(spacing(10_000), Duration::from_secs(1));
        let board = Board::new(Tally::default(), 0);
        let mut w = Window::new(Tally::default());
        let t0 = Instant::now();
        assert_eq!(w.due(t0, 10_000), t0 + PRESENCE_GATHER, "no window yet");
        w.change(join("a", 1));
        w.flush(&board, 1);
        // The next change right away: a small room gathers for 0.1 s, a
        // room of 10,000 waits for a second after the last window.
        assert_eq!(w.due(t0, 500), t0 + PRESENCE_GATHER);
        assert_eq!(w.due(t0, 10_000), t0 + Duration::from_secs(1));
        advance(Duration::from_millis(950)).await;
        let t1 = Instant::now();
        assert_eq!(w.due(t1, 10_000), t1 + PRESENCE_GATHER, "never less");
        // After a quiet spell, a lone change goes out 0.1 s later.
        advance(Duration::from_secs(5)).await;
        let t2 = Instant::now();
        assert_eq!(w.due(t2, 19_000), t2 + PRESENCE_GATHER);
    }

    #[test]
    fn typing_skips_the_typist_and_keeps_only_the_last_few() {
        let board = Board::new(Tally::default(), 0);
        let mut w = Window::new(Tally::default());
        w.typing(ClientId::test(1), &DisplayName::parse("alice").unwrap());
        w.typing(ClientId::test(2), &DisplayName::parse("bob").unwrap());
        w.flush(&board, 2);
        assert!(
            !board.presence_after(Tally::default()),
            "typing is no presence"
        );
        let (chunk, to) = board.typing_after(0, ClientId::test(1));
        assert_eq!(to, 2);
        assert_eq!(
            events(&chunk.unwrap()),
            [("typing".into(), r#"{"name":"bob"}"#.into())]
        );
        let (none, _) = board.typing_after(1, ClientId::test(2));
        assert!(none.is_none(), "bob does not see his own");
        for i in 0..20 {
            w.typing(
                ClientId::test(100 + i),
                &DisplayName::parse(&format!("t{i}")).unwrap(),
            );
        }
        w.flush(&board, 2);
        let (chunk, to) = board.typing_after(2, ClientId::test(1));
        assert_eq!(events(&chunk.unwrap()).len(), TYPING_KEPT);
        assert_eq!(to, 2 + TYPING_KEPT as u64);
    }

    #[test]
    fn typing_is_limited_per_client_and_per_address() {
        let mut l = TypingLimiter::default();
        let t0 = Instant::now();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(l.check(ClientId::test(1), Some(ip), t0), Ok(()));
        assert_eq!(
            l.check(ClientId::test(1), Some(ip), t0 + Duration::from_millis(500)),
            Err(1)
        );
        assert_eq!(
            l.check(ClientId::test(1), Some(ip), t0 + TYPING_EVERY),
            Ok(())
        );
        let t1 = t0 + TYPING_EVERY;
        for c in 2..=TYPING_PER_IP as u128 {
            assert_eq!(
                l.check(ClientId::test(c), Some(ip), t1),
                Ok(()),
                "client {c}"
            );
        }
        assert!(
            l.check(ClientId::test(999), Some(ip), t1).is_err(),
            "the address is spent"
        );
        assert_eq!(l.check(ClientId::test(999), None, t1), Ok(()));
    }
}
