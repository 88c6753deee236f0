//! Shadowing (DESIGN.md "Shadow: the same question to the gray version, answers paired"): the
//! pure parts (the host side is `filter/shadows.rs`).
//!
//! - [`similarity`]: how similar two answers are (the Jaccard index of character 3-grams),
//!   bounded for the wasm, which computes it once per pair.
//! - [`record`]: the paired record, the user hash, the text cap, and a batch of records
//!   encoded as they come into one OTLP/JSON `ExportLogsServiceRequest` for `shadow_sink`.
//! - [`read`]: records read back from files (the Collector's file exporter, POSTed bodies), for
//!   `graysplit compare`.
//! - [`compare`]: `graysplit compare`'s figures per rule, as a table and as JSON.
//!
//! The wasm uses `similarity` and `record`; `read` and `compare` serve the CLI.

pub mod compare;
pub mod read;
pub mod record;
pub mod similarity;
