//! The fuzz harnesses of walkie-bridge: one function per cargo-fuzz target,
//! each feeding arbitrary bytes to the parser the daemon runs on untrusted
//! input, the way the daemon calls it.
//!
//! They live in a library rather than in the target files so that the main
//! workspace's `tests/fuzz_regressions.rs` replays seeds and crashers through
//! exactly the same code (it includes these modules by path), without linking
//! libFuzzer. Each function panics only on a real bug: a parser that panics,
//! or a result that contradicts its own input.

pub mod audio;
pub mod config;
pub mod live;
pub mod mqtt;
pub mod mumble;
