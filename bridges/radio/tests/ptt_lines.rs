//! Serial-line PTT against FakeModemLines: unkeyed at once on open, the line
//! choice, inversion, read-back, and that an unkey drives both lines even
//! when one write fails.

mod support;

use std::time::Instant;

use support::changes;
use walkie_radio::ptt::{
    FakeClock, FakeModemLines, Line, LineLevels, Ptt, PttConfig, PttLines, SerialLinePtt,
};

#[test]
fn open_drives_both_lines_unkeyed_immediately() {
    let t0 = Instant::now();
    let clock = FakeClock::new(t0);
    let lines = FakeModemLines::with_clock(clock.clone());
    // Linux raised both lines on open: that is where the fake starts.
    assert_eq!(
        lines.levels_now(),
        LineLevels {
            rts: true,
            dtr: true
        }
    );
    let mut ptt = SerialLinePtt::new(lines.clone(), PttLines::Rts, false).expect("open");
    assert_eq!(
        lines.levels_now(),
        LineLevels {
            rts: false,
            dtr: false
        }
    );
    // Both changes recorded at the open instant, before anything else.
    assert_eq!(changes(&lines.events(), Line::Rts), vec![(t0, false)]);
    assert_eq!(changes(&lines.events(), Line::Dtr), vec![(t0, false)]);
    assert!(!ptt.is_keyed().expect("read back"));
}

#[test]
fn inverted_ptt_idles_high_and_keys_low() {
    let lines = FakeModemLines::new();
    let mut ptt = SerialLinePtt::new(lines.clone(), PttLines::Dtr, true).expect("open");
    assert_eq!(
        lines.levels_now(),
        LineLevels {
            rts: true,
            dtr: true
        }
    );
    ptt.set_keyed(true).expect("key");
    // Only DTR keys; the unused RTS stays at the unkeyed (high) level.
    assert_eq!(
        lines.levels_now(),
        LineLevels {
            rts: true,
            dtr: false
        }
    );
    assert!(ptt.is_keyed().expect("read back"));
    ptt.set_keyed(false).expect("unkey");
    assert_eq!(
        lines.levels_now(),
        LineLevels {
            rts: true,
            dtr: true
        }
    );
    assert!(!ptt.is_keyed().expect("read back"));
}

#[test]
fn each_line_mode_keys_its_lines() {
    for (mode, rts, dtr) in [
        (PttLines::Rts, true, false),
        (PttLines::Dtr, false, true),
        (PttLines::RtsDtr, true, true),
    ] {
        let lines = FakeModemLines::new();
        let mut ptt = SerialLinePtt::new(lines.clone(), mode, false).expect("open");
        ptt.set_keyed(true).expect("key");
        assert_eq!(lines.levels_now(), LineLevels { rts, dtr }, "{mode:?}");
        ptt.set_keyed(false).expect("unkey");
        assert_eq!(
            lines.levels_now(),
            LineLevels {
                rts: false,
                dtr: false
            }
        );
    }
}

#[test]
fn a_failed_line_write_still_drives_the_other_line_and_errors() {
    let lines = FakeModemLines::new();
    let mut ptt = SerialLinePtt::new(lines.clone(), PttLines::RtsDtr, false).expect("open");
    ptt.set_keyed(true).expect("key");
    lines.fail_next(1); // the RTS write fails
    assert!(ptt.set_keyed(false).is_err());
    assert_eq!(
        lines.levels_now(),
        LineLevels {
            rts: true,
            dtr: false
        }
    );
    // Read back says keyed: the conservative answer.
    assert!(ptt.is_keyed().expect("read back"));
    ptt.set_keyed(false).expect("retry");
    assert!(!ptt.is_keyed().expect("read back"));
}

#[test]
fn config_keys_parse_and_reject() {
    assert_eq!(
        PttConfig::from_keys("rts+dtr", Some("/dev/ttyUSB0"), true, None).expect("ok"),
        PttConfig::Serial {
            port: "/dev/ttyUSB0".into(),
            lines: PttLines::RtsDtr,
            invert: true
        }
    );
    assert!(PttConfig::from_keys("cts", Some("/dev/ttyUSB0"), false, None).is_err());
    assert!(PttConfig::from_keys("rts", None, false, None).is_err());
    assert!(PttConfig::from_keys("rigctld", None, false, None).is_err());
    assert_eq!(
        PttConfig::from_keys("none", None, false, None).expect("ok"),
        PttConfig::None
    );
}

#[test]
fn force_unkey_on_a_pty_reports_the_failure() {
    // A pty opens like a serial port but has no modem lines (ENOTTY): the
    // unkey command must say it failed, never claim success.
    let mut master = 0;
    let mut slave = 0;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: openpty writes two fds and a NUL-terminated name.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            name.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: name was NUL-terminated by openpty.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let err = walkie_radio::ptt::force_unkey(&PttConfig::Serial {
        port: path.clone(),
        lines: PttLines::Rts,
        invert: false,
    })
    .expect_err("a pty cannot be unkeyed");
    let msg = err.to_string();
    assert!(msg.contains(&path), "{msg}");
    // SAFETY: closing fds we own.
    unsafe {
        libc::close(master);
        libc::close(slave);
    }
}
