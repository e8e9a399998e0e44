//! The hub's audio queue to one endpoint: one sender (the channel hub), one
//! receiver (the endpoint's [`HubLink`](crate::HubLink)). When the endpoint is
//! `depth` frames behind, the oldest frame is dropped and the receiver is told how
//! many it missed: live audio that old is worth less than the newest.
//!
//! Written here rather than taken from a crate because none does both things an
//! idle bridge needs: tokio's `broadcast` and `async-broadcast` drop the oldest but
//! allocate every slot up front (a 250-frame ring was 31.6 KiB per endpoint, the
//! largest item of an idle channel's heap: docs/bench/heap), and the lazily
//! growing channels (tokio's `mpsc`, flume, async-channel) refuse the newest when
//! full instead. This queue holds memory only for frames actually waiting and
//! gives it back once they are taken.
//!
//! Without a depth ([`unbounded`]) it never drops and carries the hub's floor
//! events to an endpoint, for the same reason: tokio's `mpsc` allocates a block
//! of 32 slots when a channel is made (5.5 KiB per endpoint for the control
//! downlink, 22 KiB of an idle channel's heap), for a handful of events per talk.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Slots kept allocated once a backlog has drained: a steady stream queues one
/// or two frames at a time.
const KEPT_CAPACITY: usize = 8;

/// Why [`Receiver::recv`] returned no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// The receiver fell behind; this many of the oldest items were dropped. The
    /// next call returns the oldest item still queued.
    Lagged(u64),
    /// The sender is gone and everything it sent has been taken.
    Closed,
}

/// Why [`Receiver::try_recv`] returned no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    Lagged(u64),
    Closed,
}

/// The receiver is gone; the item comes back.
#[derive(Debug)]
pub struct SendError<T>(pub T);

/// A queue that keeps at most `depth` items (at least one).
pub fn channel<T>(depth: usize) -> (Sender<T>, Receiver<T>) {
    channel_of_depth(depth)
}

/// A queue that never drops an item (and so never reports `Lagged`): for
/// messages that must all arrive, such as floor events.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    channel_of_depth(usize::MAX)
}

fn channel_of_depth<T>(depth: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            dropped: 0,
            sender_gone: false,
            receiver_gone: false,
        }),
        item_or_close: Notify::new(),
        depth: depth.max(1),
        wanted: AtomicBool::new(true),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Woken for every item sent and when the sender goes.
    item_or_close: Notify,
    depth: usize,
    /// The receiver wants items now; see [`Receiver::set_wanted`].
    wanted: AtomicBool,
}

struct State<T> {
    items: VecDeque<T>,
    /// Dropped for lack of room since the receiver last heard of it.
    dropped: u64,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while the lock was held cannot leave the queue half-changed
        // (every change is one VecDeque call or a flag), so a poisoned lock's
        // state is still good.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("lossy_queue::Sender")
            .field("depth", &self.shared.depth)
            .finish_non_exhaustive()
    }
}

impl<T> Sender<T> {
    /// Whether the receiver wants items now. A sender may skip the work of making
    /// an item nobody wants; [`send`](Self::send) drops it anyway.
    pub fn is_wanted(&self) -> bool {
        self.shared.wanted.load(Ordering::Relaxed)
    }

    /// Whether the receiver is gone (dropped or [closed](Receiver::close)).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().receiver_gone
    }

    /// Queues `item`, dropping the oldest one if `depth` are already waiting.
    /// Never waits.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        {
            let mut state = self.shared.lock();
            if state.receiver_gone {
                return Err(SendError(item));
            }
            if !self.is_wanted() {
                return Ok(());
            }
            if state.items.len() >= self.shared.depth {
                state.items.pop_front();
                state.dropped += 1;
            }
            state.items.push_back(item);
        }
        self.shared.item_or_close.notify_one();
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.lock().sender_gone = true;
        self.shared.item_or_close.notify_one();
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("lossy_queue::Receiver")
            .field("waiting", &state.items.len())
            .field("dropped", &state.dropped)
            .finish()
    }
}

impl<T> Receiver<T> {
    /// Says whether to queue items at all. While not wanted, what is sent is
    /// dropped at once (not counted as lag) and what waited is dropped now: for
    /// an endpoint with nobody to pass audio to, such as a live page no browser
    /// has open.
    pub fn set_wanted(&mut self, wanted: bool) {
        let mut state = self.shared.lock();
        self.shared.wanted.store(wanted, Ordering::Relaxed);
        if !wanted {
            state.items = VecDeque::new();
            state.dropped = 0;
        }
    }

    /// The oldest waiting item, without waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        if state.dropped > 0 {
            return Err(TryRecvError::Lagged(std::mem::take(&mut state.dropped)));
        }
        match state.items.pop_front() {
            Some(item) => {
                if state.items.is_empty() && state.items.capacity() > KEPT_CAPACITY {
                    state.items.shrink_to(KEPT_CAPACITY);
                }
                Ok(item)
            }
            None if state.sender_gone => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The oldest waiting item, waiting for one if need be. Cancel-safe: an item
    /// is only taken off the queue by the call that returns it.
    pub async fn recv(&mut self) -> Result<T, RecvError> {
        loop {
            match self.try_recv() {
                Ok(item) => return Ok(item),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                // A send between the look and the wait leaves a permit in the
                // Notify, so this wait ends at once.
                Err(TryRecvError::Empty) => self.shared.item_or_close.notified().await,
            }
        }
    }

    /// Stops taking items, as dropping the receiver does, while it is still
    /// held: the sender sees [`Sender::is_closed`] from now on.
    pub fn close(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        // Frames held for nobody are freed now, not when the hub lets go.
        state.items = VecDeque::new();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_and_says_how_many() {
        let (tx, mut rx) = channel(3);
        for i in 0..5 {
            tx.send(i).expect("receiver alive");
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Lagged(2)));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Ok(3));
        assert_eq!(rx.try_recv(), Ok(4));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn memory_is_held_only_while_items_wait() {
        let (tx, mut rx) = channel(250);
        assert_eq!(
            rx.shared.lock().items.capacity(),
            0,
            "nothing allocated idle"
        );
        for i in 0..250 {
            tx.send(i).expect("receiver alive");
        }
        assert!(rx.shared.lock().items.capacity() >= 250);
        while rx.try_recv().is_ok() {}
        assert!(rx.shared.lock().items.capacity() <= KEPT_CAPACITY);
    }

    #[test]
    fn the_receiver_sees_everything_sent_before_the_sender_went() {
        let (tx, mut rx) = channel(4);
        tx.send(1).expect("receiver alive");
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }

    #[test]
    fn an_unbounded_queue_keeps_everything_and_allocates_only_when_used() {
        let (tx, mut rx) = unbounded();
        assert_eq!(rx.shared.lock().items.capacity(), 0);
        for i in 0..1000 {
            tx.send(i).expect("receiver alive");
        }
        for i in 0..1000 {
            assert_eq!(rx.try_recv(), Ok(i));
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_closed_receiver_is_seen_by_the_sender() {
        let (tx, mut rx) = unbounded();
        assert!(!tx.is_closed());
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(tx.send(1), Err(SendError(1))));
        drop(rx);
        assert!(tx.is_closed());
    }

    #[test]
    fn sending_to_a_gone_receiver_gives_the_item_back() {
        let (tx, rx) = channel(4);
        drop(rx);
        assert!(matches!(tx.send(7), Err(SendError(7))));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_an_item_and_for_the_close() {
        let (tx, mut rx) = channel(4);
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        tx.send(5).expect("receiver alive");
        drop(tx);
        let (first, second) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken in time")
            .expect("task ran");
        assert_eq!(first, Ok(5));
        assert_eq!(second, Err(RecvError::Closed));
    }

    #[test]
    fn nothing_is_queued_while_not_wanted() {
        let (tx, mut rx) = channel(4);
        tx.send(1).expect("receiver alive");
        rx.set_wanted(false);
        assert!(!tx.is_wanted());
        tx.send(2).expect("receiver alive");
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        rx.set_wanted(true);
        tx.send(3).expect("receiver alive");
        assert_eq!(rx.try_recv(), Ok(3));
    }

    #[tokio::test]
    async fn a_recv_cancelled_while_waiting_loses_nothing() {
        let (tx, mut rx) = channel(4);
        let cancelled = tokio::time::timeout(Duration::from_millis(1), rx.recv()).await;
        assert!(cancelled.is_err(), "nothing was sent yet");
        tx.send(9).expect("receiver alive");
        assert_eq!(rx.recv().await, Ok(9));
    }
}
