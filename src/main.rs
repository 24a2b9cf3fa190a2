//! The `referral-relay` binary: everything lives in the library.

/// mimalloc rather than the system allocator: reading a Bundle allocates many small strings,
/// and the ingest benchmark acknowledges about 15 % more deliveries per second at concurrency
/// 64 with it (jemalloc gains a little less; both measured in the issue 13 note).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    referral_relay::cli::main()
}
