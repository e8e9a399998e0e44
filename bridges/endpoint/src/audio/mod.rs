//! Codec helpers on real libraries (libopus, rubato, ogg).
