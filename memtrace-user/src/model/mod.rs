//! The model every layer shares, and the bottom layer: it imports nothing
//! else from the crate.

pub mod ended;
pub mod error;
pub mod extras;
pub mod gc;
pub mod labels;
pub mod lens;
pub mod profile;
pub mod rangemap;
pub mod report;
pub mod reporter;
pub mod stack;
pub mod summary;
pub mod target;
