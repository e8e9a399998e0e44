//! RigctldSquelch against a real hamlib `rigctld -m 1`. The dummy rig's DCD
//! toggles on every `get_dcd` (0, 1, 0, 1…): both answers are read, the
//! debouncer rejects a line that never stays put, and a vanished rigctld is
//! an error (never "signal"), after which the squelch reconnects.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use walkie_radio::rx::{RigctldSquelch, Squelch};

struct Rigctld(Child);

impl Drop for Rigctld {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn start(port: u16) -> Rigctld {
    let child = Command::new("rigctld")
        .args(["-m", "1", "-T", "127.0.0.1", "-t", &port.to_string()])
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start rigctld ({e}): apt-get install libhamlib-utils"));
    let rig = Rigctld(child);
    // Wait for the listening socket (a readiness condition, bounded at 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "rigctld did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rig
}

#[test]
fn reads_dcd_from_a_real_rigctld_and_survives_its_restart() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut rig = start(port);
    let mut sq = RigctldSquelch::new(addr.clone(), Duration::ZERO);
    let answers: Vec<bool> = (0..4).map(|_| sq.query().expect("get_dcd")).collect();
    assert!(
        answers.windows(2).all(|w| w[0] != w[1]),
        "dummy rig toggles DCD on each query: {answers:?}"
    );
    // Undebounced, poll follows every answer.
    let t0 = Instant::now();
    let polled: Vec<bool> = (0..4).map(|_| sq.poll(t0).expect("poll")).collect();
    assert!(
        polled.contains(&true) && polled.contains(&false),
        "{polled:?}"
    );
    // Debounced by 30 ms at 10 ms polling: a DCD flipping every poll never counts.
    let mut sq_db = RigctldSquelch::new(addr.clone(), Duration::from_millis(30));
    for k in 0..20u64 {
        let t = t0 + Duration::from_millis(10 * k);
        assert!(!sq_db.poll(t).expect("poll"), "debounced poll {k} opened");
    }
    // rigctld goes away: an error naming it, not a signal.
    drop(rig);
    let err = sq.poll(Instant::now()).expect_err("rigctld is gone");
    assert!(err.to_string().contains(&addr), "{err}");
    // It comes back: the next poll reconnects.
    rig = start(port);
    sq.poll(Instant::now()).expect("poll after restart");
    drop(rig);
}
