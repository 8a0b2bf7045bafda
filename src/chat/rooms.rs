//! The rooms the welcome page lists: the busiest, bounded, at a cost that
//! does not grow with the number of rooms (anyone may create rooms).

use std::collections::HashMap;

use super::types::RoomName;
use super::{Chat, ChatError};

/// Rooms the welcome page lists at most.
pub const LISTED_ROOMS: usize = 50;

impl Chat {
    /// The busiest rooms, at most [`LISTED_ROOMS`], each with its online
    /// count: the most people online first, then the most recently
    /// active. Anyone may create rooms, so the list is bounded and costs
    /// the same however many there are: one history query (the most
    /// recently active), this node's presence, and in a cluster one round
    /// trip for the online counts.
    pub async fn room_list(&self) -> Result<Vec<(RoomName, usize)>, ChatError> {
        let active = self.read(|h| h.rooms(LISTED_ROOMS)).await?;
        let online_here: HashMap<RoomName, usize> = self.hub.rooms_online().into_iter().collect();
        let mut crowded: Vec<(&RoomName, usize)> =
            online_here.iter().map(|(r, n)| (r, *n)).collect();
        if crowded.len() > LISTED_ROOMS {
            crowded.select_nth_unstable_by(LISTED_ROOMS - 1, |a, b| b.1.cmp(&a.1));
            crowded.truncate(LISTED_ROOMS);
        }
        // In order of activity; the crowded rooms without history after.
        let mut names = active;
        let mut crowded: Vec<RoomName> = crowded.into_iter().map(|(r, _)| r.clone()).collect();
        crowded.sort();
        for r in crowded {
            if !names.contains(&r) {
                names.push(r);
            }
        }
        let cluster_counts = match self.cluster.clone() {
            Some(cluster) => {
                let asked = names.clone();
                tokio::task::spawn_blocking(move || cluster.online_many(&asked))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        let mut rooms: Vec<(RoomName, usize, usize)> = names
            .into_iter()
            .enumerate()
            .map(|(rank, r)| {
                let here = online_here.get(&r).copied().unwrap_or(0);
                let online = cluster_counts
                    .as_ref()
                    .and_then(|c| c.get(rank))
                    .map_or(here, |&n| n.max(here));
                (r, online, rank)
            })
            .collect();
        rooms.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
        rooms.truncate(LISTED_ROOMS);
        Ok(rooms
            .into_iter()
            .map(|(r, online, _)| (r, online))
            .collect())
    }
}
