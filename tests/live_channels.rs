//! Protocol 2 of the live talk (docs/live-protocol.md): one connection logged on
//! to several channels, against a real Synapse and the daemon in-process, with a
//! test endpoint on each channel. What one channel says never leaks into another,
//! and each logon is checked (and ended) on its own.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
#[path = "live_common/mod.rs"]
mod live_common;

use std::collections::HashMap;
use std::time::Duration;

use bridge_common::{
    encrypted_ops_room, next_floor, setup_with_room, speech_packets, start_daemon, two_channels,
    TwoChannels, WAIT,
};
use bytes::Bytes;
use live_common::{Incoming, LiveClient};
use serde_json::{json, Value};
use walkie_bridge::store::Store;
use walkie_endpoint::audio::OpusDecoder;
use walkie_endpoint::{
    AudioFrame, Downlink, FloorEvent, HubLink, Priority, StreamKey, TalkKind, Talker,
};

/// A client logged on to both channels with one token; the answers and the
/// channels' first events checked.
async fn client(bridge: &TwoChannels) -> LiveClient {
    let token = bridge
        .setup
        .synapse
        .client(&bridge.bob)
        .openid_token()
        .await
        .expect("OpenID token");
    let mut client = LiveClient::connect(bridge.setup.listen).await;
    for channel in ["ops", "net"] {
        let answer = client
            .logon_to(channel, &bridge.bob, &token.access_token, true)
            .await;
        assert_eq!(answer["success"], true, "logon to {channel}: {answer}");
        assert_eq!(answer["channel"], channel, "{answer}");
        let idle = client
            .until(&format!("{channel} idle"), |v| {
                v["command"] == "on_floor" && v["channel"] == channel
            })
            .await;
        assert_eq!(idle["state"], "idle", "{idle}");
    }
    client
}

/// A transmission from a test endpoint at `pace` per frame, ended at the hub.
async fn transmit(link: &mut HubLink, talker: &str, packets: &[Bytes], pace: Duration) {
    let stream = StreamKey(1);
    link.talk_start(
        stream,
        Talker::new(talker, format!("{talker} (Radio)")),
        Priority::Normal,
        TalkKind::Live,
    )
    .await
    .expect("hub");
    loop {
        match next_floor(link).await {
            FloorEvent::Granted { .. } => break,
            FloorEvent::Denied { reason, .. } => panic!("{talker} denied: {reason}"),
            _ => {}
        }
    }
    let mut tick = tokio::time::interval(pace);
    for (seq, packet) in packets.iter().enumerate() {
        tick.tick().await;
        link.audio(stream, AudioFrame::opus(seq as u32, packet.clone()))
            .expect("hub");
    }
    link.talk_end(stream).await.expect("hub");
    loop {
        if let FloorEvent::Released { .. } = next_floor(link).await {
            return;
        }
    }
}

fn decode(packets: &[Bytes]) -> Vec<i16> {
    let mut decoder = OpusDecoder::new().expect("decoder");
    packets
        .iter()
        .flat_map(|p| decoder.decode(p).expect("valid Opus"))
        .collect()
}

/// Until both channels' streams stopped: each channel's frames (in order) and
/// its `on_stream_start`.
async fn hear_both(client: &mut LiveClient) -> HashMap<String, (Value, Vec<Bytes>)> {
    let mut streams: HashMap<u32, String> = HashMap::new();
    let mut heard: HashMap<String, (Value, Vec<Bytes>)> = HashMap::new();
    let mut stopped = 0;
    while stopped < 2 {
        match client.next().await {
            Incoming::Json(v) if v["command"] == "on_stream_start" => {
                let channel = v["channel"].as_str().expect("channel").to_owned();
                let id = v["stream_id"].as_u64().expect("stream_id") as u32;
                assert!(
                    streams.insert(id, channel.clone()).is_none(),
                    "stream id {id} used twice on one connection"
                );
                heard.insert(channel, (v, Vec::new()));
            }
            Incoming::Json(v) if v["command"] == "on_stream_stop" => {
                let id = v["stream_id"].as_u64().expect("stream_id") as u32;
                assert_eq!(
                    v["channel"].as_str(),
                    streams.get(&id).map(String::as_str),
                    "{v}"
                );
                stopped += 1;
            }
            Incoming::Json(v) => {
                assert!(
                    v["channel"].is_string(),
                    "an event without its channel: {v}"
                );
            }
            Incoming::Audio(id, packet, opus) => {
                let channel = streams.get(&id).expect("audio of an announced stream");
                let frames = &mut heard.get_mut(channel).expect("started").1;
                assert_eq!(packet as usize, frames.len(), "{channel}: packets in order");
                frames.push(opus);
            }
            Incoming::Closed => panic!("the bridge closed the connection"),
        }
    }
    heard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_hears_two_channels_at_once_and_talks_on_the_one_it_names() {
    let mut bridge = two_channels().await;
    let mut client = client(&bridge).await;
    let (speech, packets) = speech_packets();

    // Both channels talk at the same moment: both arrive whole, apart.
    let (ops, net) = (&mut bridge.ops, &mut bridge.net);
    let ((), (), heard) = tokio::join!(
        transmit(ops, "kilo", &packets, Duration::from_millis(5)),
        transmit(net, "lima", &packets, Duration::from_millis(5)),
        hear_both(&mut client),
    );
    for (channel, talker) in [("ops", "kilo"), ("net", "lima")] {
        let (start, frames) = &heard[channel];
        assert_eq!(start["from"], talker, "{start}");
        assert_eq!(start["source"], format!("test.{channel}"), "{start}");
        assert_eq!(frames.len(), packets.len(), "{channel}: every frame");
        // Passed through untouched: the only lag is the codec's (6.5 ms).
        let (_, correlation) = common::best_lag(&speech, &decode(frames), -480..=480);
        assert!(
            correlation > 0.85,
            "{channel}: correlation {correlation:.3}"
        );
    }

    // Several channels: a press must say which.
    let seq = client.next_seq();
    client
        .send_json(&json!({"command": "start_stream", "seq": seq}))
        .await;
    let answer = client.answer(seq).await;
    assert_eq!(answer["error"], "bad_message", "{answer}");
    let answer = client.start_stream_on("elsewhere").await;
    assert_eq!(answer["error"], "not_logged_on", "{answer}");

    // A talk on #net reaches test.net only.
    let answer = client.start_stream_on("net").await;
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["channel"], "net");
    let stream = answer["stream_id"].as_u64().unwrap() as u32;
    let granted = client.until_floor("granted").await;
    assert_eq!(granted["channel"], "net", "{granted}");
    assert_eq!(granted["stream_id"], stream);
    let receive = async {
        loop {
            match next_floor(&mut bridge.net).await {
                FloorEvent::Taken { source, talker, .. } => {
                    assert_eq!(source.as_str(), "live.net");
                    assert_eq!(
                        talker.matrix_user_id.as_deref(),
                        Some(bridge.bob.user_id.as_str())
                    );
                    break;
                }
                // The end of its own talk above.
                FloorEvent::Idle => {}
                other => panic!("test.net expected the live talk, got {other:?}"),
            }
        }
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, bridge.net.recv()).await {
                Ok(Ok(Downlink::Audio(frame))) => frames.push(frame.frame.opus),
                Ok(Ok(Downlink::Floor(FloorEvent::Released { .. }))) => return frames,
                Ok(Ok(Downlink::Floor(_))) => {}
                other => panic!("the live talk broke off: {other:?}"),
            }
        }
    };
    let stop = async {
        client
            .send_packets(stream, &packets, Duration::from_millis(2))
            .await;
        let stopped = client.stop_stream(stream).await;
        assert_eq!(stopped["success"], true, "{stopped}");
        assert_eq!(stopped["channel"], "net");
    };
    let ((), frames) = tokio::join!(stop, receive);
    assert_eq!(frames.len(), packets.len(), "test.net heard every frame");
    // test.ops heard nothing of it: the next thing it sees is a live talk on
    // #ops, started now.
    let answer = client.start_stream_on("ops").await;
    let stream = answer["stream_id"].as_u64().unwrap() as u32;
    loop {
        match next_floor(&mut bridge.ops).await {
            FloorEvent::Taken { source, .. } => {
                assert_eq!(source.as_str(), "live.ops");
                break;
            }
            FloorEvent::Idle => {}
            other => panic!("test.ops got {other:?} before its own channel's talk"),
        }
    }
    client.stop_stream(stream).await;

    client.close().await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_logon_is_checked_and_ends_on_its_own() {
    let mut bridge = two_channels().await;
    let mut client = client(&bridge).await;
    let (_, packets) = speech_packets();

    // Logoff: #net's talk no longer reaches the client, #ops's does.
    let seq = client.next_seq();
    client
        .send_json(&json!({"command": "logoff", "seq": seq, "channel": "net"}))
        .await;
    let answer = client.answer(seq).await;
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["channel"], "net");
    transmit(&mut bridge.net, "lima", &packets, Duration::from_millis(2)).await;
    transmit(&mut bridge.ops, "kilo", &packets, Duration::from_millis(2)).await;
    until_ops_talk_ends(&mut client, "after the logoff").await;

    // One connection carries one user: carol's logon is not for it, even with
    // a good token (she has her own connection for that).
    let carol = bridge.setup.member("carol").await;
    let carol_token = bridge
        .setup
        .synapse
        .client(&carol)
        .openid_token()
        .await
        .unwrap();
    let answer = client
        .logon_to("net", &carol, &carol_token.access_token, true)
        .await;
    assert_eq!(answer["error"], "bad_request", "{answer}");
    // Each logon is checked on its own: carol is in #ops, not in #net.
    let mut other = LiveClient::connect(bridge.setup.listen).await;
    let answer = other
        .logon_to("ops", &carol, &carol_token.access_token, true)
        .await;
    assert_eq!(answer["success"], true, "{answer}");
    let answer = other
        .logon_to("net", &carol, &carol_token.access_token, true)
        .await;
    assert_eq!(answer["error"], "not_member", "{answer}");
    other.close().await;

    // Bob logs on to #net again, then leaves the room: that logon ends (said
    // on that channel), the connection stays on #ops.
    let token = bridge
        .setup
        .synapse
        .client(&bridge.bob)
        .openid_token()
        .await
        .unwrap();
    let answer = client
        .logon_to("net", &bridge.bob, &token.access_token, true)
        .await;
    assert_eq!(answer["success"], true, "{answer}");
    bridge
        .setup
        .synapse
        .client(&bridge.bob)
        .leave(&bridge.net_room)
        .await
        .expect("bob leaves #net");
    let error = client
        .until("the end of the #net logon", |v| v["command"] == "on_error")
        .await;
    assert_eq!(error["channel"], "net", "{error}");
    assert_eq!(error["error"], "not_member", "{error}");
    let offline = client
        .until("#net offline", |v| v["command"] == "on_channel_status")
        .await;
    assert_eq!(offline["channel"], "net", "{offline}");
    assert_eq!(offline["status"], "offline", "{offline}");
    transmit(&mut bridge.ops, "kilo", &packets, Duration::from_millis(2)).await;
    until_ops_talk_ends(&mut client, "after leaving #net").await;

    // Leaving the last channel's room ends the connection, as with protocol 1.
    bridge
        .setup
        .synapse
        .client(&bridge.bob)
        .leave(&bridge.setup.room_id)
        .await
        .expect("bob leaves #ops");
    let mut saw_error = false;
    loop {
        match client.next().await {
            Incoming::Json(v) if v["command"] == "on_error" => {
                assert_eq!(v["channel"], "ops", "{v}");
                assert_eq!(v["error"], "not_member", "{v}");
                saw_error = true;
            }
            Incoming::Json(_) | Incoming::Audio(..) => {}
            Incoming::Closed => break,
        }
    }
    assert!(saw_error, "closed without saying why");
    bridge.stop().await;
}

/// Reads until #ops's stream stops; nothing of #net may come meanwhile.
async fn until_ops_talk_ends(client: &mut LiveClient, when: &str) {
    loop {
        match client.next().await {
            Incoming::Json(v) => {
                assert_ne!(v["channel"], "net", "{when}: {v}");
                if v["command"] == "on_stream_stop" {
                    assert_eq!(v["channel"], "ops", "{v}");
                    return;
                }
            }
            Incoming::Audio(..) => {}
            Incoming::Closed => panic!("{when}: the bridge closed the connection"),
        }
    }
}

/// `get_history` on `channel`: the answer.
async fn get_history(client: &mut LiveClient, channel: &str) -> Value {
    let seq = client.next_seq();
    client
        .send_json(&json!({"command": "get_history", "seq": seq, "channel": channel}))
        .await;
    client.answer(seq).await
}

/// The history of `channel` once it lists something. The outbox marks a row
/// posted right after the homeserver answers the send, and nothing tells a live
/// client when (the room's event can be seen before the row is marked): so the
/// test asks again, every 100 ms, within WAIT.
async fn history_once_archived(client: &mut LiveClient, channel: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = get_history(client, channel).await;
        assert_eq!(answer["success"], true, "{answer}");
        assert_eq!(answer["channel"], channel);
        let listed = answer["transmissions"].as_array().expect("a list").clone();
        if !listed.is_empty() {
            return listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the talk never reached the history"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `play_recording`: its answer, `on_stream_start`, the frames and the stop.
async fn replay(
    client: &mut LiveClient,
    channel: &str,
    tx_id: &str,
) -> (Value, Value, Vec<Bytes>, Value) {
    let seq = client.next_seq();
    client
        .send_json(
            &json!({"command": "play_recording", "seq": seq, "channel": channel, "tx_id": tx_id}),
        )
        .await;
    let answer = client.answer(seq).await;
    assert_eq!(answer["success"], true, "{answer}");
    let stream = answer["stream_id"].as_u64().unwrap() as u32;
    let start = client
        .until("the replay's start", |v| v["command"] == "on_stream_start")
        .await;
    assert_eq!(start["stream_id"], stream);
    let mut frames = Vec::new();
    let stop = loop {
        match client.next().await {
            Incoming::Audio(id, packet, opus) => {
                assert_eq!(id, stream);
                assert_eq!(packet as usize, frames.len(), "packets in order");
                frames.push(opus);
            }
            Incoming::Json(v) if v["command"] == "on_stream_stop" => break v,
            Incoming::Json(_) => {}
            Incoming::Closed => panic!("closed during the replay"),
        }
    };
    (answer, start, frames, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_lists_archived_talks_and_replays_them() {
    let mut bridge = two_channels().await;
    let mut client = client(&bridge).await;
    let (speech, packets) = speech_packets();
    let spoken_ms = speech.len() as u64 * 1000 / 48_000;
    transmit(&mut bridge.ops, "kilo", &packets, Duration::from_millis(2)).await;

    let listed = history_once_archived(&mut client, "ops").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let entry = &listed[0];
    assert_eq!(entry["talker"], "kilo (Radio)", "{entry}");
    let duration = entry["duration_ms"].as_u64().expect("duration_ms");
    assert!(
        duration.abs_diff(spoken_ms) <= 60,
        "{duration} ms listed, {spoken_ms} ms spoken"
    );
    assert!(entry["started_ms"].as_u64().unwrap() > 0);
    let tx_id = entry["tx_id"].as_str().expect("tx_id").to_owned();
    let net = get_history(&mut client, "net").await;
    assert_eq!(net["transmissions"], json!([]), "{net}");

    // The replay: the archived recording, fetched back from the homeserver.
    let (answer, start, frames, stop) = replay(&mut client, "ops", &tx_id).await;
    assert_eq!(answer["duration_ms"], duration);
    assert_eq!(start["replay"], true, "{start}");
    assert_eq!(start["channel"], "ops");
    assert_eq!(start["from"], "kilo (Radio)");
    assert_eq!(start["tx_id"], tx_id.as_str());
    assert_eq!(stop["reason"], "replay done", "{stop}");
    assert_eq!(frames.len(), packets.len(), "the whole recording");
    let (_, correlation) = common::best_lag(&speech, &decode(&frames), -480..=480);
    assert!(
        correlation > 0.85,
        "the replay: correlation {correlation:.3}"
    );

    // Only what this channel archived, only while logged on to it.
    let seq = client.next_seq();
    client
        .send_json(
            &json!({"command": "play_recording", "seq": seq, "channel": "net", "tx_id": tx_id}),
        )
        .await;
    let answer = client.answer(seq).await;
    assert_eq!(answer["error"], "unknown_recording", "{answer}");
    let seq = client.next_seq();
    client
        .send_json(&json!({"command": "logoff", "seq": seq, "channel": "ops"}))
        .await;
    client.answer(seq).await;
    let answer = get_history(&mut client, "ops").await;
    assert_eq!(answer["error"], "not_logged_on", "{answer}");
    client.close().await;
    bridge.stop().await;
}

/// In an encrypted room the recording was uploaded encrypted; the bridge, which
/// kept the key, gives a logged-on member the audio (end to bridge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_rooms_recording_is_replayed_decrypted() {
    let setup = setup_with_room(encrypted_ops_room()).await;
    let bob = setup.member("bob").await;
    let mut running = start_daemon(&setup.config).await;
    let mut client = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    let (speech, packets) = speech_packets();
    bridge_common::transmit(&mut running.link, "kilo", &packets).await;

    let listed = history_once_archived(&mut client, "ops").await;
    let tx_id = listed[0]["tx_id"].as_str().expect("tx_id").to_owned();
    let store = Store::connect(&setup.config.database.url)
        .await
        .expect("the bridge's database");
    let rows = store.archived("ops", 1).await.expect("archive");
    assert!(
        rows[0].mxc_encryption.is_some(),
        "the recording was uploaded in the clear"
    );
    let (_, start, frames, _) = replay(&mut client, "ops", &tx_id).await;
    assert_eq!(start["replay"], true, "{start}");
    assert_eq!(frames.len(), packets.len(), "the whole recording");
    let (_, correlation) = common::best_lag(&speech, &decode(&frames), -480..=480);
    assert!(
        correlation > 0.85,
        "the replay: correlation {correlation:.3}"
    );
    client.close().await;
    running.stop().await;
}
