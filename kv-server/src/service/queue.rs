//! A stream's outgoing queue, bounded by bytes as well as items: a client
//! that stops reading holds at most the bytes bound of each of its
//! streams, however large the values it watches or reads.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};

/// The sending half: [`Sender::send`] waits while the queue holds its
/// bytes bound.
pub(super) struct Sender<T> {
    tx: mpsc::Sender<(T, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
}

// Not derived: that would require `T: Clone`.
impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            bytes: Arc::clone(&self.bytes),
            max_bytes: self.max_bytes,
        }
    }
}

/// A queue of at most `items` items and about `max_bytes` bytes (an item
/// larger than that still passes, alone), and the stream of its items.
pub(super) fn channel<T: Send + 'static>(
    items: usize,
    max_bytes: u32,
) -> (Sender<T>, impl Stream<Item = T> + Send + 'static) {
    let (tx, rx) = mpsc::channel(items);
    let sender = Sender {
        tx,
        bytes: Arc::new(Semaphore::new(max_bytes as usize)),
        max_bytes,
    };
    // The permit is released as the transport takes the item.
    let stream = ReceiverStream::new(rx).map(|(item, _permit)| item);
    (sender, stream)
}

impl<T> Sender<T> {
    /// Queues `item` of about `bytes` bytes; `Err` with it once the
    /// receiver is gone.
    pub(super) async fn send(&self, item: T, bytes: usize) -> Result<(), T> {
        let weight = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes);
        let Ok(permit) = Arc::clone(&self.bytes).acquire_many_owned(weight).await else {
            return Err(item);
        };
        self.tx.send((item, permit)).await.map_err(|e| e.0.0)
    }

    /// Bytes queued and not yet taken by the receiver.
    pub(super) fn queued_bytes(&self) -> usize {
        self.max_bytes as usize - self.bytes.available_permits()
    }

    /// Resolves once the receiver is gone.
    pub(super) async fn closed(&self) {
        self.tx.closed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_waits_on_bytes_not_only_items() {
        let (tx, rx) = channel::<&str>(100, 1000);
        tx.send("a", 600).await.unwrap();
        assert_eq!(tx.queued_bytes(), 600);
        // 600 + 600 > 1000: the second waits until the first is taken.
        let second = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send("b", 600).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        let mut rx = std::pin::pin!(rx);
        assert_eq!(rx.next().await, Some("a"));
        second.await.unwrap().unwrap();
        assert_eq!(rx.next().await, Some("b"));
        // Larger than the bound: still passes, alone.
        tx.send("c", 5000).await.unwrap();
        assert_eq!(rx.next().await, Some("c"));
    }
}
