#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame};

use super::{BodyError, read_body};

/// A body of `chunks` frames of `size` bytes, then either its end or (with `stall`) nothing
/// more, ever.
struct Chunks {
    left: usize,
    size: usize,
    stall: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return if self.stall {
                Poll::Pending
            } else {
                Poll::Ready(None)
            };
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.size])))))
    }
}

#[tokio::test]
async fn reads_a_body_within_the_limit() {
    let body = read_body(
        Full::new(Bytes::from_static(b"hello")),
        5,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(&body[..], b"hello");
}

#[tokio::test]
async fn a_body_over_the_limit_is_read_to_its_end_then_refused() {
    let chunks = Chunks {
        left: 10,
        size: 1000,
        stall: false,
    };
    let err = read_body(chunks, 4000, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, BodyError::TooLarge(4000)), "{err}");
}

#[tokio::test]
async fn a_body_far_over_the_limit_is_not_read_past_the_discard_bound() {
    // Endless: without the bound this would only end at the timeout.
    let chunks = Chunks {
        left: usize::MAX,
        size: 1000,
        stall: false,
    };
    let err = read_body(chunks, 1000, Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(matches!(err, BodyError::TooLarge(1000)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_times_out() {
    let chunks = Chunks {
        left: 1,
        size: 10,
        stall: true,
    };
    let err = read_body(chunks, 1000, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, BodyError::Timeout), "{err}");
}
