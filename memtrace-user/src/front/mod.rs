//! The front ends, each with its own policy: `agent` (the node agent),
//! `gate` (CI's regression gate), `top` (the live screen), `record` (one
//! window) and `doctor`;
//! `push` delivers profiles to remote stores (Pyroscope, OTLP).

pub mod agent;
pub mod doctor;
pub mod gate;
pub mod push;
pub mod record;
pub mod top;
