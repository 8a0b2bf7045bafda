//! Certificates obtained and renewed by ssechat itself over ACME (RFC 8555)
//! with the TLS-ALPN-01 challenge (RFC 8737) on the serving port.
//!
//! The protocol is instant-acme's (on our own tokio/hyper/rustls stack and
//! the command-line client's reqwest; rustls-acme would bring a second
//! async runtime). What is ours: answering
//! the challenge in the TLS handshake, the cache, and when to renew.
//!
//! Cache (`--acme-cache`), one folder per ACME directory URL:
//! `account.json` (the account key) and, per set of names, `<names>.crt`
//! and `<names>.key`. A start finds the kept certificate and serves it at
//! once; nothing is ordered until a third of its lifetime is left.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::tls::{load_pair, provider, TlsError, ALPN_ACME};
use crate::chat::types::hex;
use crate::config::Config;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest single sleep: the renewal time is looked at again after it, so a
/// suspended machine or a changed clock is noticed within an hour.
const RECHECK: Duration = Duration::from_secs(3600);
/// First wait after a failed order; doubles up to `RECHECK`.
const RETRY_FIRST: Duration = Duration::from_secs(10);
/// How long the ACME server may take to validate and to issue.
const ORDER_WAIT: Duration = Duration::from_secs(120);
/// Bounds on one HTTP exchange with the ACME server.
const HTTP_CONNECT: Duration = Duration::from_secs(10);
const HTTP_REQUEST: Duration = Duration::from_secs(30);

/// The certificate to serve, and the challenge certificates while an order
/// is being validated.
#[derive(Debug, Default)]
pub struct AcmeCerts {
    current: RwLock<Option<Served>>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

#[derive(Debug, Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Served {
    fn from_pem(chain: &[u8], key: &[u8]) -> Result<Served, BoxError> {
        let chain = CertificateDer::pem_slice_iter(chain).collect::<Result<Vec<_>, _>>()?;
        let leaf = chain.first().ok_or("no certificate")?;
        let (not_before, not_after) = validity(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(key)?;
        Ok(Served {
            key: Arc::new(CertifiedKey::from_der(chain, key, &provider())?),
            not_before,
            not_after,
        })
    }

    /// When to renew: once a third of the lifetime is left.
    fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - life / 3
    }
}

/// The leaf's validity period (RFC 5280 4.1: Certificate, tbsCertificate,
/// then version, serialNumber, signature, issuer, validity), read with
/// yasna (a DER reader rcgen brings anyway; a full X.509 parser would
/// weigh more than the rest of ACME for two dates).
fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), BoxError> {
    use yasna::{tags, BERReader, BERReaderSeq, Tag};
    fn time(r: BERReader<'_, '_>) -> yasna::ASN1Result<SystemTime> {
        let at = if r.lookahead_tag()? == tags::TAG_UTCTIME {
            *r.read_utctime()?.datetime()
        } else {
            *r.read_generalized_time()?.datetime()
        };
        Ok(UNIX_EPOCH + Duration::from_secs(at.unix_timestamp().max(0) as u64))
    }
    fn skip_rest(r: &mut BERReaderSeq<'_, '_>) -> yasna::ASN1Result<()> {
        while r.read_optional(|r| r.read_der())?.is_some() {}
        Ok(())
    }
    Ok(yasna::parse_der(der, |r| {
        r.read_sequence(|cert| {
            let dates = cert.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                tbs.next().read_der()?; // serialNumber
                tbs.next().read_der()?; // signature algorithm
                tbs.next().read_der()?; // issuer
                let dates = tbs
                    .next()
                    .read_sequence(|v| Ok((time(v.next())?, time(v.next())?)))?;
                skip_rest(tbs)?;
                Ok(dates)
            })?;
            skip_rest(cert)?;
            Ok(dates)
        })
    })?)
}

impl ResolvesServerCert for AcmeCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ALPN_ACME));
        if challenge {
            let name = hello.server_name()?;
            return self.challenges.lock().ok()?.get(name).cloned();
        }
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().map(|s| s.key.clone())
    }
}

/// The ACME side of one server: its names, its cache, its certificates.
pub struct Acme {
    domains: Vec<String>,
    email: Option<String>,
    directory: String,
    root: Option<CertificateDer<'static>>,
    /// The cache folder of this directory URL.
    dir: PathBuf,
    /// File names (without extension) of this set of names.
    stem: String,
    certs: Arc<AcmeCerts>,
}

impl Acme {
    /// Checks the flags, opens the cache and serves a kept certificate at
    /// once if there is one.
    pub fn new(config: &Config) -> Result<Acme, TlsError> {
        let mut domains = Vec::new();
        for d in &config.acme_domains {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            if !valid_domain(&d) {
                return Err(TlsError::Config(format!(
                    "--acme-domain {d:?} is not a DNS name (letters, digits, '-' and dots)"
                )));
            }
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
        domains.sort();
        let root = match &config.acme_root {
            None => None,
            Some(path) => {
                Some(
                    CertificateDer::from_pem_file(path).map_err(|e| TlsError::Invalid {
                        path: path.clone(),
                        what: format!("no usable CA certificate in it ({e})"),
                    })?,
                )
            }
        };
        let dir = config
            .acme_cache
            .join(&hex(&Sha256::digest(config.acme_directory.as_bytes()))[..16]);
        std::fs::create_dir_all(&dir).map_err(|source| TlsError::Read {
            path: dir.clone(),
            source,
        })?;
        let stem = format!(
            "{}-{}",
            domains[0],
            &hex(&Sha256::digest(domains.join(",").as_bytes()))[..12]
        );
        let acme = Acme {
            domains,
            email: config.acme_email.clone(),
            directory: config.acme_directory.clone(),
            root,
            dir,
            stem,
            certs: Arc::default(),
        };
        match acme.load_cached() {
            Ok(Some(served)) => {
                tracing::info!(
                    domains = ?acme.domains,
                    expires_in_days = days_until(served.not_after),
                    "serving the certificate kept in the ACME cache"
                );
                acme.install(served);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("the kept certificate is unusable, ordering a new one: {e}"),
        }
        Ok(acme)
    }

    pub fn resolver(&self) -> Arc<dyn ResolvesServerCert> {
        self.certs.clone()
    }

    fn paths(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{}.crt", self.stem)),
            self.dir.join(format!("{}.key", self.stem)),
        )
    }

    fn load_cached(&self) -> Result<Option<Served>, BoxError> {
        let (crt, key) = self.paths();
        if !crt.exists() {
            return Ok(None);
        }
        // Parsed once more for the dates; load_pair says which file is bad.
        load_pair(&crt, &key)?;
        Ok(Some(Served::from_pem(
            &std::fs::read(&crt)?,
            &std::fs::read(&key)?,
        )?))
    }

    fn install(&self, served: Served) {
        *self
            .certs
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(served);
    }

    fn renew_at(&self) -> Option<SystemTime> {
        let current = self.certs.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().map(Served::renew_at)
    }

    /// Orders when there is no certificate or a third of its lifetime is
    /// left; retries failures with backoff; until cancelled.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut retry = RETRY_FIRST;
        loop {
            let wait = self
                .renew_at()
                .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
                .unwrap_or_default();
            if !wait.is_zero() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(wait.min(RECHECK)) => continue,
                }
            }
            tracing::info!(domains = ?self.domains, directory = %self.directory, "ordering a certificate");
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.order() => r,
            };
            self.certs
                .challenges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            match outcome {
                Ok(served) => {
                    tracing::info!(
                        domains = ?self.domains,
                        expires_in_days = days_until(served.not_after),
                        "certificate obtained"
                    );
                    self.install(served);
                    retry = RETRY_FIRST;
                }
                Err(e) => {
                    tracing::error!(retry_in_s = retry.as_secs(), "ACME order failed: {e}");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(RECHECK);
                }
            }
        }
    }

    /// One order: validate every name by TLS-ALPN-01, finalize, download,
    /// keep in the cache.
    async fn order(&self) -> Result<Served, BoxError> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = self.domains.iter().cloned().map(Identifier::Dns).collect();
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| step("creating the order", e))?;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| step("fetching an authorization", e))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("an authorization is {other:?}").into()),
            }
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or("the ACME server offers no tls-alpn-01 challenge")?;
            let name = challenge.identifier().to_string();
            let cert = challenge_cert(&name, challenge.key_authorization().digest().as_ref())?;
            self.certs
                .challenges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, Arc::new(cert));
            challenge
                .set_ready()
                .await
                .map_err(|e| step("announcing the challenge", e))?;
        }
        let retries = RetryPolicy::new().timeout(ORDER_WAIT);
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| step("waiting for validation", e))?;
        if status != OrderStatus::Ready {
            return Err(format!("the order is {status:?}, not ready (validation failed)").into());
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| step("finalizing the order", e))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| step("downloading the certificate", e))?;
        let served = Served::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())?;
        let (crt, key) = self.paths();
        write_private(&key, key_pem.as_bytes())?;
        write_atomic(&crt, chain_pem.as_bytes(), 0o644)?;
        Ok(served)
    }

    /// The account kept in the cache, or a new one (then kept).
    async fn account(&self) -> Result<Account, BoxError> {
        let path = self.dir.join("account.json");
        let http = Box::new(AcmeHttp::new(self.root.as_ref())?);
        if let Ok(json) = std::fs::read(&path) {
            let credentials: AccountCredentials =
                serde_json::from_slice(&json).map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok(Account::builder_with_http(http)
                .from_credentials(credentials)
                .await?);
        }
        let contact = self.email.as_ref().map(|e| format!("mailto:{e}"));
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(http)
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory.clone(),
                None,
            )
            .await?;
        write_private(&path, &serde_json::to_vec(&credentials)?)?;
        tracing::info!(directory = %self.directory, "ACME account created");
        Ok(account)
    }
}

fn step(what: &str, e: instant_acme::Error) -> BoxError {
    format!("{what}: {e}").into()
}

/// The self-signed certificate that proves control of `name` (RFC 8737:
/// the name as its only SAN, the key authorization's digest in the
/// critical acmeIdentifier extension).
fn challenge_cert(name: &str, digest: &[u8]) -> Result<CertifiedKey, BoxError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::try_from(key.serialize_der())?;
    // Not `CertifiedKey::from_der`: its check parses the certificate with
    // webpki, which refuses the critical acmeIdentifier extension.
    let signer = provider().key_provider.load_private_key(der)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

/// The ACME client's HTTPS: the same HTTP client as `ssechat send`
/// (reqwest, rustls with ring), trusting the system's roots plus
/// `--acme-root`. No proxy from the environment: the ACME server must see
/// this host, and an HTTPS_PROXY meant for other programs must not stand
/// in between unnoticed.
struct AcmeHttp(reqwest::Client);

impl AcmeHttp {
    fn new(root: Option<&CertificateDer<'static>>) -> Result<AcmeHttp, BoxError> {
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .no_proxy()
            .connect_timeout(HTTP_CONNECT)
            .timeout(HTTP_REQUEST)
            .user_agent(concat!("ssechat/", env!("CARGO_PKG_VERSION")));
        if let Some(root) = root {
            builder = builder.add_root_certificate(reqwest::Certificate::from_der(root.as_ref())?);
        }
        Ok(AcmeHttp(builder.build()?))
    }
}

impl instant_acme::HttpClient for AcmeHttp {
    fn request(
        &self,
        req: hyper::Request<BodyWrapper<bytes::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            // The body is one JWS document, already in memory.
            let Ok(body) = body.collect().await.map(|b| b.to_bytes());
            let req = reqwest::Request::try_from(hyper::Request::from_parts(parts, body))
                .map_err(|e| instant_acme::Error::Other(e.into()))?;
            let res = client
                .execute(req)
                .await
                .map_err(|e| instant_acme::Error::Other(e.into()))?;
            Ok(BytesResponse::from(hyper::Response::<reqwest::Body>::from(
                res,
            )))
        })
    }
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic(path, data, 0o600)
}

/// Writes a whole file or nothing: a crash mid-write leaves the old one.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn days_until(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs()
        / 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(days_valid: i64, started_days_ago: i64) -> Served {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        let now = time_now();
        params.not_before = now - rcgen_days(started_days_ago);
        params.not_after = params.not_before + rcgen_days(days_valid);
        let cert = params.self_signed(&key).unwrap();
        Served::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
    }

    fn time_now() -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc()
    }

    fn rcgen_days(d: i64) -> time::Duration {
        time::Duration::days(d)
    }

    #[test]
    fn renewal_is_due_once_a_third_of_the_lifetime_is_left() {
        // 90 days valid, 50 days old: 40 left, renew at 30 left = in 10 days.
        let s = served(90, 50);
        let wait = s.renew_at().duration_since(SystemTime::now()).unwrap();
        let days = wait.as_secs_f64() / 86_400.0;
        assert!((9.9..10.1).contains(&days), "{days}");
        // 61 days old: due already.
        assert!(served(90, 61).renew_at() < SystemTime::now());
    }

    #[test]
    fn validity_reads_utc_and_generalized_times() {
        // RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2001, 2, 3);
        params.not_after = rcgen::date_time_ymd(2061, 4, 5);
        let cert = params.self_signed(&key).unwrap();
        let (from, until) = validity(cert.der()).unwrap();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs(from), 981_158_400);
        assert_eq!(secs(until), 2_879_884_800);
        assert!(validity(b"\x30\x03\x02\x01\x01").is_err());
        assert!(validity(&cert.der()[..100]).is_err());
    }

    #[test]
    fn the_challenge_certificate_names_the_domain() {
        let c = challenge_cert("a.test", &[7u8; 32]).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&c.cert[0]).unwrap();
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&[7u8; 32]));
    }

    #[test]
    fn domains_are_checked() {
        assert!(valid_domain("chat.example.org"));
        assert!(valid_domain("xn--bcher-kva.example"));
        for bad in ["", "a..b", "-a.b", "a b", "*.example.org", "a/b"] {
            assert!(!valid_domain(bad), "{bad}");
        }
    }
}
