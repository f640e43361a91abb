//! What executables hold: Go's function table (`.gopclntab`), runtime
//! probe points and variables, type layouts, the memory profile's layout,
//! and symbolization of any address in a mapped image.

pub mod file;
pub mod gopclntab;
pub mod goruntime;
pub mod gtypes;
pub mod labels;
pub mod memprof;
pub mod symbolize;
