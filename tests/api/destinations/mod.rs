//! Pushing stored versions to the clinic's systems (`src/destinations/`): what every destination
//! does with its queue, shown on a Standard Webhooks receiver (`worker.rs`: order, retries, dead
//! letters, pause, backfill, rate limits, kill -9, replicas, retention, the console's steering),
//! and a FHIR destination (`fhir.rs`). Each test picks its store itself (`support::destinations`'s
//! `app_on`), many as a pair, one per backend.

mod fhir;
mod worker;
