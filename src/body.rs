//! [`Observed`]: a body wrapper that tells an [`Observer`] what passes through — data, trailers,
//! an error, the end — without changing it. The access log counts bytes with it, the cache keeps
//! a copy of a response it stores, and the upstream pools release a stream slot or connection
//! when a response ends.
//!
//! "The end" is reported as soon as it is known: hyper stops polling a body that reports
//! `is_end_stream()` (e.g. at its Content-Length), so waiting for `Ready(None)` alone would miss
//! it. `end` may therefore be called more than once; observers make it idempotent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Reactions to what passes through an [`Observed`] body. All default to nothing.
pub trait Observer {
    /// A data frame.
    fn data(&mut self, _data: &Bytes) {}
    /// A trailers frame.
    fn trailers(&mut self) {}
    /// The body failed.
    fn error(&mut self) {}
    /// The body is complete (possibly called again).
    fn end(&mut self) {}
}

/// A body passing frames through unchanged while reporting them to `O`.
pub struct Observed<B, O> {
    inner: B,
    observer: O,
}

impl<B: Body, O: Observer> Observed<B, O> {
    /// Wraps `inner`; an already complete body is reported as ended at once.
    pub fn new(inner: B, mut observer: O) -> Observed<B, O> {
        if inner.is_end_stream() {
            observer.end();
        }
        Observed { inner, observer }
    }

    /// The observer.
    pub fn observer(&self) -> &O {
        &self.observer
    }
}

impl<B, O> Body for Observed<B, O>
where
    B: Body<Data = Bytes> + Unpin,
    O: Observer + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.as_mut().get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                match f.data_ref() {
                    Some(d) => this.observer.data(d),
                    None => this.observer.trailers(),
                }
                if this.inner.is_end_stream() {
                    this.observer.end();
                }
            }
            Poll::Ready(Some(Err(_))) => this.observer.error(),
            Poll::Ready(None) => this.observer.end(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
