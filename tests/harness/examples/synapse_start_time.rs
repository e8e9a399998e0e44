//! Measures how long Synapse takes to start (until `/health` answers) and to restart.
//!
//! `cargo run -p walkie-harness --example synapse_start_time [-- RUNS]`

use std::time::{Duration, Instant};

use walkie_harness::Synapse;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> walkie_harness::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|runs| runs.parse().expect("RUNS is a number"))
        .unwrap_or(5);
    let (mut starts, mut restarts) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let started = Instant::now();
        let mut synapse = Synapse::builder().start().await?;
        let start = started.elapsed();
        synapse.stop().await?;
        let started = Instant::now();
        synapse.start_again().await?;
        let restart = started.elapsed();
        println!("run {run}: start {start:.2?}, start_again {restart:.2?}");
        starts.push(start);
        restarts.push(restart);
    }
    println!(
        "median of {runs}: start {:.2?} (min {:.2?}, max {:.2?}), start_again {:.2?}",
        median(starts.clone()),
        starts.iter().min().unwrap(),
        starts.iter().max().unwrap(),
        median(restarts)
    );
    Ok(())
}
