//! Property layouts of the events fim consumes, written from the providers'
//! published manifests: Microsoft-Windows-Kernel-File event versions 0 and 1
//! (version 0 puts a pointer-sized `ThreadId` after `Irp`, version 1 a
//! 32-bit `IssuingThreadId` after the pointers: same length for Write, every
//! field after `Irp` shifted), Microsoft-Windows-Kernel-Registry version 0.
//! A record is decoded by (provider, event id, version); a version with no
//! layout here is never guessed at: it is counted (see
//! [`Parsed::UnknownVersion`]). The real-time session copies each record's
//! UserData; this module turns those bytes into the normalised [`EtwEvent`]
//! without TDH, so the same parser is unit-tested on Linux.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use crate::etw_event::{EtwEvent, FieldValue, HexBytes, Provider};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Pointer,
    U16,
    U32,
    U64,
    /// NUL-terminated UTF-16LE; as the record's last property the
    /// terminator may be missing (the record's end ends the string).
    UnicodeString,
    /// Binary whose length is the value of an earlier numeric property.
    BinarySizedBy(&'static str),
}

use Kind::*;

type Layout = &'static [(&'static str, Kind)];

const FILE_NAME: Layout = &[("FileKey", Pointer), ("FileName", UnicodeString)];
const FILE_CREATE_V0: Layout = &[
    ("Irp", Pointer),
    ("ThreadId", Pointer),
    ("FileObject", Pointer),
    ("CreateOptions", U32),
    ("CreateAttributes", U32),
    ("ShareAccess", U32),
    ("FileName", UnicodeString),
];
const FILE_CREATE: Layout = &[
    ("Irp", Pointer),
    ("FileObject", Pointer),
    ("IssuingThreadId", U32),
    ("CreateOptions", U32),
    ("CreateAttributes", U32),
    ("ShareAccess", U32),
    ("FileName", UnicodeString),
];
const FILE_CLOSE_V0: Layout = &[
    ("Irp", Pointer),
    ("ThreadId", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
];
const FILE_CLOSE: Layout = &[
    ("Irp", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("IssuingThreadId", U32),
];
const FILE_WRITE_V0: Layout = &[
    ("ByteOffset", U64),
    ("Irp", Pointer),
    ("ThreadId", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("IOSize", U32),
    ("IOFlags", U32),
];
const FILE_WRITE: Layout = &[
    ("ByteOffset", U64),
    ("Irp", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("IssuingThreadId", U32),
    ("IOSize", U32),
    ("IOFlags", U32),
    ("ExtraFlags", U32),
];
const FILE_INFO_V0: Layout = &[
    ("Irp", Pointer),
    ("ThreadId", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("ExtraInformation", Pointer),
    ("InfoClass", U32),
];
const FILE_INFO: Layout = &[
    ("Irp", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("ExtraInformation", Pointer),
    ("IssuingThreadId", U32),
    ("InfoClass", U32),
];
const FILE_INFO_PATH_V0: Layout = &[
    ("Irp", Pointer),
    ("ThreadId", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("ExtraInformation", Pointer),
    ("InfoClass", U32),
    ("FilePath", UnicodeString),
];
const FILE_INFO_PATH: Layout = &[
    ("Irp", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("ExtraInformation", Pointer),
    ("IssuingThreadId", U32),
    ("InfoClass", U32),
    ("FilePath", UnicodeString),
];
/// OperationEnd (24), version 0 only: the final status of the IRP.
const FILE_OPERATION_END: Layout = &[
    ("Irp", Pointer),
    ("ExtraInformation", Pointer),
    ("Status", U32),
];

const REG_CREATE_OPEN: Layout = &[
    ("BaseObject", Pointer),
    ("KeyObject", Pointer),
    ("Status", U32),
    ("Disposition", U32),
    ("BaseName", UnicodeString),
    ("RelativeName", UnicodeString),
];
const REG_KEY: Layout = &[
    ("KeyObject", Pointer),
    ("Status", U32),
    ("KeyName", UnicodeString),
];
const REG_SET_VALUE: Layout = &[
    ("KeyObject", Pointer),
    ("Status", U32),
    ("Type", U32),
    ("DataSize", U32),
    ("KeyName", UnicodeString),
    ("ValueName", UnicodeString),
    ("CapturedDataSize", U16),
    ("CapturedData", BinarySizedBy("CapturedDataSize")),
    ("PreviousDataType", U32),
    ("PreviousDataSize", U32),
    ("PreviousDataCapturedSize", U16),
    ("PreviousData", BinarySizedBy("PreviousDataCapturedSize")),
];
const REG_DELETE_VALUE: Layout = &[
    ("KeyObject", Pointer),
    ("Status", U32),
    ("KeyName", UnicodeString),
    ("ValueName", UnicodeString),
];

/// Kernel-File event ids (manifest task names).
pub mod file_event {
    pub const NAME_CREATE: u16 = 10;
    pub const NAME_DELETE: u16 = 11;
    pub const CREATE: u16 = 12;
    pub const CLEANUP: u16 = 13;
    pub const CLOSE: u16 = 14;
    pub const READ: u16 = 15;
    pub const WRITE: u16 = 16;
    pub const SET_INFORMATION: u16 = 17;
    pub const OPERATION_END: u16 = 24;
    pub const DELETE_PATH: u16 = 26;
    pub const RENAME_PATH: u16 = 27;
    pub const SET_LINK_PATH: u16 = 28;
    pub const CREATE_NEW_FILE: u16 = 30;
    pub const SET_SECURITY: u16 = 31;
}

/// Kernel-Registry event ids (manifest opcodes).
pub mod registry_event {
    pub const CREATE_KEY: u16 = 1;
    pub const OPEN_KEY: u16 = 2;
    pub const DELETE_KEY: u16 = 3;
    pub const SET_VALUE_KEY: u16 = 5;
    pub const DELETE_VALUE_KEY: u16 = 6;
    pub const CLOSE_KEY: u16 = 13;
    pub const SET_SECURITY_KEY: u16 = 15;
}

/// Every Kernel-File event id fim decodes (the session's event-id filter).
pub const CONSUMED_FILE_EVENTS: &[u16] = {
    use file_event::*;
    &[
        NAME_CREATE,
        NAME_DELETE,
        CREATE,
        CLEANUP,
        CLOSE,
        WRITE,
        SET_INFORMATION,
        OPERATION_END,
        DELETE_PATH,
        RENAME_PATH,
        SET_LINK_PATH,
        CREATE_NEW_FILE,
        SET_SECURITY,
    ]
};

/// Every Kernel-Registry event id fim decodes (the session's event-id filter).
pub const CONSUMED_REGISTRY_EVENTS: &[u16] = {
    use registry_event::*;
    &[
        CREATE_KEY,
        OPEN_KEY,
        DELETE_KEY,
        SET_VALUE_KEY,
        DELETE_VALUE_KEY,
        CLOSE_KEY,
        SET_SECURITY_KEY,
    ]
};

/// What the layout table says about one (provider, id, version).
#[derive(Debug, Clone, Copy)]
enum Lookup {
    Known(Layout),
    /// fim does not use this event id at all.
    NotConsumed,
    /// A consumed event id in a version with no layout here.
    UnknownVersion,
}

fn lookup(provider: Provider, event_id: u16, version: u8) -> Lookup {
    use Lookup::*;
    let by_version = |v0: Option<Layout>, v1: Option<Layout>| match version {
        0 => v0.map_or(UnknownVersion, Known),
        1 => v1.map_or(UnknownVersion, Known),
        _ => UnknownVersion,
    };
    match provider {
        Provider::KernelFile => {
            use file_event::*;
            match event_id {
                NAME_CREATE | NAME_DELETE => by_version(Some(FILE_NAME), None),
                CREATE | CREATE_NEW_FILE => by_version(Some(FILE_CREATE_V0), Some(FILE_CREATE)),
                CLEANUP | CLOSE => by_version(Some(FILE_CLOSE_V0), Some(FILE_CLOSE)),
                WRITE => by_version(Some(FILE_WRITE_V0), Some(FILE_WRITE)),
                SET_INFORMATION => by_version(Some(FILE_INFO_V0), Some(FILE_INFO)),
                SET_SECURITY => by_version(None, Some(FILE_INFO)),
                OPERATION_END => by_version(Some(FILE_OPERATION_END), None),
                DELETE_PATH | RENAME_PATH | SET_LINK_PATH => {
                    by_version(Some(FILE_INFO_PATH_V0), Some(FILE_INFO_PATH))
                }
                _ => NotConsumed,
            }
        }
        Provider::KernelRegistry => {
            use registry_event::*;
            match event_id {
                CREATE_KEY | OPEN_KEY => by_version(Some(REG_CREATE_OPEN), None),
                DELETE_KEY | CLOSE_KEY | SET_SECURITY_KEY => by_version(Some(REG_KEY), None),
                SET_VALUE_KEY => by_version(Some(REG_SET_VALUE), None),
                DELETE_VALUE_KEY => by_version(Some(REG_DELETE_VALUE), None),
                _ => NotConsumed,
            }
        }
    }
}

/// Whether fim decodes this event id at all (lets the session drop the rest
/// before copying anything).
pub fn is_consumed(provider: Provider, event_id: u16) -> bool {
    match provider {
        Provider::KernelFile => CONSUMED_FILE_EVENTS.contains(&event_id),
        Provider::KernelRegistry => CONSUMED_REGISTRY_EVENTS.contains(&event_id),
    }
}

/// Whether a consumed event id has a layout in this version. The decoder
/// asks this of fixture events too, so replay and the live session count
/// unknown versions the same way.
pub fn is_known_version(provider: Provider, event_id: u16, version: u8) -> bool {
    matches!(lookup(provider, event_id, version), Lookup::Known(_))
}

/// Header facts the session extracts from EVENT_RECORD.
#[derive(Debug, Clone, Copy)]
pub struct RecordHeader {
    pub provider: Provider,
    pub event_id: u16,
    pub version: u8,
    pub time_ms: u64,
    pub pid: u32,
    pub tid: u32,
    /// EVENT_HEADER_FLAG_32_BIT_HEADER: pointers are 4 bytes.
    pub pointer_size: usize,
}

/// The outcome of parsing one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Event(EtwEvent),
    /// An event id fim does not use.
    NotConsumed,
    /// A consumed event id in a version without a layout: the header only
    /// (no fields), for the decoder to count, never decoded by guessing.
    UnknownVersion(EtwEvent),
}

/// Parse a record's UserData into a normalised event. Trailing bytes are
/// tolerated; missing bytes are errors, except that a final string may end
/// at the end of the record without its terminator.
pub fn parse_user_data(header: RecordHeader, data: &[u8]) -> Result<Parsed> {
    let event = |fields| EtwEvent {
        provider: header.provider,
        event_id: header.event_id,
        version: header.version,
        time_ms: header.time_ms,
        pid: header.pid,
        tid: header.tid,
        fields,
    };
    let props = match lookup(header.provider, header.event_id, header.version) {
        Lookup::Known(props) => props,
        Lookup::NotConsumed => return Ok(Parsed::NotConsumed),
        Lookup::UnknownVersion => return Ok(Parsed::UnknownVersion(event(BTreeMap::new()))),
    };
    let mut fields = BTreeMap::new();
    let mut at = 0usize;
    for (i, (name, kind)) in props.iter().enumerate() {
        let last = i + 1 == props.len();
        let value = read_property(data, &mut at, *kind, header.pointer_size, last, &fields)
            .with_context(|| {
                format!(
                    "{:?} event {} v{}: property {name} at byte {at}",
                    header.provider, header.event_id, header.version
                )
            })?;
        fields.insert((*name).to_string(), value);
    }
    Ok(Parsed::Event(event(fields)))
}

fn take<'a>(data: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8]> {
    let end = at.checked_add(n).context("offset overflow")?;
    let Some(bytes) = data.get(*at..end) else {
        bail!(
            "needs {n} bytes, only {} left",
            data.len().saturating_sub(*at)
        );
    };
    *at = end;
    Ok(bytes)
}

fn read_property(
    data: &[u8],
    at: &mut usize,
    kind: Kind,
    pointer_size: usize,
    last: bool,
    earlier: &BTreeMap<String, FieldValue>,
) -> Result<FieldValue> {
    let le = |b: &[u8]| {
        b.iter()
            .rev()
            .fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
    };
    Ok(match kind {
        Pointer => FieldValue::Number(le(take(data, at, pointer_size)?)),
        U16 => FieldValue::Number(le(take(data, at, 2)?)),
        U32 => FieldValue::Number(le(take(data, at, 4)?)),
        U64 => FieldValue::Number(le(take(data, at, 8)?)),
        UnicodeString => {
            let mut units = Vec::new();
            loop {
                if last && data.len().saturating_sub(*at) < 2 {
                    // The record ends the string (an odd final byte is
                    // not a code unit and is ignored).
                    *at = data.len();
                    break;
                }
                let pair = take(data, at, 2).context("unterminated UnicodeString")?;
                let unit = u16::from_le_bytes([pair[0], pair[1]]);
                if unit == 0 {
                    break;
                }
                units.push(unit);
            }
            FieldValue::Text(String::from_utf16_lossy(&units))
        }
        BinarySizedBy(size_field) => {
            let Some(FieldValue::Number(n)) = earlier.get(size_field) else {
                bail!("size property {size_field} missing");
            };
            let n = usize::try_from(*n).context("binary size does not fit usize")?;
            FieldValue::Bytes(HexBytes::from_bytes(take(data, at, n)?))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16z(s: &str) -> Vec<u8> {
        s.encode_utf16()
            .chain([0])
            .flat_map(|u| u.to_le_bytes())
            .collect()
    }

    /// The version the current manifests give the event.
    fn header(provider: Provider, event_id: u16) -> RecordHeader {
        let version = match (provider, event_id) {
            (Provider::KernelRegistry, _) | (_, 10 | 11 | 24) => 0,
            _ => 1,
        };
        RecordHeader {
            provider,
            event_id,
            version,
            time_ms: 5,
            pid: 42,
            tid: 7,
            pointer_size: 8,
        }
    }

    fn event(parsed: Result<Parsed>) -> EtwEvent {
        match parsed.unwrap() {
            Parsed::Event(e) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn parses_kernel_file_create_layout() {
        let mut data = Vec::new();
        data.extend(0x1111u64.to_le_bytes()); // Irp
        data.extend(0xFFFF_A001u64.to_le_bytes()); // FileObject
        data.extend(9u32.to_le_bytes()); // IssuingThreadId
        data.extend(0x0200_0000u32.to_le_bytes()); // CreateOptions: FILE_CREATE
        data.extend(0x80u32.to_le_bytes());
        data.extend(3u32.to_le_bytes());
        data.extend(utf16z(r"\Device\HarddiskVolume3\x.txt"));
        let e = event(parse_user_data(header(Provider::KernelFile, 12), &data));
        assert_eq!(e.number("FileObject"), Some(0xFFFF_A001));
        assert_eq!(e.number("CreateOptions"), Some(0x0200_0000));
        assert_eq!(e.text("FileName"), Some(r"\Device\HarddiskVolume3\x.txt"));
        assert_eq!(e.pid, 42);
    }

    /// A v0 Write has the v1 length, but ThreadId is a pointer right after
    /// Irp: read with the v1 layout, FileObject would be the thread id.
    #[test]
    fn version_0_write_is_decoded_with_its_own_layout() {
        let mut data = Vec::new();
        data.extend(4096u64.to_le_bytes()); // ByteOffset
        data.extend(0x1111u64.to_le_bytes()); // Irp
        data.extend(0x2222u64.to_le_bytes()); // ThreadId (pointer in v0)
        data.extend(0xFFFF_A001u64.to_le_bytes()); // FileObject
        data.extend(0xFFFF_B002u64.to_le_bytes()); // FileKey
        data.extend(512u32.to_le_bytes()); // IOSize
        data.extend(0u32.to_le_bytes()); // IOFlags
        assert_eq!(data.len(), 48, "same length as a v1 Write");
        let mut h = header(Provider::KernelFile, 16);
        h.version = 0;
        let e = event(parse_user_data(h, &data));
        assert_eq!(e.number("FileObject"), Some(0xFFFF_A001));
        assert_eq!(e.number("FileKey"), Some(0xFFFF_B002));
        assert_eq!(e.number("IOSize"), Some(512));
        assert_eq!(e.version, 0);
    }

    #[test]
    fn version_0_create_and_delete_path_are_decoded() {
        let mut data = Vec::new();
        data.extend(0x1111u64.to_le_bytes()); // Irp
        data.extend(0x2222u64.to_le_bytes()); // ThreadId
        data.extend(0xFFFF_A001u64.to_le_bytes()); // FileObject
        data.extend(0x0100_0000u32.to_le_bytes()); // CreateOptions
        data.extend(0u32.to_le_bytes());
        data.extend(7u32.to_le_bytes());
        data.extend(utf16z(r"\Device\HarddiskVolume3\y"));
        let mut h = header(Provider::KernelFile, 12);
        h.version = 0;
        let e = event(parse_user_data(h, &data));
        assert_eq!(e.number("FileObject"), Some(0xFFFF_A001));
        assert_eq!(e.text("FileName"), Some(r"\Device\HarddiskVolume3\y"));

        let mut data = Vec::new();
        for p in [0x1111u64, 0x2222, 0xFFFF_A001, 0xFFFF_B002, 0] {
            data.extend(p.to_le_bytes());
        }
        data.extend(13u32.to_le_bytes()); // InfoClass
        data.extend(utf16z(r"\Device\HarddiskVolume3\y"));
        let mut h = header(Provider::KernelFile, 26);
        h.version = 0;
        let e = event(parse_user_data(h, &data));
        assert_eq!(e.number("FileKey"), Some(0xFFFF_B002));
        assert_eq!(e.number("InfoClass"), Some(13));
    }

    #[test]
    fn unknown_versions_are_reported_not_guessed() {
        let data = [0u8; 64];
        for (provider, id, version) in [
            (Provider::KernelFile, 16, 2),
            (Provider::KernelFile, 31, 0),
            (Provider::KernelFile, 24, 1),
            (Provider::KernelRegistry, 5, 1),
        ] {
            let mut h = header(provider, id);
            h.version = version;
            match parse_user_data(h, &data).unwrap() {
                Parsed::UnknownVersion(e) => {
                    assert_eq!((e.event_id, e.version), (id, version));
                    assert!(e.fields.is_empty());
                }
                other => panic!("{provider:?} {id} v{version}: {other:?}"),
            }
            assert!(!is_known_version(provider, id, version));
        }
        assert!(is_known_version(Provider::KernelFile, 16, 0));
        assert!(is_known_version(Provider::KernelFile, 16, 1));
    }

    #[test]
    fn final_string_without_terminator_ends_at_the_record_end() {
        let mut data = Vec::new();
        data.extend(0x1234u64.to_le_bytes());
        let name: Vec<u8> = r"\Device\HarddiskVolume1\a"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        data.extend(&name);
        let e = event(parse_user_data(header(Provider::KernelFile, 10), &data[..]));
        assert_eq!(e.text("FileName"), Some(r"\Device\HarddiskVolume1\a"));
        // An odd final byte is not a code unit.
        let mut odd = data.clone();
        odd.push(0x41);
        let e = event(parse_user_data(header(Provider::KernelFile, 10), &odd));
        assert_eq!(e.text("FileName"), Some(r"\Device\HarddiskVolume1\a"));
        // A registry RelativeName (the last property) likewise.
        let mut data = Vec::new();
        data.extend(0u64.to_le_bytes());
        data.extend(0xAAu64.to_le_bytes());
        data.extend(0u32.to_le_bytes());
        data.extend(1u32.to_le_bytes());
        data.extend(utf16z(""));
        data.extend("SOFTWARE\\X".encode_utf16().flat_map(|u| u.to_le_bytes()));
        let mut h = header(Provider::KernelRegistry, 1);
        h.version = 0;
        let e = event(parse_user_data(h, &data));
        assert_eq!(e.text("RelativeName"), Some("SOFTWARE\\X"));
    }

    #[test]
    fn unterminated_string_before_other_properties_is_an_error() {
        let mut data = Vec::new();
        data.extend(0xAAu64.to_le_bytes());
        data.extend(0u32.to_le_bytes());
        data.extend("Run".encode_utf16().flat_map(|u| u.to_le_bytes()));
        let mut h = header(Provider::KernelRegistry, 6);
        h.version = 0;
        let err = parse_user_data(h, &data).unwrap_err();
        assert!(format!("{err:#}").contains("property KeyName"), "{err:#}");
    }

    #[test]
    fn parses_set_value_with_captured_data() {
        let mut data = Vec::new();
        data.extend(0xABCDu64.to_le_bytes());
        data.extend(0u32.to_le_bytes());
        data.extend(1u32.to_le_bytes()); // REG_SZ
        data.extend(4u32.to_le_bytes());
        data.extend(utf16z(r"\REGISTRY\MACHINE\SOFTWARE\x"));
        data.extend(utf16z("v"));
        data.extend(4u16.to_le_bytes());
        data.extend([b'a', 0, 0, 0]);
        data.extend(0u32.to_le_bytes());
        data.extend(0u32.to_le_bytes());
        data.extend(0u16.to_le_bytes());
        let mut h = header(Provider::KernelRegistry, 5);
        h.version = 0;
        let e = event(parse_user_data(h, &data));
        assert_eq!(e.text("ValueName"), Some("v"));
        assert_eq!(
            e.fields.get("CapturedData"),
            Some(&FieldValue::Bytes(HexBytes {
                hex: "61000000".into()
            }))
        );
    }

    #[test]
    fn truncated_record_is_an_error_with_context() {
        let data = 1u64.to_le_bytes();
        let mut h = header(Provider::KernelRegistry, 3);
        h.version = 0;
        let err = parse_user_data(h, &data).unwrap_err();
        assert!(format!("{err:#}").contains("property Status"), "{err:#}");
    }

    #[test]
    fn ignored_events_are_not_parsed() {
        assert_eq!(
            parse_user_data(header(Provider::KernelFile, 15), &[]).unwrap(),
            Parsed::NotConsumed
        );
        assert!(!is_consumed(Provider::KernelRegistry, 7));
        assert!(!is_consumed(Provider::KernelFile, 15));
    }

    /// The event-id filter list and the layout table agree: every consumed
    /// id has a layout in some version, every other id has none.
    #[test]
    fn consumed_ids_match_the_layout_table() {
        for provider in [Provider::KernelFile, Provider::KernelRegistry] {
            for id in 0..100u16 {
                let has_layout = (0..4).any(|v| is_known_version(provider, id, v));
                assert_eq!(
                    is_consumed(provider, id),
                    has_layout,
                    "{provider:?} event {id}"
                );
            }
        }
    }

    #[test]
    fn thirty_two_bit_pointers_are_honoured() {
        let mut data = Vec::new();
        data.extend(0x1234u32.to_le_bytes());
        data.extend(utf16z(r"\Device\HarddiskVolume1\a"));
        let mut h = header(Provider::KernelFile, 10);
        h.version = 0;
        h.pointer_size = 4;
        let e = event(parse_user_data(h, &data));
        assert_eq!(e.number("FileKey"), Some(0x1234));
    }
}
