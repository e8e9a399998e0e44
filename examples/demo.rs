//! The README's first command (`scripts/demo.sh` runs this): the bridge between a
//! local Synapse, a local Mumble server and a local mosquitto, and three
//! transmissions across it (tests/demo_common/mod.rs tells which). Keeps running
//! until Ctrl-C so you can look around with a Matrix client and a Mumble client.
//!
//! `--mumble 1.5` runs it against mumble-server 1.5 (from the Debian 13 root
//! scripts/setup.sh makes) instead of murmurd 1.3.4.

#[path = "../tests/bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
#[path = "../tests/demo_common/mod.rs"]
mod demo_common;

use std::io::IsTerminal;

use walkie_harness::MumbleServer;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["--mumble", "1.3"] => MumbleServer::Murmur1_3,
        ["--mumble", "1.5"] => MumbleServer::Mumble1_5,
        _ => {
            eprintln!("usage: demo [--mumble 1.3|1.5]");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(demo_common::run(server, std::io::stdin().is_terminal()))
}
