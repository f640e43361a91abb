//! The model every layer shares, and the bottom layer: it imports nothing
//! else from the crate.

pub mod error;
pub mod rangemap;
pub mod stack;
