use super::Ptt;
use crate::PttError;

/// `ptt = "none"`: the radio keys on its own VOX from our audio. Nothing to
/// drive; the state is remembered so the controller's bookkeeping is uniform.
#[derive(Debug, Default)]
pub struct NoPtt {
    keyed: bool,
}

impl NoPtt {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Ptt for NoPtt {
    fn set_keyed(&mut self, keyed: bool) -> Result<(), PttError> {
        self.keyed = keyed;
        Ok(())
    }
    fn is_keyed(&mut self) -> Result<bool, PttError> {
        Ok(self.keyed)
    }
    fn describe(&self) -> String {
        "none (radio VOX)".to_owned()
    }
}
