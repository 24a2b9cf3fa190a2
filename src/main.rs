//! The `referral-relay` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    referral_relay::cli::main()
}
