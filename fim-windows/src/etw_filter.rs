//! What the ETW session asks the two providers for. ETW writes an event
//! when *any* of its keywords is enabled (an event without keywords always),
//! and keywords = 0 means every event: leaving the read keyword out of
//! Kernel-File does not stop Read, DirEnum, QueryInformation or FSCTL (they
//! also carry FILEIO, which Cleanup, Close and SetInformation need), and
//! Kernel-Registry with keywords 0 delivers all its query traffic. So the
//! session enables exactly the keywords of the consumed events *and* an
//! event-id filter (EVENT_FILTER_TYPE_EVENT_ID) listing those events.
//!
//! The keyword of each event id is from the providers' published manifests
//! (Windows 10 1809 to Windows 11). [`delivers`] models ETW's rule so a
//! fixture stream can be filtered the way the kernel would filter it: the
//! `etw_filter` bench and the tests compare what each configuration lets
//! through.

use crate::etw_event::{EtwEvent, Provider};
use crate::etw_layout::{CONSUMED_FILE_EVENTS, CONSUMED_REGISTRY_EVENTS};

/// Kernel-File keyword masks.
pub mod file_keyword {
    pub const FILENAME: u64 = 0x10;
    pub const FILEIO: u64 = 0x20;
    pub const OP_END: u64 = 0x40;
    pub const CREATE: u64 = 0x80;
    pub const READ: u64 = 0x100;
    pub const WRITE: u64 = 0x200;
    pub const DELETE_PATH: u64 = 0x400;
    pub const RENAME_SETLINK_PATH: u64 = 0x800;
    pub const CREATE_NEW_FILE: u64 = 0x1000;
}

/// Kernel-Registry keyword masks (one per operation).
pub mod registry_keyword {
    pub const CLOSE_KEY: u64 = 0x1;
    pub const QUERY_SECURITY_KEY: u64 = 0x2;
    pub const SET_SECURITY_KEY: u64 = 0x4;
    pub const ENUMERATE_VALUE_KEY: u64 = 0x10;
    pub const QUERY_MULTIPLE_VALUE_KEY: u64 = 0x20;
    pub const SET_INFORMATION_KEY: u64 = 0x40;
    pub const FLUSH_KEY: u64 = 0x80;
    pub const SET_VALUE_KEY: u64 = 0x100;
    pub const DELETE_VALUE_KEY: u64 = 0x200;
    pub const QUERY_VALUE_KEY: u64 = 0x400;
    pub const ENUMERATE_KEY: u64 = 0x800;
    pub const CREATE_KEY: u64 = 0x1000;
    pub const OPEN_KEY: u64 = 0x2000;
    pub const DELETE_KEY: u64 = 0x4000;
    pub const QUERY_KEY: u64 = 0x8000;
}

/// The keywords an event id carries in the provider's manifest (0: none,
/// or an id fim does not know).
pub const fn event_keywords(provider: Provider, event_id: u16) -> u64 {
    match provider {
        Provider::KernelFile => {
            use file_keyword::*;
            match event_id {
                10 | 11 => FILENAME,            // NameCreate, NameDelete
                12 => FILEIO | CREATE,          // Create
                15 => FILEIO | READ,            // Read
                16 => FILEIO | WRITE,           // Write
                24 => FILEIO | OP_END,          // OperationEnd
                26 => DELETE_PATH,              // DeletePath
                27 | 28 => RENAME_SETLINK_PATH, // RenamePath, SetLinkPath
                30 => CREATE_NEW_FILE,          // CreateNewFile
                // Cleanup, Close, SetInformation, SetDelete, Rename, DirEnum,
                // Flush, QueryInformation, FSCTL, DirNotify, Rename29,
                // SetSecurity, QuerySecurity, SetEA, QueryEA.
                13 | 14 | 17..=23 | 25 | 29 | 31..=34 => FILEIO,
                _ => 0,
            }
        }
        Provider::KernelRegistry => {
            use registry_keyword::*;
            match event_id {
                1 => CREATE_KEY,
                2 => OPEN_KEY,
                3 => DELETE_KEY,
                4 => QUERY_KEY,
                5 => SET_VALUE_KEY,
                6 => DELETE_VALUE_KEY,
                7 => QUERY_VALUE_KEY,
                8 => ENUMERATE_KEY,
                9 => ENUMERATE_VALUE_KEY,
                10 => QUERY_MULTIPLE_VALUE_KEY,
                11 => SET_INFORMATION_KEY,
                12 => FLUSH_KEY,
                13 => CLOSE_KEY,
                14 => QUERY_SECURITY_KEY,
                15 => SET_SECURITY_KEY,
                _ => 0,
            }
        }
    }
}

/// One provider's enable parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderFilter {
    /// MatchAnyKeyword; 0 means every event.
    pub keywords: u64,
    /// EVENT_FILTER_TYPE_EVENT_ID with FilterIn: only these ids.
    pub event_ids: Option<&'static [u16]>,
}

/// The OR of the keywords of `ids`.
const fn keywords_of(provider: Provider, ids: &[u16]) -> u64 {
    let mut mask = 0;
    let mut i = 0;
    while i < ids.len() {
        mask |= event_keywords(provider, ids[i]);
        i += 1;
    }
    mask
}

/// What fim-windows enables: the consumed events' keywords and ids.
pub const KERNEL_FILE: ProviderFilter = ProviderFilter {
    keywords: keywords_of(Provider::KernelFile, CONSUMED_FILE_EVENTS),
    event_ids: Some(CONSUMED_FILE_EVENTS),
};
pub const KERNEL_REGISTRY: ProviderFilter = ProviderFilter {
    keywords: keywords_of(Provider::KernelRegistry, CONSUMED_REGISTRY_EVENTS),
    event_ids: Some(CONSUMED_REGISTRY_EVENTS),
};

/// What fim-windows enabled before (kept to measure the difference):
/// Kernel-File without READ and OP_END, Kernel-Registry with keywords 0,
/// no event-id filter.
pub const PREVIOUS_KERNEL_FILE: ProviderFilter = ProviderFilter {
    keywords: 0x10 | 0x20 | 0x80 | 0x200 | 0x400 | 0x800 | 0x1000,
    event_ids: None,
};
pub const PREVIOUS_KERNEL_REGISTRY: ProviderFilter = ProviderFilter {
    keywords: 0,
    event_ids: None,
};

/// Whether ETW hands this event to a session that enabled `filter`.
pub fn delivers(filter: &ProviderFilter, provider: Provider, event_id: u16) -> bool {
    let keywords = event_keywords(provider, event_id);
    let by_keyword = filter.keywords == 0 || keywords == 0 || keywords & filter.keywords != 0;
    let by_id = filter.event_ids.is_none_or(|ids| ids.contains(&event_id));
    by_keyword && by_id
}

/// The events of `events` a session with these filters would receive.
pub fn delivered<'a>(
    events: &'a [EtwEvent],
    file: &'a ProviderFilter,
    registry: &'a ProviderFilter,
) -> impl Iterator<Item = &'a EtwEvent> {
    events.iter().filter(move |e| {
        let filter = match e.provider {
            Provider::KernelFile => file,
            Provider::KernelRegistry => registry,
        };
        delivers(filter, e.provider, e.event_id)
    })
}

/// The EVENT_FILTER_EVENT_ID structure EnableTraceEx2 takes for an
/// EVENT_FILTER_TYPE_EVENT_ID filter: FilterIn (BOOLEAN, 1 = only these),
/// Reserved, Count (USHORT), then Count event ids (USHORT each), little
/// endian. ETW accepts at most 64 ids.
pub fn event_id_filter_payload(ids: &[u16]) -> Vec<u8> {
    assert!(
        ids.len() <= 64,
        "EVENT_FILTER_TYPE_EVENT_ID takes at most 64 ids"
    );
    let mut out = vec![1u8, 0];
    out.extend((ids.len() as u16).to_le_bytes());
    for id in ids {
        out.extend(id.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_id_filter_payload_layout() {
        assert_eq!(
            super::event_id_filter_payload(&[10, 0x1234]),
            vec![1, 0, 2, 0, 10, 0, 0x34, 0x12]
        );
    }

    use super::*;

    #[test]
    fn masks_are_exactly_the_consumed_events_keywords() {
        use file_keyword as f;
        use registry_keyword as r;
        assert_eq!(
            KERNEL_FILE.keywords,
            f::FILENAME
                | f::FILEIO
                | f::OP_END
                | f::CREATE
                | f::WRITE
                | f::DELETE_PATH
                | f::RENAME_SETLINK_PATH
                | f::CREATE_NEW_FILE
        );
        assert_eq!(KERNEL_FILE.keywords & f::READ, 0);
        assert_eq!(
            KERNEL_REGISTRY.keywords,
            r::CLOSE_KEY
                | r::SET_SECURITY_KEY
                | r::SET_VALUE_KEY
                | r::DELETE_VALUE_KEY
                | r::CREATE_KEY
                | r::OPEN_KEY
                | r::DELETE_KEY
        );
        assert_ne!(KERNEL_REGISTRY.keywords, 0, "0 would mean every event");
    }

    #[test]
    fn keywords_alone_let_query_traffic_through_the_id_filter_stops_it() {
        let file = Provider::KernelFile;
        let reg = Provider::KernelRegistry;
        // Read, DirEnum, QueryInformation, FSCTL carry FILEIO.
        for id in [15, 20, 22, 23] {
            assert!(delivers(&PREVIOUS_KERNEL_FILE, file, id), "{id}");
            let keywords_only = ProviderFilter {
                event_ids: None,
                ..KERNEL_FILE
            };
            assert!(delivers(&keywords_only, file, id), "{id}");
            assert!(!delivers(&KERNEL_FILE, file, id), "{id}");
        }
        // Registry keywords 0: every query.
        for id in [4, 7, 8, 9, 10, 14] {
            assert!(delivers(&PREVIOUS_KERNEL_REGISTRY, reg, id), "{id}");
            assert!(!delivers(&KERNEL_REGISTRY, reg, id), "{id}");
        }
        for id in CONSUMED_FILE_EVENTS {
            assert!(delivers(&KERNEL_FILE, file, *id), "{id}");
        }
        for id in CONSUMED_REGISTRY_EVENTS {
            assert!(delivers(&KERNEL_REGISTRY, reg, *id), "{id}");
        }
    }
}
