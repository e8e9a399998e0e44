//! Channel hubs.
