//! The history stores (memory and SQLite) against a model: any sequence of
//! appends, reads and prunes. Ids strictly increase, `after` returns exactly
//! what was appended after an id (oldest first, up to the limit), `latest`
//! the newest, and a `client_msg_id` the same sender used before gives back
//! the original id and stores nothing.
//!
//! The memory store is fresh per input. The SQLite store is one file in
//! /dev/shm (or the temp dir) per process, reopened now and then; each input
//! uses its own room names and senders there, so inputs cannot see each
//! other.

#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use ssechat::chat::history::{Appended, History, NewMessage};
use ssechat::chat::types::{ClientId, ClientMsgId, DisplayName, EventId, MessageText, RoomName};
use ssechat::config::Durability;
use ssechat::store::memory::MemoryStore;
use ssechat::store::sqlite::SqliteStore;

#[derive(Debug)]
struct Msg {
    room: u8,
    sender: u8,
    text: String,
    key: Option<u8>,
}

#[derive(Debug)]
enum After {
    None,
    /// The n-th id this input was given (modulo), plus a small offset.
    Known(u8, i8),
    Raw(u64),
}

#[derive(Debug)]
enum Op {
    Append(Vec<Msg>),
    After {
        room: u8,
        after: After,
        limit: usize,
    },
    Latest {
        room: u8,
        limit: usize,
    },
    LastId {
        room: u8,
    },
    Rooms,
    Prune {
        keep: u8,
    },
}

/// The input format: records separated by 0x1E, each a kind byte and
/// fields separated by 0x1F:
/// `m room sender key text` adds a message to the batch (`key`: empty for
/// none), `c` appends the batch (also done before any other record),
/// `a room after limit` reads after an id (`after`: empty for none, `kN`
/// or `kN+D`/`kN-D` for the N-th id given out plus D, else a number;
/// `limit`: a number, or `*` for no limit), `l room limit` the latest,
/// `i room` the last id, `r` the rooms, `p keep` prunes.
fn parse_ops(data: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut batch = Vec::new();
    for record in data.split(|&b| b == 0x1e) {
        let Some((&kind, rest)) = record.split_first() else {
            continue;
        };
        let f: Vec<String> = rest
            .split(|&b| b == 0x1f)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let text = |i: usize| f.get(i).cloned().unwrap_or_default();
        let small = |i: usize| {
            f.get(i)
                .and_then(|s| s.trim().parse::<u8>().ok())
                .unwrap_or(0)
        };
        if kind == b'm' {
            batch.push(Msg {
                room: small(0),
                sender: small(1),
                key: f
                    .get(2)
                    .filter(|k| !k.is_empty())
                    .map(|k| k.bytes().fold(0u8, |a, b| a.wrapping_add(b))),
                text: text(3),
            });
            continue;
        }
        if !batch.is_empty() {
            ops.push(Op::Append(std::mem::take(&mut batch)));
        }
        let limit = |i: usize| match f.get(i).map(|s| s.trim()) {
            Some("*") => usize::MAX,
            Some(s) => s.parse().unwrap_or(0),
            None => 10,
        };
        ops.push(match kind {
            b'a' => Op::After {
                room: small(0),
                after: after(f.get(1).map_or("", |s| s.trim())),
                limit: limit(2),
            },
            b'l' => Op::Latest {
                room: small(0),
                limit: limit(1),
            },
            b'i' => Op::LastId { room: small(0) },
            b'r' => Op::Rooms,
            b'p' => Op::Prune { keep: small(0) },
            _ => continue,
        });
    }
    if !batch.is_empty() {
        ops.push(Op::Append(batch));
    }
    ops
}

fn after(s: &str) -> After {
    if s.is_empty() {
        return After::None;
    }
    if let Some(k) = s.strip_prefix('k') {
        let (n, d) = match k.find(['+', '-']) {
            Some(i) => (
                &k[..i],
                k[i..].trim_start_matches('+').parse::<i8>().unwrap_or(0),
            ),
            None => (k, 0),
        };
        return After::Known(n.parse().unwrap_or(0), d);
    }
    After::Raw(s.parse().unwrap_or(u64::MAX))
}

/// Ids are opaque outside the crate: built and read through their text.
fn eid(n: u64) -> EventId {
    EventId::parse(&n.to_string()).expect("a u64 is an id")
}

fn num(id: EventId) -> u64 {
    id.to_string().parse().expect("ids are decimal")
}

const ROOMS: u8 = 4;
const SENDERS: u8 = 3;
/// Inputs per SQLite file before it is replaced (keeps it small and fast).
const REOPEN_EVERY: u64 = 2000;

struct Sqlite {
    store: Option<SqliteStore>,
    path: PathBuf,
    uses: u64,
    input: u64,
}

static SQLITE: Mutex<Option<Sqlite>> = Mutex::new(None);

const PREFIX: &str = "ssechat-fuzz-store-";

/// Where the SQLite files go: /dev/shm if there is one (no disk I/O). Files
/// left by earlier runs that are no longer alive are removed.
fn sqlite_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let dir = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|p| !PathBuf::from(format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    dir
}

/// One stored message in the model.
#[derive(Debug, Clone)]
struct Kept {
    id: EventId,
    text: String,
    sender: ClientId,
    pruned: bool,
}

struct Model<'a> {
    ns: String,
    salt: u128,
    rooms: HashMap<u8, Vec<Kept>>,
    ids: Vec<EventId>,
    keys: HashMap<(u8, u8), (EventId, u8)>,
    store: &'a dyn History,
    name: &'static str,
}

impl Model<'_> {
    fn room(&self, r: u8) -> RoomName {
        RoomName::parse(&format!("{}r{}", self.ns, r % ROOMS)).unwrap()
    }

    fn sender(&self, s: u8) -> ClientId {
        ClientId::from_hex(&format!("{:032x}", self.salt | u128::from(s % SENDERS)))
    }

    fn after_id(&self, a: &After) -> Option<EventId> {
        match a {
            After::None => None,
            After::Known(i, d) if !self.ids.is_empty() => {
                let id = num(self.ids[*i as usize % self.ids.len()]);
                Some(eid(id.saturating_add_signed(i64::from(*d))))
            }
            After::Known(_, d) => Some(eid(u64::from(d.unsigned_abs()))),
            After::Raw(n) => Some(eid(*n)),
        }
    }

    fn kept(&self, r: u8) -> Vec<&Kept> {
        self.rooms
            .get(&(r % ROOMS))
            .map(|v| v.iter().filter(|k| !k.pruned).collect())
            .unwrap_or_default()
    }

    fn check_list(
        &self,
        what: &str,
        got: &[ssechat::chat::message::Message],
        want: &[&Kept],
        room: &RoomName,
    ) {
        let got_ids: Vec<u64> = got.iter().map(|m| num(m.id)).collect();
        let want_ids: Vec<u64> = want.iter().map(|k| num(k.id)).collect();
        assert_eq!(got_ids, want_ids, "{}: {what}", self.name);
        for (m, k) in got.iter().zip(want) {
            assert_eq!(m.text, k.text, "{}: {what}: text of {}", self.name, m.id);
            assert_eq!(
                m.sender, k.sender,
                "{}: {what}: sender of {}",
                self.name, m.id
            );
            assert_eq!(&m.room, room, "{}: {what}: room of {}", self.name, m.id);
        }
    }

    fn run(&mut self, op: &Op) {
        let s = self.store;
        match op {
            Op::Append(msgs) => {
                let batch: Vec<NewMessage> = msgs
                    .iter()
                    .take(16)
                    .filter(|m| !m.text.is_empty())
                    .map(|m| NewMessage {
                        room: self.room(m.room),
                        name: DisplayName::parse("fuzz").unwrap(),
                        text: MessageText::parse(m.text.clone(), 0).unwrap(),
                        sender: self.sender(m.sender),
                        client_msg_id: m.key.map(|k| ClientMsgId::parse(&format!("k{k}")).unwrap()),
                    })
                    .collect();
                let plain: Vec<&Msg> = msgs
                    .iter()
                    .take(16)
                    .filter(|m| !m.text.is_empty())
                    .collect();
                let out = s.append(&batch, 1_700_000_000_000).expect("append");
                assert_eq!(
                    out.len(),
                    batch.len(),
                    "{}: one outcome per message",
                    self.name
                );
                for (m, o) in plain.iter().zip(out) {
                    let key = m.key.map(|k| (m.sender % SENDERS, k));
                    let known = key.and_then(|k| self.keys.get(&k).copied());
                    match o {
                        Appended::New(stored) => {
                            if let Some((id, _)) = known {
                                // Allowed only if the original is gone (pruned).
                                let gone = self
                                    .rooms
                                    .values()
                                    .flatten()
                                    .any(|k| k.id == id && k.pruned);
                                assert!(gone, "{}: key {key:?} of id {id} stored twice", self.name);
                            }
                            if let Some(last) = self.ids.last() {
                                assert!(
                                    stored.id > *last,
                                    "{}: id {} after {}",
                                    self.name,
                                    stored.id,
                                    last
                                );
                            }
                            assert_eq!(stored.text, m.text);
                            self.ids.push(stored.id);
                            let sender = self.sender(m.sender);
                            self.rooms.entry(m.room % ROOMS).or_default().push(Kept {
                                id: stored.id,
                                text: m.text.clone(),
                                sender,
                                pruned: false,
                            });
                            if let Some(k) = key {
                                self.keys.insert(k, (stored.id, m.room % ROOMS));
                            }
                        }
                        Appended::Duplicate { id, room } => {
                            let (want_id, want_room) = known.unwrap_or_else(|| {
                                panic!("{}: duplicate of an unknown key {key:?}", self.name)
                            });
                            assert_eq!(
                                id, want_id,
                                "{}: duplicate gives the original id",
                                self.name
                            );
                            assert_eq!(room, self.room(want_room), "{}: and its room", self.name);
                        }
                    }
                }
            }
            Op::After { room, after, limit } => {
                let a = self.after_id(after);
                let r = self.room(*room);
                let got = s.after(&r, a, *limit).expect("after");
                let want: Vec<&Kept> = self
                    .kept(*room)
                    .into_iter()
                    .filter(|k| a.is_none_or(|a| k.id > a))
                    .take(*limit)
                    .collect();
                self.check_list(&format!("after({a:?}, {limit})"), &got, &want, &r);
            }
            Op::Latest { room, limit } => {
                let r = self.room(*room);
                let got = s.latest(&r, *limit).expect("latest");
                let kept = self.kept(*room);
                let want = &kept[kept.len().saturating_sub(*limit)..];
                self.check_list(&format!("latest({limit})"), &got, want, &r);
            }
            Op::LastId { room } => {
                let got = s.last_id(&self.room(*room)).expect("last_id");
                assert_eq!(
                    got,
                    self.kept(*room).last().map(|k| k.id),
                    "{}: last_id",
                    self.name
                );
            }
            Op::Rooms => {
                // Other inputs' rooms may share the SQLite file: ask for
                // all, keep this input's (their order is kept).
                let got: Vec<String> = s
                    .rooms(usize::MAX)
                    .expect("rooms")
                    .into_iter()
                    .map(|r| r.as_str().to_owned())
                    .filter(|r| r.starts_with(&self.ns))
                    .collect();
                // The most recently active first: by newest id.
                let mut want: Vec<(EventId, String)> = (0..ROOMS)
                    .filter_map(|r| {
                        Some((self.kept(r).last()?.id, self.room(r).as_str().to_owned()))
                    })
                    .collect();
                want.sort_by(|a, b| b.0.cmp(&a.0));
                let want: Vec<String> = want.into_iter().map(|(_, r)| r).collect();
                assert_eq!(got, want, "{}: rooms", self.name);
            }
            Op::Prune { keep } => {
                // The server prunes to --history, which is at least 1 when
                // it prunes at all (SQLite's table of rooms remembers a room
                // pruned to nothing; the memory store forgets it).
                let keep = 1 + usize::from(*keep % 8);
                s.prune(keep).expect("prune");
                for list in self.rooms.values_mut() {
                    let mut live: Vec<&mut Kept> = list.iter_mut().filter(|k| !k.pruned).collect();
                    let n = live.len().saturating_sub(keep);
                    for k in live.iter_mut().take(n) {
                        k.pruned = true;
                    }
                }
            }
        }
    }
}

fn check(store: &dyn History, name: &'static str, ns: String, salt: u128, ops: &[Op]) {
    let mut model = Model {
        ns,
        salt,
        rooms: HashMap::new(),
        ids: Vec::new(),
        keys: HashMap::new(),
        store,
        name,
    };
    for op in ops.iter().take(32) {
        model.run(op);
    }
}

fuzz_target!(|data: &[u8]| {
    let ops = parse_ops(data);
    let memory = MemoryStore::new(0);
    check(&memory, "memory", String::new(), 1 << 64, &ops);

    let mut guard = SQLITE.lock().unwrap_or_else(|e| e.into_inner());
    let db = guard.get_or_insert_with(|| Sqlite {
        store: None,
        path: sqlite_dir().join(format!("{PREFIX}{}.db", std::process::id())),
        uses: 0,
        input: 0,
    });
    if db.store.is_none() || db.uses >= REOPEN_EVERY {
        db.store = None;
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", db.path.display()));
        }
        db.store = Some(SqliteStore::open_with(&db.path, Durability::Normal).expect("open sqlite"));
        db.uses = 0;
    }
    db.uses += 1;
    db.input += 1;
    let ns = format!("i{}-", db.input);
    let salt = u128::from(db.input) << 64;
    check(db.store.as_ref().unwrap(), "sqlite", ns, salt, &ops);
});
