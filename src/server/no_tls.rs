//! A build without the `tls` cargo feature: plain HTTP only. The HTTPS
//! flags are still parsed (so `--help` is the same everywhere) but refused
//! at start-up, naming the feature.

use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Config(String),
}

/// HTTPS as configured: in this build there is none, and no value of this
/// type can exist.
pub enum Tls {}

impl Tls {
    /// `None` for plain HTTP; an error if the configuration asks for HTTPS.
    pub fn from_config(config: &Config) -> Result<Option<Tls>, TlsError> {
        if config.tls_cert.is_some() || config.tls_key.is_some() || !config.acme_domains.is_empty()
        {
            return Err(TlsError::Config(crate::config::left_out(
                "--tls-cert, --tls-key and --acme-domain need HTTPS",
                "tls",
            )));
        }
        Ok(None)
    }

    pub async fn maintain(&self, _cancel: CancellationToken) {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_flags_are_refused_with_the_feature_named() {
        let plain = Config::defaults();
        assert!(matches!(Tls::from_config(&plain), Ok(None)));
        let asks = Config::from_flags(["ssechat", "--acme-domain", "chat.example"]).unwrap();
        let err = Tls::from_config(&asks).err().expect("refused").to_string();
        assert!(err.contains("feature `tls`"), "{err}");
    }
}
