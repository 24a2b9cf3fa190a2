//! Waiting for what happens in the background (a worker's send, a reload, a file written):
//! [`eventually`], the one polling helper. A wait is bounded so that a test fails rather than
//! hangs; no test asserts how long anything took.

use std::time::Duration;

/// How long [`eventually`] waits in all before it gives up: far beyond what anything awaited
/// takes on a loaded machine, so reaching it means it is not going to happen.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The pause between two checks.
const EVERY: Duration = Duration::from_millis(50);

/// Waits until `check` holds: checks at once, then every 50 ms, and panics naming `what` when
/// it has not held within [`PATIENCE`] (a check still running then is cut off, so a request
/// that hangs fails the test too). `check` may await or not:
/// `eventually("the update reaching Ocean", async || ocean.delivered().len() == 2)`.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let polling = async {
        while !check().await {
            tokio::time::sleep(EVERY).await;
        }
    };
    if tokio::time::timeout(PATIENCE, polling).await.is_err() {
        panic!("{what}: not within {} s", PATIENCE.as_secs());
    }
}
