//! `devices()`: serial ports with their by-id links, ALSA devices as cpal
//! sees them (here: a test PCM from a private asoundrc), /proc/asound/cards.

use std::os::unix::fs::symlink;
use walkie_radio::devices::{devices_from, parse_proc_asound_cards};

const CARDS: &str = " 0 [PCH            ]: HDA-Intel - HDA Intel PCH
                      HDA Intel PCH at 0xf7f10000 irq 32
 1 [Device         ]: USB-Audio - USB Audio Device
                      C-Media Electronics Inc. USB Audio Device at usb-0000:00:14.0-1, full speed
";

#[test]
fn proc_asound_cards_parse() {
    let cards = parse_proc_asound_cards(CARDS);
    assert_eq!(cards.len(), 2);
    assert_eq!((cards[1].index, cards[1].id.as_str()), (1, "Device"));
    assert_eq!(cards[1].name, "USB-Audio - USB Audio Device");
    assert!(cards[1].long_name.starts_with("C-Media"), "{:?}", cards[1]);
    assert!(parse_proc_asound_cards("--- no soundcards ---\n").is_empty());
}

#[test]
fn lists_by_id_links_alsa_devices_and_cards() {
    let dir = tempfile::tempdir().expect("tempdir");
    // alsa-lib reads $HOME/.asoundrc; a PCM with a hint is listed like a card.
    std::fs::write(
        dir.path().join(".asoundrc"),
        "pcm.radio_listed { type null hint { show on description \"walkie listed PCM\" } }\n",
    )
    .expect("asoundrc");
    std::env::set_var("HOME", dir.path());
    // A by-id directory as udev makes it: a link to the port's device node.
    let by_id = dir.path().join("by-id");
    std::fs::create_dir(&by_id).expect("by-id dir");
    let node = dir.path().join("ttyUSB7");
    std::fs::write(&node, b"").expect("fake node");
    let link = by_id.join("usb-FTDI_FT232R_USB_UART_A12345-if00-port0");
    symlink(&node, &link).expect("symlink");
    let cards = dir.path().join("cards");
    std::fs::write(&cards, CARDS).expect("cards");

    let list = devices_from(&by_id, &cards);
    println!("{list}");
    let port = list
        .serial_ports
        .iter()
        .find(|p| p.by_id.iter().any(|l| l.ends_with("A12345-if00-port0")))
        .expect("by-id port listed");
    assert_eq!(
        port.path,
        node.canonicalize().expect("canon").to_string_lossy()
    );
    let pcm = list
        .sound_devices
        .iter()
        .find(|d| d.name == "radio_listed")
        .expect("asoundrc PCM listed");
    assert!(pcm.description.contains("walkie listed PCM"), "{pcm:?}");
    assert_eq!(list.cards.len(), 2);
    assert!(list.errors.is_empty(), "{:?}", list.errors);
    let text = list.to_string();
    assert!(
        text.contains("radio_listed") && text.contains("hw:1 = hw:CARD=Device"),
        "{text}"
    );
}
