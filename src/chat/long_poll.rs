//! Long-polling: what is newer than the client has, now, or as soon as it
//! is stored, until a deadline.

use super::fanout::RecvError;
use super::hub::Subscription;
use super::message::{messages_after, Event, Message};
use super::types::{EventId, RoomName};
use super::{Chat, ChatError};

/// What a long-poll finds when it starts.
pub enum Newer {
    /// Messages are there already: answer at once.
    Now(Vec<Message>),
    /// Nothing yet: wait with [`Waiting::until`] (boxed: a subscription
    /// is much larger than a list).
    Later(Box<Waiting>),
}

/// A long-poll watching its room for messages newer than it has.
pub struct Waiting {
    chat: Chat,
    room: RoomName,
    since: Option<EventId>,
    limit: usize,
    sub: Subscription,
}

impl Waiting {
    /// Waits until a message newer than `since` arrives, the deadline
    /// passes, or the server shuts down; returns what is newer then (empty
    /// on timeout or shutdown).
    pub async fn until(
        mut self,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Message>, ChatError> {
        let woke = loop {
            match tokio::time::timeout_at(deadline, self.sub.rx.recv()).await {
                Err(_) => break false,
                Ok(Ok(ev)) => match &*ev {
                    // Messages the first read already covered (in a
                    // cluster, a POST is answered before its fan-out
                    // reaches every node).
                    Event::Messages(list) if messages_after(list, self.since).is_empty() => {
                        continue
                    }
                    Event::Messages(_) => break true,
                    Event::Shutdown => break false,
                    _ => continue,
                },
                // Fell behind: there is something new, surely.
                Ok(Err(RecvError::Lagged(_))) => break true,
                Ok(Err(RecvError::Closed)) => break false,
            }
        };
        if woke {
            self.chat.messages(&self.room, self.since, self.limit).await
        } else {
            Ok(Vec::new())
        }
    }
}

impl Chat {
    /// The start of a long-poll: watches the room, then reads (so a
    /// message stored in between wakes the wait).
    pub async fn newer(
        &self,
        room: &RoomName,
        since: Option<EventId>,
        limit: usize,
    ) -> Result<Newer, ChatError> {
        let sub = self.hub.watch(room).map_err(|_| ChatError::ShuttingDown)?;
        let found = self.messages(room, since, limit).await?;
        if !found.is_empty() {
            return Ok(Newer::Now(found));
        }
        // Wait for what is newer than the room has, even if the client's
        // id is from the future.
        let since = match since {
            Some(after) => self.clamped(room, after).await?,
            None => None,
        };
        Ok(Newer::Later(Box::new(Waiting {
            chat: self.clone(),
            room: room.clone(),
            since,
            limit,
            sub,
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::super::tests::{chat, msg, texts};
    use super::*;

    async fn waiting(chat: &Chat, since: Option<EventId>) -> Waiting {
        match chat.newer(&RoomName::lobby(), since, 10).await.unwrap() {
            Newer::Later(w) => *w,
            Newer::Now(found) => panic!("expected nothing newer, found {found:?}"),
        }
    }

    #[tokio::test]
    async fn a_long_poll_answers_at_once_when_there_is_something_newer() {
        let chat = chat();
        let first = chat.post(msg("a")).await.unwrap();
        chat.post(msg("b")).await.unwrap();
        let Newer::Now(found) = chat
            .newer(&RoomName::lobby(), Some(first.id), 10)
            .await
            .unwrap()
        else {
            panic!("b is newer");
        };
        assert_eq!(texts(&found), ["b"]);
    }

    #[tokio::test]
    async fn a_long_poll_wakes_for_a_newer_message_and_reads_it() {
        let chat = chat();
        let first = chat.post(msg("a")).await.unwrap();
        let w = waiting(&chat, Some(first.id)).await;
        let poster = chat.clone();
        tokio::spawn(async move { poster.post(msg("b")).await.unwrap() });
        let got = w
            .until(Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(texts(&got), ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_ignores_what_it_has_and_times_out_empty() {
        let chat = chat();
        let first = chat.post(msg("a")).await.unwrap();
        let w = waiting(&chat, Some(first.id)).await;
        // The late fan-out of the message the poll already has.
        let again = chat.latest(&RoomName::lobby(), 1).await.unwrap();
        chat.inbox().messages(again);
        let started = Instant::now();
        let got = w.until(started + Duration::from_secs(5)).await.unwrap();
        assert!(got.is_empty());
        assert_eq!(started.elapsed(), Duration::from_secs(5), "waited it out");
    }

    #[tokio::test]
    async fn shutdown_ends_a_long_poll_empty_and_refuses_new_work() {
        let chat = chat();
        let first = chat.post(msg("a")).await.unwrap();
        let w = waiting(&chat, Some(first.id)).await;
        chat.shutdown();
        let got = w
            .until(Instant::now() + Duration::from_secs(30))
            .await
            .unwrap();
        assert!(got.is_empty());
        assert!(matches!(
            chat.post(msg("late")).await,
            Err(ChatError::ShuttingDown)
        ));
        assert!(matches!(
            chat.newer(&RoomName::lobby(), None, 1).await,
            Err(ChatError::ShuttingDown)
        ));
    }
}
