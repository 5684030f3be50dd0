//! TLS configuration building: server configs for client-facing listeners, client configs for
//! origins (one shared `Arc<ClientConfig>` per origin so reconnects resume the session).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use arc_swap::ArcSwap;

/// The crypto provider used everywhere (ring: builds fast, no cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A listener's certificate and key, swappable while the listener runs: a reload
/// (SIGHUP) stores a new pair and the next handshake uses it. Handshakes in progress and
/// established connections keep the old one. The `ServerConfig` around it stays the same, so
/// its session-ticket keys and cache survive a rotation and clients keep resuming.
#[derive(Debug)]
pub struct ReloadableCert(ArcSwap<CertifiedKey>);

impl ReloadableCert {
    /// Loads `cert` (PEM chain) and `key` (PEM) and checks they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadableCert>, String> {
        Ok(Arc::new(ReloadableCert(ArcSwap::new(certified_key(
            cert, key,
        )?))))
    }

    /// Loads a new pair; on any error the current one stays in use.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), String> {
        self.0.store(certified_key(cert, key)?);
        Ok(())
    }

    /// Puts `key` in use for the next handshakes.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.0.store(key);
    }

    /// The certificate chain in use (tests compare it after a rotation).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.load_full()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    CertifiedKey::from_der(certs, key, &provider())
        .map(Arc::new)
        .map_err(|e| format!("certificate/key: {e}"))
}

/// Server config for a client-facing TLS listener offering `alpn`, certificate from `cert`.
pub fn server_config(
    cert: Arc<ReloadableCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, String> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Origin client config: system roots plus `extra_ca`, ALPN, a session cache sized for a pool.
pub fn client_config(
    extra_ca: Option<&Path>,
    verify: bool,
    alpn: &[String],
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut cfg = if verify {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            // A broken system certificate must not stop the gateway; skip it.
            let _ = roots.add(c);
        }
        if let Some(p) = extra_ca {
            for c in load_certs(p)? {
                roots.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // TLS 1.3 tickets are single-use; keep enough for a pool's worth of reconnects.
    cfg.resumption = Resumption::in_memory_sessions(1024);
    Ok(Arc::new(cfg))
}

/// The same origin client config offering only `alpn`, for connections that must not negotiate
/// h2 (dedicated HTTP/1.1 connections for `Upgrade`). Cloning a `ClientConfig` clones its
/// [`Resumption`], which holds the session store behind an `Arc`: both configs share one
/// store, so a dedicated connection resumes the session of the pool's connections and the
/// other way round (the server name is the cache key; ALPN matters only for 0-RTT, unused).
pub fn with_alpn(cfg: &ClientConfig, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut cfg = cfg.clone();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Accepts any certificate: only with `tls_verify = false`, which logs a warning at start.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
