//! The daemon's configuration file.

use walkie_bridge::config::Config;

/// Target `config`: a TOML file as `Config::from_toml_str` reads it, without
/// environment overrides. Errors must name a reason; a config that loads must
/// load again the same way (no hidden state between loads).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = std::iter::empty::<(String, String)>();
    match Config::from_toml_str(text, "fuzz.toml", env) {
        Ok((config, _warnings)) => {
            let again =
                Config::from_toml_str(text, "fuzz.toml", std::iter::empty::<(String, String)>());
            assert!(again.is_ok(), "config loaded once but not twice");
            let _ = config.channels.len();
        }
        Err(errors) => assert!(!errors.to_string().is_empty()),
    }
}
