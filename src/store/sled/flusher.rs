//! Group commit: one thread calls sled's blocking flush (fsync) for every write requested so
//! far and wakes every writer that flush covered.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::store::error::StoreError;

/// Group commit. Writers bump `requested` after their write is in sled's log; one thread calls
/// the blocking `Db::flush` (fsync) for everything requested so far and publishes how far it
/// got. Every writer whose number that flush covered is woken at once, so concurrent deliveries
/// share fsyncs. sled's `flush_async` is never used: it deadlocks when called concurrently
/// (sled issue 1308).
pub(super) struct Flusher {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    marks: watch::Receiver<Marks>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Queue {
    requested: u64,
    stop: bool,
}

/// How far flushing has got: writes numbered up to `ok` are on disk; writes numbered up to
/// `failed` were covered by a flush that failed (with `cause`), so they must not be
/// acknowledged.
#[derive(Debug, Clone, Default)]
struct Marks {
    ok: u64,
    failed: u64,
    cause: Option<Arc<str>>,
}

impl Flusher {
    /// Starts the flusher thread; `flush` makes everything written so far durable and returns
    /// the feed sequence that is now on disk, which is published on `feed` (shared by every
    /// flusher the store runs, so readers of the feed outlive a reopened store).
    pub(super) fn start(
        feed: Arc<watch::Sender<u64>>,
        flush: impl FnMut() -> Result<u64, String> + Send + 'static,
    ) -> Result<Self, StoreError> {
        let queue = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let (tx, marks) = watch::channel(Marks::default());
        let thread_queue = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || flush_loop(flush, &thread_queue, &tx, &feed))
            .map_err(|e| StoreError::unavailable("cannot start the flusher thread").caused_by(e))?;
        Ok(Self {
            queue,
            marks,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Waits until everything written before this call is on disk. A failed flush is an I/O
    /// failure of the store ([`StoreError::Io`]).
    pub(super) async fn durable(&self) -> Result<(), StoreError> {
        let ticket = {
            let (lock, wake) = &*self.queue;
            let mut q = lock.lock().unwrap_or_else(PoisonError::into_inner);
            if q.stop {
                return Err(StoreError::unavailable("the store is shutting down"));
            }
            q.requested += 1;
            wake.notify_one();
            q.requested
        };
        let mut marks = self.marks.clone();
        let reached = marks
            .wait_for(|m| m.ok >= ticket || m.failed >= ticket)
            .await
            .map_err(|_| StoreError::unavailable("the store flusher stopped"))?;
        if reached.failed >= ticket {
            let cause = reached.cause.as_deref().unwrap_or("unknown").to_owned();
            return Err(StoreError::io("flushing to disk failed").caused_by(cause));
        }
        Ok(())
    }

    /// Stops the thread after a last flush of what was requested; later calls to
    /// [`Flusher::durable`] fail.
    pub(super) fn stop(&self) {
        let (lock, wake) = &*self.queue;
        lock.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        wake.notify_all();
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

fn flush_loop(
    mut flush: impl FnMut() -> Result<u64, String>,
    queue: &(Mutex<Queue>, Condvar),
    marks: &watch::Sender<Marks>,
    feed: &watch::Sender<u64>,
) {
    let (lock, wake) = queue;
    let mut done = 0;
    loop {
        let target = {
            let mut q = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while q.requested == done && !q.stop {
                q = wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.requested == done {
                return;
            }
            q.requested
        };
        match flush() {
            Ok(seq) => {
                // The feed first: a writer woken below may read it at once.
                feed.send_if_modified(|on_disk| {
                    let moved = seq > *on_disk;
                    *on_disk = (*on_disk).max(seq);
                    moved
                });
                marks.send_modify(|m| m.ok = target);
            }
            Err(e) => {
                tracing::error!(error = %e, "flushing the store to disk failed");
                marks.send_modify(|m| {
                    m.failed = target;
                    m.cause = Some(e.into());
                });
            }
        }
        done = target;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flush that fails must fail every write it covered; a later good flush serves the
    /// writes after it. Concurrent waiters share flushes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_fails_the_writes_it_covered() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let failing = Arc::new(AtomicBool::new(false));
        let flushes = Arc::new(AtomicUsize::new(0));
        let (f, n) = (Arc::clone(&failing), Arc::clone(&flushes));
        let flusher = Arc::new(
            Flusher::start(Arc::new(watch::channel(0).0), move || {
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                if f.load(Ordering::SeqCst) {
                    Err("injected I/O error".into())
                } else {
                    Ok(0)
                }
            })
            .unwrap(),
        );
        flusher.durable().await.unwrap();

        failing.store(true, Ordering::SeqCst);
        assert!(matches!(
            flusher.durable().await,
            Err(e @ StoreError::Io { .. }) if e.chain().contains("flushing to disk failed: injected I/O error")
        ));

        failing.store(false, Ordering::SeqCst);
        let before = flushes.load(Ordering::SeqCst);
        let waiters: Vec<_> = (0..32)
            .map(|_| {
                let flusher = Arc::clone(&flusher);
                tokio::spawn(async move { flusher.durable().await })
            })
            .collect();
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        // 32 writers, far fewer fsyncs: they waited on shared flushes.
        assert!(flushes.load(Ordering::SeqCst) - before < 32);
        flusher.stop();
        assert!(matches!(
            flusher.durable().await,
            Err(StoreError::Unavailable { .. })
        ));
    }
}
