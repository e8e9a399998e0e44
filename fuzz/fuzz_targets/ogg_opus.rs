#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| walkie_fuzz::audio::ogg_opus(data));
