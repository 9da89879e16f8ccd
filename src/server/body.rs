//! Reading a request body inside the port's bounds: a size per request, a deadline, and a
//! budget of bytes shared by every request of the port.
//!
//! Each chunk takes its bytes from the budget before it is kept, and the request holds them
//! until its response is sent (so the decoded form of the body, which lives as long as the
//! handler, is bounded by the same count). A sender that stalls in the middle of a body
//! holds its bytes until its deadline; when the budget runs short, bodies that have been
//! arriving for longer than `slow_after` are dropped to make room, oldest first, so a few
//! stalled senders cannot keep everyone else waiting. Memory of bodies stays below twice
//! the budget (a growing buffer's spare capacity).

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::limits::BodyLimits;
use super::table::{Slot, Table};

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("the server is reading too many request bodies; retry")]
    Busy,
    #[error("the request body could not be read: {0}")]
    Client(hyper::Error),
}

impl BodyError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "too_large",
            BodyError::TimedOut(_) => "timed_out",
            BodyError::Busy => "busy",
            BodyError::Client(_) => "client_error",
        }
    }

    /// The status a client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            BodyError::Client(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The port's body budget.
#[derive(Debug)]
pub struct Budget {
    limits: BodyLimits,
    bytes: Arc<Semaphore>,
}

/// Budget bytes held by one request until its response is sent.
#[derive(Debug)]
pub struct Held {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Budget {
    pub fn new(limits: BodyLimits) -> Budget {
        let bytes = Arc::new(Semaphore::new(limits.budget_bytes));
        Budget { limits, bytes }
    }

    /// Reads `body` whole, or says why not. `declared` is the Content-Length, if any.
    pub async fn read(
        &self,
        mut body: Incoming,
        declared: Option<u64>,
        table: &Table,
        me: &Slot,
    ) -> Result<(Bytes, Held), BodyError> {
        let max = self.limits.max_bytes;
        if declared.is_some_and(|n| n > max as u64) {
            return Err(BodyError::TooLarge { max });
        }
        let deadline = Instant::now() + self.limits.timeout;
        let timed_out = || BodyError::TimedOut(self.limits.timeout);
        let mut buf: Vec<u8> = Vec::new();
        let mut held: Option<OwnedSemaphorePermit> = None;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(timed_out()),
                Ok(None) => break,
                Ok(Some(Err(err))) => return Err(BodyError::Client(err)),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if data.is_empty() {
                continue;
            }
            if buf.len() + data.len() > max {
                return Err(BodyError::TooLarge { max });
            }
            let permit = self.take(data.len(), deadline, table, me).await?;
            me.hold(data.len());
            match &mut held {
                Some(all) => all.merge(permit),
                None => held = Some(permit),
            }
            buf.extend_from_slice(&data);
        }
        me.release();
        Ok((Bytes::from(buf), Held { _permit: held }))
    }

    async fn take(
        &self,
        n: usize,
        deadline: Instant,
        table: &Table,
        me: &Slot,
    ) -> Result<OwnedSemaphorePermit, BodyError> {
        // `n` is at most `max_bytes` (checked by the caller), far below u32::MAX.
        let want = u32::try_from(n).map_err(|_| BodyError::TooLarge {
            max: self.limits.max_bytes,
        })?;
        if let Ok(permit) = self.bytes.clone().try_acquire_many_owned(want) {
            return Ok(permit);
        }
        table.evict_slow_bodies(me, n, self.limits.slow_after);
        match tokio::time::timeout_at(deadline, self.bytes.clone().acquire_many_owned(want)).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(BodyError::Busy),
        }
    }
}
