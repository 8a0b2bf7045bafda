//! `ssechat send`: one message from the arguments, or one per line of
//! standard input, each POSTed with its own `client_msg_id` and retried
//! with that same id until it is stored, so a retry never doubles it.
//! Lines go one at a time: the order is the order of the input, and a slow
//! server slows the reading (back-pressure) instead of filling memory.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use super::args::SendArgs;
use super::remote::{self, Backoff, Remote, CLIENT_HEADER};

/// Longest input line taken (bytes); a longer one is refused without being
/// sent (the server's own limits are far lower).
const MAX_LINE: usize = 1024 * 1024;

/// How long one POST may take before it is abandoned and retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Outcome {
    Stored(String),
    /// The server said no (status, its reason). Sending it again would
    /// not help.
    Refused(StatusCode, String),
    /// Not stored within the retry time: why the last attempt failed.
    Unreachable(String),
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

pub async fn run(args: SendArgs) -> ExitCode {
    let remote = match Remote::new(&args.conn) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ssechat send: {e}");
            return ExitCode::from(2);
        }
    };
    let sender = Sender { remote, args };
    if !sender.args.text.is_empty() {
        let text = sender.args.text.join(" ");
        return match sender.send(&text).await {
            Outcome::Stored(id) => {
                print_id(&id);
                ExitCode::SUCCESS
            }
            Outcome::Refused(_, e) => {
                eprintln!("ssechat send: refused: {e}");
                ExitCode::from(2)
            }
            Outcome::Unreachable(e) => {
                eprintln!("ssechat send: {e}");
                ExitCode::from(1)
            }
        };
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!("ssechat send: one message per line; Ctrl-D ends");
    }
    sender.lines(BufReader::new(tokio::io::stdin())).await
}

struct Sender {
    remote: Remote,
    args: SendArgs,
}

impl Sender {
    /// Each line of `input` is one message, sent after the one before it
    /// was stored. A message the server refuses (400, 413) is reported and
    /// the rest still go; any other refusal would repeat for every line,
    /// so it stops the run.
    async fn lines(&self, mut input: impl AsyncBufRead + Unpin) -> ExitCode {
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        let mut refused = false;
        loop {
            let too_long = match read_line(&mut input, &mut buf).await {
                Ok(Some(too_long)) => too_long,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("ssechat send: reading standard input: {e}");
                    return ExitCode::from(1);
                }
            };
            line_no += 1;
            if too_long {
                eprintln!("ssechat send: line {line_no} refused: longer than {MAX_LINE} bytes");
                refused = true;
                continue;
            }
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                continue;
            }
            match self.send(text).await {
                Outcome::Stored(id) => print_id(&id),
                Outcome::Refused(status, e) => {
                    eprintln!("ssechat send: line {line_no} refused: {e}");
                    refused = true;
                    if !matches!(
                        status,
                        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE
                    ) {
                        return ExitCode::from(2);
                    }
                }
                Outcome::Unreachable(e) => {
                    eprintln!("ssechat send: line {line_no} not sent: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        ExitCode::from(if refused { 2 } else { 0 })
    }

    /// POSTs one message until it is stored, refused, or `--retry-for`
    /// has passed. Network errors, 408, 429 and 5xx are retried with the
    /// same `client_msg_id` (the server then answers with the original),
    /// after `Retry-After` when the server gives one, else after a
    /// growing back-off.
    pub async fn send(&self, text: &str) -> Outcome {
        let body = serde_json::json!({
            "text": text,
            "room": self.remote.room,
            "name": self.args.name,
            "client_msg_id": remote::random_id(),
        });
        let body = serde_json::to_vec(&body).expect("JSON of strings serialises");
        let url = self.remote.endpoint("chat/messages");
        let deadline = Instant::now() + self.args.retry_for;
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(8));
        // Said once per message, so a script's user is not left looking at
        // a silent terminal for a minute. A 429 is ordinary pacing: not said.
        let mut said = false;
        loop {
            let res = self
                .remote
                .http
                .post(url.clone())
                .header(CLIENT_HEADER, &self.remote.token)
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, "application/json")
                .timeout(REQUEST_TIMEOUT)
                .body(body.clone())
                .send()
                .await;
            let (why, hint, say) = match res {
                Ok(res) if matches!(res.status(), StatusCode::CREATED | StatusCode::OK) => {
                    let status = res.status();
                    match remote::body_bounded(res, 64 * 1024).await {
                        Ok(b) => {
                            return match serde_json::from_slice::<Created>(&b) {
                                Ok(c) => Outcome::Stored(c.id),
                                Err(_) => Outcome::Refused(
                                    status,
                                    format!(
                                        "{status} without a message id: is --url an ssechat server?"
                                    ),
                                ),
                            }
                        }
                        // Stored, but the answer was cut: asking again
                        // returns the original id.
                        Err(e) => (e, None, true),
                    }
                }
                Ok(res) if retryable(res.status()) => {
                    let hint = remote::retry_after(res.headers());
                    let say = res.status() != StatusCode::TOO_MANY_REQUESTS;
                    (remote::refusal(res).await, hint, say)
                }
                Ok(res) => return Outcome::Refused(res.status(), remote::refusal(res).await),
                Err(e) => {
                    let why = remote::describe(&e);
                    // A certificate that does not verify will not verify
                    // on the next try either.
                    if why.contains("invalid peer certificate") {
                        return Outcome::Unreachable(why);
                    }
                    (why, None, true)
                }
            };
            let wait = hint
                .map(|h| h.max(Duration::from_millis(100)))
                .unwrap_or_else(|| backoff.next_wait());
            if Instant::now() + wait > deadline {
                return Outcome::Unreachable(format!(
                    "{why} (gave up after {} s of retries; --retry-for)",
                    self.args.retry_for.as_secs_f64()
                ));
            }
            if say && !said {
                said = true;
                eprintln!(
                    "ssechat send: {why}; retrying for up to {} s (--retry-for)",
                    self.args.retry_for.as_secs_f64()
                );
            }
            tokio::time::sleep(wait).await;
        }
    }
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

fn print_id(id: &str) {
    // Ids go out as they come, for a script reading them live; a closed
    // stdout (`| head -1`) does not stop the sending.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{id}");
    let _ = out.flush();
}

/// Reads one line (with its newline) into `buf`, holding at most
/// `MAX_LINE` bytes of it. `Some(true)`: the line was longer and was
/// skipped; `None`: end of input.
async fn read_line(
    input: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut any = false;
    let mut too_long = false;
    loop {
        let avail = input.fill_buf().await?;
        if avail.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let (take, done) = match memchr::memchr(b'\n', avail) {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if !too_long {
            if buf.len() + take > MAX_LINE {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&avail[..take]);
            }
        }
        input.consume(take);
        if done {
            return Ok(Some(too_long));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_an_overlong_one_is_skipped_whole() {
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("a\r\n\n{long}\nb");
        let mut r = BufReader::with_capacity(1000, input.as_bytes());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(too_long) = read_line(&mut r, &mut buf).await.unwrap() {
            got.push((too_long, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            got,
            [
                (false, "a\r\n".to_owned()),
                (false, "\n".to_owned()),
                (true, String::new()),
                (false, "b".to_owned()),
            ]
        );
    }

    #[test]
    fn what_is_worth_retrying() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 415] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
