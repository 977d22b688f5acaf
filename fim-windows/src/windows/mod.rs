//! Thin Windows adapters: the only code that talks to the OS. Everything
//! they produce is handed to the platform-independent pipeline.

pub mod agent;
pub mod etw_session;
pub mod key_handles;
pub mod process_info;
pub mod reg_notify;
pub mod registry;
pub mod selftest;
pub mod wide;
