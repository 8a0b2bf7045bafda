//! HTTPS: the rustls configuration (HTTP/2 and HTTP/1.1 by ALPN, the ring
//! provider), certificates from PEM files that SIGHUP reloads without
//! dropping a connection, and the choice between files and ACME.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::acme::Acme;
use crate::config::Config;

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// RFC 8737: a connection offering only this protocol is the ACME server
/// checking a TLS-ALPN-01 challenge; it is answered by the handshake alone.
pub const ALPN_ACME: &[u8] = b"acme-tls/1";

/// Why HTTPS cannot be set up. Each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
    #[error("{0}")]
    Config(String),
}

/// The one crypto provider everything TLS uses (ring: no C toolchain needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key from PEM files, checked to belong
/// together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, e: pem::Error| match e {
        pem::Error::Io(source) => TlsError::Read {
            path: path.to_owned(),
            source,
        },
        e => invalid(path, format!("not a valid PEM file ({e})")),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, e))?;
    if chain.is_empty() {
        return Err(invalid(
            cert,
            "no certificate in it (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    let private = match PrivateKeyDer::from_pem_file(key) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(invalid(
                key,
                "no private key in it (expected -----BEGIN PRIVATE KEY-----)",
            ))
        }
        Err(e) => return Err(pem_error(key, e)),
    };
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        invalid(
            key,
            format!("not usable with the certificate in {}: {e}", cert.display()),
        )
    })
}

fn invalid(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// Serves the certificate from `--tls-cert`/`--tls-key`; `reload` swaps it
/// for new handshakes while open connections keep theirs.
#[derive(Debug)]
pub struct FileCerts {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl FileCerts {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(FileCerts {
            current: RwLock::new(Arc::new(load_pair(cert, key)?)),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Reads both files again; on any error the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load_pair(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

impl ResolvesServerCert for FileCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// HTTPS as configured: the acceptor for new connections and what keeps
/// its certificate current.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    source: Source,
}

enum Source {
    Files(Arc<FileCerts>),
    Acme(Arc<Acme>),
}

impl Tls {
    /// `None` for plain HTTP. Reads the files (or the ACME cache) now, so a
    /// broken setup stops the start.
    pub fn from_config(config: &Config) -> Result<Option<Tls>, TlsError> {
        // Whatever else in the process asks for "the default provider"
        // (the ACME client's HTTPS) gets ring too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (resolver, source, acme): (Arc<dyn ResolvesServerCert>, _, _) =
            match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => {
                    let certs = Arc::new(FileCerts::load(cert, key)?);
                    (certs.clone(), Source::Files(certs), false)
                }
                (None, None) if config.acme_domains.is_empty() => return Ok(None),
                (None, None) => {
                    let acme = Arc::new(Acme::new(config)?);
                    (acme.resolver(), Source::Acme(acme), true)
                }
                _ => {
                    return Err(TlsError::Config(
                        "--tls-cert and --tls-key go together".into(),
                    ))
                }
            };
        Ok(Some(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server_config(resolver, acme)?)),
            source,
        }))
    }

    /// Keeps the certificate current until cancelled: reloads the files on
    /// SIGHUP, or renews over ACME.
    pub async fn maintain(&self, cancel: CancellationToken) {
        match &self.source {
            Source::Files(certs) => reload_on_sighup(certs.clone(), cancel).await,
            Source::Acme(acme) => acme.run(cancel).await,
        }
    }
}

fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    acme: bool,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    if acme {
        config.alpn_protocols.push(ALPN_ACME.to_vec());
    }
    Ok(config)
}

async fn reload_on_sighup(certs: Arc<FileCerts>, cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; certificates will not reload");
            return;
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = hup.recv() => match certs.reload() {
                Ok(()) => tracing::info!(cert = %certs.cert.display(), "certificate reloaded"),
                Err(e) => tracing::error!("certificate not reloaded, keeping the current one: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn leaf(certs: &FileCerts) -> Vec<u8> {
        certs.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a.test");
        assert_eq!(load_pair(&c, &k).unwrap().cert.len(), 1);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a.test");
        let (_, other_key) = pair(dir.path(), "b.test");
        let missing = dir.path().join("missing.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();

        let e = load_pair(&missing, &k).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("missing.pem"),
            "{e}"
        );
        let e = load_pair(&junk, &k).unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = load_pair(&c, &junk).unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no private key"),
            "{e}"
        );
        let e = load_pair(&c, &other_key).unwrap_err().to_string();
        assert!(e.contains("b.test.key") && e.contains("a.test.crt"), "{e}");
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a.test");
        let certs = FileCerts::load(&c, &k).unwrap();
        let first = leaf(&certs);

        let (c2, k2) = pair(dir.path(), "b.test");
        std::fs::copy(&c2, &c).unwrap();
        std::fs::copy(&k2, &k).unwrap();
        certs.reload().unwrap();
        let second = leaf(&certs);
        assert_ne!(first, second, "the new certificate is served");

        std::fs::write(&c, "-----BEGIN CERTIFICATE-----\nbroken").unwrap();
        let e = certs.reload().unwrap_err().to_string();
        assert!(e.contains("a.test.crt"), "{e}");
        assert_eq!(leaf(&certs), second, "a broken file keeps the old one");
    }
}
