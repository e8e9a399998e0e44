//! hamlib's rigctld with its dummy rig (`-m 1`), which answers PTT only with
//! `-P RIG` (DESIGN.md §8), and `rigctl` to read the rig's state from outside.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct Rigctld {
    child: Child,
    port: u16,
}

impl Rigctld {
    /// Starts rigctld on a free loopback port and waits until it accepts.
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("rigctld")
            .args(["-m", "1", "-P", "RIG", "-T", "127.0.0.1", "-t"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rigctld (Debian libhamlib-utils; scripts/setup.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "rigctld did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `rigctl` against this rigctld (`-m 2` is hamlib's network rig).
    pub fn rigctl(&self, args: &[&str]) -> String {
        let out = Command::new("rigctl")
            .args(["-m", "2", "-r", &self.address()])
            .args(args)
            .output()
            .expect("rigctl");
        assert!(out.status.success(), "rigctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The rig's PTT as `rigctl t` reads it.
    pub fn ptt_keyed(&self) -> bool {
        self.rigctl(&["t"]) == "1"
    }
}

impl Drop for Rigctld {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
