//! What the server told us about channels and users, kept by the connection
//! task. Pure: no I/O, so its rules are tested directly.

use std::collections::HashMap;
use std::fmt;

use crate::error::MumbleError;
use crate::proto;

/// A user's session number on the server; changes on every reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Session(pub u32);

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

impl ChannelId {
    pub const ROOT: ChannelId = ChannelId(0);
}

impl Default for ChannelId {
    fn default() -> Self {
        ChannelId::ROOT
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub session: Session,
    pub name: String,
    pub channel: ChannelId,
    /// SHA-1 of the user's certificate (hex), when the server told us.
    pub cert_hash: Option<String>,
    /// The server's id of a registered user; `None` for a guest, whose name is
    /// whatever their client sent.
    pub user_id: Option<u32>,
    /// The user's comment; long comments arrive only as a hash and stay `None`.
    pub comment: Option<String>,
    /// Muted by the server because they may not speak in their channel (no
    /// Speak permission there): nobody hears them.
    pub suppressed: bool,
    /// Muted by an administrator: nobody hears them.
    pub server_muted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: ChannelId,
    pub parent: Option<ChannelId>,
    pub name: String,
}

/// What one UserState/UserRemove changed, seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    Joined(User),
    Moved { user: User, from: ChannelId },
    Left(User),
}

#[derive(Debug, Default)]
pub struct ServerState {
    users: HashMap<Session, User>,
    channels: HashMap<ChannelId, Channel>,
}

impl ServerState {
    pub fn user(&self, session: Session) -> Option<&User> {
        self.users.get(&session)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn channel(&self, id: ChannelId) -> Option<&Channel> {
        self.channels.get(&id)
    }

    pub fn apply_channel_state(&mut self, m: &proto::ChannelState) {
        let Some(id) = m.channel_id.map(ChannelId) else {
            return;
        };
        let entry = self.channels.entry(id).or_insert_with(|| Channel {
            id,
            parent: None,
            name: String::new(),
        });
        // The root has no parent; a loop through a bogus parent is kept out.
        if let Some(parent) = m.parent.map(ChannelId) {
            if parent != id {
                entry.parent = Some(parent);
            }
        }
        if let Some(name) = &m.name {
            entry.name.clone_from(name);
        }
    }

    pub fn apply_channel_remove(&mut self, m: &proto::ChannelRemove) {
        self.channels.remove(&ChannelId(m.channel_id));
    }

    /// Applies a UserState. The server sends partial updates; only the fields
    /// present change.
    pub fn apply_user_state(&mut self, m: &proto::UserState) -> Option<UserChange> {
        let session = Session(m.session?);
        match self.users.get_mut(&session) {
            None => {
                let user = User {
                    session,
                    name: m.name.clone().unwrap_or_default(),
                    channel: m.channel_id.map_or(ChannelId::ROOT, ChannelId),
                    cert_hash: m.hash.clone(),
                    user_id: m.user_id,
                    comment: m.comment.clone(),
                    suppressed: m.suppress.unwrap_or(false),
                    server_muted: m.mute.unwrap_or(false),
                };
                self.users.insert(session, user.clone());
                Some(UserChange::Joined(user))
            }
            Some(user) => {
                if let Some(name) = &m.name {
                    user.name.clone_from(name);
                }
                if let Some(hash) = &m.hash {
                    user.cert_hash = Some(hash.clone());
                }
                // A guest who registers while connected gets their id here.
                if let Some(id) = m.user_id {
                    user.user_id = Some(id);
                }
                if let Some(comment) = &m.comment {
                    user.comment = Some(comment.clone());
                }
                if let Some(suppress) = m.suppress {
                    user.suppressed = suppress;
                }
                if let Some(mute) = m.mute {
                    user.server_muted = mute;
                }
                match m.channel_id.map(ChannelId) {
                    Some(to) if to != user.channel => {
                        let from = std::mem::replace(&mut user.channel, to);
                        Some(UserChange::Moved {
                            user: user.clone(),
                            from,
                        })
                    }
                    _ => None,
                }
            }
        }
    }

    pub fn apply_user_remove(&mut self, m: &proto::UserRemove) -> Option<UserChange> {
        self.users.remove(&Session(m.session)).map(UserChange::Left)
    }

    /// "Root/Ops/Sub", built from the parents. Unknown channels and parent
    /// loops are shown as `?`.
    pub fn channel_path(&self, id: ChannelId) -> String {
        let mut parts = Vec::new();
        let mut cur = Some(id);
        while let Some(c) = cur {
            let Some(ch) = self.channels.get(&c) else {
                parts.push("?".to_owned());
                break;
            };
            parts.push(ch.name.clone());
            if parts.len() > self.channels.len() {
                break;
            }
            cur = ch.parent;
        }
        parts.reverse();
        parts.join("/")
    }

    fn children<'a>(&'a self, parent: ChannelId) -> impl Iterator<Item = &'a Channel> + 'a {
        self.channels
            .values()
            .filter(move |c| c.parent == Some(parent) && c.id != parent)
    }

    fn walk(&self, from: ChannelId, parts: &[&str]) -> Option<ChannelId> {
        let mut cur = from;
        for part in parts {
            cur = self.children(cur).find(|c| c.name == *part)?.id;
        }
        Some(cur)
    }

    /// Finds a channel by path or name: "Root/Ops", "Ops/Sub" (below the
    /// root), "Root", or a bare name that exists once anywhere in the tree.
    pub fn resolve_channel(&self, spec: &str) -> Result<ChannelId, MumbleError> {
        let parts: Vec<&str> = spec
            .split('/')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let root = self.channels.get(&ChannelId::ROOT);
        if parts.is_empty() {
            return Ok(ChannelId::ROOT);
        }
        if let Some(root) = root {
            if parts[0] == root.name {
                if let Some(id) = self.walk(ChannelId::ROOT, &parts[1..]) {
                    return Ok(id);
                }
            }
        }
        if let Some(id) = self.walk(ChannelId::ROOT, &parts) {
            return Ok(id);
        }
        if let [name] = parts.as_slice() {
            let mut found: Vec<ChannelId> = self
                .channels
                .values()
                .filter(|c| c.name == *name)
                .map(|c| c.id)
                .collect();
            found.sort();
            match found.as_slice() {
                [one] => return Ok(*one),
                [] => {}
                many => {
                    return Err(MumbleError::AmbiguousChannel {
                        wanted: spec.to_owned(),
                        candidates: many
                            .iter()
                            .map(|&c| self.channel_path(c))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            }
        }
        let mut known: Vec<String> = self
            .channels
            .keys()
            .map(|&c| self.channel_path(c))
            .collect();
        known.sort();
        Err(MumbleError::NoSuchChannel {
            wanted: spec.to_owned(),
            known: known.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(id: u32, parent: Option<u32>, name: &str) -> proto::ChannelState {
        proto::ChannelState {
            channel_id: Some(id),
            parent,
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn tree() -> ServerState {
        let mut s = ServerState::default();
        for m in [
            ch(0, None, "Root"),
            ch(1, Some(0), "Ops"),
            ch(2, Some(1), "Sub"),
            ch(3, Some(0), "Lobby"),
            ch(4, Some(3), "Sub"),
            ch(5, Some(3), "Quiet"),
        ] {
            s.apply_channel_state(&m);
        }
        s
    }

    #[test]
    fn resolves_paths_and_names() {
        let s = tree();
        assert_eq!(s.resolve_channel("Root").ok(), Some(ChannelId(0)));
        assert_eq!(s.resolve_channel("").ok(), Some(ChannelId(0)));
        assert_eq!(s.resolve_channel("Ops").ok(), Some(ChannelId(1)));
        assert_eq!(s.resolve_channel("Root/Ops").ok(), Some(ChannelId(1)));
        assert_eq!(s.resolve_channel("Ops/Sub").ok(), Some(ChannelId(2)));
        assert_eq!(s.resolve_channel("/Lobby/Sub/").ok(), Some(ChannelId(4)));
        assert_eq!(s.resolve_channel("Quiet").ok(), Some(ChannelId(5)));
        assert_eq!(s.channel_path(ChannelId(4)), "Root/Lobby/Sub");
    }

    #[test]
    fn unknown_and_ambiguous_channels_are_explained() {
        let s = tree();
        let e = s.resolve_channel("Nope").unwrap_err().to_string();
        assert!(e.contains("\"Nope\"") && e.contains("Root/Ops/Sub"), "{e}");
        let e = s.resolve_channel("Sub").unwrap_err().to_string();
        assert!(
            e.contains("Root/Ops/Sub") && e.contains("Root/Lobby/Sub"),
            "{e}"
        );
        assert!(s.resolve_channel("Ops/Quiet").is_err());
    }

    #[test]
    fn user_changes() {
        let mut s = tree();
        let join = proto::UserState {
            session: Some(7),
            name: Some("alice".into()),
            channel_id: Some(1),
            ..Default::default()
        };
        assert!(
            matches!(s.apply_user_state(&join), Some(UserChange::Joined(u)) if u.name == "alice")
        );
        // A partial update without a channel change is not an event.
        let mute = proto::UserState {
            session: Some(7),
            self_mute: Some(true),
            ..Default::default()
        };
        assert_eq!(s.apply_user_state(&mute), None);
        let mv = proto::UserState {
            session: Some(7),
            channel_id: Some(3),
            ..Default::default()
        };
        assert!(matches!(
            s.apply_user_state(&mv),
            Some(UserChange::Moved { user, from: ChannelId(1) }) if user.channel == ChannelId(3)
        ));
        let rm = proto::UserRemove {
            session: 7,
            ..Default::default()
        };
        assert!(
            matches!(s.apply_user_remove(&rm), Some(UserChange::Left(u)) if u.session == Session(7))
        );
        assert_eq!(s.apply_user_remove(&rm), None);
        // A UserState without a session says nothing about a user.
        assert_eq!(s.apply_user_state(&proto::UserState::default()), None);
    }

    #[test]
    fn parent_loops_do_not_hang() {
        let mut s = ServerState::default();
        s.apply_channel_state(&ch(1, Some(2), "a"));
        s.apply_channel_state(&ch(2, Some(1), "b"));
        let _ = s.channel_path(ChannelId(1));
        assert!(s.resolve_channel("x").is_err());
    }
}
