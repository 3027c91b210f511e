//! The rustls pieces both dialects share.
//!
//! The two sources spell their TLS settings as their own clients do
//! (libpq's `sslmode=verify-full`, MySQL's `ssl-mode=VERIFY_IDENTITY`), and
//! each has its own driver hook ([`crate::postgres`], [`crate::mysql`]), but
//! under the spellings the modes mean the same five things, in the same
//! order of strength:
//!
//! | Postgres `sslmode` | MySQL `ssl-mode` | TLS | certificate |
//! |---|---|---|---|
//! | `disable` | `DISABLED` | never | — |
//! | `prefer` | `PREFERRED` | when the server offers it | not checked |
//! | `require` | `REQUIRED` | always | chained to the CA file when one is given |
//! | `verify-ca` | `VERIFY_CA` | always | chained to the CA file |
//! | `verify-full` | `VERIFY_IDENTITY` | always | chained, and valid for the url's host |
//!
//! What is the same is here: which rustls crypto provider is used, the
//! verifier of the modes that check the chain but not the name
//! ([`NameNotChecked`]), and what a refused certificate means
//! ([`Refusal`]), which each dialect words with its own setting names.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The rustls provider: the process default when one is installed, else
/// aws-lc-rs (the tree carries both rustls providers, so rustls cannot
/// pick one by itself).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Installs [`crypto_provider`]'s choice as the process default, for a
/// driver that asks rustls for the default (mysql_async) instead of taking
/// a provider.
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: one is installed.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// Why the server's certificate (or the session) was refused, from the
/// rustls error; each dialect words it with its own setting names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The chain does not end at a certificate of the CA file.
    UnknownIssuer,
    /// The certificate does not name the url's host.
    WrongName,
    Expired,
    /// Any other certificate problem.
    Certificate,
    /// Not about the certificate: the session could not be established.
    Session,
}

impl Refusal {
    pub fn of(error: &rustls::Error) -> Refusal {
        use rustls::CertificateError as C;
        match error {
            rustls::Error::InvalidCertificate(C::UnknownIssuer) => Refusal::UnknownIssuer,
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => Refusal::WrongName,
            rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                Refusal::Expired
            }
            rustls::Error::InvalidCertificate(_) => Refusal::Certificate,
            _ => Refusal::Session,
        }
    }
}

/// The verifier of every mode short of the full check: the name in the
/// certificate is not looked at. With a CA file (`verify-ca`, or `require`
/// with one) the chain must end at one of its certificates; without one
/// (`prefer`, `require`) any certificate is taken — libpq's meaning:
/// protection from eavesdropping, not from an impostor. The handshake
/// signatures are checked either way.
#[derive(Debug)]
pub struct NameNotChecked {
    pub roots: Option<Arc<RootCertStore>>,
    pub provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NameNotChecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_by_rustls_error() {
        use rustls::CertificateError as C;
        let cert = |e| rustls::Error::InvalidCertificate(e);
        assert_eq!(Refusal::of(&cert(C::UnknownIssuer)), Refusal::UnknownIssuer);
        assert_eq!(Refusal::of(&cert(C::NotValidForName)), Refusal::WrongName);
        assert_eq!(Refusal::of(&cert(C::Expired)), Refusal::Expired);
        assert_eq!(Refusal::of(&cert(C::BadSignature)), Refusal::Certificate);
        assert_eq!(
            Refusal::of(&rustls::Error::HandshakeNotComplete),
            Refusal::Session
        );
    }
}
