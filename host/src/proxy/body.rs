//! Body plumbing shared by the server, the router and the callouts: a channel-fed body (the
//! filter chain pushes frames into it as Envoy's codec would) and a single-threaded executor for
//! hyper (each worker runs a current-thread runtime, as an Envoy worker runs one event loop).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use thiserror::Error;
use tokio::sync::mpsc;

/// A body error: the stream was reset (by the proxy, a filter or the peer).
#[derive(Debug, Clone, Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// The body type every response and upstream request of the proxy uses.
pub type ProxyBody = BoxBody<Bytes, BodyError>;

/// A body whose frames are pushed through a bounded channel (bounded: backpressure, as Envoy's
/// watermarks). An `Err` item resets the stream; closing the sender ends it.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BodyError>>,
    done: bool,
}

/// The sending half of a [`ChannelBody`].
pub type BodySender = mpsc::Sender<Result<Frame<Bytes>, BodyError>>;

impl ChannelBody {
    /// A body and its sender (`capacity` frames in flight).
    pub fn channel(capacity: usize) -> (BodySender, ChannelBody) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (tx, ChannelBody { rx, done: false })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body (`is_end_stream` true, so hyper sends `content-length: 0` / END_STREAM).
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// hyper's executor on a worker: `spawn_local`, so connection and HTTP/2 stream futures may hold
/// the worker's `Rc` state (one event loop per worker, as Envoy's dispatcher).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
