//! Reading a request body inside the port's bounds: a size per request, a deadline, and a
//! budget of bytes shared by every request of the port.
//!
//! Each chunk takes its bytes from the budget before it is kept, and the request holds them
//! until its response is sent, so the bodies decoded at once, and the memory their decoded
//! forms take, are bounded by the same count. A sender that stalls in the middle of a body
//! holds its bytes until its deadline; when the budget runs short, bodies that have been
//! arriving for longer than `slow_after` are dropped to make room, oldest first, so a few
//! stalled senders cannot keep everyone else waiting. A body with a Content-Length is read
//! into a buffer of exactly that size, so body memory is the budget; a chunked body's
//! growing buffer may take up to twice what it holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;
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

/// The port's body budget; clones share it.
#[derive(Clone, Debug)]
pub struct Budget {
    limits: BodyLimits,
    pool: Arc<Pool>,
}

/// Bytes left in the budget. Not a FIFO semaphore on purpose: bytes freed go to whichever
/// request asks next, so a small review is not queued behind large bodies waiting for room.
#[derive(Debug)]
struct Pool {
    free: AtomicUsize,
    freed: Notify,
}

impl Pool {
    fn try_take(&self, n: usize) -> bool {
        let mut free = self.free.load(Ordering::Acquire);
        loop {
            let Some(left) = free.checked_sub(n) else {
                return false;
            };
            match self
                .free
                .compare_exchange_weak(free, left, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => free = now,
            }
        }
    }
}

/// Budget bytes held by one request until its response is sent.
#[derive(Debug)]
pub struct Held {
    pool: Arc<Pool>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.pool.free.fetch_add(self.bytes, Ordering::AcqRel);
            self.pool.freed.notify_waiters();
        }
    }
}

impl Budget {
    pub fn new(limits: BodyLimits) -> Budget {
        let pool = Arc::new(Pool {
            free: AtomicUsize::new(limits.budget_bytes),
            freed: Notify::new(),
        });
        Budget { limits, pool }
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
        // With a Content-Length (the API server always sends one) the buffer is allocated
        // once at its final size: pages become resident only as bytes arrive, and the
        // buffer never doubles. `declared` is at most `max` here.
        let mut buf: Vec<u8> = match declared.and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Vec::with_capacity(n),
            None => Vec::new(),
        };
        let mut held = Held {
            pool: self.pool.clone(),
            bytes: 0,
        };
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
            self.take(&mut held, data.len(), deadline, table, me)
                .await?;
            buf.extend_from_slice(&data);
        }
        me.release();
        Ok((Bytes::from(buf), held))
    }

    /// Adds `n` bytes to `held`, making room by dropping slow bodies if the budget is spent,
    /// or fails with `Busy` at the deadline.
    async fn take(
        &self,
        held: &mut Held,
        n: usize,
        deadline: Instant,
        table: &Table,
        me: &Slot,
    ) -> Result<(), BodyError> {
        loop {
            // Registered before the check, so bytes freed in between are not missed.
            let freed = self.pool.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.pool.try_take(n) {
                held.bytes += n;
                me.hold(n);
                return Ok(());
            }
            table.evict_slow_bodies(me, n, self.limits.slow_after);
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(BodyError::Busy);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_taken_whole_or_not_at_all_and_comes_back_on_drop() {
        let pool = Arc::new(Pool {
            free: AtomicUsize::new(100),
            freed: Notify::new(),
        });
        assert!(pool.try_take(60));
        assert!(!pool.try_take(60), "only 40 left");
        let held = Held {
            pool: pool.clone(),
            bytes: 60,
        };
        drop(held);
        assert!(pool.try_take(100));
    }
}
