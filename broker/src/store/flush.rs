//! Group commit: one flusher thread turns any number of concurrent "make my commit durable"
//! requests into as few fsyncs as possible. A caller takes a ticket after committing; the
//! flusher flushes once for every ticket issued before that flush began, and publishes the
//! highest ticket it covered.
//!
//! (sled's own `flush_async` can hang when awaited concurrently — sled issue #1308 — which is
//! another reason to serialise flushes here.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::StoreError;

#[derive(Debug, Default)]
struct State {
    pending: bool,
    closed: bool,
}

#[derive(Debug)]
struct Signals {
    issued: AtomicU64,
    state: Mutex<State>,
    cond: Condvar,
    done: watch::Sender<Result<u64, String>>,
}

/// The flusher; dropping the last handle stops the thread after a final flush.
#[derive(Debug)]
pub(super) struct GroupCommit {
    signals: Arc<Signals>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread for `db`.
    pub(super) fn start(db: Arc<super::kv::Kv>) -> std::io::Result<GroupCommit> {
        let (done, _) = watch::channel(Ok(0));
        let signals =
            Arc::new(Signals { issued: AtomicU64::new(0), state: Mutex::default(), cond: Condvar::new(), done });
        let s = signals.clone();
        let thread = std::thread::Builder::new().name("tern-flusher".into()).spawn(move || loop {
            {
                let mut state = s.state.lock().unwrap_or_else(PoisonError::into_inner);
                while !state.pending && !state.closed {
                    state = s.cond.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
                if !state.pending {
                    return;
                }
                state.pending = false;
            }
            // Every ticket issued up to now is covered by this flush.
            let covered = s.issued.load(Ordering::Acquire);
            let result = db.flush().map(|()| covered).map_err(|e| e.to_string());
            let _ = s.done.send_replace(result);
        })?;
        Ok(GroupCommit { signals, thread: Some(thread) })
    }

    /// Waits until everything committed before this call is on disk.
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let s = &self.signals;
        let mut done = s.done.subscribe();
        let ticket = s.issued.fetch_add(1, Ordering::AcqRel) + 1;
        {
            let mut state = s.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.pending = true;
            s.cond.notify_one();
        }
        let outcome = done.wait_for(|r| r.as_ref().map_or(true, |&covered| covered >= ticket)).await;
        match outcome.as_deref() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Corrupt(format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::Corrupt("flusher stopped".into())),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        {
            let mut state = self.signals.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.closed = true;
            self.signals.cond.notify_one();
        }
        // Joining releases the thread's database handle before the store counts as closed, so
        // the directory can be opened again at once (a broker restart).
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
