//! A tiny HTTP/1.1 client over raw tokio `TcpStream`s: exactly what the load
//! generator needs and nothing more (cheap enough to hold 19,000 of them).
//!
//! - [`Target`]: a loopback-only `http://HOST:PORT` address.
//! - [`ResponseHead`] / [`read_head`]: status line and the few headers that
//!   matter (`Content-Length`, `Transfer-Encoding: chunked`, `Connection`).
//! - [`Chunked`]: an incremental `Transfer-Encoding: chunked` decoder (hyper
//!   streams SSE bodies chunked).
//! - [`Conn`]: one keep-alive connection that sends a request and reads the
//!   whole response (the posters).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A loopback HTTP endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
}

impl Target {
    /// Parses `http://HOST[:PORT][/]`, refusing every host that is not
    /// `127.0.0.1`, `::1` (`[::1]`) or `localhost`: the benchmark never
    /// loads anything but this machine.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--url must start with http:// (got {url:?})"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!("--url must be http://HOST:PORT only (got {url:?})"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, p) = v6
                .split_once(']')
                .ok_or_else(|| format!("bad IPv6 address in {url:?}"))?;
            (h, p.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port: u16 = match port {
            Some(p) => p.parse().map_err(|_| format!("bad port in {url:?}"))?,
            None => 80,
        };
        let ip: IpAddr = match host {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            h => h
                .parse()
                .map_err(|_| format!("refusing host {h:?}: only 127.0.0.1, ::1 or localhost"))?,
        };
        if ip != IpAddr::V4(Ipv4Addr::LOCALHOST) && ip != IpAddr::V6(Ipv6Addr::LOCALHOST) {
            return Err(format!(
                "refusing host {host:?}: the benchmark only talks to 127.0.0.1, ::1 or localhost"
            ));
        }
        let addr = SocketAddr::new(ip, port);
        Ok(Target {
            addr,
            host: addr.to_string(),
        })
    }

    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// Connects subscriber `idx` from its own source address (see
    /// [`source_for`]), so a crowd of 19,000 does not run one address out of
    /// ephemeral ports.
    pub async fn connect_as(&self, idx: usize) -> std::io::Result<TcpStream> {
        let Some(src) = source_for(self.addr, idx) else {
            return self.connect().await;
        };
        let socket = tokio::net::TcpSocket::new_v4()?;
        // The port is chosen by `connect`, for the whole 4-tuple: `bind`
        // alone would reserve one for any destination, and its search
        // skips every port an earlier run left in TIME_WAIT (measured: the
        // load generator's system time grew from 1 s to 33 s over five
        // back-to-back runs of 10,000).
        crate::sys::bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(src, 0))?;
        let s = socket.connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// Subscribers per source address. Linux gives `connect` the even half of
/// the ephemeral range first (about 14,000 ports of 32768–60999); beyond
/// that each connect searches the odd half and slows to tens per second.
/// Well under it per address, every connect finds a port at once.
pub const PER_SOURCE: usize = 2000;

/// The source address of subscriber `idx` for an IPv4 loopback target:
/// 127.0.0.2 for the first [`PER_SOURCE`], 127.0.0.3 for the next, and so on
/// (never the target's own 127.0.0.1, which the posters use). `None` for
/// IPv6, whose loopback is one address.
pub fn source_for(target: SocketAddr, idx: usize) -> Option<IpAddr> {
    match target {
        SocketAddr::V4(_) => {
            let n = u32::try_from(2 + idx / PER_SOURCE).ok()?;
            (n < 1 << 24).then(|| IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | n)))
        }
        SocketAddr::V6(_) => None,
    }
}

/// What the benchmark needs from a response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub close: bool,
}

/// Where the head ends (index just past `\r\n\r\n`), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_head(raw: &[u8]) -> Result<ResponseHead, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut head = ResponseHead {
        status,
        content_length: None,
        chunked: false,
        close: version == "HTTP/1.0",
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(head)
}

/// Reads until a complete response head is in `buf`; returns it and removes
/// it from `buf` (what follows, the start of the body, stays).
pub async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    scratch: &mut [u8],
) -> Result<ResponseHead, String> {
    loop {
        if let Some(end) = head_end(buf) {
            let head = parse_head(&buf[..end])?;
            buf.drain(..end);
            return Ok(head);
        }
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
        let n = stream
            .read(scratch)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        buf.extend_from_slice(&scratch[..n]);
    }
}

/// An incremental `Transfer-Encoding: chunked` decoder.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading the `SIZE[;ext]\r\n` line.
    #[default]
    Size,
    /// Inside a chunk: this many bytes left.
    Data(usize),
    /// After a chunk's data: its `\r\n`.
    DataEnd,
    /// After the last (zero) chunk: trailer lines up to the empty one.
    Trailer,
    Done,
}

impl Chunked {
    /// Decodes `input`, handing every piece of body data to `out`. Returns
    /// `Ok(true)` once the terminating chunk and trailer have been read.
    pub fn feed(&mut self, mut input: &[u8], mut out: impl FnMut(&[u8])) -> Result<bool, String> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        if self.line.len() > 4096 {
                            return Err("chunk size line too long".into());
                        }
                        return Ok(false);
                    };
                    self.line.extend_from_slice(&input[..nl]);
                    input = &input[nl + 1..];
                    let line = std::mem::take(&mut self.line);
                    let line = line.strip_suffix(b"\r").unwrap_or(&line);
                    if self.state == ChunkState::Trailer {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                            return Ok(true);
                        }
                        continue;
                    }
                    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                    let hex = std::str::from_utf8(hex).map_err(|_| "bad chunk size".to_string())?;
                    let size = usize::from_str_radix(hex.trim(), 16)
                        .map_err(|_| format!("bad chunk size {hex:?}"))?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let n = left.min(input.len());
                    out(&input[..n]);
                    input = &input[n..];
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataEnd => {
                    let b = input[0];
                    input = &input[1..];
                    match b {
                        b'\r' => {}
                        b'\n' => self.state = ChunkState::Size,
                        _ => return Err("missing CRLF after chunk data".into()),
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
        Ok(self.state == ChunkState::Done)
    }
}

/// One keep-alive HTTP/1.1 connection for request/response exchanges.
pub struct Conn {
    target: Target,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

impl Conn {
    pub fn new(target: Target) -> Conn {
        Conn {
            target,
            stream: None,
            buf: Vec::with_capacity(4096),
            scratch: vec![0; 16 * 1024],
        }
    }

    /// Sends `request` (a complete HTTP/1.1 request) and reads the whole
    /// response. Connects (again) when needed; a connection the server
    /// closes is dropped and opened anew by the next call.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>), String> {
        if self.stream.is_none() {
            let s = self
                .target
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let result = self.exchange_inner(request).await;
        match &result {
            Ok((_, _, close)) if !close => {}
            _ => self.stream = None,
        }
        result.map(|(status, body, _)| (status, body))
    }

    async fn exchange_inner(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>, bool), String> {
        let stream = self.stream.as_mut().expect("connected");
        stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let head = read_head(stream, &mut self.buf, &mut self.scratch).await?;
        let mut body = Vec::new();
        if head.chunked {
            let mut dec = Chunked::default();
            let pending = std::mem::take(&mut self.buf);
            let mut done = dec.feed(&pending, |d| body.extend_from_slice(d))?;
            while !done {
                let n = stream
                    .read(&mut self.scratch)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("connection closed inside a chunked body".into());
                }
                done = dec.feed(&self.scratch[..n], |d| body.extend_from_slice(d))?;
            }
            // Anything after the body would be a pipelined response; we
            // never pipeline, so there is none.
        } else if let Some(len) = head.content_length {
            while self.buf.len() < len {
                let n = stream
                    .read(&mut self.scratch)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("connection closed inside the body".into());
                }
                self.buf.extend_from_slice(&self.scratch[..n]);
            }
            body.extend(self.buf.drain(..len));
        } else {
            // Body until close.
            body.append(&mut self.buf);
            loop {
                let n = stream
                    .read(&mut self.scratch)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&self.scratch[..n]);
            }
            return Ok((head.status, body, true));
        }
        Ok((head.status, body, head.close))
    }
}

/// `GET /healthz` on a fresh connection: true on `200`.
pub async fn healthz(target: &Target) -> bool {
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.host
    );
    let attempt = async {
        let mut c = Conn::new(target.clone());
        c.exchange(req.as_bytes()).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok((200, _)))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_loopback_only() {
        assert!(Target::parse("http://127.0.0.1:3000").is_ok());
        assert!(Target::parse("http://127.0.0.1:3000/").is_ok());
        assert!(Target::parse("http://localhost:3000").is_ok());
        assert!(Target::parse("http://[::1]:3000").is_ok());
        assert!(Target::parse("http://10.0.0.1:3000").is_err());
        assert!(Target::parse("http://example.com:3000").is_err());
        assert!(Target::parse("https://127.0.0.1:3000").is_err());
        assert!(Target::parse("http://127.0.0.2:3000").is_err());
    }

    #[test]
    fn subscribers_spread_over_loopback_sources() {
        let v4: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let at = |i| source_for(v4, i).unwrap().to_string();
        assert_eq!(at(0), "127.0.0.2");
        assert_eq!(at(PER_SOURCE - 1), "127.0.0.2");
        assert_eq!(at(PER_SOURCE), "127.0.0.3");
        assert_eq!(at(18_999), "127.0.0.11");
        assert_eq!(at(254 * PER_SOURCE), "127.0.1.0");
        assert_eq!(source_for("[::1]:3000".parse().unwrap(), 5), None);
    }

    #[test]
    fn chunked_decodes_across_splits() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..wire.len() {
            let mut dec = Chunked::default();
            let mut out = Vec::new();
            let a = dec
                .feed(&wire[..split], |d| out.extend_from_slice(d))
                .unwrap();
            let b = dec
                .feed(&wire[split..], |d| out.extend_from_slice(d))
                .unwrap();
            assert!(!a || split == wire.len());
            assert!(b);
            assert_eq!(out, b"hello, world");
        }
    }

    #[test]
    fn heads_parse() {
        let h = parse_head(b"HTTP/1.1 201 Created\r\ncontent-length: 12\r\n\r\n").unwrap();
        assert_eq!(h.status, 201);
        assert_eq!(h.content_length, Some(12));
        assert!(!h.chunked && !h.close);
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert!(h.chunked && h.close);
    }
}
