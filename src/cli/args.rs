//! The flags of `ssechat send` and `ssechat listen` (clap), with the
//! examples their `--help` shows.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Where to connect and as whom: shared by `send` and `listen`.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The server's address (http:// or https://, with any path prefix it
    /// is served under).
    #[arg(long, env = "SSECHAT_URL", default_value = "http://127.0.0.1:3000")]
    pub url: reqwest::Url,

    /// The room.
    #[arg(long, default_value = "lobby", value_parser = parse_room)]
    pub room: String,

    /// Your secret client token (32 to 128 of A-Z a-z 0-9 - _ . ~). Keep
    /// the same one to stay the same person: your own messages then come
    /// back as `me`. Without one, a random token is made for this run.
    #[arg(long, env = "SSECHAT_CLIENT", hide_env_values = true, value_parser = parse_token)]
    pub client: Option<String>,

    /// A PEM file of extra CA certificates to trust (besides the system's),
    /// e.g. for a server with a private CA.
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
}

/// Send messages: the TEXT words joined by spaces are one message; without
/// TEXT, each line of standard input is one message, sent in order.
#[derive(Debug, Clone, Args)]
#[command(after_help = SEND_EXAMPLES)]
pub struct SendArgs {
    #[command(flatten)]
    pub conn: Conn,

    /// Your display name (1-32 characters); the server keeps the latest.
    #[arg(long)]
    pub name: Option<String>,

    /// Seconds to keep retrying one message (network errors, 429, 503)
    /// before giving up with exit code 1.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub retry_for: Duration,

    /// The message. Without it, standard input is read, one message a line.
    #[arg(value_name = "TEXT")]
    pub text: Vec<String>,
}

const SEND_EXAMPLES: &str = "\
Prints the id of each stored message on its own line. A message is retried
with the same client_msg_id, so a retry never posts it twice. Empty lines
of standard input are skipped.

Exit status: 0 all stored, 2 the server refused one (its reason on stderr;
with standard input the other lines are still sent), 1 the server could not
be reached (or kept answering 429/503) for --retry-for seconds.

Examples:
  ssechat send --room ops 'deploy of v1.4 finished'
  tail -F /var/log/app.log | ssechat send --room ops --name app
  SSECHAT_URL=https://chat.example.org ssechat send hello from a script";

/// Print the messages of a room as they arrive, reconnecting by itself
/// for ever with Last-Event-ID: nothing missed, nothing twice.
#[derive(Debug, Clone, Args)]
#[command(after_help = LISTEN_EXAMPLES)]
pub struct ListenArgs {
    #[command(flatten)]
    pub conn: Conn,

    /// Your display name while listening (shown to others as join/leave).
    #[arg(long)]
    pub name: Option<String>,

    /// One JSON object per line (the `message` event's JSON) instead of
    /// `NAME: TEXT`.
    #[arg(long)]
    pub json: bool,

    /// Start after this message id (the messages after it are replayed).
    /// Without it (and without a state file) only new messages are shown.
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub since: Option<String>,

    /// Keep the last message id in FILE (written atomically after each
    /// message) and resume from it when started again; it wins over
    /// --since once it exists.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,

    /// Exit after N messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Run CMD with `sh -c` once per message, one at a time, in order, with
    /// the message JSON (and a newline) on its standard input. It also gets
    /// SSECHAT_MSG_ID, SSECHAT_MSG_ROOM, SSECHAT_MSG_NAME, SSECHAT_MSG_TEXT,
    /// SSECHAT_MSG_ME (1 or 0), and SSECHAT_URL and SSECHAT_CLIENT, so an
    /// `ssechat send` inside it speaks as this listener.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,

    /// Print no presence (join/leave) or connection notices on stderr.
    #[arg(long, short)]
    pub quiet: bool,

    /// Seconds without a byte from the server (not even a keep-alive
    /// comment) after which the connection is taken for dead and reopened.
    #[arg(long, value_name = "SECS", default_value = "90", value_parser = parse_secs)]
    pub idle_timeout: Duration,
}

const LISTEN_EXAMPLES: &str = r#"Messages go to stdout as `NAME: TEXT` (your own as `me: TEXT`; a line break
inside TEXT continues on the next line, indented by two spaces). Joins,
leaves and reconnects go to stderr. SIGTERM or SIGINT: the message in hand
is finished (printed, --exec run, state written), then exit 0.

Examples:
  ssechat listen --room ops
  ssechat listen --room ops --json --state ~/.ops.last-id >> ops.ndjson
  ssechat listen --room lobby --exec \
    'if [ "$SSECHAT_MSG_TEXT" = "!time" ]; then ssechat send --room lobby "$(date)"; fi'
  ssechat listen --room deploys --count 1 --since 1234"#;

fn parse_room(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a room name is 1-64 of A-Z a-z 0-9 - _".into())
    }
}

/// Tokens carry at least 128 bits: 32 characters or more, URL-safe.
fn parse_token(s: &str) -> Result<String, String> {
    let ok = (32..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a client token is 32-128 of A-Z a-z 0-9 - _ . ~ (e.g. 32 random hex digits)".into())
    }
}

/// Ids are opaque to the client, but travel in a header: printable ASCII.
fn parse_id(s: &str) -> Result<String, String> {
    if (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err("a message id is 1-128 printable ASCII characters".into())
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err("seconds: a number above 0, at most 86400".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_follow_the_server_rule() {
        assert!(parse_room("ops-2_a").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(parse_room(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tokens_need_128_bits_and_url_safe_characters() {
        assert!(parse_token(&"a".repeat(32)).is_ok());
        for bad in ["short", &"a".repeat(31), &format!("{}/", "a".repeat(32))] {
            assert!(parse_token(bad).is_err(), "{bad:?} accepted");
        }
    }
}
