//! Credit-based flow control, used by both ends.
//!
//! A sender may have at most the receiver's granted credit in flight on a
//! channel ([`SendWindow`]); a receiver buffers at most what it granted
//! ([`RecvQueue`]) and treats anything beyond that as a protocol violation,
//! so a flooding peer can never grow the other side's memory.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::INITIAL_WINDOW;

/// Why [`SendWindow::take_until`] returned no credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// The window was closed (connection gone or transfer ended).
    Closed,
    /// The deadline passed without credit.
    TimedOut,
}

/// Sender side of one channel: blocks while no credit is available.
#[derive(Debug)]
pub struct SendWindow {
    state: Mutex<(u64, bool)>,
    cv: Condvar,
}

impl Default for SendWindow {
    fn default() -> Self {
        Self::new(INITIAL_WINDOW as u64)
    }
}

impl SendWindow {
    /// A window with `initial` bytes of credit.
    pub fn new(initial: u64) -> Self {
        Self {
            state: Mutex::new((initial, false)),
            cv: Condvar::new(),
        }
    }

    /// Adds credit granted by the receiver.
    pub fn grant(&self, bytes: u64) {
        let mut s = self.state.lock().expect("window lock");
        s.0 = s.0.saturating_add(bytes);
        self.cv.notify_all();
    }

    /// Waits for credit and reserves up to `max` bytes; `None` once closed.
    pub fn take(&self, max: usize) -> Option<usize> {
        let mut s = self.state.lock().expect("window lock");
        loop {
            if s.1 {
                return None;
            }
            if s.0 > 0 {
                let n = (s.0.min(max as u64)) as usize;
                s.0 -= n as u64;
                return Some(n);
            }
            s = self.cv.wait(s).expect("window lock");
        }
    }

    /// Like [`SendWindow::take`], but gives up at `deadline`.
    pub fn take_until(&self, max: usize, deadline: Instant) -> Result<usize, TakeError> {
        let mut s = self.state.lock().expect("window lock");
        loop {
            if s.1 {
                return Err(TakeError::Closed);
            }
            if s.0 > 0 {
                let n = (s.0.min(max as u64)) as usize;
                s.0 -= n as u64;
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TakeError::TimedOut);
            }
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .expect("window lock")
                .0;
        }
    }

    /// Returns reserved but unused credit.
    pub fn give_back(&self, bytes: usize) {
        self.grant(bytes as u64);
    }

    /// Wakes and fails every waiter (connection gone).
    pub fn close(&self) {
        let mut s = self.state.lock().expect("window lock");
        s.1 = true;
        self.cv.notify_all();
    }
}

/// Receiver side of one channel: a queue bounded by the credit granted.
#[derive(Debug)]
pub struct RecvQueue {
    state: Mutex<RecvState>,
    cv: Condvar,
    window: u64,
}

#[derive(Debug)]
struct RecvState {
    chunks: VecDeque<Vec<u8>>,
    /// Credit the sender still may use.
    outstanding: u64,
    /// Consumed bytes not yet returned as credit.
    unacked: u64,
    eof: bool,
    closed: bool,
}

/// What [`RecvQueue::pop`] yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop {
    /// A chunk; `credit` is Some(n) when the caller should send Credit{n}.
    Data {
        /// The bytes.
        chunk: Vec<u8>,
        /// Credit to return to the sender now, batched.
        credit: Option<u32>,
    },
    /// The sender sent Eof and everything was consumed.
    Eof,
    /// The queue was closed (connection gone or consumer gave up).
    Closed,
    /// `pop_timeout` expired.
    TimedOut,
}

/// The sender exceeded its credit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("peer sent {len} bytes with only {outstanding} bytes of credit")]
pub struct CreditOverrun {
    /// Bytes received.
    pub len: usize,
    /// Credit the peer had.
    pub outstanding: u64,
}

impl Default for RecvQueue {
    fn default() -> Self {
        Self::new(INITIAL_WINDOW as u64)
    }
}

impl RecvQueue {
    /// A queue that granted `window` bytes initially.
    pub fn new(window: u64) -> Self {
        Self {
            state: Mutex::new(RecvState {
                chunks: VecDeque::new(),
                outstanding: window,
                unacked: 0,
                eof: false,
                closed: false,
            }),
            cv: Condvar::new(),
            window,
        }
    }

    /// Queues received bytes, enforcing credit. Data after close is dropped.
    pub fn push(&self, data: Vec<u8>) -> Result<(), CreditOverrun> {
        let mut s = self.state.lock().expect("queue lock");
        if (data.len() as u64) > s.outstanding {
            return Err(CreditOverrun {
                len: data.len(),
                outstanding: s.outstanding,
            });
        }
        if s.closed || s.eof {
            // Nobody will read it; dropping keeps memory bounded and the
            // credit stays available so a late sender never stalls.
            return Ok(());
        }
        s.outstanding -= data.len() as u64;
        if !data.is_empty() {
            s.chunks.push_back(data);
        }
        self.cv.notify_all();
        Ok(())
    }

    /// Marks end of data.
    pub fn eof(&self) {
        let mut s = self.state.lock().expect("queue lock");
        s.eof = true;
        self.cv.notify_all();
    }

    /// Closes the queue; pending and future data is discarded.
    pub fn close(&self) {
        let mut s = self.state.lock().expect("queue lock");
        s.closed = true;
        s.chunks.clear();
        self.cv.notify_all();
    }

    /// Waits for the next chunk.
    pub fn pop(&self) -> Pop {
        self.pop_inner(None)
    }

    /// Waits at most `timeout` for the next chunk.
    pub fn pop_timeout(&self, timeout: Duration) -> Pop {
        self.pop_inner(Some(timeout))
    }

    fn pop_inner(&self, timeout: Option<Duration>) -> Pop {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut s = self.state.lock().expect("queue lock");
        loop {
            if s.closed {
                return Pop::Closed;
            }
            if let Some(chunk) = s.chunks.pop_front() {
                s.unacked += chunk.len() as u64;
                let credit = if s.unacked >= self.window / 4 || s.chunks.is_empty() {
                    let n = s.unacked.min(u32::MAX as u64);
                    s.unacked -= n;
                    s.outstanding += n;
                    Some(n as u32).filter(|n| *n > 0)
                } else {
                    None
                };
                return Pop::Data { chunk, credit };
            }
            if s.eof {
                return Pop::Eof;
            }
            match deadline {
                None => s = self.cv.wait(s).expect("queue lock"),
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return Pop::TimedOut;
                    }
                    s = self.cv.wait_timeout(s, d - now).expect("queue lock").0;
                }
            }
        }
    }

    /// Bytes currently buffered (for tests and metrics).
    pub fn buffered(&self) -> usize {
        self.state
            .lock()
            .expect("queue lock")
            .chunks
            .iter()
            .map(Vec::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_enforces_credit_and_returns_it() {
        let q = RecvQueue::new(8);
        q.push(vec![0; 8]).unwrap();
        assert_eq!(
            q.push(vec![0; 1]),
            Err(CreditOverrun {
                len: 1,
                outstanding: 0
            })
        );
        match q.pop() {
            Pop::Data { chunk, credit } => {
                assert_eq!(chunk.len(), 8);
                assert_eq!(credit, Some(8));
            }
            p => panic!("{p:?}"),
        }
        q.push(vec![0; 8]).unwrap();
        q.eof();
        assert!(matches!(q.pop(), Pop::Data { .. }));
        assert_eq!(q.pop(), Pop::Eof);
        assert_eq!(q.pop_timeout(Duration::from_millis(1)), Pop::Eof);
    }

    #[test]
    fn sender_blocks_until_granted() {
        let w = std::sync::Arc::new(SendWindow::new(4));
        assert_eq!(w.take(10), Some(4));
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.take(10));
        std::thread::sleep(Duration::from_millis(20));
        w.grant(3);
        assert_eq!(t.join().unwrap(), Some(3));
        w.close();
        assert_eq!(w.take(1), None);
    }

    #[test]
    fn take_until_gives_up_at_the_deadline() {
        let w = SendWindow::new(2);
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(w.take_until(10, soon), Ok(2));
        assert_eq!(w.take_until(10, soon), Err(TakeError::TimedOut));
        w.grant(1);
        assert_eq!(w.take_until(10, soon), Ok(1));
        w.close();
        assert_eq!(
            w.take_until(10, Instant::now() + Duration::from_secs(60)),
            Err(TakeError::Closed)
        );
    }
}
