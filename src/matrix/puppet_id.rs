//! Puppet user IDs: `@<prefix><system>_<name>:<domain>` for an external talker.
//!
//! Talker names come from other systems (Mumble allows almost anything) while a
//! Matrix localpart allows only `a-z 0-9 . _ = - /`. The escaping is the one
//! mautrix bridges use, so two names never map to one puppet and the original can
//! be read back: `_` doubles, an upper-case letter becomes `_` + its lower case,
//! anything else becomes `=` + the hex of each UTF-8 byte.

use ruma::OwnedUserId;

use super::ids::parse_user_id;

/// The localpart of the puppet for `name` on an endpoint of kind `system`.
pub fn puppet_localpart(prefix: &str, system: &str, name: &str) -> String {
    let mut localpart = format!("{prefix}{}_", escape(system));
    localpart.push_str(&escape(name));
    localpart
}

/// The full user ID, or `None` when the result would be no valid Matrix ID (a
/// name so long the ID passes 255 bytes). Never truncated: two long names with
/// one prefix would become one puppet.
pub fn puppet_user_id(prefix: &str, system: &str, name: &str, domain: &str) -> Option<OwnedUserId> {
    let id = format!("@{}:{domain}", puppet_localpart(prefix, system, name));
    // The length is checked by `ids`, not ruma: see there.
    parse_user_id(&id).ok()
}

fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '/' => out.push(c),
            '_' => out.push_str("__"),
            'A'..='Z' => {
                out.push('_');
                out.push(c.to_ascii_lowercase());
            }
            _ => {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("={byte:02x}"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::UserId;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(
            puppet_localpart("walkie_", "mumble", "alice"),
            "walkie_mumble_alice"
        );
        let id = puppet_user_id("walkie_", "mumble", "alice", "example.org");
        assert_eq!(
            id.as_deref().map(UserId::as_str),
            Some("@walkie_mumble_alice:example.org")
        );
    }

    #[test]
    fn every_name_maps_to_a_valid_and_distinct_localpart() {
        let names = [
            "Alice", "alice", "_alice", "a_lice", "al ice", "Jürgen", "radio#1", "a=b", "=3d",
            "👋", "",
        ];
        let mut seen = std::collections::HashSet::new();
        for name in names {
            let id = puppet_user_id("walkie_", "mumble", name, "example.org")
                .unwrap_or_else(|| panic!("{name:?} gives no valid user ID"));
            let localpart = id.localpart();
            assert!(
                localpart
                    .chars()
                    .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/')),
                "{name:?} → {localpart}"
            );
            assert!(seen.insert(localpart.to_owned()), "{name:?} collides");
        }
    }

    #[test]
    fn absurdly_long_names_are_refused_not_truncated() {
        let name = "x".repeat(300);
        assert!(puppet_user_id("walkie_", "mumble", &name, "example.org").is_none());
    }

    #[test]
    fn the_limit_is_255_bytes_of_the_whole_id() {
        // "@walkie_mumble_" + name + ":example.org" = 15 + n + 12 bytes.
        let fits = "x".repeat(255 - 27);
        let id = puppet_user_id("walkie_", "mumble", &fits, "example.org").expect("255 bytes fit");
        assert_eq!(id.as_str().len(), 255);
        let one_more = "x".repeat(255 - 26);
        assert!(puppet_user_id("walkie_", "mumble", &one_more, "example.org").is_none());
    }
}
