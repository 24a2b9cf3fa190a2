//! The stores and the data dir (`src/store/`, `src/backup.rs`, the data-dir commands of
//! `src/cli/`): encryption at rest, the audit chain and its tamper check, the embedded store's
//! write queue as backpressure, a store that cannot write, live backups, kill -9, a full disk,
//! `migrate` to PostgreSQL, and what PostgreSQL adds and replicas share. Each test picks its
//! store itself: the embedded store's files, or a PostgreSQL schema of its own.

mod at_rest;
mod audit;
mod backpressure;
mod backup;
mod console_sessions;
mod crash;
mod disk_full;
mod failures;
mod migrate;
mod outbox;
mod postgres_contract;
mod postgres_service;
mod replicas;
