//! The files under systemd/ against systemd's own tools: the unit passes
//! `systemd-analyze verify` (pointed at the binary this build made, since verify
//! insists that ExecStart= exists), its walkie-bridge command lines are ones the
//! binary accepts, and sysusers.d/tmpfiles.d create the user and directories in a
//! scratch root. systemd-analyze comes from Debian's `systemd` (scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALLED: &str = "/usr/local/bin/walkie-bridge";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text() -> String {
    std::fs::read_to_string(root().join("systemd/walkie-bridge.service")).expect("unit file")
}

/// The unit as it would be installed, with the binary of this build.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let path = dir.join("walkie-bridge.service");
    let text = unit_text().replace(INSTALLED, env!("CARGO_BIN_EXE_walkie-bridge"));
    std::fs::write(&path, text).expect("unit written");
    path
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_for_this_build(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian systemd; scripts/setup.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // verify exits 0 on unknown keys and bad values, which it only prints.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("walkie-bridge"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify complains:\n{stderr}"
    );
}

#[test]
fn verify_would_catch_a_broken_unit() {
    // The check above means something only if verify fails on what we guard against.
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = dir.path().join("walkie-bridge.service");
    std::fs::write(&unit, unit_text()).expect("unit written");
    let missing = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    if Path::new(INSTALLED).exists() {
        return; // Installed on this machine: nothing is missing.
    }
    assert!(!missing.status.success(), "{missing:?}");
    let typo = unit_for_this_build(dir.path());
    let text = std::fs::read_to_string(&typo)
        .expect("unit")
        .replace("WatchdogSec=", "WatchdogSecs=");
    std::fs::write(&typo, text).expect("unit written");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&typo)
        .output()
        .expect("systemd-analyze");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unknown key"),
        "{out:?}"
    );
}

#[test]
fn the_unit_is_a_notify_service_with_a_watchdog_that_unkeys_every_radio_after_stop() {
    let text = unit_text();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStopPost=/usr/local/bin/walkie-bridge unkey --all -c /etc/walkie-bridge/config.toml",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "StateDirectory=walkie-bridge",
        "SupplementaryGroups=dialout audio",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-alsa rw",
    ] {
        assert!(text.contains(line), "the unit lacks {line:?}");
    }
}

/// Every `walkie-bridge ...` command line of the unit, run against a config
/// without radios: the binary must accept exactly these arguments.
#[test]
fn the_units_command_lines_are_accepted_by_the_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    let example =
        std::fs::read_to_string(root().join("config/example.toml")).expect("example config");
    // The example's radio would open /dev/ttyUSB0; leave radios out.
    let cut = example.find("[radio.uhf]").expect("radio table");
    std::fs::write(&config, example[..cut].replace(r#", "radio.uhf""#, ""))
        .expect("config written");
    let text = unit_text();
    let mut checked = 0;
    for line in text.lines().filter(|l| l.starts_with("Exec")) {
        let Some((_, command)) = line.split_once('=') else {
            continue;
        };
        let mut words = command.split_whitespace();
        if words.next() != Some(INSTALLED) {
            continue;
        }
        let args: Vec<String> = words
            .map(|w| {
                if w == "/etc/walkie-bridge/config.toml" {
                    config.display().to_string()
                } else {
                    w.to_owned()
                }
            })
            .collect();
        if args.first().map(String::as_str) == Some("run") {
            // Running is what the other tests do; here only the arguments count.
            let out = Command::new(env!("CARGO_BIN_EXE_walkie-bridge"))
                .args(&args)
                .arg("--help")
                .output()
                .expect("walkie-bridge");
            assert!(out.status.success(), "{line}: {out:?}");
        } else {
            let out = Command::new(env!("CARGO_BIN_EXE_walkie-bridge"))
                .args(&args)
                .output()
                .expect("walkie-bridge");
            assert!(out.status.success(), "{line}: {out:?}");
        }
        checked += 1;
    }
    assert_eq!(checked, 3, "ExecStartPre, ExecStart and ExecStopPost");
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_directories() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let root_dir = scratch.path();
    std::fs::create_dir_all(root_dir.join("etc")).expect("etc");
    // The groups Debian already has.
    std::fs::write(root_dir.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").expect("passwd");
    std::fs::write(
        root_dir.join("etc/group"),
        "root:x:0:\ndialout:x:20:\naudio:x:29:\n",
    )
    .expect("group");
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root_dir.display()))
        .arg(root().join("systemd/sysusers.d/walkie-bridge.conf"))
        .output()
        .expect("systemd-sysusers");
    assert!(out.status.success(), "{out:?}");
    let passwd = std::fs::read_to_string(root_dir.join("etc/passwd")).expect("passwd");
    let group = std::fs::read_to_string(root_dir.join("etc/group")).expect("group");
    assert!(passwd.contains("walkie-bridge:x:"), "{passwd}");
    assert!(group.contains("dialout:x:20:walkie-bridge"), "{group}");
    assert!(group.contains("audio:x:29:walkie-bridge"), "{group}");

    let out = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root_dir.display()))
        .arg("--create")
        .arg(root().join("systemd/tmpfiles.d/walkie-bridge.conf"))
        .output()
        .expect("systemd-tmpfiles");
    assert!(out.status.success(), "{out:?}");
    use std::os::unix::fs::MetadataExt;
    for (dir, mode) in [
        ("etc/walkie-bridge", 0o750),
        ("var/lib/walkie-bridge", 0o750),
        ("var/lib/walkie-bridge/spool", 0o750),
    ] {
        let meta = std::fs::metadata(root_dir.join(dir)).expect(dir);
        assert!(meta.is_dir(), "{dir}");
        assert_eq!(meta.mode() & 0o777, mode, "{dir}");
    }
}

/// Each live connection holds a descriptor; recordings, the database and the
/// homeserver's transactions need theirs too. The default soft limit (1024) is
/// too close: the unit raises it well above `live.max_connections` of the
/// example config.
#[test]
fn the_unit_gives_descriptors_for_every_live_connection_and_more() {
    let text = unit_text();
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("the unit sets LimitNOFILE=");
    let soft: u64 = value
        .split(':')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("LimitNOFILE={value} is not a number"));
    let example =
        std::fs::read_to_string(root().join("config/example.toml")).expect("example config");
    let max_connections: u64 = example
        .lines()
        .find_map(|l| l.trim().strip_prefix("max_connections ="))
        .and_then(|v| v.trim().parse().ok())
        .expect("example.toml documents live.max_connections");
    assert!(
        soft >= max_connections + 4096,
        "LimitNOFILE={soft} leaves too few descriptors beside {max_connections} live connections"
    );
}
