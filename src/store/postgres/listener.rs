//! `LISTEN` for the sequencer's notifications, so a long-poll on this replica wakes when a
//! delivery lands on another. A connection of its own, reopened with backoff when it drops (the
//! sequencer's sweep keeps the feed's end current meanwhile).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::backoff::Backoff;

/// How often the listening connection is asked to answer, and how long it has to.
const PING_EVERY: Duration = Duration::from_secs(15);
const PING_BOUND: Duration = Duration::from_secs(5);

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a replica listens to: the end of the feed.
pub(super) struct Channels {
    pub(super) feed: String,
}

/// Waits between reconnections: 1 s, doubling up to 30 s; back to 1 s once listening.
const RECONNECT: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

pub(super) fn spawn(
    config: tokio_postgres::Config,
    channels: Channels,
    feed: watch::Sender<u64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures = 0;
        loop {
            if let Err(e) = listen(&config, &channels, &feed, &mut failures).await {
                tracing::warn!(error = %e, "PostgreSQL LISTEN connection lost; reconnecting");
            }
            failures += 1;
            tokio::time::sleep(RECONNECT.after(failures)).await;
        }
    })
}

async fn listen(
    config: &tokio_postgres::Config,
    channels: &Channels,
    feed: &watch::Sender<u64>,
    failures: &mut u32,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let client = Arc::new(client);
    let statement = format!("LISTEN \"{}\"", channels.feed);
    // A connection that only listens sends nothing, so one that went silent (the database
    // failed over, a proxy stopped forwarding) would wait forever: it is asked to answer every
    // PING_EVERY, and reopened when it does not within PING_BOUND.
    let silent = Arc::new(Notify::new());
    let pinger = {
        let (client, silent) = (Arc::clone(&client), Arc::clone(&silent));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PING_EVERY).await;
                let answer = tokio::time::timeout(PING_BOUND, client.simple_query("")).await;
                if !matches!(answer, Ok(Ok(_))) {
                    silent.notify_one();
                    return;
                }
            }
        })
    };
    let _stop_pinger = AbortOnDrop(pinger);
    let listen_client = Arc::clone(&client);
    let mut listen = std::pin::pin!(listen_client.batch_execute(&statement));
    let mut listening = false;
    loop {
        tokio::select! {
            () = silent.notified() => {
                tracing::warn!(bound_secs = PING_BOUND.as_secs(), "PostgreSQL LISTEN connection did not answer; reopening it");
                return Ok(());
            }
            done = &mut listen, if !listening => {
                done?;
                listening = true;
                *failures = 0;
            }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == channels.feed => {
                    if let Ok(seq) = n.payload().parse::<u64>() {
                        super::publish(feed, seq);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    }
}
