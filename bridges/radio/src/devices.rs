//! Device listing (placeholder).
