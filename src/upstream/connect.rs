//! Dialling an origin: DNS, TCP connect (with timeout), TLS handshake with ALPN (with timeout).
//! Counts full vs resumed handshakes. Knows nothing about pools or HTTP.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Scheme, ValidOrigin};
use crate::error::Error;
use crate::metrics::OriginMetrics;

/// The transport of one origin connection.
pub enum Transport {
    /// Cleartext TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, b),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, b),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, b),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A freshly dialled connection.
pub struct Connected {
    /// The byte stream.
    pub io: Transport,
    /// ALPN selected `h2`.
    pub h2: bool,
    /// TLS handshake kind: `Some(true)` resumed, `Some(false)` full, `None` cleartext.
    pub resumed: Option<bool>,
}

/// Dials one origin. Shared by its pools; holds the origin's one `ClientConfig`.
pub struct Connector {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Option<TlsConnector>,
    connect_timeout: Duration,
    tls_timeout: Duration,
    metrics: OriginMetrics,
}

impl Connector {
    /// Builds the connector; fails only on unreadable CA files.
    pub fn new(o: &ValidOrigin, metrics: OriginMetrics) -> Result<Connector, String> {
        let sni = o
            .raw
            .tls_server_name
            .clone()
            .unwrap_or_else(|| o.host.clone());
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|_| format!("invalid TLS server name {sni:?}"))?;
        let tls = match o.scheme {
            Scheme::Https => {
                let cfg: Arc<ClientConfig> = crate::tls::client_config(
                    o.raw.tls_ca.as_deref(),
                    o.raw.tls_verify,
                    &o.raw.alpn,
                )?;
                Some(TlsConnector::from(cfg))
            }
            Scheme::Http => None,
        };
        Ok(Connector {
            host: o.host.clone(),
            port: o.port,
            server_name,
            tls,
            connect_timeout: o.raw.connect_timeout.0,
            tls_timeout: o.raw.tls_handshake_timeout.0,
            metrics,
        })
    }

    /// Whether this origin speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Resolves, connects (trying each address within one `connect_timeout`), handshakes.
    pub async fn connect(&self) -> Result<Connected, Error> {
        let tcp = tokio::time::timeout(self.connect_timeout, self.tcp())
            .await
            .map_err(|_| Error::ConnectTimeout)??;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Connected {
                io: Transport::Plain(tcp),
                h2: false,
                resumed: None,
            });
        };
        let stream =
            tokio::time::timeout(self.tls_timeout, tls.connect(self.server_name.clone(), tcp))
                .await
                .map_err(|_| Error::TlsTimeout)?
                .map_err(|e| Error::Tls(e.to_string()))?;
        let (_, conn) = stream.get_ref();
        let h2 = conn.alpn_protocol() == Some(b"h2");
        let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        if resumed {
            self.metrics.handshakes_resumed.inc();
        } else {
            self.metrics.handshakes_full.inc();
        }
        Ok(Connected {
            io: Transport::Tls(Box::new(stream)),
            h2,
            resumed: Some(resumed),
        })
    }

    async fn tcp(&self) -> Result<TcpStream, Error> {
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| Error::Connect(format!("resolving {}: {e}", self.host)))?;
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(format!("{a}: {e}")),
            }
        }
        Err(Error::Connect(last.unwrap_or_else(|| {
            format!("{} resolved to no address", self.host)
        })))
    }
}
