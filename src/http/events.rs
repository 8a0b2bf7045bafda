//! `GET /chat/events`: the SSE stream, and its connect and disconnect log
//! lines (one by one while they are few, counted in a storm).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warp::http::{header, HeaderValue};
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;
use super::form::Fields;
use super::{identity, AppState, Ctx};
use crate::chat::message::{self, Format};
use crate::chat::types::{DisplayName, EventId, RoomName};
use crate::metrics::Metrics;
use crate::sse;

pub async fn events(state: AppState, ctx: Ctx) -> Response {
    match open(&state, ctx).await {
        Ok(res) => res,
        Err(e) => e.respond(&state.metrics),
    }
}

/// Parses `Last-Event-ID`: absent or empty means none.
fn last_event_id(ctx: &Ctx) -> Result<Option<EventId>, ApiError> {
    let Some(v) = ctx.headers.get("last-event-id") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("malformed Last-Event-ID header".into()))?;
    Ok(EventId::parse_optional(s, "Last-Event-ID")?)
}

/// Logs the disconnect when the stream is dropped, whatever ended it.
struct DisconnectLog {
    room: RoomName,
    name: DisplayName,
    peer: Option<SocketAddr>,
    log: Arc<StreamLog>,
}

impl Drop for DisconnectLog {
    fn drop(&mut self) {
        if self.log.admit(Kind::Disconnect) {
            tracing::info!(room = %self.room, name = %self.name, peer = ?self.peer, "disconnect");
        }
    }
}

/// Connect and disconnect lines logged one by one per second; beyond, they
/// are counted, and one summary line at the end of the second gives the
/// counts. A crowd of 10,000 arriving is 10,000 lines otherwise, and
/// writing them took about a seventh of the server's CPU through the storm.
/// What an operator reads at 3 a.m. is still there: every line in quiet
/// times; in a storm the first ones, how many more, and how many streams
/// are open.
const LOG_EACH_PER_SECOND: u32 = 20;

#[derive(Clone, Copy)]
enum Kind {
    Connect,
    Disconnect,
}

/// The lines of the current second: how many were logged, and the counts
/// of the rest since the last summary.
#[derive(Default)]
struct Budget {
    second: u64,
    logged: u32,
    skipped: [u64; 2],
    summary_scheduled: bool,
}

enum Admit {
    Log,
    /// Counted; the first one counted since the last summary asks for one.
    Count {
        schedule_summary: bool,
    },
}

impl Budget {
    fn admit(&mut self, second: u64, kind: Kind) -> Admit {
        if second != self.second {
            self.second = second;
            self.logged = 0;
        }
        if self.logged < LOG_EACH_PER_SECOND {
            self.logged += 1;
            return Admit::Log;
        }
        self.skipped[kind as usize] += 1;
        let schedule_summary = !std::mem::replace(&mut self.summary_scheduled, true);
        Admit::Count { schedule_summary }
    }

    /// The lines not logged one by one since the last summary: (connects,
    /// disconnects).
    fn summary(&mut self) -> (u64, u64) {
        self.summary_scheduled = false;
        let [c, d] = std::mem::take(&mut self.skipped);
        (c, d)
    }
}

/// One application's connect and disconnect lines (in [`AppState`]: each
/// server, and each test's, counts its own).
pub struct StreamLog {
    start: tokio::time::Instant,
    budget: Mutex<Budget>,
    /// For the summary's count of open streams.
    metrics: Arc<Metrics>,
}

impl StreamLog {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        StreamLog {
            start: tokio::time::Instant::now(),
            budget: Mutex::new(Budget::default()),
            metrics,
        }
    }

    /// Whether to log this line; if not, it is counted, and the summary
    /// follows at the end of the second.
    fn admit(self: &Arc<Self>, kind: Kind) -> bool {
        let elapsed = self.start.elapsed();
        let admitted = self
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(elapsed.as_secs(), kind);
        match admitted {
            Admit::Log => true,
            Admit::Count { schedule_summary } => {
                if schedule_summary {
                    self.summarize_after(elapsed);
                }
                false
            }
        }
    }

    /// Logs the summary when the second of `elapsed` ends.
    fn summarize_after(self: &Arc<Self>, elapsed: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.summarize(); // no runtime: at once
        };
        let end = self.start + Duration::from_secs(elapsed.as_secs() + 1);
        let log = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(end).await;
            log.summarize();
        });
    }

    fn summarize(&self) {
        let (connects, disconnects) = self
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .summary();
        tracing::info!(
            connects,
            disconnects,
            streams_open = self.metrics.sse_streams.get(),
            "stream connects and disconnects not logged one by one \
             (beyond {LOG_EACH_PER_SECOND} a second)"
        );
    }
}

async fn open(state: &AppState, ctx: Ctx) -> Result<Response, ApiError> {
    let mut q = Fields::parse(ctx.query.as_bytes())?;
    let room = RoomName::parse_or_default(q.take("room")?.as_deref())?;
    let since = q.take_event_id("since")?;
    let format = match q.take("format")?.as_deref() {
        None | Some("json") => Format::Json,
        Some("text") => Format::Text,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "format must be 'json' or 'text'".into(),
            ))
        }
    };
    let name = q
        .take("name")?
        .map(|n| DisplayName::parse(&n))
        .transpose()?
        // A cross-site link to this stream must not rename whoever follows it.
        .filter(|_| !identity::is_cross_site(&ctx.headers));
    let client_q = q.take("client")?;
    // The header wins over `since`: it is what a reconnecting browser knows.
    let since = last_event_id(&ctx)?.or(since);
    let who = identity::resolve(&ctx.headers, client_q.as_deref())?;

    let chat = &state.chat;
    if chat.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    // Every open reads history and counts a presence: rate-limited per
    // address, like posting.
    state.limits.check_stream_open(ctx.client)?;
    let permit = state.limits.acquire_stream(ctx.client)?;

    let client = who.token.id();
    let name = chat.name_for(client, name.as_ref());
    let stream = chat.open_stream(&room, client, &name, since).await?;
    let online = stream.online;
    let minted = who.minted.then(|| who.token.expose());
    let prelude = vec![
        sse::retry(state.config.retry_ms),
        message::hello_frame(&room, &name, online, minted),
    ];
    if state.stream_log.admit(Kind::Connect) {
        tracing::info!(
            room = %room, name = %name, online, since = ?stream.since,
            peer = ?ctx.peer, client = ?ctx.client, "connect"
        );
    }
    let log = DisconnectLog {
        room: room.clone(),
        name: name.clone(),
        peer: ctx.peer,
        log: state.stream_log.clone(),
    };
    let body = stream.into_body(prelude, format, state.config.retry_ms, (permit, log));
    let mut res = warp::reply::stream(body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if who.minted {
        // It carries a new secret (cookie and hello): no cache may keep it.
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store"),
        );
        h.insert(
            header::SET_COOKIE,
            identity::set_cookie(&who.token, ctx.https),
        );
    } else {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` lines of `kind` in `second`: (logged, summaries asked for).
    fn lines(budget: &mut Budget, second: u64, kind: Kind, n: u32) -> (u32, u32) {
        let (mut logged, mut asked) = (0, 0);
        for _ in 0..n {
            match budget.admit(second, kind) {
                Admit::Log => logged += 1,
                Admit::Count { schedule_summary } => asked += u32::from(schedule_summary),
            }
        }
        (logged, asked)
    }

    #[test]
    fn a_storm_logs_the_first_lines_of_each_second_and_counts_the_rest() {
        let each = LOG_EACH_PER_SECOND;
        let mut b = Budget::default();
        // Quiet: every line.
        assert_eq!(lines(&mut b, 0, Kind::Connect, 5), (5, 0));
        // A storm in the same second: up to the budget, then counted, and
        // one summary asked for.
        assert_eq!(lines(&mut b, 0, Kind::Connect, 1000), (each - 5, 1));
        assert_eq!(lines(&mut b, 0, Kind::Disconnect, 10), (0, 0));
        assert_eq!(b.summary(), (1000 - u64::from(each - 5), 10));
        assert_eq!(b.summary(), (0, 0), "counted once");
        // A new second, a new budget; a new overflow asks again.
        assert_eq!(lines(&mut b, 1, Kind::Disconnect, 30), (each, 1));
        assert_eq!(b.summary(), (0, 30 - u64::from(each)));
    }
}
