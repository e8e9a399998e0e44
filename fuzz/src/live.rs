//! The live-talk WebSocket protocol: JSON text commands and binary audio frames.

use bytes::Bytes;
use walkie_bridge::live::protocol::{encode_frame, parse_command, parse_frame, MAX_OPUS};

/// Target `live_message`: one WebSocket message from a browser, taken both as
/// a text message (when it is UTF-8, as the WebSocket layer guarantees for
/// text) and as a binary frame.
pub fn live_message(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        match parse_command(text) {
            Ok(command) => {
                let _ = command.seq();
                if let walkie_bridge::live::protocol::Command::StartStream(s) = &command {
                    let _ = s.unsupported();
                }
            }
            Err(bad) => assert!(!bad.message.is_empty()),
        }
    }
    let frame = Bytes::copy_from_slice(data);
    if let Ok(packet) = parse_frame(&frame) {
        assert!(!packet.opus.is_empty() && packet.opus.len() <= MAX_OPUS);
        assert_eq!(
            encode_frame(packet.stream_id, packet.packet_id, &packet.opus),
            frame
        );
    }
}
