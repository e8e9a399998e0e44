//! The rigctld driver against a real hamlib `rigctld -m 1 -P RIG` (dummy rig)
//! on a free port; every step is read back independently with `rigctl -m 2`.

mod support;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{ms, FakeSink};
use walkie_radio::ptt::{force_unkey, Ptt, PttConfig, RigctldPtt};
use walkie_radio::tx::{TxController, TxSettings};
use walkie_radio::PttError;

struct Rigctld {
    child: Child,
    port: u16,
}

impl Rigctld {
    fn start_on(port: u16) -> Self {
        let child = Command::new("rigctld")
            .args(["-m", "1", "-P", "RIG", "-T", "127.0.0.1", "-t"])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rigctld (Debian libhamlib-utils) must be installed");
        // Ready when it accepts a connection (bounded wait, not a sleep).
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "rigctld did not start");
            std::thread::sleep(ms(10));
        }
        Self { child, port }
    }
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_on(port)
    }
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// PTT as an independent client sees it.
    fn read_back(&self) -> bool {
        let out = Command::new("rigctl")
            .args(["-m", "2", "-r", &self.addr(), "t"])
            .output()
            .expect("rigctl");
        assert!(out.status.success(), "rigctl t failed: {out:?}");
        match String::from_utf8_lossy(&out.stdout).trim() {
            "0" => false,
            "1" => true,
            other => panic!("rigctl t answered {other:?}"),
        }
    }
    fn key_externally(&self) {
        let st = Command::new("rigctl")
            .args(["-m", "2", "-r", &self.addr(), "T", "1"])
            .status()
            .expect("rigctl");
        assert!(st.success());
    }
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Rigctld {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn connect_unkeys_and_every_step_of_a_transmission_reads_back() {
    let rig = Rigctld::start();
    rig.key_externally();
    assert!(rig.read_back());
    let ptt = RigctldPtt::connect(&rig.addr()).expect("connect");
    assert!(!rig.read_back(), "connecting drives PTT unkeyed");

    let settings = TxSettings {
        tx_delay: ms(100),
        ptt_hang: ms(200),
        ..TxSettings::default()
    };
    let mut c = TxController::new(
        "rig",
        settings,
        Box::new(ptt),
        Box::new(FakeSink::default()),
    )
    .expect("controller");
    let t0 = Instant::now();
    c.floor_taken_by_other(t0).expect("take");
    assert!(rig.read_back(), "keyed at the floor");
    c.audio(t0 + ms(20), vec![1; 160]).expect("audio");
    c.tick(t0 + ms(100)).expect("tx delay");
    assert!(rig.read_back(), "keyed while audio flows");
    c.floor_released(t0 + ms(500)).expect("release");
    c.tick(t0 + ms(600)).expect("hang");
    assert!(rig.read_back(), "still keyed in the hang");
    c.tick(t0 + ms(700)).expect("hang over");
    assert!(!rig.read_back(), "unkeyed after the hang");
    assert!(!c.ptt().is_keyed().expect("driver read back"));
}

#[test]
fn rigctld_killed_mid_transmission_surfaces_and_a_reconnecting_unkey_follows() {
    let mut rig = Rigctld::start();
    let port = rig.port;
    let ptt = RigctldPtt::connect(&rig.addr()).expect("connect");
    let mut c = TxController::new(
        "rig-kill",
        TxSettings::default(),
        Box::new(ptt),
        Box::new(FakeSink::default()),
    )
    .expect("controller");
    let t0 = Instant::now();
    c.floor_taken_by_other(t0).expect("take");
    assert!(rig.read_back());

    rig.kill();
    let err = c
        .floor_released(t0 + ms(10))
        .expect_err("unkey must fail loudly");
    let msg = err.to_string();
    assert!(msg.contains("UNKEY FAILED"), "{msg}");
    assert!(matches!(
        err,
        walkie_radio::TxError::Ptt(PttError::UnkeyFailed { .. })
    ));
    let retry_at = c.next_deadline().expect("an owed unkey is retried");

    // rigctld comes back (systemd restarts it); a dummy rig starts unkeyed,
    // so key it as a real radio left keyed would be, then let the retry run.
    let rig = Rigctld::start_on(port);
    rig.key_externally();
    assert!(rig.read_back());
    c.tick(retry_at).expect("retry reconnects and unkeys");
    assert!(!rig.read_back());
    assert_eq!(c.next_deadline(), None, "nothing owed any more");
}

#[test]
fn force_unkey_connects_unkeys_and_reports() {
    let rig = Rigctld::start();
    rig.key_externally();
    let report = force_unkey(&PttConfig::Rigctld { addr: rig.addr() }).expect("unkey");
    assert!(!rig.read_back());
    assert_eq!(report.read_back_keyed, Some(false));
    assert!(
        report.actions.iter().any(|a| a.contains("T 0")),
        "{report:?}"
    );
}

#[test]
fn force_unkey_without_rigctld_fails_with_the_address() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let err = force_unkey(&PttConfig::Rigctld { addr: addr.clone() }).expect_err("nobody there");
    assert!(err.to_string().contains(&addr), "{err}");
}

#[test]
fn driver_read_back_follows_an_external_change() {
    let rig = Rigctld::start();
    let mut ptt = RigctldPtt::connect(&rig.addr()).expect("connect");
    assert!(!ptt.is_keyed().expect("t"));
    rig.key_externally();
    assert!(ptt.is_keyed().expect("t"));
    ptt.set_keyed(false).expect("unkey");
    assert!(!rig.read_back());
}
