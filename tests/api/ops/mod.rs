//! Running the service (`src/server/`, `src/cli/`, health and metrics in `src/routes/`,
//! `src/telemetry.rs`): the listener's connection limits, metrics and request ids, HTTPS and
//! certificate reloads, the configuration commands, the binary's lifecycle (signals, the
//! healthcheck command, logs, file modes), and the source layout's rules (`layout.rs`).

mod certificates;
mod cli;
mod connections;
mod layout;
mod lifecycle;
mod metrics;
mod tls;
