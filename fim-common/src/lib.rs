//! Types shared by the kernel programs (`fim-ebpf`) and user space (`fim-userspace`).
//!
//! Everything that crosses the ring buffer or a map is defined here exactly once. Numeric
//! values (event kinds, backends, flags) are part of the on-wire contract: they are never
//! renumbered, and a retired number stays reserved.
#![no_std]

pub mod offsets;
pub mod record;

pub use offsets::KernelOffsets;
pub use record::{
    Actor, Args, Backend, EventKind, Excluded, Record, RecordHeader, Target, WatchKey, WatchValue,
    bitmap, excluded, flags, watch,
};
