//! The harness against a real mosquitto (Debian 2.0.11) and mosquitto_pub/sub.

use std::time::{Duration, Instant};

use walkie_harness::{
    mqtt_publish, mqtt_publish_with, Error, Mosquitto, MqttClientOptions, MqttSubscriber,
};

const WAIT: Duration = Duration::from_secs(10);

async fn start(builder: walkie_harness::MosquittoBuilder) -> Mosquitto {
    let started = Instant::now();
    let broker = builder.start().await.expect("mosquitto starts");
    eprintln!(
        "mosquitto on {} ready in {:?} (launch to listening {:?})",
        broker.url(),
        started.elapsed(),
        broker.started_in()
    );
    broker
}

#[tokio::test]
async fn binary_payload_reaches_a_subscriber_intact() {
    let broker = start(Mosquitto::builder()).await;
    assert_eq!(broker.host(), "127.0.0.1");
    assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{}", broker.port()));
    assert_eq!(broker.tls_port(), None);
    assert_eq!(broker.tls_url(), None);
    assert_eq!(broker.ca_file(), None);

    let mut sub = MqttSubscriber::start(&broker, &["walkie/#"])
        .await
        .expect("subscribed");
    // Every byte value, zeros and 0xff included, and a newline.
    let mut payload: Vec<u8> = (0..=255u8).collect();
    payload.extend_from_slice(&[0, 0, b'\n', 0xff, 0xff]);
    mqtt_publish(&broker, "walkie/audio/1", &payload, 0, false)
        .await
        .unwrap();
    mqtt_publish(&broker, "other/topic", b"not subscribed", 1, false)
        .await
        .unwrap();
    mqtt_publish(
        &broker,
        "walkie/control",
        br#"{"talker":"alice"}"#,
        1,
        false,
    )
    .await
    .unwrap();
    mqtt_publish(&broker, "walkie/empty", b"", 2, false)
        .await
        .unwrap();

    let audio = sub.next(WAIT).await.unwrap();
    assert_eq!(audio.topic, "walkie/audio/1");
    assert_eq!(audio.payload, payload);
    assert!(!audio.retained);
    assert_eq!(audio.qos, 0);

    let control = sub.next(WAIT).await.unwrap();
    assert_eq!(control.topic, "walkie/control");
    assert_eq!(control.qos, 1);
    assert_eq!(control.json().unwrap()["talker"], "alice");
    assert_eq!(control.text(), r#"{"talker":"alice"}"#);

    let empty = sub.next(WAIT).await.unwrap();
    assert_eq!((empty.topic.as_str(), empty.qos), ("walkie/empty", 2));
    assert!(empty.payload.is_empty());

    // Nothing else arrived: not the unsubscribed topic, not the readiness probe.
    let nothing = sub.next(Duration::from_millis(300)).await;
    assert!(matches!(nothing, Err(Error::Timeout { .. })), "{nothing:?}");
    assert!(broker.log_tail(50).contains("New client connected"));
}

#[tokio::test]
async fn wait_for_keeps_skipped_messages() {
    let broker = start(Mosquitto::builder()).await;
    let mut sub = MqttSubscriber::start(&broker, &["a", "b"]).await.unwrap();
    for (topic, payload) in [("a", "1"), ("b", "2"), ("a", "3")] {
        mqtt_publish(&broker, topic, payload.as_bytes(), 1, false)
            .await
            .unwrap();
    }
    let b = sub.wait_for(|m| m.topic == "b", WAIT).await.unwrap();
    assert_eq!(b.text(), "2");
    let rest: Vec<String> = [sub.next(WAIT).await.unwrap(), sub.next(WAIT).await.unwrap()]
        .iter()
        .map(|m| format!("{}={}", m.topic, m.text()))
        .collect();
    assert_eq!(rest, ["a=1", "a=3"]);
    let timeout = sub
        .wait_for(|m| m.topic == "b", Duration::from_millis(200))
        .await;
    assert!(matches!(timeout, Err(Error::Timeout { .. })), "{timeout:?}");
}

#[tokio::test]
async fn retained_message_reaches_a_late_subscriber_and_survives_a_restart() {
    let mut broker = start(Mosquitto::builder()).await;
    mqtt_publish(&broker, "walkie/floor", br#"{"state":"idle"}"#, 1, true)
        .await
        .unwrap();

    let mut late = MqttSubscriber::start(&broker, &["walkie/floor"])
        .await
        .unwrap();
    let floor = late.next(WAIT).await.unwrap();
    assert_eq!(floor.topic, "walkie/floor");
    assert!(floor.retained, "{floor:?}");
    assert_eq!(floor.json().unwrap()["state"], "idle");

    // A live publish is forwarded with the retain flag cleared.
    mqtt_publish(&broker, "walkie/floor", br#"{"state":"busy"}"#, 1, true)
        .await
        .unwrap();
    let live = late.next(WAIT).await.unwrap();
    assert!(!live.retained);
    assert_eq!(live.json().unwrap()["state"], "busy");
    drop(late);

    let port = broker.port();
    broker.stop().await.unwrap();
    assert!(!broker.is_running());
    broker.start_again().await.unwrap();
    assert_eq!(broker.port(), port, "same port after a restart");

    let mut after = MqttSubscriber::start(&broker, &["walkie/#"]).await.unwrap();
    let floor = after.next(WAIT).await.unwrap();
    assert_eq!(floor.topic, "walkie/floor");
    assert!(floor.retained);
    assert_eq!(floor.json().unwrap()["state"], "busy");
    // Clearing the retained message (empty retained publish) works too.
    mqtt_publish(&broker, "walkie/floor", b"", 1, true)
        .await
        .unwrap();
    assert!(after.next(WAIT).await.unwrap().payload.is_empty());
    drop(after);
    let mut cleared = MqttSubscriber::start(&broker, &["walkie/#"]).await.unwrap();
    let nothing = cleared.next(Duration::from_millis(300)).await;
    assert!(matches!(nothing, Err(Error::Timeout { .. })), "{nothing:?}");
}

#[tokio::test]
async fn persistent_session_gets_messages_queued_across_a_restart() {
    let mut broker = start(Mosquitto::builder()).await;
    let options = MqttClientOptions::for_broker(&broker)
        .client_id("walkie-persistent")
        .persistent_session();
    let mut sub = MqttSubscriber::start_with(&broker, &["q/#"], options.clone())
        .await
        .unwrap();
    sub.stop().await.unwrap();
    drop(sub);
    // Queued for the absent session, saved on the clean stop, delivered on reconnect.
    mqtt_publish(&broker, "q/while-away", b"queued", 1, false)
        .await
        .unwrap();
    broker.stop().await.unwrap();
    broker.start_again().await.unwrap();
    let mut sub = MqttSubscriber::start_with(&broker, &["q/#"], options)
        .await
        .unwrap();
    let queued = sub.next(WAIT).await.unwrap();
    assert_eq!(
        (
            queued.topic.as_str(),
            queued.text().as_str(),
            queued.retained
        ),
        ("q/while-away", "queued", false)
    );
}

#[tokio::test]
async fn kill_is_a_crash_and_a_subscriber_reconnects_after_start_again() {
    let mut broker = start(Mosquitto::builder()).await;
    let mut sub = MqttSubscriber::start(&broker, &["k"]).await.unwrap();
    let port = broker.port();
    broker.kill().unwrap();
    assert!(!broker.is_running());
    assert!(mqtt_publish(&broker, "k", b"nobody", 0, false)
        .await
        .is_err());
    broker.start_again().await.unwrap();
    assert_eq!(broker.port(), port);
    // mosquitto_sub reconnected on its own and subscribed again.
    sub.wait_subscribed(&broker).await.unwrap();
    mqtt_publish(&broker, "k", b"back", 0, false).await.unwrap();
    let back = sub.next(WAIT).await.unwrap();
    assert_eq!((back.topic.as_str(), back.text().as_str()), ("k", "back"));
}

#[tokio::test]
async fn credentials_are_required_when_set() {
    let broker = start(Mosquitto::builder().credentials("walkie", "s3cret pass")).await;
    assert_eq!(broker.credentials(), Some(("walkie", "s3cret pass")));

    // The harness's clients log in with the broker's credentials by default.
    let mut sub = MqttSubscriber::start(&broker, &["secure/#"]).await.unwrap();
    mqtt_publish(&broker, "secure/x", b"with password", 1, false)
        .await
        .unwrap();
    assert_eq!(sub.next(WAIT).await.unwrap().text(), "with password");

    let anonymous = MqttClientOptions::for_broker(&broker).anonymous();
    let refused = mqtt_publish_with(&broker, &anonymous, "secure/x", b"no", 1, false).await;
    match refused {
        Err(Error::MqttClient { log_tail, .. }) => {
            assert!(log_tail.contains("not authorised"), "{log_tail}")
        }
        other => panic!("anonymous publish was not refused: {other:?}"),
    }
    let wrong = MqttClientOptions::for_broker(&broker).credentials("walkie", "wrong");
    assert!(
        mqtt_publish_with(&broker, &wrong, "secure/x", b"no", 1, false)
            .await
            .is_err()
    );
    assert!(
        MqttSubscriber::start_with(&broker, &["secure/#"], anonymous)
            .await
            .is_err()
    );
    // Neither refused publish arrived.
    let nothing = sub.next(Duration::from_millis(300)).await;
    assert!(matches!(nothing, Err(Error::Timeout { .. })), "{nothing:?}");
}

#[tokio::test]
async fn tls_listener_verifies_with_the_ca_file() {
    let broker = start(Mosquitto::builder().tls()).await;
    let tls_port = broker.tls_port().expect("TLS port");
    assert_ne!(tls_port, broker.port());
    assert_eq!(
        broker.tls_url().unwrap(),
        format!("mqtts://127.0.0.1:{tls_port}")
    );
    let ca = std::fs::read_to_string(broker.ca_file().unwrap()).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    let tls = MqttClientOptions::for_broker(&broker).tls();
    let mut over_tls = MqttSubscriber::start_with(&broker, &["t/#"], tls.clone())
        .await
        .unwrap();
    let mut plain = MqttSubscriber::start(&broker, &["t/#"]).await.unwrap();
    mqtt_publish(&broker, "t/plain", b"from plain", 1, false)
        .await
        .unwrap();
    mqtt_publish_with(&broker, &tls, "t/tls", &[0, 1, 0xff], 1, false)
        .await
        .unwrap();
    for sub in [&mut over_tls, &mut plain] {
        assert_eq!(sub.next(WAIT).await.unwrap().text(), "from plain");
        assert_eq!(sub.next(WAIT).await.unwrap().payload, [0, 1, 0xff]);
    }

    // The TLS port does not speak plain MQTT.
    let plain_on_tls =
        tokio::process::Command::new(walkie_harness::mosquitto_tool("mosquitto_pub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &tls_port.to_string(),
                "-t",
                "x",
                "-m",
                "y",
            ])
            .output()
            .await
            .unwrap();
    assert!(!plain_on_tls.status.success());
    // The certificate names localhost too.
    let by_name = tokio::process::Command::new(walkie_harness::mosquitto_tool("mosquitto_pub"))
        .args([
            "-h",
            "localhost",
            "-p",
            &tls_port.to_string(),
            "-t",
            "t/name",
            "-m",
            "ok",
        ])
        .arg("--cafile")
        .arg(broker.ca_file().unwrap())
        .output()
        .await
        .unwrap();
    assert!(
        by_name.status.success(),
        "{}",
        String::from_utf8_lossy(&by_name.stderr)
    );
    assert_eq!(plain.next(WAIT).await.unwrap().text(), "ok");
}
