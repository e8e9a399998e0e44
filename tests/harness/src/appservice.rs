//! Application-service registrations given to Synapse.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where Synapse finds one application-service registration: a YAML file (for example
/// the bridge's own `walkie-bridge generate-registration` output written to disk) or
/// the YAML text itself (written into the homeserver's temp dir).
///
/// Conversions: paths become [`Registration::File`]; `String`/`&str` become
/// [`Registration::Yaml`] when they contain a line break and [`Registration::File`]
/// otherwise; an [`AppserviceRegistration`] becomes its YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    File(PathBuf),
    Yaml(String),
}

impl Registration {
    /// The YAML text of this registration.
    pub fn yaml(&self) -> std::io::Result<String> {
        match self {
            Registration::File(path) => std::fs::read_to_string(path),
            Registration::Yaml(yaml) => Ok(yaml.clone()),
        }
    }
}

impl From<&Path> for Registration {
    fn from(path: &Path) -> Self {
        Registration::File(path.to_path_buf())
    }
}

impl From<PathBuf> for Registration {
    fn from(path: PathBuf) -> Self {
        Registration::File(path)
    }
}

impl From<&PathBuf> for Registration {
    fn from(path: &PathBuf) -> Self {
        Registration::File(path.clone())
    }
}

impl From<String> for Registration {
    fn from(text: String) -> Self {
        if text.contains('\n') {
            Registration::Yaml(text)
        } else {
            Registration::File(PathBuf::from(text))
        }
    }
}

impl From<&str> for Registration {
    fn from(text: &str) -> Self {
        Registration::from(text.to_string())
    }
}

impl From<&String> for Registration {
    fn from(text: &String) -> Self {
        Registration::from(text.clone())
    }
}

impl From<&AppserviceRegistration> for Registration {
    fn from(registration: &AppserviceRegistration) -> Self {
        Registration::Yaml(registration.to_yaml())
    }
}

impl From<AppserviceRegistration> for Registration {
    fn from(registration: AppserviceRegistration) -> Self {
        Registration::Yaml(registration.to_yaml())
    }
}

/// A registration for tests that do not use the bridge's own generator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppserviceRegistration {
    pub id: String,
    /// Where Synapse pushes transactions; `None` for an appservice that only acts.
    pub url: Option<String>,
    pub as_token: String,
    pub hs_token: String,
    pub sender_localpart: String,
    pub rate_limited: bool,
    /// Ask Synapse to push ephemeral events (typing, receipts) too (MSC2409);
    /// with Synapse's `msc2409_to_device_messages_enabled`, to-device messages.
    pub receive_ephemeral: bool,
    /// MSC3202: device lists, one-time-key counts and fallback key types in
    /// transactions.
    #[serde(rename = "org.matrix.msc3202")]
    pub msc3202: bool,
    /// MSC4190: the appservice manages its users' devices (`PUT /devices/{id}`);
    /// Synapse then refuses appservice logins and `/register` without
    /// `inhibit_login`.
    #[serde(rename = "io.element.msc4190")]
    pub msc4190: bool,
    pub namespaces: Namespaces,
}

/// The namespaces an appservice claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Namespaces {
    pub users: Vec<Namespace>,
    pub aliases: Vec<Namespace>,
    pub rooms: Vec<Namespace>,
}

/// One namespace regex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub exclusive: bool,
    pub regex: String,
}

impl AppserviceRegistration {
    /// A registration claiming the users matching `user_regex` (exclusively), not rate
    /// limited, receiving ephemeral events. An empty `url` means no pushes.
    pub fn for_test(
        id: &str,
        url: &str,
        as_token: &str,
        hs_token: &str,
        sender_localpart: &str,
        user_regex: &str,
    ) -> AppserviceRegistration {
        AppserviceRegistration {
            id: id.to_string(),
            url: (!url.is_empty()).then(|| url.to_string()),
            as_token: as_token.to_string(),
            hs_token: hs_token.to_string(),
            sender_localpart: sender_localpart.to_string(),
            rate_limited: false,
            receive_ephemeral: true,
            msc3202: false,
            msc4190: false,
            namespaces: Namespaces {
                users: vec![Namespace {
                    exclusive: true,
                    regex: user_regex.to_string(),
                }],
                ..Namespaces::default()
            },
        }
    }

    /// Adds an exclusive alias namespace.
    pub fn with_alias_regex(mut self, regex: &str) -> AppserviceRegistration {
        self.namespaces.aliases.push(Namespace {
            exclusive: true,
            regex: regex.to_string(),
        });
        self
    }

    /// Turns on what an encrypting appservice needs: MSC3202 transaction
    /// extensions and MSC4190 device management.
    pub fn with_encryption_extensions(mut self) -> AppserviceRegistration {
        self.msc3202 = true;
        self.msc4190 = true;
        self
    }

    /// The registration file's YAML.
    pub fn to_yaml(&self) -> String {
        // Synapse before MSC2409 was stable read the prefixed key; write both.
        let mut value = serde_json::to_value(self).expect("registration serialises");
        value["de.sorunome.msc2409.push_ephemeral"] = self.receive_ephemeral.into();
        serde_norway::to_string(&value).expect("registration serialises as YAML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trips_the_fields_synapse_reads() {
        let registration = AppserviceRegistration::for_test(
            "walkie",
            "http://127.0.0.1:29333",
            "as-secret",
            "hs-secret",
            "walkie",
            "@walkie_.*:walkie\\.test",
        );
        let yaml = registration.to_yaml();
        let parsed: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(parsed["id"], "walkie");
        assert_eq!(parsed["url"], "http://127.0.0.1:29333");
        assert_eq!(parsed["as_token"], "as-secret");
        assert_eq!(parsed["hs_token"], "hs-secret");
        assert_eq!(parsed["sender_localpart"], "walkie");
        assert_eq!(parsed["rate_limited"], false);
        assert_eq!(
            parsed["namespaces"]["users"][0]["regex"],
            "@walkie_.*:walkie\\.test"
        );
        assert_eq!(parsed["namespaces"]["users"][0]["exclusive"], true);
        assert_eq!(parsed["org.matrix.msc3202"], false);
        assert_eq!(parsed["io.element.msc4190"], false);
        let encrypting: serde_json::Value =
            serde_norway::from_str(&registration.clone().with_encryption_extensions().to_yaml())
                .unwrap();
        assert_eq!(encrypting["org.matrix.msc3202"], true);
        assert_eq!(encrypting["io.element.msc4190"], true);
        assert!(matches!(
            Registration::from(&registration),
            Registration::Yaml(_)
        ));
    }

    #[test]
    fn empty_url_means_no_pushes() {
        let registration = AppserviceRegistration::for_test("a", "", "x", "y", "bot", "@b_.*");
        let parsed: serde_json::Value = serde_norway::from_str(&registration.to_yaml()).unwrap();
        assert!(parsed["url"].is_null());
    }

    #[test]
    fn strings_are_yaml_with_a_line_break_and_paths_without() {
        assert_eq!(
            Registration::from("config/registration.yaml"),
            Registration::File("config/registration.yaml".into())
        );
        assert_eq!(
            Registration::from("id: x\nas_token: y\n"),
            Registration::Yaml("id: x\nas_token: y\n".into())
        );
    }
}
