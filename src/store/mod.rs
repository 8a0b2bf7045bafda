//! Storage adapters: implementations of the chat's ports
//! ([`crate::chat::history::History`], [`crate::chat::cluster::Cluster`]).
//! This module depends on the chat domain, never the other way round.
//!
//! - [`memory`]: history in memory (`--db :memory:`), bounded, gone on restart.
//! - [`sqlite`]: history in one SQLite file (the default).
//! - `redis`: cluster mode: history, ids, presence and fan-out between
//!   nodes in Redis (cargo feature `redis`, on by default).

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod sqlite;

#[cfg(test)]
mod tests {
    use super::memory::MemoryStore;
    use crate::chat::history::conformance::{conformance, new_msg};
    use crate::chat::history::History;
    use crate::chat::types::RoomName;

    #[test]
    fn memory_store_conforms() {
        conformance(&MemoryStore::new(0));
    }

    #[test]
    fn memory_store_bounds_history_itself() {
        let s = MemoryStore::new(2);
        let r = RoomName::lobby();
        for i in 0..5 {
            s.append(&[new_msg(&r, &i.to_string(), None)], 0).unwrap();
        }
        let kept: Vec<_> = s
            .after(&r, None, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(kept, ["3", "4"]);
    }
}
