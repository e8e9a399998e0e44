//! Radio endpoint of walkie-bridge (DESIGN.md §5): PTT, receive detection,
//! sound card audio and Morse ID.

pub mod audio;
pub mod devices;
pub mod morse;
pub mod rx;
