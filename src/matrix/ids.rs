//! Matrix identifiers from outside the bridge, with the spec's length limit
//! checked here rather than left to ruma.
//!
//! The spec caps user IDs, room IDs, room aliases and event IDs at 255 bytes.
//! ruma checks that only without its `compat-arbitrary-length-ids` feature, and
//! matrix-sdk-crypto turns that feature on for every crate sharing the one ruma in
//! the build (docs/encryption.md). The bridge keys its store, puppet namespace,
//! opt-ins and caches by these IDs, so an over-long one must stay refused however
//! ruma is built.

use ruma::{
    EventId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId,
};

/// The spec's limit on every identifier, in bytes (Appendices, "Identifier
/// grammar"; the same value ruma uses when its limit is on).
pub const ID_MAX_BYTES: usize = 255;

/// Why a string is no acceptable identifier.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("{len} bytes, more than the {ID_MAX_BYTES} a Matrix identifier may have")]
    TooLong { len: usize },
    #[error(transparent)]
    Invalid(#[from] ruma::IdParseError),
}

/// Refuses an identifier longer than the spec allows.
pub fn check_len(id: &str) -> Result<(), IdError> {
    if id.len() > ID_MAX_BYTES {
        return Err(IdError::TooLong { len: id.len() });
    }
    Ok(())
}

pub fn parse_user_id(id: &str) -> Result<OwnedUserId, IdError> {
    check_len(id)?;
    Ok(UserId::parse(id)?)
}

pub fn parse_room_id(id: &str) -> Result<OwnedRoomId, IdError> {
    check_len(id)?;
    Ok(RoomId::parse(id)?)
}

pub fn parse_room_alias(alias: &str) -> Result<OwnedRoomAliasId, IdError> {
    check_len(alias)?;
    Ok(RoomAliasId::parse(alias)?)
}

pub fn parse_event_id(id: &str) -> Result<OwnedEventId, IdError> {
    check_len(id)?;
    Ok(EventId::parse(id)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(sigil: char, len: usize) -> String {
        let suffix = ":example.org";
        format!("{sigil}{}{suffix}", "a".repeat(len - 1 - suffix.len()))
    }

    #[test]
    fn ids_of_255_bytes_pass_and_of_256_are_refused() {
        // Whatever features ruma was built with: the check is the bridge's own.
        type Parse = fn(&str) -> Result<(), IdError>;
        let parsers: [(char, Parse); 4] = [
            ('@', |s| parse_user_id(s).map(drop)),
            ('!', |s| parse_room_id(s).map(drop)),
            ('#', |s| parse_room_alias(s).map(drop)),
            ('$', |s| parse_event_id(s).map(drop)),
        ];
        for (sigil, parse) in parsers {
            let ok = padded(sigil, ID_MAX_BYTES);
            assert_eq!(ok.len(), ID_MAX_BYTES);
            assert!(parse(&ok).is_ok(), "{sigil}: 255 bytes must be accepted");
            let long = padded(sigil, ID_MAX_BYTES + 1);
            let refused = parse(&long);
            assert!(
                matches!(refused, Err(IdError::TooLong { len: 256 })),
                "{sigil}: 256 bytes must be refused, got {refused:?}"
            );
        }
    }

    #[test]
    fn malformed_ids_are_still_refused_by_ruma() {
        assert!(matches!(parse_user_id("alice"), Err(IdError::Invalid(_))));
        assert!(matches!(parse_room_id("abc"), Err(IdError::Invalid(_))));
    }
}
