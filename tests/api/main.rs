//! Integration tests: one binary, the real server on a loopback socket, the real store on disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod at_rest;
mod audit;
mod auth;
mod backpressure;
mod backup;
mod cli;
mod connections;
mod console;
mod crash;
mod dedup;
mod disk_full;
mod edge;
mod export;
mod failures;
mod fuzz;
mod ingest;
mod lifecycle;
mod migrate;
mod ops;
mod outbound;
mod postgres;
mod rejections;
mod replicas;
mod support;
