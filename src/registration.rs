//! Application-service registration.
