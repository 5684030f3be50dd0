//! TLS configuration building: server configs for client-facing listeners, client configs for
//! origins (one shared `Arc<ClientConfig>` per origin so reconnects resume the session).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    sessions: Arc<Sessions>,
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
    cfg.resumption = Resumption::store(sessions);
    Ok(Arc::new(cfg))
}

/// An origin's TLS session store: rustls' in-memory cache, plus a gate that keeps a cold start
/// to one full handshake. Until the origin has issued a session, dials wait their turn: the
/// first one goes ahead with a full handshake; the next waits for the ticket that handshake
/// brings (TLS 1.3 sends it just after the handshake, read with the connection's first bytes)
/// and resumes with it. Without the gate, two shards (or a burst of HTTP/1.1 dials) that dial
/// at the same moment would each pay for a full handshake.
#[derive(Debug)]
pub struct Sessions {
    inner: rustls::client::ClientSessionMemoryCache,
    /// Set once a session was stored, or once a ticket failed to come: dials no longer wait.
    open: AtomicBool,
    stored: tokio::sync::Notify,
    /// Held by the dial in progress while the gate is closed; `Some(handshake time)` once a
    /// full handshake completed (its ticket is on the way).
    first: tokio::sync::Mutex<Option<Duration>>,
}

/// The turn of the one dial that may run while no session is stored (see [`Sessions`]).
pub struct FirstDial<'a>(tokio::sync::MutexGuard<'a, Option<Duration>>);

impl FirstDial<'_> {
    /// The handshake completed after `took`: the next dial waits for its ticket.
    pub fn completed(mut self, took: Duration) {
        *self.0 = Some(took);
    }
}

impl Sessions {
    /// An empty store (TLS 1.3 tickets are single-use; 1024 covers a pool's worth of
    /// reconnects).
    pub fn new() -> Arc<Sessions> {
        Arc::new(Sessions {
            inner: rustls::client::ClientSessionMemoryCache::new(1024),
            open: AtomicBool::new(false),
            stored: tokio::sync::Notify::new(),
            first: tokio::sync::Mutex::new(None),
        })
    }

    /// Whether a session has been stored (or the gate gave up waiting for one).
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Before a TLS dial. `None`: go ahead (a session is stored, or a ticket was waited for).
    /// `Some`: this is the first dial; hold the turn through the handshake and call
    /// [`FirstDial::completed`] after a success (dropping it after a failure lets the next
    /// dial try).
    pub async fn before_dial(&self) -> Option<FirstDial<'_>> {
        if self.is_open() {
            return None;
        }
        let turn = self.first.lock().await;
        if self.is_open() {
            return None;
        }
        let Some(took) = *turn else {
            return Some(FirstDial(turn));
        };
        // A handshake completed and its ticket is about a round trip behind it. Wait that
        // long (twice the handshake, 10 ms to 1 s); a server that sends none opens the gate
        // for good: nobody waits again.
        let wait = (took * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let notified = self.stored.notified();
        if !self.is_open() {
            let _ = tokio::time::timeout(wait, notified).await;
        }
        self.open.store(true, Ordering::Release);
        None
    }

    fn mark_stored(&self) {
        if !self.open.swap(true, Ordering::AcqRel) {
            self.stored.notify_waiters();
        }
    }
}

impl rustls::client::ClientSessionStore for Sessions {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }

    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value);
        self.mark_stored();
    }

    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }

    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(name, value);
        self.mark_stored();
    }

    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Time is paused: the waits below are virtual and exact.
    #[tokio::test(start_paused = true)]
    async fn the_first_dial_goes_alone_and_the_next_waits_for_its_ticket() {
        let s = Sessions::new();
        let first = s.before_dial().await;
        assert!(first.is_some(), "the first dial takes the turn");
        let s2 = s.clone();
        let second = tokio::spawn(async move {
            let t = tokio::time::Instant::now();
            let turn = s2.before_dial().await.is_some();
            (turn, t.elapsed())
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!second.is_finished(), "waits while the first dial runs");
        // The handshake took 200 ms: the ticket is awaited for up to 400 ms; it comes at 50.
        if let Some(f) = first {
            f.completed(Duration::from_millis(200));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.mark_stored();
        let (turn, waited) = second.await.unwrap();
        assert!(!turn, "the second dial resumes, it is not a first dial");
        assert_eq!(waited, Duration::from_millis(5050));
        assert!(s.is_open());
        assert!(s.before_dial().await.is_none(), "open: nobody waits");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_without_tickets_opens_the_gate_after_one_wait() {
        let s = Sessions::new();
        let first = s.before_dial().await.unwrap();
        first.completed(Duration::from_millis(30));
        let t = tokio::time::Instant::now();
        assert!(s.before_dial().await.is_none());
        assert_eq!(
            t.elapsed(),
            Duration::from_millis(60),
            "twice the handshake"
        );
        let t = tokio::time::Instant::now();
        assert!(s.before_dial().await.is_none());
        assert_eq!(t.elapsed(), Duration::ZERO, "nobody waits again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_first_dial_passes_the_turn_on() {
        let s = Sessions::new();
        let first = s.before_dial().await;
        assert!(first.is_some());
        drop(first); // the dial failed
        assert!(
            s.before_dial().await.is_some(),
            "the next dial is a first dial"
        );
        assert!(!s.is_open());
    }
}
