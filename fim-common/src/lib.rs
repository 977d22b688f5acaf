//! Types shared by the kernel programs (`fim-ebpf`) and user space (`fim-userspace`).
//!
//! Everything that crosses the ring buffer is defined here exactly once. Numeric values
//! (event kinds, backends) are part of the on-wire contract: they are never renumbered, and a
//! retired number stays reserved.
#![no_std]

pub mod record;

pub use record::{Actor, Backend, EventKind, Record};
