//! SQLite history (the default): one file, WAL mode, `synchronous=FULL`
//! (or NORMAL with `--db-sync normal`).
//!
//! Durability: the writer thread commits each batch in one transaction and
//! only then are the messages acknowledged (201) and broadcast, so after a
//! crash at any moment every acknowledged message is in the file, with the
//! id it was acknowledged with. `AUTOINCREMENT` keeps ids strictly
//! increasing across restarts, even after the newest rows were pruned.
//!
//! Concurrency: the writer has its own connection; reads use a small pool of
//! read connections (WAL lets them read while the writer writes); pruning
//! uses its own connection and deletes room by room, so it never holds the
//! write lock for long.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use crate::chat::history::{Appended, History, HistoryError, HistoryResult, NewMessage};
use crate::chat::message::Message;
use crate::chat::types::{ClientId, DisplayName, EventId, RoomName};
use crate::config::Durability;

/// The schema this build writes. Older files are migrated on open; newer
/// ones are refused (they may hold data this build would misread).
pub const SCHEMA_VERSION: i64 = 2;

/// The `synchronous` pragma for a durability setting.
fn sync_pragma(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    }
}

/// Read connections kept open for reuse.
const READ_POOL: usize = 4;

/// Why the database cannot be used, said so that an operator can act.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database {path} is locked by another process (is another ssechat running on it?)")]
    Locked { path: PathBuf },
    #[error("database {path} is corrupt or not an SQLite database: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("database {path} cannot be opened for writing: {detail} (check the path and its permissions, or use --db :memory:)")]
    NotWritable { path: PathBuf, detail: String },
    #[error("database {path} has schema version {found}, newer than this ssechat understands ({SCHEMA_VERSION}); upgrade ssechat or use another --db")]
    TooNew { path: PathBuf, found: i64 },
    #[error("database {path}: {detail}")]
    Other { path: PathBuf, detail: String },
}

pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    durability: Durability,
    /// Held for the life of the store: a second ssechat on the same file
    /// is refused at start instead of interleaving ids with this one.
    _lock: File,
}

fn unavailable(e: rusqlite::Error) -> HistoryError {
    HistoryError::Unavailable(e.to_string())
}

fn classify(path: &Path, e: rusqlite::Error) -> OpenError {
    let path = path.to_owned();
    let detail = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => OpenError::Locked { path },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            OpenError::Corrupt { path, detail }
        }
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            OpenError::NotWritable { path, detail }
        }
        _ => OpenError::Other { path, detail },
    }
}

fn connect(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", sync_pragma(durability))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens with full durability.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        Self::open_with(path, Durability::Full)
    }

    pub fn open_with(path: &Path, durability: Durability) -> Result<Self, OpenError> {
        let lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| OpenError::NotWritable {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked {
                    path: path.to_owned(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(OpenError::Other {
                    path: path.to_owned(),
                    detail: format!("cannot lock the file: {e}"),
                })
            }
        }
        let conn = connect(path, durability).map_err(|e| classify(path, e))?;
        // A short wait at start: a lock held by some other program should
        // fail the start quickly and clearly, not hang it.
        conn.busy_timeout(Duration::from_millis(1500))
            .map_err(|e| classify(path, e))?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if check != "ok" {
            return Err(OpenError::Corrupt {
                path: path.to_owned(),
                detail: check,
            });
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| classify(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::Other {
                path: path.to_owned(),
                detail: format!("cannot switch to WAL mode (got {mode})"),
            });
        }
        migrate(&conn).map_err(|e| match e {
            MigrateError::TooNew(found) => OpenError::TooNew {
                path: path.to_owned(),
                found,
            },
            MigrateError::Sql(e) => classify(path, e),
        })?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| classify(path, e))?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            durability,
            _lock: lock,
        })
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a pooled read connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> HistoryResult<T> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => connect(&self.path, self.durability).map_err(unavailable)?,
        };
        let result = f(&conn).map_err(unavailable);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READ_POOL {
            pool.push(conn);
        }
        result
    }
}

enum MigrateError {
    TooNew(i64),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sql(e)
    }
}

/// Brings the schema to `SCHEMA_VERSION`, one step per version, each in
/// its own transaction.
fn migrate(conn: &Connection) -> Result<(), MigrateError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(MigrateError::TooNew(version));
    }
    if version < 1 {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS messages (
                 id     INTEGER PRIMARY KEY AUTOINCREMENT,
                 room   TEXT    NOT NULL,
                 name   TEXT    NOT NULL,
                 text   TEXT    NOT NULL,
                 ts     INTEGER NOT NULL,
                 sender BLOB    NOT NULL
             );
             CREATE INDEX IF NOT EXISTS messages_room_id ON messages (room, id);
             CREATE TABLE IF NOT EXISTS idempotency (
                 sender BLOB    NOT NULL,
                 key    TEXT    NOT NULL,
                 id     INTEGER NOT NULL,
                 room   TEXT    NOT NULL,
                 PRIMARY KEY (sender, key)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS idempotency_id ON idempotency (id);
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    if version < 2 {
        // Each room's newest id, kept by the writer: the welcome page lists
        // the most recently active rooms with one indexed read instead of
        // grouping every message.
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS rooms (
                 room    TEXT    PRIMARY KEY,
                 last_id INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS rooms_last_id ON rooms (last_id);
             INSERT OR REPLACE INTO rooms (room, last_id)
                 SELECT room, MAX(id) FROM messages GROUP BY room;
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
    }
    Ok(())
}

fn row_to_message(
    room: &RoomName,
) -> impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<Message> + '_ {
    move |r| {
        let sender: Vec<u8> = r.get(4)?;
        let name: String = r.get(1)?;
        Ok(Message {
            id: EventId::assigned(r.get::<_, i64>(0)? as u64),
            room: room.clone(),
            // Names were validated when stored; a hand-edited row falls back.
            name: DisplayName::parse(&name)
                .unwrap_or_else(|_| DisplayName::parse("unknown").expect("valid")),
            text: r.get(2)?,
            ts: r.get(3)?,
            sender: ClientId::from_bytes(sender.try_into().unwrap_or([0u8; 16])),
        })
    }
}

impl History for SqliteStore {
    fn append(&self, batch: &[NewMessage], now_ms: i64) -> HistoryResult<Vec<Appended>> {
        let mut conn = self.writer();
        // IMMEDIATE: take the write lock first (waiting up to the busy
        // timeout). A deferred transaction reads an idempotency key and then
        // cannot upgrade to a write if pruning committed meanwhile: SQLite
        // refuses at once, without waiting, and the POSTs got a 503.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(batch.len());
        {
            let mut find_key = tx
                .prepare_cached("SELECT id, room FROM idempotency WHERE sender = ?1 AND key = ?2")
                .map_err(unavailable)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO messages (room, name, text, ts, sender) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(unavailable)?;
            let mut touch_room = tx
                .prepare_cached(
                    "INSERT INTO rooms (room, last_id) VALUES (?1, ?2)
                     ON CONFLICT (room) DO UPDATE SET last_id = excluded.last_id",
                )
                .map_err(unavailable)?;
            let mut insert_key = tx
                .prepare_cached(
                    "INSERT INTO idempotency (sender, key, id, room) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(unavailable)?;
            for m in batch {
                let sender = m.sender.to_bytes();
                if let Some(key) = &m.client_msg_id {
                    let found = find_key
                        .query_row(params![&sender[..], key.as_str()], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                        })
                        .optional()
                        .map_err(unavailable)?;
                    if let Some((id, room)) = found {
                        out.push(Appended::Duplicate {
                            id: EventId::assigned(id as u64),
                            room: RoomName::parse(&room).unwrap_or_else(|_| m.room.clone()),
                        });
                        continue;
                    }
                }
                insert
                    .execute(params![
                        m.room.as_str(),
                        m.name.as_str(),
                        m.text.as_str(),
                        now_ms,
                        &sender[..]
                    ])
                    .map_err(unavailable)?;
                let id = tx.last_insert_rowid();
                touch_room
                    .execute(params![m.room.as_str(), id])
                    .map_err(unavailable)?;
                if let Some(key) = &m.client_msg_id {
                    insert_key
                        .execute(params![&sender[..], key.as_str(), id, m.room.as_str()])
                        .map_err(unavailable)?;
                }
                out.push(Appended::New(
                    m.stored(EventId::assigned(id as u64), now_ms),
                ));
            }
        }
        tx.commit().map_err(unavailable)?;
        Ok(out)
    }

    fn after(
        &self,
        room: &RoomName,
        after: Option<EventId>,
        limit: usize,
    ) -> HistoryResult<Vec<Message>> {
        let after = after.map_or(0, |a| a.get().min(i64::MAX as u64) as i64);
        let limit = limit.min(i64::MAX as usize) as i64;
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, name, text, ts, sender FROM messages
                 WHERE room = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let rows = st.query_map(params![room.as_str(), after, limit], row_to_message(room))?;
            rows.collect()
        })
    }

    fn latest(&self, room: &RoomName, limit: usize) -> HistoryResult<Vec<Message>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let mut v = self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, name, text, ts, sender FROM messages
                 WHERE room = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![room.as_str(), limit], row_to_message(room))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        v.reverse();
        Ok(v)
    }

    fn last_id(&self, room: &RoomName) -> HistoryResult<Option<EventId>> {
        self.read(|c| {
            c.prepare_cached("SELECT MAX(id) FROM messages WHERE room = ?1")?
                .query_row([room.as_str()], |r| r.get::<_, Option<i64>>(0))
        })
        .map(|id| id.map(|i| EventId::assigned(i as u64)))
    }

    fn rooms(&self, limit: usize) -> HistoryResult<Vec<RoomName>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.read(|c| {
            let mut st =
                c.prepare_cached("SELECT room FROM rooms ORDER BY last_id DESC LIMIT ?1")?;
            let rows = st.query_map([limit], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .map(|names| {
            names
                .iter()
                .filter_map(|n| RoomName::parse(n).ok())
                .collect()
        })
    }

    fn prune(&self, keep: usize) -> HistoryResult<u64> {
        let keep = keep.min(i64::MAX as usize) as i64;
        // Its own connection, room by room: short write transactions that
        // the writer thread waits out (busy timeout) without noticing.
        self.read(|c| {
            let over: Vec<String> = c
                .prepare_cached("SELECT room FROM messages GROUP BY room HAVING COUNT(*) > ?1")?
                .query_map([keep], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut removed = 0u64;
            for room in over {
                removed += c.execute(
                    "DELETE FROM messages WHERE room = ?1 AND id <= (
                         SELECT id FROM messages WHERE room = ?1
                         ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                    params![room, keep],
                )? as u64;
            }
            if removed > 0 {
                // Keys whose message is gone protect nothing any more.
                c.execute(
                    "DELETE FROM idempotency WHERE id NOT IN (SELECT id FROM messages)",
                    [],
                )?;
            }
            Ok(removed)
        })
    }

    fn flush(&self) -> HistoryResult<()> {
        // Every commit is already durable (synchronous=FULL); fold the WAL
        // back into the main file so a clean stop leaves one tidy file.
        self.writer()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::history::conformance::{conformance, new_msg};

    fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn behaves_like_a_store() {
        let (_dir, store) = temp_store();
        conformance(&store);
    }

    #[test]
    fn survives_reopen_with_ids_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).unwrap();
        let room = RoomName::lobby();
        let msg = new_msg(&room, "a", Some("k"));
        let first = store.append(std::slice::from_ref(&msg), 1).unwrap();
        let Appended::New(m) = &first[0] else {
            panic!()
        };
        store.prune(0).unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        let again = store.append(&[new_msg(&room, "b", None)], 2).unwrap();
        let Appended::New(m2) = &again[0] else {
            panic!()
        };
        assert!(
            m2.id > m.id,
            "ids keep increasing across restarts and pruning"
        );
        assert_eq!(store.after(&room, None, 10).unwrap().len(), 1);
    }

    /// Pruning commits on its own connection while the writer appends. A
    /// batch that reads first (an idempotency key) and then writes must
    /// wait for the lock, not fail: a deferred transaction cannot upgrade
    /// to a write once another connection has committed (SQLITE_BUSY,
    /// without waiting). Found by the soak: POSTs answered 503 while
    /// history was pruned.
    #[test]
    fn appends_do_not_fail_while_pruning() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open_with(&dir.path().join("t.db"), Durability::Normal).unwrap());
        let room = RoomName::lobby();
        let stop = Arc::new(AtomicBool::new(false));
        let pruner = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    store.prune(1).expect("prune");
                }
            })
        };
        let mut failed = 0;
        for i in 0..1000 {
            let key = format!("k{i}");
            if store.append(&[new_msg(&room, "x", Some(&key))], i).is_err() {
                failed += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        pruner.join().unwrap();
        assert_eq!(failed, 0, "appends refused while pruning");
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let _first = SqliteStore::open(&path).unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(OpenError::Locked { .. })
        ));
    }

    #[test]
    fn garbage_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
        let e = SqliteStore::open(&junk).err().unwrap();
        assert!(matches!(e, OpenError::Corrupt { .. }), "{e}");

        let newer = dir.path().join("newer.db");
        Connection::open(&newer)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let e = SqliteStore::open(&newer).err().unwrap();
        assert!(matches!(e, OpenError::TooNew { found: 99, .. }), "{e}");
    }
}
