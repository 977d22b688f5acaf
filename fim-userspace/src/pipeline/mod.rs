//! The daemon's pipeline: sensor records -> observations (attribution, rule) -> change
//! assembly (one change per open..close) -> the change worker (examine, hash, compare with the
//! baseline) -> change records and store operations for the outputs.
//!
//! Everything here is plain logic over traits (`Enrich`, `BaselineLookup`, `Examine`), so the
//! daemon wires in /proc, SQLite and the filesystem while tests and benches inject records.

mod alias;
mod assemble;
mod changes;
pub mod dedup;
mod observe;
#[cfg(test)]
mod tests;

pub use alias::{Aliases, InodeNames, NoNames};
pub use assemble::{Assembler, Job, JobKind};
pub use changes::{BaselineLookup, ChangeMaker, Examine, Examined, Made};
pub use dedup::Dedup;
pub use observe::{
    Classifier, Enrich, KernelOnly, Observation, Process, RuleRef, Verdict, kernel_actor,
};
