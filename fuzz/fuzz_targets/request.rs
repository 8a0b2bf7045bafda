//! The request path in-process: up to four arbitrary HTTP requests
//! (written as a client sends them: request line, headers including
//! `Last-Event-ID`, cookies and tokens, a body of any kind, in chunks,
//! possibly failing mid-way) into the real warp routes over a fresh
//! in-memory chat, wired the way the server wires them. Every answer must be a well-formed status the SPEC allows, with the
//! body the SPEC describes (errors as JSON `{"error"}`, history and POST
//! answers as JSON, streams as SSE that begin with `retry` and `hello`);
//! every stream gets every message posted to its room while it is open,
//! once, in id order. Nothing may panic.
//!
//! The runtime's clock is paused, so long-polls and timeouts pass at once.

#![no_main]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use libfuzzer_sys::fuzz_target;
use ssechat::chat::types::ClientToken;
use ssechat::chat::Chat;
use ssechat::config::Config;
use ssechat::http::{routes, AppState, PeerAddr};
use ssechat::limits::Limits;
use ssechat::metrics::Metrics;
use ssechat::sse::{Item, Parser};
use ssechat::store::memory::MemoryStore;
use warp::reply::Response;

/// Requests in one input are separated by this line.
const SEPARATOR: &[u8] = b"\n=====\n";

/// One request as written in the input: an HTTP/1.1 request, head and
/// body, as a client would send it.
struct Raw<'a> {
    method: &'a str,
    target: String,
    headers: Vec<(&'a [u8], Vec<u8>)>,
    body: &'a [u8],
}

/// Splits the head (request line and header lines, ended by an empty line
/// with CRLF or LF line ends) from the body. `None` if the request line is
/// not `METHOD TARGET [VERSION]`.
fn parse_raw(segment: &[u8]) -> Option<Raw<'_>> {
    let (head, body) = match find(segment, b"\r\n\r\n") {
        Some(i) => (&segment[..i], &segment[i + 4..]),
        None => match find(segment, b"\n\n") {
            Some(i) => (&segment[..i], &segment[i + 2..]),
            None => (segment, &b""[..]),
        },
    };
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = std::str::from_utf8(lines.next()?).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?.to_owned();
    let headers = lines
        .filter_map(|l| {
            let i = l.iter().position(|&b| b == b':')?;
            let value = l[i + 1..].trim_ascii().to_vec();
            Some((&l[..i], value))
        })
        .collect();
    Some(Raw {
        method,
        target,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Harness controls, given as headers (and removed from the request):
/// `X-Fuzz-Chunk: N` cuts the body into chunks of N bytes, `X-Fuzz-Fail: 1`
/// makes the body fail after its chunks (a client that hangs up),
/// `X-Fuzz-Peer: N` picks the client address (0: none).
#[derive(Default)]
struct Controls {
    chunk: usize,
    fail: bool,
    peer: u8,
}

/// `$ID0`..`$ID9` in a request stand for the ids the server gave out
/// earlier in the input (cycled; `0` when none yet), `$TOKEN0`..`$TOKEN2`
/// for three valid client tokens.
fn substitute(segment: &[u8], seen: &Seen) -> Vec<u8> {
    let mut out = Vec::with_capacity(segment.len());
    let mut i = 0;
    while i < segment.len() {
        let rest = &segment[i..];
        let digit = |at: usize| {
            rest.get(at)
                .filter(|b| b.is_ascii_digit())
                .map(|b| usize::from(b - b'0'))
        };
        if rest.starts_with(b"$ID") {
            if let Some(n) = digit(3) {
                let id = if seen.ids.is_empty() {
                    0
                } else {
                    seen.ids[n % seen.ids.len()]
                };
                out.extend_from_slice(id.to_string().as_bytes());
                i += 4;
                continue;
            }
        }
        if rest.starts_with(b"$TOKEN") {
            if let Some(n) = digit(6) {
                out.extend_from_slice(tokens()[n % 3].as_bytes());
                i += 7;
                continue;
            }
        }
        out.push(segment[i]);
        i += 1;
    }
    out
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    })
}

fn config(limited: bool) -> Arc<Config> {
    static CONFIGS: OnceLock<[Arc<Config>; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let parse = |extra: &[&str]| {
            let mut args = vec![
                "ssechat",
                "--port",
                "0",
                "--db",
                ":memory:",
                "--history",
                "20",
                "--max-body-bytes",
                "2048",
                "--max-message-chars",
                "200",
            ];
            args.extend_from_slice(extra);
            Arc::new(Config::from_flags(args).unwrap())
        };
        [
            parse(&[
                "--post-rate",
                "0",
                "--max-streams",
                "0",
                "--max-streams-per-ip",
                "0",
                "--max-long-polls",
                "0",
            ]),
            parse(&[
                "--post-rate",
                "1",
                "--post-burst",
                "2",
                "--max-streams",
                "3",
                "--max-streams-per-ip",
                "2",
                "--max-long-polls",
                "1",
            ]),
        ]
    });
    configs[usize::from(limited)].clone()
}

fn tokens() -> &'static [String; 3] {
    static TOKENS: OnceLock<[String; 3]> = OnceLock::new();
    TOKENS.get_or_init(|| std::array::from_fn(|_| ClientToken::mint().expose().to_owned()))
}

/// What this input has learned so far: the ids the server gave out.
struct Seen {
    ids: Vec<u64>,
}

type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>;

/// The request, or `None` if hyper would not have delivered it (a method
/// or URI that does not parse). Headers that are not valid HTTP are left
/// out, as a client could not have sent them.
fn build(segment: &[u8], seen: &Seen) -> Option<Request<StreamBody<Chunks>>> {
    let segment = substitute(segment, seen);
    let raw = parse_raw(&segment)?;
    let mut b = Request::builder()
        .method(raw.method)
        .uri(raw.target.as_str());
    let mut controls = Controls::default();
    let mut declared = false;
    let mut chunked = false;
    for (name, value) in raw.headers.iter().take(32) {
        match &name.to_ascii_lowercase()[..] {
            b"x-fuzz-chunk" => {
                controls.chunk = std::str::from_utf8(value).ok()?.parse().unwrap_or(0)
            }
            b"x-fuzz-fail" => controls.fail = value == b"1",
            b"x-fuzz-peer" => controls.peer = value.first().copied().unwrap_or(b'0'),
            n => {
                let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(n), HeaderValue::from_bytes(value))
                else {
                    continue;
                };
                if name == http::header::CONTENT_LENGTH {
                    declared = true;
                }
                if name == http::header::TRANSFER_ENCODING {
                    chunked = true;
                }
                b = b.header(name, value);
            }
        }
    }
    // Framing as hyper would deliver it: a declared length is the body's
    // length; a chunked body has none.
    if let Some(h) = b.headers_mut() {
        if chunked {
            h.remove(http::header::CONTENT_LENGTH);
        } else if declared || !raw.body.is_empty() {
            h.insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(raw.body.len()),
            );
        }
    }
    let peer = match controls.peer % 4 {
        0 => None,
        1 => Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
        2 => Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))),
        _ => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    };
    if let Some(ip) = peer {
        b = b.extension(PeerAddr(SocketAddr::new(ip, 40000)));
    }
    let size = if controls.chunk == 0 {
        raw.body.len().max(1)
    } else {
        controls.chunk
    };
    let mut chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = raw
        .body
        .chunks(size)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    if controls.fail {
        chunks.push(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client hung up",
        )));
    }
    b.body(StreamBody::new(futures_util::stream::iter(chunks)))
        .ok()
}

const ALLOWED: &[u16] = &[
    200, 201, 204, 303, 304, 400, 403, 404, 405, 413, 415, 429, 503,
];

fn json_body(bytes: &[u8], what: &str) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(bytes)
        )
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(run(data));
});

/// An input is up to four requests separated by `SEPARATOR`; one that
/// starts with `LIMITED\n` runs with tight limits (rate, streams,
/// long-polls) instead of none.
async fn run(data: &[u8]) {
    let (limited, data) = match data.strip_prefix(b"LIMITED\n") {
        Some(rest) => (true, rest),
        None => (false, data),
    };
    let config = config(limited);
    let metrics = Arc::new(Metrics::default());
    let chat = Chat::new(
        Arc::new(MemoryStore::new(config.history)),
        config.stream_buffer,
        metrics.clone(),
    )
    .expect("the chat starts");
    let limits = Arc::new(Limits::new(
        config.post_rate,
        config.post_burst,
        config.max_streams,
        config.max_streams_per_ip,
        config.max_long_polls,
    ));
    let state = AppState::new(chat.clone(), config.clone(), limits, metrics);
    let svc = warp::service(routes(state));
    let mut seen = Seen { ids: Vec::new() };
    let mut streams: Vec<(String, Response, Parser, Vec<u64>)> = Vec::new();
    // Messages posted (201): id and the streams open on its room then
    // (each of them must get it).
    let mut posted: Vec<(u64, Vec<usize>)> = Vec::new();

    let segments: Vec<&[u8]> = split(data, SEPARATOR);
    for segment in segments.into_iter().take(4) {
        let Some(request) = build(segment, &seen) else {
            continue;
        };
        let is_post = request.method() == http::Method::POST;
        let path = request.uri().path().to_owned();
        let room = room_of(&request);
        let mut svc = svc.clone();
        let res: Response = tower_call(&mut svc, request).await;
        let status = res.status();
        assert!(
            ALLOWED.contains(&status.as_u16()),
            "{path}: status {status} is not one the SPEC allows"
        );
        assert!(
            status != StatusCode::SERVICE_UNAVAILABLE || limited,
            "{path}: 503 without limits or shutdown"
        );
        let ct = res
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if ct == "text/event-stream" {
            assert_eq!(status, 200);
            let mut parser = Parser::new();
            let mut res = res;
            let items = ready_items(res.body_mut(), &mut parser).await;
            let mut ids = Vec::new();
            check_stream_start(&items, &mut ids, &path);
            seen.ids.extend(&ids);
            streams.push((room, res, parser, ids));
            continue;
        }
        let body = tokio::time::timeout(Duration::from_secs(60), res.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{path}: the body never ended"))
            .unwrap_or_else(|e| panic!("{path}: the body failed: {e}"))
            .to_bytes();
        if status.is_client_error() || status.is_server_error() {
            assert!(
                ct.starts_with("application/json"),
                "{path}: error {status} as {ct:?}"
            );
            let v = json_body(&body, &path);
            let msg = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: error without a reason: {v}"));
            assert!(!msg.is_empty());
            continue;
        }
        if is_post && path == "/chat/messages" && (status == 201 || status == 200) {
            let v = json_body(&body, "POST");
            let id: u64 = v["id"]
                .as_str()
                .expect("id is a string")
                .parse()
                .expect("id is decimal");
            assert!(v["room"].as_str().is_some_and(|r| !r.is_empty()));
            seen.ids.push(id);
            if status == 201 {
                let r = v["room"].as_str().unwrap();
                let open = (0..streams.len()).filter(|&i| streams[i].0 == r).collect();
                posted.push((id, open));
            }
        } else if !is_post && path == "/chat/messages" && status == 200 {
            let v = json_body(&body, "history");
            let ids: Vec<u64> = v["messages"]
                .as_array()
                .expect("messages is a list")
                .iter()
                .map(|m| m["id"].as_str().expect("id").parse().expect("decimal id"))
                .collect();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "history out of order: {ids:?}"
            );
            assert!(v["last_id"].is_null() || v["last_id"].is_string());
            seen.ids.extend(ids);
        }
    }

    // Live delivery: each stream got every message posted to its room
    // while it was open, once, in id order.
    for (i, (room, mut res, mut parser, mut ids)) in streams.into_iter().enumerate() {
        let items = ready_items(res.body_mut(), &mut parser).await;
        for item in &items {
            if let Item::Event(e) = item {
                if e.event == "message" {
                    ids.push(e.last_event_id.parse().expect("message ids are decimal"));
                }
            }
        }
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "stream ids not strictly increasing: {ids:?}"
        );
        for (id, open) in &posted {
            if open.contains(&i) {
                assert!(
                    ids.contains(id),
                    "stream {i} on {room} missed message {id} (got {ids:?})"
                );
            }
        }
    }
    chat.shutdown();
    chat.close().await;
}

fn split<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = find(rest, sep) {
        out.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    out.push(rest);
    out
}

async fn tower_call<S>(svc: &mut S, req: Request<StreamBody<Chunks>>) -> Response
where
    S: tower_service::Service<Request<StreamBody<Chunks>>, Response = Response, Error = Infallible>,
{
    match svc.call(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

fn room_of<B>(req: &Request<B>) -> String {
    let q = req.uri().query().unwrap_or("");
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .ok()
        .and_then(|v| v.into_iter().find(|(k, _)| k == "room").map(|(_, v)| v))
        .unwrap_or_else(|| "lobby".to_owned())
}

/// Everything the stream has to say until it has nothing more for a
/// (virtual) second.
async fn ready_items<B>(body: &mut B, parser: &mut Parser) -> Vec<Item>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut bytes = 0usize;
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(1), body.frame()).await {
        let frame = frame.expect("a stream's body does not fail");
        if let Some(data) = frame.data_ref() {
            bytes += data.len();
            parser.feed_into(data, &mut items);
        }
        assert!(bytes < 4 << 20, "a stream said more than 4 MiB at once");
    }
    items
}

fn check_stream_start(items: &[Item], ids: &mut Vec<u64>, path: &str) {
    assert!(
        matches!(items.first(), Some(Item::Retry(_))),
        "{path}: a stream starts with retry: {items:?}"
    );
    match items.get(1) {
        Some(Item::Event(e)) if e.event == "hello" => {
            let v: serde_json::Value = serde_json::from_str(&e.data).expect("hello is JSON");
            assert!(
                v["room"].is_string() && v["name"].is_string() && v["online"].is_u64(),
                "hello: {v}"
            );
        }
        other => panic!("{path}: the second item is not hello: {other:?}"),
    }
    for item in &items[2..] {
        if let Item::Event(e) = item {
            if e.event == "message" {
                ids.push(e.last_event_id.parse().expect("message ids are decimal"));
            }
        }
    }
}
