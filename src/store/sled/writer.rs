//! The one writer: every write to the store goes through one thread, which applies whatever has
//! queued (all the deliveries in it as one transaction), makes it durable with one flush (fsync)
//! and then answers each write.
//!
//! One thread rather than a transaction per request: every delivery reads and writes the same
//! hot keys (the feed sequence, the last receive time, the audit chain head), so concurrent
//! transactions on them conflict and retry, and each writer would wait on the flush on its own.
//! Here nothing contends; a batch of `n` deliveries costs one transaction and one fsync.
//!
//! The queue is bounded ([`SledOptions::write_queue`](super::SledOptions)): a delivery that finds
//! it full is refused at once with [`StoreError::Busy`] (the webhook answers 503 with
//! `Retry-After`), while other writes (outbox, marks, audit entries) wait for room.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use super::apply::apply_deliveries;
use super::trees::{EVENT_SEQ, Trees};
use crate::store::deliveries::{NewDelivery, PutOutcome};
use crate::store::error::StoreError;
use crate::store::record::{Codec, read_u64};

/// Most writes applied and flushed together; the rest of the queue waits for the next round.
const MAX_BATCH: usize = 512;

/// What the writer thread writes with.
pub(super) struct Target {
    pub(super) db: sled::Db,
    pub(super) trees: Trees,
    pub(super) codec: Codec,
}

/// Called once the flush covering a write is over: with the flush's failure, if it failed.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

enum Job {
    Delivery(
        Box<NewDelivery>,
        oneshot::Sender<Result<PutOutcome, StoreError>>,
    ),
    /// Applies a write (on the writer thread) and returns how to answer it.
    Write(Box<dyn FnOnce(&Target) -> Answer + Send>),
}

/// The queue to the writer thread and the thread itself.
pub(super) struct Writer {
    jobs: RwLock<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread with a queue of `capacity` writes. After each flush it
    /// publishes the feed sequence that flush made durable on `feed`.
    pub(super) fn start(
        target: Target,
        capacity: usize,
        feed: Arc<watch::Sender<u64>>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(&target, rx, &feed))
            .map_err(|e| StoreError::unavailable("cannot start the writer thread").caused_by(e))?;
        Ok(Self {
            jobs: RwLock::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Job>, StoreError> {
        self.jobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(stopped)
    }

    /// Stores a delivery and returns once it is on disk (a duplicate too: the first copy may
    /// still be on its way there).
    ///
    /// # Errors
    /// [`StoreError::Busy`] at once when the queue is full; [`StoreError::Io`] when the flush
    /// failed; [`StoreError::Unavailable`] when the writer stopped.
    pub(super) async fn put_delivery(
        &self,
        delivery: NewDelivery,
    ) -> Result<PutOutcome, StoreError> {
        let (answer, outcome) = oneshot::channel();
        {
            let jobs = self.jobs.read().unwrap_or_else(PoisonError::into_inner);
            let jobs = jobs.as_ref().ok_or_else(stopped)?;
            jobs.try_send(Job::Delivery(Box::new(delivery), answer))
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => StoreError::Busy {
                        context: "the store's write queue is full".into(),
                    },
                    mpsc::error::TrySendError::Closed(_) => stopped(),
                })?;
        }
        outcome.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Runs `write` on the writer thread and returns its result once it is on disk, waiting
    /// for room in the queue if need be. `write` must not block on anything but the disk.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Target) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (job, result) = job(write);
        let jobs = self.sender()?;
        jobs.send(job).await.map_err(|_| stopped())?;
        drop(jobs);
        result.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// As [`Writer::write`], for a caller on a blocking thread (never an async worker).
    pub(super) fn write_blocking<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Target) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (job, result) = job(write);
        let jobs = self.sender()?;
        jobs.blocking_send(job).map_err(|_| stopped())?;
        drop(jobs);
        result.blocking_recv().unwrap_or_else(|_| Err(stopped()))
    }

    /// Stops taking writes and waits for the thread to finish the batch in hand; writes still
    /// queued fail with [`StoreError::Unavailable`].
    pub(super) fn stop(&self) {
        drop(
            self.jobs
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn stopped() -> StoreError {
    StoreError::unavailable("the store's writer has stopped")
}

/// A write job for `write`, and where its result arrives.
#[allow(clippy::type_complexity)]
fn job<T: Send + 'static>(
    write: impl FnOnce(&Target) -> Result<T, StoreError> + Send + 'static,
) -> (Job, oneshot::Receiver<Result<T, StoreError>>) {
    let (tx, rx) = oneshot::channel();
    let job = Job::Write(Box::new(move |target: &Target| {
        let result = write(target);
        Box::new(move |flush_failed: Option<&str>| {
            let _ = tx.send(match (result, flush_failed) {
                (Ok(_), Some(cause)) => Err(flush_error(cause)),
                (result, _) => result,
            });
        }) as Answer
    }));
    (job, rx)
}

fn flush_error(cause: &str) -> StoreError {
    StoreError::io("flushing to disk failed").caused_by(cause.to_owned())
}

fn write_loop(target: &Target, mut jobs: mpsc::Receiver<Job>, feed: &watch::Sender<u64>) {
    let mut deliveries = Vec::new();
    let mut answers: Vec<Answer> = Vec::new();
    while let Some(first) = jobs.blocking_recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Delivery(delivery, answer) => deliveries.push((delivery, answer)),
                Job::Write(write) => answers.push(write(target)),
            }
            if deliveries.len() + answers.len() < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        let stored = (!deliveries.is_empty()).then(|| {
            let batch: Vec<&NewDelivery> = deliveries.iter().map(|(d, _)| &**d).collect();
            apply_deliveries(&target.trees, &target.codec, &batch)
        });

        let flushed = flush(target);
        match &flushed {
            // The feed first: a writer answered below may read it at once.
            Ok(seq) => {
                feed.send_if_modified(|on_disk| {
                    let moved = *seq > *on_disk;
                    *on_disk = (*on_disk).max(*seq);
                    moved
                });
            }
            Err(e) => tracing::error!(error = %e, "flushing the store to disk failed"),
        }
        let failed = flushed.as_ref().err().map(String::as_str);
        for answer in answers.drain(..) {
            answer(failed);
        }
        let mut stored = stored.map(|s| s.map(Vec::into_iter));
        for (_, answer) in deliveries.drain(..) {
            let outcome = match (&mut stored, failed) {
                (_, Some(cause)) => Err(flush_error(cause)),
                (Some(Ok(outcomes)), None) => outcomes
                    .next()
                    .ok_or_else(|| StoreError::unavailable("a delivery's outcome is missing")),
                (Some(Err(e)), None) => Err(e.replicate()),
                (None, None) => Err(stopped()),
            };
            let _ = answer.send(outcome);
        }
    }
}

/// Makes everything written so far durable; returns the feed sequence now on disk (as read
/// before the flush, which covers every write committed before that read).
fn flush(target: &Target) -> Result<u64, String> {
    let seq = target
        .trees
        .meta
        .get(EVENT_SEQ)
        .map_err(|e| e.to_string())?
        .map(|v| read_u64(&v).map_err(|e| e.to_string()))
        .transpose()?
        .unwrap_or_default();
    target.db.flush().map_err(|e| e.to_string())?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use bytes::Bytes;

    use super::super::handle::SledStore;
    use super::super::options::SledOptions;
    use crate::domain::{EventCode, IntegrationName, ReferralRef, Summary};
    use crate::store::deliveries::{
        DeliveryStore, NewDelivery, PutOutcome, ServiceAssignment, delivery_key, sha256_hex,
    };
    use crate::store::error::StoreError;
    use crate::store::feed::FeedStore;

    fn delivery(name: &str, body: &str) -> NewDelivery {
        let integration = IntegrationName::parse("main").unwrap();
        let sha256 = sha256_hex(body.as_bytes());
        NewDelivery {
            dedup_key: delivery_key(&integration, Some(name), &sha256),
            integration,
            shares_with: Vec::new(),
            referral: ReferralRef::parse(name).unwrap(),
            service: ServiceAssignment::Unassigned,
            event: EventCode::parse("ereferral-new").unwrap(),
            message_header_id: None,
            bundle_id: Some(name.to_owned()),
            bundle_timestamp: None,
            sent_at: None,
            raw: Bytes::from(body.to_owned()),
            sha256,
            summary: Summary::default(),
            problems: Vec::new(),
            received_at: time::OffsetDateTime::now_utc(),
            fetch_documents: false,
            routes: Default::default(),
        }
    }

    fn store(dir: &std::path::Path, write_queue: usize) -> SledStore {
        let options = SledOptions {
            write_queue,
            ..SledOptions::default()
        };
        SledStore::open_opts(dir, options).unwrap()
    }

    /// Holds the writer thread inside a write until the sender is used; returns once it is held.
    fn hold_writer(
        open: &std::sync::Arc<super::super::open::Open>,
    ) -> (
        std_mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<(), StoreError>>,
    ) {
        let (release, held) = std_mpsc::channel::<()>();
        let (entered, in_write) = std_mpsc::channel::<()>();
        let open = std::sync::Arc::clone(open);
        let holding = tokio::spawn(async move {
            open.writer
                .write(move |_| {
                    entered.send(()).unwrap();
                    held.recv().unwrap();
                    Ok(())
                })
                .await
        });
        in_write.recv().unwrap();
        (release, holding)
    }

    /// While the writer is busy, a delivery finding the queue full is refused at once and
    /// nothing of it is stored; the one that found room is stored once the writer is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_a_delivery_and_stores_nothing_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(store(dir.path(), 1));
        let open = store.open_db().unwrap();
        let (release, holding) = hold_writer(&open);
        // This one takes the one place in the queue...
        let queued = tokio::spawn({
            let store = std::sync::Arc::clone(&store);
            async move { store.put_delivery(delivery("QUEUED", "{\"a\":1}")).await }
        });
        while open.writer.sender().unwrap().capacity() > 0 {
            tokio::task::yield_now().await;
        }
        // ... so this one is refused.
        let refused = store.put_delivery(delivery("REFUSED", "{\"b\":2}")).await;
        assert!(
            matches!(&refused, Err(StoreError::Busy { .. })),
            "{refused:?}"
        );
        release.send(()).unwrap();
        holding.await.unwrap().unwrap();
        assert_eq!(
            queued.await.unwrap().unwrap(),
            PutOutcome::Stored { version: 1 }
        );
        let stored = |name: &str| {
            let store = std::sync::Arc::clone(&store);
            let referral = ReferralRef::parse(name).unwrap();
            async move { store.referral(&referral).await.unwrap().is_some() }
        };
        assert!(stored("QUEUED").await);
        assert!(!stored("REFUSED").await);
        let events = store.events_after(0, 10).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].referral.as_str(), "QUEUED");
    }

    /// Deliveries applied in one batch take consecutive sequence numbers in queue order, and a
    /// delivery repeated within the batch is a duplicate of its first copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_batch_orders_its_deliveries_and_finds_duplicates_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(store(dir.path(), 64));
        let open = store.open_db().unwrap();
        let (release, holding) = hold_writer(&open);
        let mut puts = Vec::new();
        for (name, body) in [("R1", "1"), ("R2", "2"), ("R1", "1"), ("R1", "3")] {
            let store = std::sync::Arc::clone(&store);
            puts.push(tokio::spawn(async move {
                store.put_delivery(delivery(name, body)).await
            }));
            // Queued one after another, in this order.
            let queued = puts.len();
            while open.writer.sender().unwrap().capacity() > 64 - queued {
                tokio::task::yield_now().await;
            }
        }
        release.send(()).unwrap();
        holding.await.unwrap().unwrap();
        let mut outcomes = Vec::new();
        for put in puts {
            outcomes.push(put.await.unwrap().unwrap());
        }
        assert_eq!(
            outcomes,
            [
                PutOutcome::Stored { version: 1 },
                PutOutcome::Stored { version: 1 },
                PutOutcome::Duplicate { version: 1 },
                PutOutcome::Stored { version: 2 },
            ]
        );
        let events = store.events_after(0, 10).await.unwrap();
        let seen: Vec<_> = events
            .iter()
            .map(|e| (e.seq, e.referral.as_str().to_owned(), e.version))
            .collect();
        assert_eq!(
            seen,
            [
                (1, "R1".to_owned(), 1),
                (2, "R2".to_owned(), 1),
                (3, "R1".to_owned(), 2)
            ]
        );
        assert_eq!(store.durable_seq(), 3);
    }
}
