//! errscope-collector: ingestion, grouping, storage and the JSON API.
#![warn(missing_docs)]
