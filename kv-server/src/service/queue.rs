//! A stream's outgoing queue, bounded by items and bytes per stream and by
//! a byte budget shared by every stream of its kind (all watches, or all
//! pipelines): a client that stops reading holds at most its stream's
//! bound, and all such clients together at most the shared budget plus
//! one item each.
//!
//! Senders wait for room ([`Sender::send`]), or for a watch, are told they
//! lag ([`Sender::send_or_lag`]) so the watch can be cut: [`Sender::cut`]
//! drops everything queued, freeing it at once even while the client reads
//! nothing, and leaves one last item (the status naming where to resume).

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use tokio::sync::Notify;
use tokio_stream::Stream;

use crate::memory::MemoryBudget;

/// The shared budget's share of the memory limit, for each kind of stream.
pub(crate) const SHARED_BUDGET_DIVISOR: u64 = 8;

/// Bytes queued by every stream of one kind, and their bound.
#[derive(Debug)]
pub(crate) struct QueueBudget {
    bytes: AtomicUsize,
    max: usize,
    /// Senders waiting for the budget: only then is a release announced.
    waiting: AtomicUsize,
    freed: Notify,
}

impl QueueBudget {
    /// A budget of `max` bytes.
    pub(crate) fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            bytes: AtomicUsize::new(0),
            max: usize::try_from(max).unwrap_or(usize::MAX),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes queued now by all streams of the kind.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn has_room(&self, bytes: usize) -> bool {
        self.bytes.load(Ordering::Relaxed).saturating_add(bytes) <= self.max
    }

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.freed.notify_waiters();
        }
    }
}

struct State<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    /// Delivered after the queued items, then the stream ends.
    last: Option<T>,
    /// No more items are accepted (cut or finished).
    finished: bool,
    receiver_gone: bool,
    senders: usize,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    max_items: usize,
    max_bytes: usize,
    budget: Arc<QueueBudget>,
    /// Room was made in this queue, or its receiver went.
    space: Notify,
    gone: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic elsewhere cannot leave the queue half-updated: every
        // update is a few field writes.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why an item was not queued.
pub(super) enum Refused<T> {
    /// The receiver is gone, or the queue was cut or finished.
    Closed(T),
    /// The stream has items queued and the shared budget is spent, or the
    /// server is at its memory limit: the caller should cut it.
    Lagging(T),
}

/// The sending half.
pub(super) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        if state.senders == 0
            && let Some(waker) = state.waker.take()
        {
            waker.wake();
        }
    }
}

/// The receiving half: the stream of queued items.
pub(super) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue of at most `items` items and about `max_bytes` bytes (an item
/// larger than that still passes, alone), drawing on `budget` with every
/// other queue of its kind, and the stream of its items.
pub(super) fn channel<T>(
    items: usize,
    max_bytes: u32,
    budget: Arc<QueueBudget>,
) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            last: None,
            finished: false,
            receiver_gone: false,
            senders: 1,
            waker: None,
        }),
        max_items: items,
        max_bytes: max_bytes as usize,
        budget,
        space: Notify::new(),
        gone: Notify::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Queues `item` of about `bytes` bytes if there is room now: room in
    /// this queue, and in the shared budget unless the queue is empty (an
    /// empty queue always takes one item, so a reading client is never
    /// starved by silent ones). `Ok(None)` when queued.
    fn try_push(&self, item: T, bytes: usize) -> Result<Option<T>, Refused<T>> {
        let mut state = self.shared.lock();
        if state.receiver_gone || state.finished {
            return Err(Refused::Closed(item));
        }
        let fits = state.items.is_empty()
            || (state.items.len() < self.shared.max_items
                && state.bytes + bytes <= self.shared.max_bytes
                && self.shared.budget.has_room(bytes));
        if !fits {
            return Ok(Some(item));
        }
        state.bytes += bytes;
        self.shared.budget.bytes.fetch_add(bytes, Ordering::Relaxed);
        state.items.push_back((item, bytes));
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        Ok(None)
    }

    /// Queues `item` of about `bytes` bytes, waiting for room; `Err` with
    /// it once the receiver is gone.
    pub(super) async fn send(&self, mut item: T, bytes: usize) -> Result<(), T> {
        let budget = &self.shared.budget;
        loop {
            let space = self.shared.space.notified();
            let freed = budget.freed.notified();
            tokio::pin!(space, freed);
            space.as_mut().enable();
            freed.as_mut().enable();
            budget.waiting.fetch_add(1, Ordering::Relaxed);
            let tried = self.try_push(item, bytes);
            match tried {
                Ok(None) => {
                    budget.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(Refused::Closed(back) | Refused::Lagging(back)) => {
                    budget.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(back);
                }
                Ok(Some(back)) => item = back,
            }
            tokio::select! {
                () = space => {}
                () = freed => {}
            }
            budget.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues `item` as [`Sender::send`] does, but instead of waiting
    /// behind the shared budget, or while `memory` reports pressure with
    /// items still queued, gives it back as [`Refused::Lagging`].
    pub(super) async fn send_or_lag(
        &self,
        mut item: T,
        bytes: usize,
        memory: Option<&MemoryBudget>,
    ) -> Result<(), Refused<T>> {
        // Behind at the limit: no more copies for it to hold.
        let lagging = || memory.is_some_and(MemoryBudget::over_limit) && self.queued_bytes() > 0;
        // Room now (the usual case): no waiter is registered, which costs
        // the space notifier's lock twice per event and a mass expiry's
        // watch sends a million events.
        if lagging() {
            return Err(Refused::Lagging(item));
        }
        match self.try_push(item, bytes)? {
            None => return Ok(()),
            Some(back) => item = back,
        }
        loop {
            let space = self.shared.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            // Tried again once registered, so room made meanwhile is not
            // missed.
            if lagging() {
                return Err(Refused::Lagging(item));
            }
            match self.try_push(item, bytes)? {
                None => return Ok(()),
                Some(back) => item = back,
            }
            if !self.shared.budget.has_room(bytes) {
                return Err(Refused::Lagging(item));
            }
            let pressured = async {
                match memory {
                    Some(memory) => memory.pressured().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = space => {}
                () = pressured => {
                    if lagging() {
                        return Err(Refused::Lagging(item));
                    }
                }
            }
        }
    }

    /// Drops every queued item, freeing it now, and ends the stream with
    /// the item `last` makes from the first one dropped (none if the queue
    /// was empty). Later sends are refused.
    pub(super) fn cut(&self, last: impl FnOnce(Option<&T>) -> T) {
        let dropped = {
            let mut state = self.shared.lock();
            let dropped = std::mem::take(&mut state.items);
            let bytes = std::mem::take(&mut state.bytes);
            self.shared.budget.release(bytes);
            state.last = Some(last(dropped.front().map(|(item, _)| item)));
            state.finished = true;
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
            dropped
        };
        drop(dropped);
    }

    /// Ends the stream with `last`, after the items queued; it waits for
    /// no room. Later sends are refused.
    pub(super) fn finish(&self, last: T) {
        let mut state = self.shared.lock();
        if state.receiver_gone || state.finished {
            return;
        }
        state.last = Some(last);
        state.finished = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// Bytes queued and not yet taken by the receiver.
    pub(super) fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// Resolves once the receiver is gone.
    pub(super) async fn closed(&self) {
        loop {
            let gone = self.shared.gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.shared.lock().receiver_gone {
                return;
            }
            gone.await;
        }
    }
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        if let Some((item, bytes)) = state.items.pop_front() {
            state.bytes -= bytes;
            drop(state);
            self.shared.budget.release(bytes);
            self.shared.space.notify_waiters();
            return Poll::Ready(Some(item));
        }
        if let Some(last) = state.last.take() {
            return Poll::Ready(Some(last));
        }
        if state.finished || state.senders == 0 {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut state = self.shared.lock();
            state.receiver_gone = true;
            let bytes = std::mem::take(&mut state.bytes);
            self.shared.budget.release(bytes);
            std::mem::take(&mut state.items)
        };
        drop(dropped);
        self.shared.gone.notify_waiters();
        self.shared.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_waits_on_bytes_not_only_items() {
        let (tx, mut rx) = channel::<&str>(100, 1000, QueueBudget::new(u64::MAX));
        tx.send("a", 600).await.unwrap();
        assert_eq!(tx.queued_bytes(), 600);
        // 600 + 600 > 1000: the second waits until the first is taken.
        let second = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send("b", 600).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        assert_eq!(rx.next().await, Some("a"));
        second.await.unwrap().unwrap();
        assert_eq!(rx.next().await, Some("b"));
        // Larger than the bound: still passes, alone.
        tx.send("c", 5000).await.unwrap();
        assert_eq!(rx.next().await, Some("c"));
        drop(tx);
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn the_shared_budget_bounds_all_queues_but_never_an_empty_one() {
        let budget = QueueBudget::new(1000);
        let (silent, _silent_rx) = channel::<u32>(100, 800, Arc::clone(&budget));
        silent.send(1, 500).await.unwrap();
        silent.send(2, 300).await.unwrap();
        let (reader, mut reader_rx) = channel::<u32>(100, 800, Arc::clone(&budget));
        // Empty: passes though the budget has only 200 left.
        reader.send(3, 300).await.unwrap();
        assert_eq!(budget.queued(), 1100);
        // Not empty and over the budget: a pipeline waits ...
        let waiting = tokio::spawn({
            let reader = reader.clone();
            async move { reader.send(4, 300).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // ... and a watch is told it lags.
        assert!(matches!(
            reader.send_or_lag(5, 300, None).await,
            Err(Refused::Lagging(5))
        ));
        // Taking an item frees room in both.
        assert_eq!(reader_rx.next().await, Some(3));
        waiting.await.unwrap().unwrap();
        assert_eq!(reader_rx.next().await, Some(4));
        assert_eq!(budget.queued(), 800);
    }

    #[tokio::test]
    async fn a_cut_frees_what_is_queued_though_nothing_is_read() {
        let budget = QueueBudget::new(u64::MAX);
        let (tx, mut rx) = channel::<u32>(100, 10_000, Arc::clone(&budget));
        for i in 10..15 {
            tx.send(i, 1000).await.unwrap();
        }
        assert_eq!(budget.queued(), 5000);
        tx.cut(|first| 1000 + first.copied().unwrap_or(0));
        assert_eq!(budget.queued(), 0);
        assert_eq!(tx.queued_bytes(), 0);
        assert!(matches!(
            tx.send_or_lag(1, 1, None).await,
            Err(Refused::Closed(1))
        ));
        assert_eq!(
            rx.next().await,
            Some(1010),
            "the last item names the first dropped"
        );
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn finish_delivers_what_is_queued_first_and_a_dropped_receiver_frees_it() {
        let budget = QueueBudget::new(u64::MAX);
        let (tx, mut rx) = channel::<u32>(100, 10_000, Arc::clone(&budget));
        tx.send(1, 10).await.unwrap();
        tx.finish(2);
        assert_eq!(rx.next().await, Some(1));
        assert_eq!(rx.next().await, Some(2));
        assert_eq!(rx.next().await, None);
        let (tx, rx) = channel::<u32>(100, 10_000, Arc::clone(&budget));
        tx.send(1, 10).await.unwrap();
        drop(rx);
        assert_eq!(budget.queued(), 0);
        tx.closed().await;
        assert_eq!(tx.send(2, 1).await, Err(2));
    }
}
