//! errscope: error telemetry for Rust services.
#![warn(missing_docs)]
