//! `sse-reference`: the minimal SSE broadcast server the benchmark compares
//! ssechat against (the "practical ceiling" on this machine). Plain hyper 1
//! + tokio, no warp, no JSON, no ids, no presence, no history:
//!
//! - `GET /events`: `200 text/event-stream`; a `: ok` comment first (so the
//!   head goes out at once), then every frame of one
//!   `tokio::sync::broadcast::channel::<Bytes>(1024)`. A subscriber that
//!   falls more than the capacity behind skips what it missed (the bench
//!   counts that as lost).
//! - `POST /messages`: the body, whatever it is, is the text; it is encoded
//!   once as `data: <text, each \n → \ndata: >\n\n` into `Bytes`, broadcast,
//!   and answered `201`.
//! - `GET /healthz`: `200 ok`.
//! - With `--tls-cert`/`--tls-key`: HTTPS with the same rustls (ring) as
//!   ssechat, HTTP/2 or HTTP/1.1 by ALPN (hyper's own HTTP/2 server).
//!
//! Not a product: loopback benchmarking only.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::broadcast::{self, error::RecvError};

/// Minimal SSE broadcast server (hyper + tokio), the benchmark's reference.
#[derive(Debug, Parser)]
#[command(name = "sse-reference", version, about, long_about = None)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one; stderr says which).
    #[arg(long, default_value_t = 3001)]
    port: u16,
    /// Broadcast channel capacity (frames a subscriber may fall behind).
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
    /// HTTPS: certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// HTTPS: private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// rustls with ring, ALPN h2 then http/1.1: what ssechat offers.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("{}: {e}", cert.display()));
    let key =
        PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    let mut config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *r.status_mut() = status;
    r
}

/// `data: ` + text with every LF continued as a new `data: ` line + `\n\n`.
fn encode(text: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + 8);
    out.extend_from_slice(b"data: ");
    for &b in text {
        if b == b'\n' {
            out.extend_from_slice(b"\ndata: ");
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

async fn handle(
    req: Request<Incoming>,
    tx: broadcast::Sender<Bytes>,
) -> Result<Response<Body>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/events") => {
            let rx = tx.subscribe();
            let first = futures_util::stream::once(async {
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b": ok\n\n")))
            });
            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(frame) => return Some((Ok(Frame::data(frame)), rx)),
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    }
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(first.chain(frames))));
            r.headers_mut()
                .insert(CONTENT_TYPE, "text/event-stream".parse().expect("valid"));
            r.headers_mut()
                .insert(CACHE_CONTROL, "no-cache".parse().expect("valid"));
            r
        }
        (&Method::POST, "/messages") => match req.into_body().collect().await {
            Ok(body) => {
                // No receivers is not an error: nobody listens.
                let _ = tx.send(encode(&body.to_bytes()));
                full(StatusCode::CREATED, "")
            }
            Err(_) => full(StatusCode::BAD_REQUEST, "bad body\n"),
        },
        (&Method::GET, "/healthz") => full(StatusCode::OK, "ok"),
        _ => full(StatusCode::NOT_FOUND, "not found\n"),
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = match TcpListener::bind(SocketAddr::new(args.host, args.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "sse-reference: cannot listen on {}:{}: {e}",
                args.host, args.port
            );
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().expect("bound");
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("sse-reference: listening on {scheme}://{addr}/");
    let (tx, _) = broadcast::channel::<Bytes>(args.capacity.max(1));

    let accept = async {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off a little, keep serving.
                    eprintln!("sse-reference: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            let tls = tls.clone();
            // Plain and TLS connections are separate tasks: one future
            // holding both would make every plain connection as large as a
            // TLS one (the idle-RSS figures compare plain HTTP).
            let service = service_fn(move |req| handle(req, tx.clone()));
            match tls {
                None => {
                    tokio::spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(tls) => {
                    tokio::spawn(async move {
                        let Ok(stream) = tls.accept(stream).await else {
                            return;
                        };
                        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                            let _ = http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        } else {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    });
                }
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = accept => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("sse-reference: stopping");
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn encodes_lines_as_data_fields() {
        assert_eq!(&encode(b"hi")[..], b"data: hi\n\n");
        assert_eq!(&encode(b"a\nb")[..], b"data: a\ndata: b\n\n");
    }
}
