//! `ssechat listen`: one long-lived reader of a room's event stream. It
//! handles each message completely (printed, `--exec` run, `--state`
//! written) before reading the next, reconnects for ever with back-off
//! and `Last-Event-ID` so that nothing is missed or seen twice, and holds
//! a bounded amount of memory whatever the server sends.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use ssechat::sse::{Item, Parser};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::args::ListenArgs;
use super::remote::{self, Backoff, Remote, CLIENT_HEADER};
use super::render::{self, Message};
use super::state::StateFile;

/// Longest line of the event stream held (bytes). A message of the largest
/// body the server takes, JSON-escaped, is well under it.
const MAX_LINE: usize = 1 << 20;
/// Most bytes of fields gathered for one event before it is dispatched.
const MAX_EVENT: usize = 1 << 20;
/// Largest history page read when catching up (500 messages).
const MAX_PAGE: usize = 16 << 20;
/// Reconnect waits: from the server's `retry:` hint (this until it gives
/// one), doubling to the cap.
const FIRST_WAIT: Duration = Duration::from_millis(500);
const MAX_WAIT: Duration = Duration::from_secs(30);

/// How a connection (or the attempt to make one) ended.
enum End {
    /// `--count` reached, a signal, or nobody reads stdout any more: exit 0.
    Finished,
    /// Lost or not made: try again, after the server's hint if it gave one.
    Lost(String, Option<Duration>),
    /// The server refuses the request itself (bad room, id, token, or not
    /// an ssechat server): asking again would not help. Exit 2.
    Refused(String),
    /// A failure here (the state file, starting `--exec`): exit 1.
    Failed(String),
}

/// What is known about where the room stood when the listener started,
/// for as long as no message id is known.
#[derive(PartialEq)]
enum Start {
    /// Not asked yet.
    Unknown,
    /// The room was empty: every message in it now came after the start.
    EmptyRoom,
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
    last_id: Option<String>,
}

pub async fn run(args: ListenArgs) -> ExitCode {
    let remote = match Remote::new(&args.conn) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ssechat listen: {e}");
            return ExitCode::from(2);
        }
    };
    let state = args.state.clone().map(StateFile::new);
    let resume = match state.as_ref().map(StateFile::load).transpose() {
        Ok(id) => id.flatten(),
        Err(e) => {
            let path = state.as_ref().map(|s| s.path().display().to_string());
            eprintln!("ssechat listen: --state {}: {e}", path.unwrap_or_default());
            return ExitCode::from(2);
        }
    };
    if args.count == Some(0) {
        return ExitCode::SUCCESS;
    }
    let stop = match watch_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ssechat listen: cannot watch signals: {e}");
            return ExitCode::from(1);
        }
    };
    let mut listener = Listener {
        last_id: resume.or_else(|| args.since.clone()),
        remote,
        state,
        start: Start::Unknown,
        handled: 0,
        for_terminal: std::io::stdout().is_terminal(),
        out: String::new(),
        stop,
        backoff: Backoff::new(FIRST_WAIT, MAX_WAIT),
        args,
    };
    listener.run().await
}

/// SIGTERM or SIGINT cancels the token: the message in hand is finished,
/// then the listener exits 0. A second one exits at once.
fn watch_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        token.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("ssechat listen: second signal: exiting without finishing");
        std::process::exit(1);
    });
    Ok(stop)
}

/// `f`, unless a signal comes first.
async fn unless_stopped<T>(stop: &CancellationToken, f: impl Future<Output = T>) -> Result<T, End> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(End::Finished),
        v = f => Ok(v),
    }
}

struct Listener {
    remote: Remote,
    args: ListenArgs,
    state: Option<StateFile>,
    /// The id of the last message handled (or the one to start after).
    last_id: Option<String>,
    start: Start,
    handled: u64,
    for_terminal: bool,
    /// One output buffer, reused for every message.
    out: String,
    stop: CancellationToken,
    backoff: Backoff,
}

impl Listener {
    async fn run(&mut self) -> ExitCode {
        loop {
            let (why, hint) = match self.session().await {
                End::Finished => return ExitCode::SUCCESS,
                End::Refused(e) => {
                    eprintln!("ssechat listen: refused: {e}");
                    return ExitCode::from(2);
                }
                End::Failed(e) => {
                    eprintln!("ssechat listen: {e}");
                    return ExitCode::from(1);
                }
                End::Lost(why, hint) => (why, hint),
            };
            let wait = match hint {
                Some(h) => h.clamp(Duration::from_millis(100), Duration::from_secs(300)),
                None => self.backoff.next_wait(),
            };
            self.notice(&format!(
                ">> {why}; reconnecting in {:.1} s",
                wait.as_secs_f64()
            ));
            if unless_stopped(&self.stop, tokio::time::sleep(wait))
                .await
                .is_err()
            {
                return ExitCode::SUCCESS;
            }
        }
    }

    /// One connection: catch up if needed, open the stream, read it until
    /// it ends.
    async fn session(&mut self) -> End {
        if self.last_id.is_none() {
            if let Err(end) = self.catch_up().await {
                return end;
            }
        }
        match self.open().await {
            Ok(res) => self.read(res).await,
            Err(end) => end,
        }
    }

    /// With no id to resume after, the stream would replay nothing, and a
    /// message sent while we reconnect would be lost. So the first time,
    /// ask history for the room's newest id and start after it. If the
    /// room was empty, every message it holds later came after the start:
    /// a later connection still without an id first hands those over.
    async fn catch_up(&mut self) -> Result<(), End> {
        let first = self.start == Start::Unknown;
        let limit = if first { 1 } else { 500 };
        let body = self.history(limit).await?;
        let page: Page<'_> = serde_json::from_slice(&body).map_err(|_| {
            End::Refused(
                "GET /chat/messages did not answer ssechat JSON: is --url an ssechat server?"
                    .into(),
            )
        })?;
        if first {
            self.start = Start::EmptyRoom;
            self.last_id = page.last_id;
            return Ok(());
        }
        for m in page.messages {
            self.handle(m.get(), None).await?;
        }
        Ok(())
    }

    async fn history(&self, limit: usize) -> Result<Vec<u8>, End> {
        let mut url = self.remote.endpoint("chat/messages");
        url.query_pairs_mut()
            .append_pair("room", &self.remote.room)
            .append_pair("limit", &limit.to_string());
        let req = self
            .remote
            .http
            .get(url)
            .header(CLIENT_HEADER, &self.remote.token)
            .header(ACCEPT, "application/json")
            .timeout(Duration::from_secs(30))
            .send();
        let res = unless_stopped(&self.stop, req)
            .await?
            .map_err(|e| End::Lost(remote::describe(&e), None))?;
        let res = check(res).await?;
        unless_stopped(&self.stop, remote::body_bounded(res, MAX_PAGE))
            .await?
            .map_err(|e| End::Lost(e, None))
    }

    async fn open(&mut self) -> Result<Response, End> {
        let mut url = self.remote.endpoint("chat/events");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("room", &self.remote.room);
            if let Some(name) = &self.args.name {
                q.append_pair("name", name);
            }
        }
        let mut req = self
            .remote
            .http
            .get(url)
            .header(CLIENT_HEADER, &self.remote.token)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(id) = &self.last_id {
            req = req.header("last-event-id", id);
        }
        let idle = self.args.idle_timeout;
        let res = unless_stopped(&self.stop, tokio::time::timeout(idle, req.send()))
            .await?
            .map_err(|_| End::Lost(format!("no answer within {} s", idle.as_secs_f64()), None))?
            .map_err(|e| End::Lost(remote::describe(&e), None))?;
        let res = check(res).await?;
        let is_sse = res
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if !is_sse {
            return Err(End::Refused(
                "the answer is not an event stream: is --url an ssechat server?".into(),
            ));
        }
        Ok(res)
    }

    /// Reads the stream line by line through the EventSource parser,
    /// handling each item before the next line is read.
    async fn read(&mut self, res: Response) -> End {
        let idle = self.args.idle_timeout;
        let mut body = res.bytes_stream();
        let mut parser = Parser::new();
        let mut partial: Vec<u8> = Vec::new();
        let mut items = Vec::new();
        // Bytes of fields since the last dispatched event (comments aside):
        // what the parser may be holding for the event under way.
        let mut event_bytes = 0usize;
        loop {
            let chunk =
                match unless_stopped(&self.stop, tokio::time::timeout(idle, body.next())).await {
                    Err(end) => return end,
                    Ok(Err(_)) => {
                        return End::Lost(
                            format!("nothing from the server for {} s", idle.as_secs_f64()),
                            None,
                        )
                    }
                    Ok(Ok(None)) => return End::Lost("the server ended the stream".into(), None),
                    Ok(Ok(Some(Err(e)))) => return End::Lost(remote::describe(&e), None),
                    Ok(Ok(Some(Ok(chunk)))) => chunk,
                };
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let (piece, complete) = match memchr::memchr2(b'\n', b'\r', rest) {
                    Some(i) => (&rest[..=i], true),
                    None => (rest, false),
                };
                rest = &rest[piece.len()..];
                if partial.len() + piece.len() > MAX_LINE {
                    return End::Lost("the server sent a line over 1 MiB".into(), None);
                }
                if !complete {
                    partial.extend_from_slice(piece);
                    continue;
                }
                let line: &[u8] = if partial.is_empty() {
                    piece
                } else {
                    partial.extend_from_slice(piece);
                    &partial
                };
                if line.first() != Some(&b':') {
                    event_bytes += line.len();
                }
                parser.feed_into(line, &mut items);
                partial.clear();
                if items.iter().any(|i| matches!(i, Item::Event(_))) {
                    event_bytes = 0;
                }
                if event_bytes > MAX_EVENT {
                    return End::Lost("the server sent an event over 1 MiB".into(), None);
                }
                for item in items.drain(..) {
                    if let Err(end) = self.item(item).await {
                        return end;
                    }
                }
            }
        }
    }

    async fn item(&mut self, item: Item) -> Result<(), End> {
        let e = match item {
            Item::Retry(ms) => {
                self.backoff.reset_to(Duration::from_millis(ms));
                return Ok(());
            }
            Item::Comment(_) => return Ok(()),
            Item::Event(e) => e,
        };
        match e.event.as_str() {
            "message" => {
                let id = e.has_id.then_some(e.last_event_id);
                self.handle(&e.data, id).await?;
            }
            "hello" => {
                // A stream that got this far is a success: the next
                // failure starts the back-off again from the hint.
                self.backoff.reset();
                if let Some(line) = render::notice("hello", &e.data) {
                    self.notice(&line);
                }
            }
            other => {
                if let Some(line) = render::notice(other, &e.data) {
                    self.notice(&line);
                }
            }
        }
        Ok(())
    }

    /// One message, completely: printed, `--exec` run, state written. A
    /// signal arriving meanwhile is looked at only once it is all done.
    async fn handle(&mut self, data: &str, sse_id: Option<String>) -> Result<(), End> {
        let msg: Message = match serde_json::from_str(data) {
            Ok(m) => m,
            Err(e) => {
                self.notice(&format!(
                    ">> skipped a message event that is not message JSON: {e}"
                ));
                return Ok(());
            }
        };
        let mut json = String::new();
        if self.args.json || self.args.exec.is_some() {
            render::json_line(data, &mut json).expect("it parsed as a message");
        }
        self.out.clear();
        if self.args.json {
            self.out.push_str(&json);
        } else {
            render::text_line(&msg, self.for_terminal, &mut self.out);
        }
        let mut stdout = std::io::stdout().lock();
        match stdout
            .write_all(self.out.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => {}
            // Nobody reads any more (`| head -3`): the work is done.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Err(End::Finished),
            Err(e) => return Err(End::Failed(format!("writing to stdout: {e}"))),
        }
        drop(stdout);
        if let Some(cmd) = &self.args.exec {
            self.exec(cmd, &json, &msg).await?;
        }
        let id = sse_id.unwrap_or(msg.id);
        if let Some(state) = &self.state {
            state.save(&id).map_err(|e| {
                End::Failed(format!("writing --state {}: {e}", state.path().display()))
            })?;
        }
        self.last_id = Some(id);
        self.handled += 1;
        if self.args.count.is_some_and(|n| self.handled >= n) || self.stop.is_cancelled() {
            return Err(End::Finished);
        }
        Ok(())
    }

    /// `sh -c CMD` with the message JSON on stdin, waited for. A command
    /// that fails is reported and the listener goes on: the message was
    /// delivered, and stopping would hold up every message after it.
    async fn exec(&self, cmd: &str, json: &str, msg: &Message) -> Result<(), End> {
        let env = |s: &str| s.replace('\0', "\u{fffd}");
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::piped())
            .env("SSECHAT_MSG_ID", env(&msg.id))
            .env("SSECHAT_MSG_ROOM", env(&msg.room))
            .env("SSECHAT_MSG_NAME", env(&msg.name))
            .env("SSECHAT_MSG_TEXT", env(&msg.text))
            .env("SSECHAT_MSG_ME", if msg.me { "1" } else { "0" })
            .env("SSECHAT_URL", self.remote.base().as_str())
            .env("SSECHAT_CLIENT", &self.remote.token)
            .spawn()
            .map_err(|e| End::Failed(format!("--exec: cannot start sh: {e}")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let feed = async move {
            // A command that does not read its input is fine (EPIPE).
            let _ = stdin.write_all(json.as_bytes()).await;
        };
        let ((), status) = tokio::join!(feed, child.wait());
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => {
                eprintln!("ssechat listen: --exec for message {}: {s}", msg.id);
                Ok(())
            }
            Err(e) => Err(End::Failed(format!("--exec: waiting for sh: {e}"))),
        }
    }

    fn notice(&self, line: &str) {
        if !self.args.quiet {
            // Not `eprintln!`: a closed stderr must not end the listener.
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }
}

/// The response if it is a success; else why not, as an `End`.
async fn check(res: Response) -> Result<Response, End> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let hint = remote::retry_after(res.headers());
    let why = remote::refusal(res).await;
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Err(End::Lost(why, hint))
    } else {
        Err(End::Refused(why))
    }
}
