//! Who an endpoint may carry. A radio keys a transmitter, which licensed operators
//! only may do; the rule lives with whoever knows the talkers (the daemon: config
//! and room power levels), the verdict is asked for by the endpoint.

use crate::ids::{EndpointId, Talker};
use std::future::Future;
use std::pin::Pin;

pub type PolicyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Asked once per transmission, before anything is keyed.
pub trait TransmitPolicy: Send + Sync {
    /// `Ok` when `talker`, heard on `source`, may be transmitted here; otherwise
    /// the reason, in words for the talker ("you are not in transmit_allow").
    fn check<'a>(&'a self, talker: &'a Talker, source: &'a EndpointId) -> PolicyFuture<'a>;
}

/// Carries everyone the channel hears.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowEveryone;

impl TransmitPolicy for AllowEveryone {
    fn check<'a>(&'a self, _talker: &'a Talker, _source: &'a EndpointId) -> PolicyFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}
