//! referral-relay: receives Ocean eReferral messages over HL7 FHIR R4, stores every delivery
//! durably before acknowledging it, and serves the referrals to the clinic's own systems.

pub mod alerts;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod backup;
pub mod cli;
pub mod config;
pub mod destinations;
pub mod digest;
pub mod domain;
pub mod error;
pub mod export;
pub mod fhir;
pub mod files;
pub mod ig;
pub mod intake;
pub mod ocean;
pub mod outgoing;
pub mod patient_engagement;
pub mod progress;
pub mod routes;
pub mod screening;
pub mod secret;
pub mod server;
pub mod signals;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod views;
pub mod watch_list;
