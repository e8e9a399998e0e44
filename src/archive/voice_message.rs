//! The `m.audio` voice message an archived transmission becomes (DESIGN.md §4).

use std::time::{Duration, SystemTime};

use matrix_sdk_crypto::MediaEncryptionInfo;
use ruma::events::room::message::{
    AudioInfo, AudioMessageEventContent, MessageType, RoomMessageEventContent, UnstableAmplitude,
    UnstableAudioDetailsContentBlock, UnstableVoiceContentBlock,
};
use ruma::events::room::EncryptedFile;
use ruma::{OwnedMxcUri, UInt};
use serde_json::{json, Value};

use super::spool::{utc_compact, MIMETYPE};
use super::OutboxItem;

/// What clients show as the text of a voice message.
const BODY: &str = "Voice message";

/// The facts of one voice message.
#[derive(Clone, Debug)]
pub struct VoiceMessage<'a> {
    pub mxc: &'a OwnedMxcUri,
    /// File name shown in `org.matrix.msc1767.file` and used for the upload.
    pub file_name: &'a str,
    pub duration: Duration,
    pub size: u64,
    /// Values 0..=1024 (larger ones are clamped).
    pub waveform: &'a [u16],
    /// Set when the file at `mxc` is encrypted (a room with encryption): its key,
    /// IV and hashes go into the message in place of a plain `url`.
    pub encryption: Option<&'a MediaEncryptionInfo>,
}

impl<'a> VoiceMessage<'a> {
    /// The voice message of a queued recording, once uploaded to `mxc`.
    pub fn of(item: &'a OutboxItem, mxc: &'a OwnedMxcUri, file_name: &'a str) -> Self {
        Self {
            mxc,
            file_name,
            duration: Duration::from_millis(item.duration_ms),
            size: item.size,
            waveform: &item.waveform,
            encryption: None,
        }
    }

    /// The same message pointing at an encrypted upload.
    pub fn encrypted(mut self, encryption: &'a MediaEncryptionInfo) -> Self {
        self.encryption = Some(encryption);
        self
    }
}

/// `walkie-<channel>-<UTC start>.ogg`, e.g. `walkie-ops-20261124T101530Z.ogg`;
/// characters unsafe in a file name become `_`.
pub fn voice_message_file_name(channel: &str, started_at: SystemTime) -> String {
    let channel: String = channel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("walkie-{channel}-{}.ogg", utc_compact(started_at))
}

/// The content of the `m.room.message` event.
///
/// ruma's `AudioMessageEventContent` (with `unstable-msc3245-v1-compat`)
/// produces `msgtype`, `body`, `url`, `info {mimetype, duration, size}`,
/// `org.matrix.msc1767.audio {duration, waveform}` and
/// `org.matrix.msc3245.voice {}`. Added by hand, because ruma only models them
/// on the extensible-event types behind other features and in their newer
/// shape: `org.matrix.msc1767.text` (a string, as MSC3245's first version and
/// Element's own voice messages have it) and `org.matrix.msc1767.file
/// {url, name, mimetype, size}`.
///
/// `filename` is deliberately left out: when it differs from `body`, the spec
/// makes `body` a caption, and clients would print "Voice message" under it.
pub fn voice_message_content(message: &VoiceMessage<'_>) -> Value {
    let size = UInt::try_from(message.size).unwrap_or(UInt::MAX);
    let mut info = AudioInfo::new();
    info.duration = Some(message.duration);
    info.mimetype = Some(MIMETYPE.to_owned());
    info.size = Some(size);
    let file = message.encryption.map(|encryption| {
        EncryptedFile::new(
            message.mxc.clone(),
            encryption.encryption_info.clone(),
            encryption.hashes.clone(),
        )
    });
    let audio = match &file {
        Some(file) => AudioMessageEventContent::encrypted(BODY.to_owned(), file.clone()),
        None => AudioMessageEventContent::plain(BODY.to_owned(), message.mxc.clone()),
    };
    let mut audio = audio.info(Box::new(info));
    audio.audio = Some(UnstableAudioDetailsContentBlock::new(
        message.duration,
        message
            .waveform
            .iter()
            .map(|&v| UnstableAmplitude::new(v))
            .collect(),
    ));
    audio.voice = Some(UnstableVoiceContentBlock::new());
    let content = RoomMessageEventContent::new(MessageType::Audio(audio));
    let mut value = match serde_json::to_value(&content) {
        Ok(v) => v,
        // Serialising plain strings and integers cannot fail; should ruma ever
        // change that, an event without the voice fields still plays.
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise the voice message content");
            json!({ "msgtype": "m.audio", "body": BODY, "url": message.mxc })
        }
    };
    if let Some(map) = value.as_object_mut() {
        map.insert("org.matrix.msc1767.text".into(), json!(BODY));
        // Element's encrypted voice messages carry the encrypted file here too,
        // under `file` in place of `url`.
        let mut block = json!({
            "name": message.file_name,
            "mimetype": MIMETYPE,
            "size": size,
        });
        match &file {
            Some(file) => block["file"] = serde_json::to_value(file).unwrap_or(Value::Null),
            None => block["url"] = json!(message.mxc),
        }
        map.insert("org.matrix.msc1767.file".into(), block);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn content_has_every_voice_message_field() {
        let mxc = OwnedMxcUri::from("mxc://example.org/abc");
        let waveform: Vec<u16> = (0..100).map(|i| i * 10).chain([2000]).collect();
        let content = voice_message_content(&VoiceMessage {
            mxc: &mxc,
            file_name: "walkie-ops-x.ogg",
            duration: Duration::from_millis(4321),
            size: 12_345,
            waveform: &waveform,
            encryption: None,
        });
        assert_eq!(content["msgtype"], "m.audio");
        assert_eq!(content["body"], "Voice message");
        assert_eq!(content["url"], "mxc://example.org/abc");
        assert_eq!(content["info"]["mimetype"], "audio/ogg");
        assert_eq!(content["info"]["duration"], 4321);
        assert_eq!(content["info"]["size"], 12_345);
        assert_eq!(content["org.matrix.msc1767.audio"]["duration"], 4321);
        let w = content["org.matrix.msc1767.audio"]["waveform"]
            .as_array()
            .unwrap();
        assert_eq!(w.len(), 101);
        assert_eq!(w[100], 1024, "values are clamped to 1024");
        assert_eq!(content["org.matrix.msc3245.voice"], json!({}));
        assert_eq!(content["org.matrix.msc1767.text"], "Voice message");
        assert_eq!(
            content["org.matrix.msc1767.file"],
            json!({"url": "mxc://example.org/abc", "name": "walkie-ops-x.ogg",
                   "mimetype": "audio/ogg", "size": 12_345})
        );
        assert!(content.get("filename").is_none());
    }

    /// The exact bytes of an archived voice message as the outbox sends them
    /// (serde_json of this `Value`, keys sorted). Pinned to what the bridge
    /// produced on ruma 0.17.2, before the move to ruma 0.16 (issue 15): a
    /// serialisation difference of another ruma shows here.
    #[test]
    fn voice_message_json_is_pinned() {
        let mxc = OwnedMxcUri::from("mxc://example.org/abc");
        let waveform: Vec<u16> = vec![0, 1, 512, 1023, 1024, 2000];
        let content = voice_message_content(&VoiceMessage {
            mxc: &mxc,
            file_name: "walkie-ops-20261127T101530Z.ogg",
            duration: Duration::from_millis(4321),
            size: 12_345,
            waveform: &waveform,
            encryption: None,
        });
        assert_eq!(
            serde_json::to_string(&content).unwrap(),
            concat!(
                r#"{"body":"Voice message","info":{"duration":4321,"mimetype":"audio/ogg","size":12345},"#,
                r#""msgtype":"m.audio","#,
                r#""org.matrix.msc1767.audio":{"duration":4321,"waveform":[0,1,512,1023,1024,1024]},"#,
                r#""org.matrix.msc1767.file":{"mimetype":"audio/ogg","#,
                r#""name":"walkie-ops-20261127T101530Z.ogg","size":12345,"url":"mxc://example.org/abc"},"#,
                r#""org.matrix.msc1767.text":"Voice message","org.matrix.msc3245.voice":{},"#,
                r#""url":"mxc://example.org/abc"}"#
            )
        );
    }

    /// In an encrypted room the file is referenced by `file` (key, IV, hashes),
    /// in the content and in MSC1767's file block, and never by a plain `url`.
    #[test]
    fn an_encrypted_upload_is_referenced_by_file_only() {
        use std::io::Read;
        let mxc = OwnedMxcUri::from("mxc://example.org/enc");
        let mut plaintext: &[u8] = b"OggS not really";
        let mut encryptor = matrix_sdk_crypto::AttachmentEncryptor::new(&mut plaintext);
        let mut ciphertext = Vec::new();
        encryptor.read_to_end(&mut ciphertext).unwrap();
        let info = encryptor.finish();
        let waveform = [0u16, 512];
        let content = voice_message_content(
            &VoiceMessage {
                mxc: &mxc,
                file_name: "walkie-ops-x.ogg",
                duration: Duration::from_millis(1000),
                size: 15,
                waveform: &waveform,
                encryption: None,
            }
            .encrypted(&info),
        );
        assert!(content.get("url").is_none(), "{content}");
        let file = &content["file"];
        assert_eq!(file["url"], "mxc://example.org/enc");
        assert_eq!(file["v"], "v2");
        assert_eq!(file["key"]["alg"], "A256CTR");
        assert!(file["iv"].is_string() && file["hashes"]["sha256"].is_string());
        let block = &content["org.matrix.msc1767.file"];
        assert_eq!(&block["file"], file);
        assert!(block.get("url").is_none());
        assert_eq!(content["info"]["mimetype"], "audio/ogg");
        assert_eq!(content["msgtype"], "m.audio");
    }

    #[test]
    fn file_names_are_safe_and_dated() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_774_530);
        assert_eq!(
            voice_message_file_name("ops", t),
            "walkie-ops-20261127T101530Z.ogg"
        );
        assert_eq!(
            voice_message_file_name("../a b/ü", t),
            "walkie-___a_b__-20261127T101530Z.ogg"
        );
    }
}
