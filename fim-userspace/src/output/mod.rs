//! Outputs of change events: OCSF JSON lines to stdout or a rotated file.

mod ocsf;
mod sink;
#[cfg(test)]
mod tests;

pub use ocsf::{
    OCSF_VERSION, OcsfContext, activity_id, activity_name, event, integrity_finding, type_id,
};
pub use sink::OutputSink;
