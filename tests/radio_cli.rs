//! `walkie-bridge unkey --radio NAME` and `unkey --all` (the unit's ExecStopPost)
//! against real hamlib rigctlds whose dummy rigs were left keyed, and
//! `walkie-bridge devices`.

use std::process::{Command, Output};
use walkie_harness::Rigctld;

fn config(dir: &std::path::Path, rigctld_port: u16) -> std::path::PathBuf {
    let path = dir.join("walkie.toml");
    std::fs::write(
        &path,
        format!(
            r##"
[homeserver]
url = "http://127.0.0.1:8008"
domain = "example.org"

[appservice]
listen = "127.0.0.1:29333"
id = "walkie"
as_token = "as-token-for-the-unkey-test"
hs_token = "hs-token-for-the-unkey-test"
bot_localpart = "walkie"
puppet_prefix = "walkie_"

[[channel]]
name = "ops"
room = "#ops:example.org"
endpoints = ["radio.uhf"]

[radio.uhf]
ptt = "rigctld"
rigctld = "127.0.0.1:{rigctld_port}"
cos = "vox"
"##
        ),
    )
    .expect("config written");
    path
}

fn walkie(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walkie-bridge"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("walkie-bridge runs")
}

#[test]
fn unkey_drops_a_radio_left_keyed_and_confirms_it() {
    let rig = Rigctld::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path(), rig.port());
    // A bridge that died mid-transmission left the radio keyed.
    rig.rigctl(&["T", "1"]);
    assert_eq!(rig.rigctl(&["t"]), "1");
    let out = walkie(&["unkey", "--radio", "uhf"], &config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("unkeyed, confirmed by read-back"),
        "{stdout}"
    );
    assert_eq!(rig.rigctl(&["t"]), "0", "the radio is still keyed");
}

#[test]
fn unkey_names_a_radio_that_does_not_exist_and_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path(), 1);
    let out = walkie(&["unkey", "--radio", "vhf"], &config);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [radio.vhf] is configured"));
}

#[test]
fn unkey_fails_loudly_when_the_radio_cannot_be_reached() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = config(dir.path(), port);
    let out = walkie(&["unkey", "--radio", "uhf"], &config);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("radio.uhf"),
        "{out:?}"
    );
}

#[test]
fn devices_lists_serial_ports_and_sound_cards() {
    let out = Command::new(env!("CARGO_BIN_EXE_walkie-bridge"))
        .arg("devices")
        .output()
        .expect("walkie-bridge runs");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(stdout.contains("serial"), "{stdout}");
    assert!(stdout.contains("sound"), "{stdout}");
}

/// Three radios: two on rigctld, one keyed by its own VOX (`ptt = "none"`).
fn config_all(dir: &std::path::Path, uhf: u16, vhf: u16) -> std::path::PathBuf {
    let path = dir.join("walkie-all.toml");
    std::fs::write(
        &path,
        format!(
            r##"
[homeserver]
url = "http://127.0.0.1:8008"
domain = "example.org"

[appservice]
listen = "127.0.0.1:29333"
id = "walkie"
as_token = "as-token-for-the-unkey-test"
hs_token = "hs-token-for-the-unkey-test"
bot_localpart = "walkie"
puppet_prefix = "walkie_"

[[channel]]
name = "ops"
room = "#ops:example.org"
endpoints = ["radio.uhf", "radio.vhf", "radio.hf"]

[radio.uhf]
ptt = "rigctld"
rigctld = "127.0.0.1:{uhf}"
cos = "vox"
audio_in = "hw:1"
audio_out = "hw:1"

[radio.vhf]
ptt = "rigctld"
rigctld = "127.0.0.1:{vhf}"
cos = "vox"
audio_in = "hw:2"
audio_out = "hw:2"

[radio.hf]
ptt = "none"
cos = "vox"
audio_in = "hw:3"
audio_out = "hw:3"
"##
        ),
    )
    .expect("config written");
    path
}

#[test]
fn unkey_all_unkeys_every_radio_and_accepts_one_without_a_ptt_line() {
    let uhf = Rigctld::start();
    let vhf = Rigctld::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_all(dir.path(), uhf.port(), vhf.port());
    uhf.rigctl(&["T", "1"]);
    vhf.rigctl(&["T", "1"]);
    let out = walkie(&["unkey", "--all"], &config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(uhf.rigctl(&["t"]), "0", "uhf is still keyed");
    assert_eq!(vhf.rigctl(&["t"]), "0", "vhf is still keyed");
    assert!(
        stdout.contains("radio.hf (none (radio VOX)): unkeyed (this PTT cannot be read back)"),
        "{stdout}"
    );
    assert!(stdout.contains("all 3 radios unkeyed"), "{stdout}");
}

#[test]
fn unkey_all_still_unkeys_the_others_when_one_radio_is_unreachable_and_exits_1() {
    let uhf = Rigctld::start();
    let dir = tempfile::tempdir().expect("temp dir");
    // Nothing listens on vhf's port.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = config_all(dir.path(), uhf.port(), gone);
    uhf.rigctl(&["T", "1"]);
    let out = walkie(&["unkey", "--all"], &config);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(uhf.rigctl(&["t"]), "0", "uhf was left keyed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("radio.vhf"), "{stderr}");
    assert!(
        stderr.contains("1 of 3 radios may still be keyed"),
        "{stderr}"
    );
}

#[test]
fn unkey_all_without_radios_has_nothing_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("no-radio.toml");
    let text = std::fs::read_to_string(config(dir.path(), 1)).expect("config");
    let cut = text.find("[radio.uhf]").expect("radio table");
    std::fs::write(
        &path,
        text[..cut].replace(r#"endpoints = ["radio.uhf"]"#, "endpoints = []"),
    )
    .expect("config written");
    let out = walkie(&["unkey", "--all"], &path);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to unkey"));
}

#[test]
fn unkey_needs_a_radio_or_all() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path(), 1);
    let out = walkie(&["unkey"], &config);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = walkie(&["unkey", "--all", "--radio", "uhf"], &config);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
