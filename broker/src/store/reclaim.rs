//! Memtables freed off the commit path.
//!
//! fjall 3.1 (lsm-tree 3.1) drops a keyspace's superseded versions while it holds the
//! keyspace's version lock (`SuperVersions::maintenance`, run after every memtable rotation),
//! and every memtable insert takes that lock to read. The last version that holds a flushed
//! memtable takes the memtable with it: freeing a 16 MiB skip list (some 150k nodes) took
//! ~30 ms on the benchmark machine, and every group commit waited behind it. At 10,000 durable
//! messages per second that was a stall a second, and most of the tail of send-to-PUBACK
//! latency (BENCHMARKS.md, "Durable path: the stall behind fjall's version lock").
//!
//! The engine keeps one more reference to every memtable it has seen active. Once that reference
//! is the only one left, fjall is done with the memtable, and a thread of the store's own frees
//! it, holding no lock anyone waits for.
//!
//! This reads fjall's public but undocumented `Keyspace::tree` (`AbstractTree::active_memtable`);
//! a fjall release that frees superseded versions after releasing the lock makes it unneeded.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// A shared value the engine may let go of.
trait Held: Send {
    /// Whether this is the last reference left.
    fn is_last(&self) -> bool;
    /// The address of the value: its identity while it is held.
    fn addr(&self) -> usize;
}

impl<T: Send + Sync> Held for Arc<T> {
    fn is_last(&self) -> bool {
        Arc::strong_count(self) == 1
    }
    fn addr(&self) -> usize {
        Arc::as_ptr(self) as usize
    }
}

/// Holds the memtables an engine has used until it lets go of them, then frees them on its own
/// thread. Dropping it stops the thread after it has freed what was handed over.
pub(super) struct Reclaimer {
    held: Mutex<Vec<Box<dyn Held>>>,
    to_free: Option<mpsc::Sender<Box<dyn Held>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reclaimer {
    pub(super) fn start() -> std::io::Result<Reclaimer> {
        let (to_free, freeing) = mpsc::channel::<Box<dyn Held>>();
        // Each value received is dropped at the end of its iteration, here.
        let thread = std::thread::Builder::new().name("tern-reclaim".into()).spawn(move || for _ in freeing {})?;
        Ok(Reclaimer { held: Mutex::new(Vec::new()), to_free: Some(to_free), thread: Some(thread) })
    }

    /// After a commit: `active` is the engine's active memtable now. Keeps it if it is new, and
    /// hands the memtables only this reclaimer still holds to the freeing thread.
    pub(super) fn observe<T: Send + Sync + 'static>(&self, active: Arc<T>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.last().is_none_or(|h| h.addr() != Arc::as_ptr(&active) as usize) {
            held.push(Box::new(active));
        }
        // The newest is the active one, which the engine holds; older ones are released in turn.
        while held.first().is_some_and(|h| h.is_last()) {
            let released = held.remove(0);
            if let Some(to_free) = &self.to_free {
                // A thread that is gone leaves the value to be freed here.
                let _ = to_free.send(released);
            }
        }
    }
}

impl Drop for Reclaimer {
    fn drop(&mut self) {
        drop(self.to_free.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reclaimer;
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    /// Reports the thread it is dropped on.
    struct Memtable(mpsc::Sender<Option<String>>);

    impl Drop for Memtable {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().name().map(str::to_owned));
        }
    }

    /// A memtable is freed once the engine has let go of it, and on the reclaimer's thread; the
    /// active one is kept however often it is observed.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn memtables_are_freed_on_the_reclaimer_thread_once_released() {
        let (dropped, drops) = mpsc::channel();
        let reclaimer = Reclaimer::start().unwrap();
        let first = Arc::new(Memtable(dropped.clone()));
        reclaimer.observe(first.clone());
        reclaimer.observe(first.clone());
        // Rotated: a new active memtable; the engine still flushes the first.
        let second = Arc::new(Memtable(dropped));
        reclaimer.observe(second.clone());
        assert!(drops.try_recv().is_err(), "freed while the engine held it");
        drop(first);
        reclaimer.observe(second.clone());
        let on = drops.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(on.as_deref(), Some("tern-reclaim"));
        // The active memtable stays held until the reclaimer goes.
        drop(second);
        assert!(drops.try_recv().is_err(), "the active memtable was freed");
        drop(reclaimer);
        assert!(drops.recv_timeout(Duration::from_secs(60)).is_ok());
    }
}
