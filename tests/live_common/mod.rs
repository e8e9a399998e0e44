//! A live-talk client for tests and the bench: the wire protocol of
//! docs/live-protocol.md over a real WebSocket to the daemon's listener.
//! Included with `#[path]` after `bridge_common`.

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use walkie_harness::{Synapse, TestUser};

use super::bridge_common::WAIT;

/// One message from the bridge.
#[derive(Debug, Clone)]
pub enum Incoming {
    Json(Value),
    /// stream id, packet id, Opus.
    Audio(u32, u32, Bytes),
    Closed,
}

pub struct LiveClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    seq: u64,
}

impl LiveClient {
    pub async fn connect(listen: u16) -> Self {
        let url = format!("ws://127.0.0.1:{listen}/live/ws");
        let (ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
            .await
            .unwrap_or_else(|e| panic!("WebSocket to {url}: {e}"));
        Self { ws, seq: 0 }
    }

    /// Connects from `source` (any 127.0.0.0/8 address reaches the bridge on
    /// loopback): the bridge's limits per address see a different client for
    /// each. The handshake's error (a refusal by HTTP status) is returned.
    pub async fn connect_from(
        listen: u16,
        source: std::net::IpAddr,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        let tcp = socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], listen)))
            .await?;
        let url = format!("ws://127.0.0.1:{listen}/live/ws");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)).await?;
        Ok(Self { ws, seq: 0 })
    }

    /// Connects as a reverse proxy on 127.0.0.1 would for a client at `client`:
    /// with `X-Forwarded-For`.
    pub async fn connect_forwarded_for(
        listen: u16,
        client: std::net::IpAddr,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://127.0.0.1:{listen}/live/ws").into_client_request()?;
        request.headers_mut().insert(
            "x-forwarded-for",
            client
                .to_string()
                .parse()
                .expect("an address is a header value"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { ws, seq: 0 })
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into().into()))
            .await
            .expect("WebSocket send");
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("WebSocket send");
    }

    pub async fn send_audio(&mut self, stream_id: u32, packet_id: u32, opus: &[u8]) {
        let mut frame = Vec::with_capacity(9 + opus.len());
        frame.push(1);
        frame.extend_from_slice(&stream_id.to_be_bytes());
        frame.extend_from_slice(&packet_id.to_be_bytes());
        frame.extend_from_slice(opus);
        self.send_binary(frame).await;
    }

    pub async fn next(&mut self) -> Incoming {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("nothing from the bridge within {WAIT:?}"));
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Incoming::Json(
                        serde_json::from_str(text.as_str())
                            .unwrap_or_else(|e| panic!("bridge sent bad JSON {text}: {e}")),
                    )
                }
                Some(Ok(Message::Binary(bytes))) => {
                    assert!(bytes.len() > 9, "short frame {bytes:?}");
                    assert_eq!(bytes[0], 1, "frame type");
                    let word = |at: usize| {
                        u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                    };
                    return Incoming::Audio(word(1), word(5), bytes.slice(9..));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Incoming::Closed,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next JSON message, skipping audio frames.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next().await {
                Incoming::Json(value) => return value,
                Incoming::Audio(..) => continue,
                Incoming::Closed => panic!("the bridge closed the connection"),
            }
        }
    }

    /// Skips messages until one satisfies `pick`, which is returned.
    pub async fn until(&mut self, what: &str, mut pick: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let value = tokio::time::timeout_at(deadline, self.next_json())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"));
            if pick(&value) {
                return value;
            }
        }
    }

    pub async fn until_floor(&mut self, state: &str) -> Value {
        self.until(&format!("on_floor {state}"), |v| {
            v["command"] == "on_floor" && v["state"] == state
        })
        .await
    }

    /// The answer (success or `on_error`) to the command numbered `seq`.
    pub async fn answer(&mut self, seq: u64) -> Value {
        self.until(&format!("the answer to seq {seq}"), |v| v["seq"] == seq)
            .await
    }

    /// Sends a logon and returns its answer.
    pub async fn logon(&mut self, user: &TestUser, openid_token: &str, listen: bool) -> Value {
        let seq = self.next_seq();
        self.send_json(&json!({
            "command": "logon",
            "seq": seq,
            "channel": "ops",
            "user_id": user.user_id,
            "device_id": user.device_id,
            "openid_token": openid_token,
            "listen": listen,
        }))
        .await;
        self.answer(seq).await
    }

    /// Sends a logon to `channel` (protocol 2: one of several on this
    /// connection) and returns its answer.
    pub async fn logon_to(
        &mut self,
        channel: &str,
        user: &TestUser,
        openid_token: &str,
        listen: bool,
    ) -> Value {
        let seq = self.next_seq();
        self.send_json(&json!({
            "command": "logon",
            "seq": seq,
            "channel": channel,
            "user_id": user.user_id,
            "device_id": user.device_id,
            "openid_token": openid_token,
            "listen": listen,
        }))
        .await;
        self.answer(seq).await
    }

    /// Sends `start_stream` on `channel`; returns the answer.
    pub async fn start_stream_on(&mut self, channel: &str) -> Value {
        let seq = self.next_seq();
        self.send_json(&json!({ "command": "start_stream", "seq": seq, "channel": channel }))
            .await;
        self.answer(seq).await
    }

    /// Logs `user` on with a fresh token, opting in; panics unless accepted.
    pub async fn logon_ok(listen_port: u16, synapse: &Synapse, user: &TestUser) -> Self {
        let token = synapse
            .client(user)
            .openid_token()
            .await
            .expect("OpenID token");
        let mut client = Self::connect(listen_port).await;
        let answer = client.logon(user, &token.access_token, true).await;
        assert_eq!(answer["success"], true, "logon refused: {answer}");
        client.until_floor("idle").await;
        client
    }

    /// Asks for the floor; returns the stream id of the success answer.
    pub async fn start_stream(&mut self) -> u32 {
        let seq = self.next_seq();
        self.send_json(&json!({
            "command": "start_stream", "seq": seq, "type": "audio", "codec": "opus",
            "sample_rate": 48000, "packet_duration": 20,
        }))
        .await;
        let answer = self.answer(seq).await;
        assert_eq!(answer["success"], true, "start_stream refused: {answer}");
        let id = answer["stream_id"].as_u64().expect("stream_id");
        u32::try_from(id).expect("u32 stream id")
    }

    pub async fn stop_stream(&mut self, stream_id: u32) -> Value {
        let seq = self.next_seq();
        self.send_json(&json!({ "command": "stop_stream", "seq": seq, "stream_id": stream_id }))
            .await;
        self.answer(seq).await
    }

    /// Sends `packets` on `stream_id`, one every `pace`.
    pub async fn send_packets(&mut self, stream_id: u32, packets: &[Bytes], pace: Duration) {
        let mut tick = tokio::time::interval(pace);
        for (n, packet) in packets.iter().enumerate() {
            tick.tick().await;
            self.send_audio(stream_id, n as u32, packet).await;
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
