//! `LISTEN` for the sequencer's notifications, so a long-poll on this replica wakes when a
//! delivery lands on another, and for updates accepted on another replica, so the one sending the
//! outbox sends them at once. A connection of its own, reopened with backoff when it drops (the
//! sequencer's sweep keeps the feed's end current meanwhile).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_postgres::{AsyncMessage, NoTls};

/// What a replica listens to: the end of the feed, and updates accepted elsewhere.
pub(super) struct Channels {
    pub(super) feed: String,
    pub(super) outbox: String,
}

pub(super) fn spawn(
    config: tokio_postgres::Config,
    channels: Channels,
    feed: watch::Sender<u64>,
    outbox: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            if let Err(e) = listen(&config, &channels, &feed, &outbox, &mut backoff).await {
                tracing::warn!(error = %e, "PostgreSQL LISTEN connection lost; reconnecting");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    })
}

async fn listen(
    config: &tokio_postgres::Config,
    channels: &Channels,
    feed: &watch::Sender<u64>,
    outbox: &Notify,
    backoff: &mut Duration,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let statement = format!(
        "LISTEN \"{}\"; LISTEN \"{}\"",
        channels.feed, channels.outbox
    );
    let mut listen = std::pin::pin!(client.batch_execute(&statement));
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => {
                done?;
                listening = true;
                *backoff = Duration::from_secs(1);
            }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == channels.feed => {
                    if let Ok(seq) = n.payload().parse::<u64>() {
                        super::publish(feed, seq);
                    }
                }
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == channels.outbox => {
                    outbox.notify_one();
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    }
}
