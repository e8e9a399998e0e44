//! Configuration: typed schema, loading and validation.
