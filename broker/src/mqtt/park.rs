//! Idle MQTT connections without a task.
//!
//! A fleet of devices mostly sits connected and silent. As a tokio task each such connection
//! cost about 1.9 KB (BENCHMARKS.md): the task with its future (768 B), tokio's registration
//! of the socket (256 B), allocator slack. A connection that has nothing to read, write,
//! deliver or wait for is *parked* here instead: its socket moves to one process-wide epoll
//! instance (through `mio`, which tokio itself uses), and what the connection must remember
//! between packets ([`Idle`]) sits in one small box. Its task ends.
//!
//! A parked connection is revived — its state moved back onto a new task on the broker's
//! runtime — when its socket becomes readable (a packet, or the end of the stream) or when
//! something is left in its mailbox (a message to deliver, a keep-alive timeout, a takeover,
//! shutdown): [`Mailbox::signal`](super::Mailbox) calls [`revive`] instead of a task's waker.
//!
//! Tokens name a slot and its generation, so a late event or signal for a connection that was
//! revived (and whose slot was reused) finds a different generation and does nothing.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use super::conn::Idle;
use super::lock;

/// Bits of a token that name the slot; the rest is the slot's generation.
const SLOT_BITS: u32 = 24;
const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;

/// A parked connection.
struct Parked {
    socket: TcpStream,
    conn: Idle,
}

struct Slot<T> {
    generation: usize,
    parked: Option<Box<T>>,
}

/// Parked connections by slot; freed slots are reused.
struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots { slots: Vec::new(), free: Vec::new() }
    }
}

impl<T> Slots<T> {
    /// The new tenant's token; the tenant back when every slot is taken.
    fn insert(&mut self, parked: Box<T>) -> Result<usize, Box<T>> {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None if self.slots.len() > SLOT_MASK => return Err(parked),
            None => {
                self.slots.push(Slot { generation: 0, parked: None });
                self.slots.len() - 1
            }
        };
        match self.slots.get_mut(index) {
            Some(slot) => {
                slot.parked = Some(parked);
                Ok(index | slot.generation << SLOT_BITS)
            }
            None => Err(parked),
        }
    }

    fn get(&self, token: usize) -> Option<&T> {
        let slot = self.slots.get(token & SLOT_MASK)?;
        (slot.generation == token >> SLOT_BITS).then_some(slot.parked.as_deref()).flatten()
    }

    fn remove(&mut self, token: usize) -> Option<Box<T>> {
        let index = token & SLOT_MASK;
        let slot = self.slots.get_mut(index)?;
        if slot.generation != token >> SLOT_BITS {
            return None;
        }
        let parked = slot.parked.take()?;
        // Wraps (on 32-bit targets after 256 uses): a stale token then only causes a
        // spurious revival, which finds nothing to do and parks again.
        slot.generation = slot.generation.wrapping_add(1) & (usize::MAX >> SLOT_BITS);
        self.free.push(u32::try_from(index).unwrap_or(u32::MAX));
        Some(parked)
    }
}

/// The process-wide reactor of parked connections; its thread owns the `Poll`.
struct Reactor {
    registry: Registry,
    slots: Mutex<Slots<Parked>>,
    /// Cleared if the thread stops: nothing parks any more.
    watching: AtomicBool,
}

/// The reactor, started on first use; `None` if the system refused it (then nothing parks).
fn reactor() -> Option<&'static Reactor> {
    static REACTOR: OnceLock<Option<Reactor>> = OnceLock::new();
    REACTOR
        .get_or_init(|| {
            let started = Poll::new().and_then(|poll| {
                let registry = poll.registry().try_clone()?;
                std::thread::Builder::new().name("tern-mqtt-idle".into()).spawn(move || watch(poll))?;
                Ok(Reactor { registry, slots: Mutex::default(), watching: AtomicBool::new(true) })
            });
            started.map_err(|e| tracing::warn!(error = %e, "idle MQTT connections will keep their tasks")).ok()
        })
        .as_ref()
}

/// The reactor thread: revives each connection whose socket has something to say.
fn watch(mut poll: Poll) {
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // Nothing parks from now on. Connections parked already hear only from their
            // mailbox (keep-alive timeouts close them, messages for them revive them).
            tracing::error!(error = %e, "idle MQTT connection reactor stopped");
            if let Some(r) = reactor() {
                r.watching.store(false, Ordering::Release);
            }
            return;
        }
        for event in events.iter() {
            let token = event.token().0;
            // A panic while reviving one connection (its runtime gone, say) must not stop
            // this thread, which every other parked socket depends on.
            if std::panic::catch_unwind(|| revive(token)).is_err() {
                tracing::error!(token, "reviving a parked MQTT connection panicked");
            }
        }
    }
}

/// Whether connections can be parked in this process.
pub(super) fn available() -> bool {
    reactor().is_some_and(|r| r.watching.load(Ordering::Acquire))
}

/// Parks an idle connection: its task ends after this. The connection is revived on a new
/// task as soon as its socket or mailbox has news, including news that came while parking.
pub(super) fn park(socket: TcpStream, conn: Idle) {
    let Some(reactor) = reactor().filter(|r| r.watching.load(Ordering::Acquire)) else {
        // `available()` said otherwise a moment ago: serve it on a task again.
        return spawn_resume(socket, conn);
    };
    let mailbox = conn.mailbox().clone();
    let fd = socket.as_raw_fd();
    let mut slots = lock(&reactor.slots);
    let refused = match slots.insert(Box::new(Parked { socket, conn })) {
        Err(parked) => Some((parked, "no free slot".to_owned())),
        Ok(token) => match reactor.registry.register(&mut SourceFd(&fd), Token(token), Interest::READABLE) {
            // The kernel refused another watch (`max_user_watches`).
            Err(e) => slots.remove(token).map(|parked| (parked, e.to_string())),
            Ok(()) => {
                if let Some(p) = slots.get(token) {
                    p.conn.parked_gauge().parked();
                }
                // The old task's waker holds the task's memory: let it go.
                *lock(&mailbox.waker) = None;
                mailbox.parked.store(token + 1, Ordering::SeqCst);
                drop(slots);
                // Mail that came after the connection last looked found no one to wake.
                if mailbox.has_news() {
                    revive(token);
                }
                return;
            }
        },
    };
    drop(slots);
    if let Some((parked, why)) = refused {
        // The connection goes on as a task; the sweeper suggests parking again after its next
        // quiet second.
        tracing::warn!(reason = %why, "idle MQTT connection not parked");
        spawn_resume(parked.socket, parked.conn);
    }
}

/// Moves the connection `token` names back onto a task; nothing if it is no longer parked.
pub(super) fn revive(token: usize) {
    let Some(reactor) = reactor() else { return };
    let parked = {
        let mut slots = lock(&reactor.slots);
        let Some(parked) = slots.remove(token) else { return };
        parked.conn.parked_gauge().revived();
        // Under the lock, so no event for this socket is taken for a later tenant of the slot.
        if let Err(e) = reactor.registry.deregister(&mut SourceFd(&parked.socket.as_raw_fd())) {
            tracing::warn!(error = %e, "parked MQTT socket not deregistered");
        }
        parked
    };
    parked.conn.mailbox().parked.store(0, Ordering::SeqCst);
    spawn_resume(parked.socket, parked.conn);
}

/// Serves the connection on a task of the broker's runtime again.
fn spawn_resume(socket: TcpStream, conn: Idle) {
    let Some(runtime) = conn.runtime().cloned() else {
        // Parking needs the runtime, so this cannot be; the socket closes with the state.
        return tracing::error!("parked MQTT connection has no runtime to resume on");
    };
    // Registering the socket with tokio needs the runtime's context.
    let _context = runtime.enter();
    match tokio::net::TcpStream::from_std(socket) {
        Ok(io) => drop(runtime.spawn(super::conn::resume(io, conn))),
        Err(e) => {
            tracing::warn!(error = %e, "parked MQTT connection not resumed");
            drop(runtime.spawn(super::conn::abandon(conn)));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_stale_token_finds_nothing_even_when_the_slot_is_reused() {
        let mut slots = Slots::<u32>::default();
        let first = slots.insert(Box::new(1)).unwrap();
        assert!(slots.remove(first).is_some());
        assert!(slots.remove(first).is_none(), "removed twice");
        let second = slots.insert(Box::new(2)).unwrap();
        assert!(slots.get(first).is_none());
        assert_eq!(slots.get(second), Some(&2));
        assert_eq!(first & SLOT_MASK, second & SLOT_MASK, "the slot is reused");
        assert_ne!(first, second, "with a new generation");
        assert!(slots.remove(first).is_none(), "the old token must not take the new tenant");
        assert_eq!(slots.remove(second).as_deref(), Some(&2));
    }
}
