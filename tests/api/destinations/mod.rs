//! Pushing stored versions to the clinic's systems (`src/destinations/`): what every destination
//! does with its queue, shown on a Standard Webhooks receiver (order, retries, dead letters and
//! rate limits; pause, backfill and the console's steering; kill -9, replicas and retention),
//! and a FHIR destination (`fhir.rs`). Each test picks its store itself (`support::destinations`'s
//! `app_on`), many as a pair, one per backend.

mod durability;
mod fhir;
mod order;
mod steering;
