//! Oracles shared by the fuzz targets: independent checks of what credvend's parsers decide.
//!
//! Each target asserts properties of a decision, not only that nothing panicked; the checks
//! that need more than a line live here so that they read as statements of the property.

pub mod json;
pub mod schema;
