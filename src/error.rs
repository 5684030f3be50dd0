//! One error type for the request path, and the one function that maps it to what the client
//! sees ([`Error::status`] + [`Error::body`]). Classified by side (client / origin / internal)
//! and by [`Error::kind`] for the `muxgate_upstream_errors_total{kind}` metric.
//!
//! Errors are `Clone` so a failed dial can fail every request that was waiting for it.

use http::StatusCode;

/// Which side caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse.
    Client,
    /// The origin could not be reached or misbehaved.
    Origin,
    /// Local capacity or a bug.
    Internal,
}

/// Everything that can fail while serving one request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No origin matches the request's host.
    #[error("no route for host")]
    NoRoute,
    /// The request is malformed (missing Host, bad target, …).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request body exceeds `client.max_body_size`.
    #[error("request body too large")]
    BodyTooLarge,
    /// The client's request body failed (malformed chunked framing, connection lost).
    #[error("malformed or incomplete request body")]
    BadBody,
    /// A transfer coding the gateway does not implement (RFC 9112 §6.1: 501).
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
    /// The request header block exceeds `client.max_header_size` or `client.max_headers`.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The request target alone exceeds `client.max_header_size`.
    #[error("request target too long")]
    UriTooLong,
    /// TCP connect to the origin failed.
    #[error("origin connect failed: {0}")]
    Connect(String),
    /// TCP connect to the origin took longer than `connect_timeout`.
    #[error("origin connect timed out")]
    ConnectTimeout,
    /// The TLS handshake with the origin failed (certificate, protocol).
    #[error("origin TLS handshake failed: {0}")]
    Tls(String),
    /// The TLS handshake took longer than `tls_handshake_timeout`.
    #[error("origin TLS handshake timed out")]
    TlsTimeout,
    /// No response header within `response_header_timeout`.
    #[error("origin response timed out")]
    ResponseTimeout,
    /// A response body had no data for `read_timeout` (the response is cut).
    #[error("origin response body timed out")]
    ReadTimeout,
    /// The origin sent something invalid (bad header, protocol violation).
    #[error("origin sent an invalid response: {0}")]
    Protocol(String),
    /// The origin closed or reset the connection or stream.
    #[error("origin connection reset: {0}")]
    Reset(String),
    /// Too many requests waiting for an origin connection (`max_pending`).
    #[error("origin queue full")]
    QueueFull,
    /// Waited `pending_timeout` for an origin connection or stream.
    #[error("timed out waiting for an origin connection")]
    PendingTimeout,
    /// `Cache-Control: only-if-cached` and nothing usable is stored (RFC 9111 §5.2.1.7).
    #[error("not in cache")]
    NotCached,
    /// `max_upgraded` upgraded connections are already open to the origin.
    #[error("too many upgraded connections to the origin")]
    UpgradeLimit,
    /// The origin pool is shutting down.
    #[error("gateway shutting down")]
    ShuttingDown,
}

impl Error {
    /// The side responsible.
    pub fn side(&self) -> Side {
        match self {
            Error::NoRoute
            | Error::BadRequest(_)
            | Error::BodyTooLarge
            | Error::BadBody
            | Error::UnsupportedCoding
            | Error::HeadersTooLarge
            | Error::UriTooLong => Side::Client,
            Error::QueueFull
            | Error::PendingTimeout
            | Error::ShuttingDown
            | Error::NotCached
            | Error::UpgradeLimit => Side::Internal,
            _ => Side::Origin,
        }
    }

    /// The status the client receives: the one place this mapping lives.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoRoute => StatusCode::NOT_FOUND,
            Error::BadRequest(_) | Error::BadBody => StatusCode::BAD_REQUEST,
            Error::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            Error::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::UriTooLong => StatusCode::URI_TOO_LONG,
            Error::Connect(_) | Error::Tls(_) | Error::Protocol(_) | Error::Reset(_) => {
                StatusCode::BAD_GATEWAY
            }
            Error::ConnectTimeout
            | Error::TlsTimeout
            | Error::ResponseTimeout
            | Error::ReadTimeout
            | Error::NotCached => StatusCode::GATEWAY_TIMEOUT,
            Error::QueueFull
            | Error::PendingTimeout
            | Error::ShuttingDown
            | Error::UpgradeLimit => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The one-line body: the cause, no internals beyond it.
    pub fn body(&self) -> String {
        format!("{self}\n")
    }

    /// `Retry-After` seconds for 503s.
    pub fn retry_after(&self) -> Option<u32> {
        matches!(self.status(), StatusCode::SERVICE_UNAVAILABLE).then_some(1)
    }

    /// Label for `muxgate_upstream_errors_total{kind}`; `None` for non-origin errors.
    pub fn kind(&self) -> Option<&'static str> {
        Some(match self {
            Error::Connect(_) => "connect",
            Error::ConnectTimeout
            | Error::TlsTimeout
            | Error::ResponseTimeout
            | Error::ReadTimeout => "timeout",
            Error::Tls(_) => "tls",
            Error::Protocol(_) => "protocol",
            Error::Reset(_) => "reset",
            _ => return None,
        })
    }
}

/// Whether a failed upstream exchange may be retried, by what the origin can have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// The origin provably did not process it (REFUSED_STREAM, above GOAWAY's last-stream-id,
    /// never written): safe to retry for any method.
    Unprocessed(&'static str),
    /// It may have been processed (connection reset mid-request): retry only idempotent
    /// requests, and only if the origin opted in.
    MaybeProcessed,
    /// The origin answered badly; do not retry.
    No,
}

/// Classifies a hyper client error (walking its sources down to `h2::Error` / `io::Error`).
pub fn classify(e: &hyper::Error) -> (RetryClass, Error) {
    let text = e.to_string();
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            // RFC 9113 §8.7: REFUSED_STREAM means "no application processing"; §6.8: streams
            // above the GOAWAY's last-stream-id "were not or will not be processed".
            if h2e.is_remote() && h2e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return (
                    RetryClass::Unprocessed("refused_stream"),
                    Error::Reset(text),
                );
            }
            if h2e.is_go_away() && h2e.is_remote() {
                return (RetryClass::Unprocessed("goaway"), Error::Reset(text));
            }
            if h2e.is_io() {
                return (RetryClass::MaybeProcessed, Error::Reset(text));
            }
            if h2e.is_reset() && h2e.is_remote() {
                return (RetryClass::No, Error::Reset(text));
            }
            return (RetryClass::No, Error::Protocol(text));
        }
        if s.downcast_ref::<std::io::Error>().is_some() {
            return (RetryClass::MaybeProcessed, Error::Reset(text));
        }
        src = s.source();
    }
    if e.is_parse() || e.is_parse_status() {
        return (RetryClass::No, Error::Protocol(text));
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return (RetryClass::MaybeProcessed, Error::Reset(text));
    }
    (RetryClass::No, Error::Protocol(text))
}

/// Classifies the error of an h2 stream that was sent (its `ResponseFuture` or body failed).
/// Exact only when h2 is driven directly: hyper's dispatcher may report a stream it had already
/// written with the connection's GOAWAY error.
pub fn classify_h2(e: &h2::Error) -> (RetryClass, Error) {
    let text = e.to_string();
    // RFC 9113 §8.7: REFUSED_STREAM means "no application processing"; §6.8: streams above the
    // GOAWAY's last-stream-id "were not or will not be processed".
    if e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        return (
            RetryClass::Unprocessed("refused_stream"),
            Error::Reset(text),
        );
    }
    if e.is_go_away() && e.is_remote() {
        return (RetryClass::Unprocessed("goaway"), Error::Reset(text));
    }
    if e.is_io() {
        return (RetryClass::MaybeProcessed, Error::Reset(text));
    }
    if e.is_reset() && e.is_remote() {
        return (RetryClass::No, Error::Reset(text));
    }
    (RetryClass::No, Error::Protocol(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        assert_eq!(Error::NoRoute.status(), 404);
        assert_eq!(Error::NoRoute.body(), "no route for host\n");
        assert_eq!(Error::QueueFull.status(), 503);
        assert_eq!(Error::QueueFull.retry_after(), Some(1));
        assert_eq!(Error::ResponseTimeout.status(), 504);
        assert_eq!(Error::Tls("x".into()).status(), 502);
        assert_eq!(Error::Tls("x".into()).kind(), Some("tls"));
        assert_eq!(Error::BodyTooLarge.kind(), None);
        assert_eq!(Error::BodyTooLarge.side(), Side::Client);
    }
}
