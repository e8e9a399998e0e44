//! The live page's playback order (web/live/scheduler.js: several channels,
//! nothing missed, priority channels) in node's own test runner:
//! tests/browser/scheduler.test.mjs. The page itself is driven in Chromium by
//! tests/live_browser.rs.

use std::path::Path;
use std::process::Command;

#[test]
fn the_pages_scheduler_passes_its_tests_in_node() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let output = Command::new("node")
        .arg("--test")
        .arg("scheduler.test.mjs")
        .current_dir(&dir)
        .output()
        .expect("node runs (scripts/setup.sh installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "node --test failed: {}",
        output.status
    );
    // node's runner passes with zero tests: make sure they ran.
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(passed >= 7, "only {passed} scheduler tests passed");
}
