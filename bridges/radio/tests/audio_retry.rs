//! The reopen loop for a vanished sound card: attempts 2 s apart, on
//! tokio's paused clock (virtual time: exact, and the test takes no real 2 s).

use std::time::Duration;
use walkie_radio::audio::retry::{open_with_retry, RETRY_INTERVAL};

#[tokio::test(start_paused = true)]
async fn retries_every_two_seconds_until_the_card_is_back() {
    assert_eq!(RETRY_INTERVAL, Duration::from_secs(2));
    let start = tokio::time::Instant::now();
    let mut tried_at = Vec::new();
    let (value, attempts) = open_with_retry("radio test sound card", RETRY_INTERVAL, || {
        tried_at.push(start.elapsed());
        if tried_at.len() < 4 {
            Err("No such device")
        } else {
            Ok("card")
        }
    })
    .await;
    assert_eq!((value, attempts), ("card", 4));
    let secs: Vec<u64> = tried_at.iter().map(|d| d.as_secs()).collect();
    assert_eq!(secs, vec![0, 2, 4, 6]);
}

#[tokio::test(start_paused = true)]
async fn an_available_card_opens_at_once() {
    let start = tokio::time::Instant::now();
    let (v, attempts) =
        open_with_retry("card", RETRY_INTERVAL, || Ok::<_, std::io::Error>(7)).await;
    assert_eq!((v, attempts), (7, 1));
    assert_eq!(start.elapsed(), Duration::ZERO);
}
