//! Sound card audio (placeholder, filled in by the next commit).
