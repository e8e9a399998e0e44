//! Reading: TOML file + environment → [`RawConfig`] → validated [`Config`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat};

use super::error::{ConfigError, ConfigErrors, Warning};
use super::schema::RawConfig;
use super::validate::validate;
use super::Config;

/// Where `run`, `check-config` and `generate-registration` look without `-c`.
pub const DEFAULT_PATH: &str = "/etc/walkie-bridge/config.toml";
/// `WALKIE__FLOOR__MAX_TALK_S=30` overrides `floor.max_talk_s`.
pub const ENV_PREFIX: &str = "WALKIE";
pub const ENV_SEPARATOR: &str = "__";

/// Keys whose values must reach their consumer byte for byte: numeric-looking text
/// such as `"0123"` or `"nan"` would otherwise be reparsed and printed back changed.
const VERBATIM_KEYS: &[&str] = &["as_token", "hs_token", "password"];

impl Config {
    /// Loads `path` with overrides from the process environment.
    pub fn load(path: impl AsRef<Path>) -> Result<(Config, Vec<Warning>), ConfigErrors> {
        Self::load_with_env(path, std::env::vars_os())
    }

    /// Loads `path` with overrides from `env` instead of the process environment.
    pub fn load_with_env<K, V>(
        path: impl AsRef<Path>,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(Config, Vec<Warning>), ConfigErrors>
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::new(vec![ConfigError {
                file: path.to_owned(),
                key: None,
                reason: format!("cannot read the file: {e}"),
            }])
        })?;
        Self::from_toml_str(&text, path, env)
    }

    /// Parses TOML text; `file` only labels errors and warnings.
    pub fn from_toml_str<K, V>(
        text: &str,
        file: impl Into<PathBuf>,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(Config, Vec<Warning>), ConfigErrors>
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let file = file.into();
        let env = EnvOverrides::collect(env, &file)?;
        let error = |key: Option<String>, reason: String| ConfigError {
            file: file.clone(),
            key,
            reason,
        };

        let merged = config::Config::builder()
            .add_source(File::from_str(text, FileFormat::Toml))
            .add_source(env.source(false))
            .add_source(env.source(true))
            .build()
            .map_err(|e| {
                ConfigErrors::new(vec![error(None, e.to_string().trim_end().to_owned())])
            })?;

        // `config` forgets where a value sat once it fails; serde_path_to_error
        // tracks the path itself, so the message can name `radio.uhf.ptt`.
        let raw: RawConfig = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            let key = (key != ".").then_some(key);
            let reason = env.annotate(key.as_deref(), serde_reason(&e.inner().to_string()));
            ConfigErrors::new(vec![error(key, reason)])
        })?;

        validate(raw, &file).map_err(|errors| {
            ConfigErrors::new(
                errors
                    .into_iter()
                    .map(|mut e| {
                        e.reason = env.annotate(e.key.as_deref(), e.reason);
                        e
                    })
                    .collect(),
            )
        })
    }
}

/// `config` appends "for key `a.b`" (and "in the environment") to serde's message;
/// the key is already in front of the message, and the variable is named by
/// [`EnvOverrides::annotate`].
fn serde_reason(message: &str) -> String {
    let message = match message.find(" for key `") {
        Some(at) => &message[..at],
        None => message,
    };
    // The file calls them keys, and so should the message.
    match message.strip_prefix("unknown field ") {
        Some(rest) => format!("unknown key {rest}"),
        None => message.to_owned(),
    }
}

/// The `WALKIE__…` variables, keyed by the config key they override.
struct EnvOverrides {
    /// config key (`floor.max_talk_s`) → (variable name, value)
    vars: BTreeMap<String, (String, String)>,
}

impl EnvOverrides {
    fn collect<K, V>(
        env: impl IntoIterator<Item = (K, V)>,
        file: &Path,
    ) -> Result<Self, ConfigErrors>
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_lowercase();
        let mut vars = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, value) in env {
            // A variable whose name is not Unicode cannot be one of ours.
            let Ok(name) = name.into().into_string() else {
                continue;
            };
            // `config` matches the prefix case-insensitively; so must we.
            let lower = name.to_lowercase();
            let Some(rest) = lower.strip_prefix(&prefix) else {
                continue;
            };
            let key = rest.replace(ENV_SEPARATOR, ".");
            match value.into().into_string() {
                Ok(value) => {
                    vars.insert(key, (name, value));
                }
                Err(_) => errors.push(ConfigError {
                    file: file.to_owned(),
                    key: Some(key),
                    reason: format!("environment variable {name} is not valid UTF-8"),
                }),
            }
        }
        if errors.is_empty() {
            Ok(Self { vars })
        } else {
            Err(ConfigErrors::new(errors))
        }
    }

    fn is_verbatim(key: &str) -> bool {
        let last = key.rsplit('.').next().unwrap_or(key);
        VERBATIM_KEYS.contains(&last)
    }

    /// One source for the verbatim keys and one, with `try_parsing`, for the rest:
    /// numbers and booleans from the environment then reach serde as numbers and
    /// booleans, like the same values written in TOML.
    fn source(&self, parsed: bool) -> Environment {
        let map = self
            .vars
            .iter()
            .filter(|(key, _)| Self::is_verbatim(key) != parsed)
            .map(|(_, (name, value))| (name.clone(), value.clone()))
            .collect();
        Environment::with_prefix(ENV_PREFIX)
            .separator(ENV_SEPARATOR)
            .try_parsing(parsed)
            .source(Some(map))
    }

    /// Blames the environment variable when the bad value came from one, since the
    /// file named in the message does not contain it.
    fn annotate(&self, key: Option<&str>, reason: String) -> String {
        match key.and_then(|k| self.vars.get(k)) {
            Some((name, _)) => format!("{reason} (value from environment variable {name})"),
            None => reason,
        }
    }
}
