//! `LISTEN` for the sequencer's notifications, so a long-poll on this replica wakes when a
//! delivery lands on another. A connection of its own, reopened with backoff when it drops (the
//! sequencer's sweep keeps the feed's end current meanwhile).

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

pub(super) fn spawn(
    config: tokio_postgres::Config,
    channel: String,
    feed: watch::Sender<u64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            if let Err(e) = listen(&config, &channel, &feed, &mut backoff).await {
                tracing::warn!(error = %e, "PostgreSQL LISTEN connection lost; reconnecting");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    })
}

async fn listen(
    config: &tokio_postgres::Config,
    channel: &str,
    feed: &watch::Sender<u64>,
    backoff: &mut Duration,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let statement = format!("LISTEN \"{channel}\"");
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
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == channel => {
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
