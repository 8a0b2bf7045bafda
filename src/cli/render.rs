//! How `listen` shows what arrives: messages as `NAME: TEXT` lines or one
//! JSON object a line, and presence and connection notices for stderr.

use serde::Deserialize;

/// The fields of a `message` event that the client reads.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub id: String,
    pub room: String,
    pub name: String,
    pub text: String,
    #[serde(default)]
    pub me: bool,
}

/// `NAME: TEXT` (or `me: TEXT`) and a newline. Every line break inside TEXT
/// (CR, LF or CRLF) continues on a new line indented by two spaces, so a
/// message always starts at column 0 and a reader can tell where the next
/// one begins. For a terminal (`for_terminal`), other control characters
/// are shown as U+FFFD: a message must not be able to move the cursor,
/// retitle the window or hide text behind escape sequences.
pub fn text_line(msg: &Message, for_terminal: bool, out: &mut String) {
    let who = if msg.me { "me" } else { msg.name.as_str() };
    push_clean(who, for_terminal, out);
    out.push_str(": ");
    let mut chars = msg.text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\n  ");
            }
            c => push_char(c, for_terminal, out),
        }
    }
    out.push('\n');
}

fn push_clean(s: &str, for_terminal: bool, out: &mut String) {
    for c in s.chars() {
        push_char(
            if c == '\n' || c == '\r' { ' ' } else { c },
            for_terminal,
            out,
        );
    }
}

fn push_char(c: char, for_terminal: bool, out: &mut String) {
    if for_terminal && c.is_control() && c != '\t' {
        out.push('\u{fffd}');
    } else {
        out.push(c);
    }
}

/// The event's JSON on one line: as received when it already is one line
/// (the server's form), else re-serialised compactly.
pub fn json_line(data: &str, out: &mut String) -> Result<(), serde_json::Error> {
    if data.contains(['\n', '\r']) {
        let v: serde_json::Value = serde_json::from_str(data)?;
        out.push_str(&serde_json::to_string(&v)?);
    } else {
        out.push_str(data);
    }
    out.push('\n');
    Ok(())
}

#[derive(Deserialize)]
struct Hello {
    room: String,
    name: String,
    online: u64,
}

#[derive(Deserialize)]
struct JoinLeave {
    name: String,
    online: u64,
}

#[derive(Deserialize)]
struct Presence {
    online: u64,
    joined: u64,
    left: u64,
}

/// The stderr line for a `hello`, `join`, `leave` or `presence` event, in
/// the words of the server's text format.
pub fn notice(event: &str, data: &str) -> Option<String> {
    let mut out = String::from(">> ");
    match event {
        "hello" => {
            let h: Hello = serde_json::from_str(data).ok()?;
            out.push_str("listening to #");
            push_clean(&h.room, true, &mut out);
            out.push_str(" as ");
            push_clean(&h.name, true, &mut out);
            out.push_str(&format!(" ({} online)", h.online));
        }
        "join" | "leave" => {
            let j: JoinLeave = serde_json::from_str(data).ok()?;
            push_clean(&j.name, true, &mut out);
            let verb = if event == "join" { "joined" } else { "left" };
            out.push_str(&format!(" {verb} ({} online)", j.online));
        }
        "presence" => {
            let p: Presence = serde_json::from_str(data).ok()?;
            out.push_str(&format!(
                "{} joined, {} left ({} online)",
                p.joined, p.left, p.online
            ));
        }
        _ => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(name: &str, text: &str, me: bool) -> Message {
        Message {
            id: "1".into(),
            room: "lobby".into(),
            name: name.into(),
            text: text.into(),
            me,
        }
    }

    fn line(m: &Message, terminal: bool) -> String {
        let mut out = String::new();
        text_line(m, terminal, &mut out);
        out
    }

    #[test]
    fn own_messages_are_me_and_others_carry_their_name() {
        assert_eq!(line(&msg("alice", "hi", false), false), "alice: hi\n");
        assert_eq!(line(&msg("alice", "hi", true), false), "me: hi\n");
    }

    #[test]
    fn every_line_break_continues_indented() {
        let m = msg("bob", "one\ntwo\r\nthree\rfour\n", false);
        assert_eq!(line(&m, false), "bob: one\n  two\n  three\n  four\n  \n");
    }

    #[test]
    fn a_terminal_never_sees_control_characters() {
        let m = msg("eve", "\u{1b}]0;pwned\u{7}\ttab", false);
        assert_eq!(line(&m, true), "eve: \u{fffd}]0;pwned\u{fffd}\ttab\n");
        assert_eq!(
            line(&m, false),
            "eve: \u{1b}]0;pwned\u{7}\ttab\n",
            "pipes get it exact"
        );
    }

    #[test]
    fn json_stays_one_line() {
        let mut out = String::new();
        json_line("{\"a\":\n1}", &mut out).unwrap();
        json_line("{\"b\":2}", &mut out).unwrap();
        assert_eq!(out, "{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn presence_reads_like_the_text_format() {
        assert_eq!(
            notice("join", r#"{"name":"alice","online":2}"#).unwrap(),
            ">> alice joined (2 online)"
        );
        assert_eq!(
            notice(
                "presence",
                r#"{"online":9,"joined":8,"left":1,"names_joined":[],"names_left":[]}"#
            )
            .unwrap(),
            ">> 8 joined, 1 left (9 online)"
        );
        assert_eq!(notice("typing", "{}"), None);
    }
}
