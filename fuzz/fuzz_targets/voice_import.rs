#![no_main]

use std::collections::HashSet;
use std::sync::Mutex;

libfuzzer_sys::fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic, even one caught by
        // `catch_unwind`. `import_voice_message` deliberately catches panics
        // inside symphonia (a dependency fed with files from strangers) and
        // turns them into `AudioError::Corrupt`; such a panic is reported once
        // per place here, and fuzzing goes on. A panic anywhere else — our own
        // code — still aborts and is a finding.
        let abort_hook = std::panic::take_hook();
        let seen: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
        std::panic::set_hook(Box::new(move |info| {
            let place = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            match place {
                Some(place) if place.contains("/symphonia") => {
                    if seen.lock().map(|mut s| s.insert(place.clone())).unwrap_or(false) {
                        eprintln!("symphonia panicked at {place} (caught by import_voice_message): {info}");
                    }
                }
                _ => abort_hook(info),
            }
        }));
    },
    |data: &[u8]| walkie_fuzz::audio::voice_import(data)
);
