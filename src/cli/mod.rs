//! The command line (clap): the `referral-relay` parser, the list of its commands and the
//! process exit code. Each command is an argument struct that runs itself, in a file of its own
//! (or beside its pair, as `backup` with `restore`). Commands that open the data dir need the
//! service stopped; `export` and `replay` can go through a running one.

mod alert_test;
mod audit;
mod backup;
mod check_config;
mod check_site;
mod destinations;
mod export;
mod hash_password;
mod healthcheck;
mod migrate;
mod rekey;
mod replay;
mod serve;
mod shared;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "referral-relay",
    version,
    about = "Receives Ocean eReferrals over FHIR R4 and stores them durably"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Each command's help text is the doc comment of its argument struct.
#[derive(Debug, Subcommand)]
enum Command {
    Serve(serve::Cmd),
    Healthcheck(healthcheck::Cmd),
    CheckConfig(check_config::Cmd),
    CheckSite(check_site::Cmd),
    AlertTest(alert_test::Cmd),
    Export(export::Cmd),
    Audit(audit::Cmd),
    Rekey(rekey::Cmd),
    Backup(backup::Backup),
    Restore(backup::Restore),
    Migrate(migrate::Migrate),
    MigrateSchema(migrate::MigrateSchema),
    HashPassword(hash_password::Cmd),
    Destinations(destinations::Cmd),
    Replay(replay::Cmd),
}

impl Command {
    /// Runs the command chosen.
    fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Serve(c) => c.run(),
            Command::Healthcheck(c) => c.run(),
            Command::CheckConfig(c) => c.run(),
            Command::CheckSite(c) => c.run(),
            Command::AlertTest(c) => c.run(),
            Command::Export(c) => c.run(),
            Command::Audit(c) => c.run(),
            Command::Rekey(c) => c.run(),
            Command::Backup(c) => c.run(),
            Command::Restore(c) => c.run(),
            Command::Migrate(c) => c.run(),
            Command::MigrateSchema(c) => c.run(),
            Command::HashPassword(c) => c.run(),
            Command::Destinations(c) => c.run(),
            Command::Replay(c) => c.run(),
        }
    }
}

/// Parses the command line and runs the command; the process exit code comes from here.
pub fn main() -> ExitCode {
    crate::files::restrict_new_files();
    let cli = Cli::parse();
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
