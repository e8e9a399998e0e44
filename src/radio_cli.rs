//! The radio commands that must work without the daemon: `unkey` (the systemd
//! unit's `ExecStopPost`, after a crash or SIGKILL) and `devices`.

use walkie_radio::ptt::{force_unkey, PttConfig, UnkeyReport};

use crate::config::{Config, EndpointId, EndpointKind, EndpointSpec, Ptt, RadioConfig};

#[derive(Debug, thiserror::Error)]
pub enum UnkeyError {
    #[error("no [radio.{0}] is configured")]
    NoSuchRadio(String),
    #[error("radio.{radio}: {source}")]
    Ptt {
        radio: String,
        #[source]
        source: walkie_radio::PttError,
    },
}

/// The PTT of a `[radio.NAME]` section, as the radio crate takes it.
pub fn ptt_config(radio: &RadioConfig) -> Result<PttConfig, walkie_radio::PttError> {
    let ptt = match radio.ptt {
        Ptt::Rts => "rts",
        Ptt::Dtr => "dtr",
        Ptt::RtsDtr => "rts+dtr",
        Ptt::Rigctld => "rigctld",
        Ptt::None => "none",
    };
    let port = radio.port.as_ref().map(|p| p.display().to_string());
    let rigctld = radio.rigctld.as_ref().map(ToString::to_string);
    PttConfig::from_keys(ptt, port.as_deref(), radio.ptt_invert, rigctld.as_deref())
}

/// Opens the radio's PTT, forces it unkeyed and reads it back.
pub fn unkey(config: &Config, name: &str) -> Result<UnkeyReport, UnkeyError> {
    let id = EndpointId {
        kind: EndpointKind::Radio,
        name: name.to_owned(),
    };
    let Some(EndpointSpec::Radio(radio)) = config.endpoint(&id) else {
        return Err(UnkeyError::NoSuchRadio(name.to_owned()));
    };
    let ptt_error = |source| UnkeyError::Ptt {
        radio: name.to_owned(),
        source,
    };
    let ptt = ptt_config(radio).map_err(ptt_error)?;
    force_unkey(&ptt).map_err(ptt_error)
}

/// Every configured radio, each forced unkeyed in turn: one radio that cannot be
/// reached does not keep the others keyed. Ordered by name.
pub fn unkey_all(config: &Config) -> Vec<(String, Result<UnkeyReport, UnkeyError>)> {
    config
        .endpoints
        .keys()
        .filter(|id| id.kind == EndpointKind::Radio)
        .map(|id| (id.name.clone(), unkey(config, &id.name)))
        .collect()
}
