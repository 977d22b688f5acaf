//! Property layouts of the events fim consumes, written from the providers'
//! documented manifests (Microsoft-Windows-Kernel-File event versions 0/1,
//! Microsoft-Windows-Kernel-Registry version 0). The real-time session copies
//! each record's UserData; this module turns those bytes into the normalised
//! [`EtwEvent`] without TDH, so the same parser is unit-tested on Linux.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use crate::etw_event::{EtwEvent, FieldValue, HexBytes, Provider};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Pointer,
    U16,
    U32,
    U64,
    /// NUL-terminated UTF-16LE.
    UnicodeString,
    /// Binary whose length is the value of an earlier numeric property.
    BinarySizedBy(&'static str),
}

use Kind::*;

const FILE_NAME: &[(&str, Kind)] = &[("FileKey", Pointer), ("FileName", UnicodeString)];
const FILE_CREATE: &[(&str, Kind)] = &[
    ("Irp", Pointer),
    ("FileObject", Pointer),
    ("IssuingThreadId", U32),
    ("CreateOptions", U32),
    ("CreateAttributes", U32),
    ("ShareAccess", U32),
    ("FileName", UnicodeString),
];
const FILE_CLOSE: &[(&str, Kind)] = &[
    ("Irp", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("IssuingThreadId", U32),
];
const FILE_WRITE: &[(&str, Kind)] = &[
    ("ByteOffset", U64),
    ("Irp", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("IssuingThreadId", U32),
    ("IOSize", U32),
    ("IOFlags", U32),
    ("ExtraFlags", U32),
];
const FILE_INFO: &[(&str, Kind)] = &[
    ("Irp", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("ExtraInformation", Pointer),
    ("IssuingThreadId", U32),
    ("InfoClass", U32),
];
const FILE_INFO_PATH: &[(&str, Kind)] = &[
    ("Irp", Pointer),
    ("FileObject", Pointer),
    ("FileKey", Pointer),
    ("ExtraInformation", Pointer),
    ("IssuingThreadId", U32),
    ("InfoClass", U32),
    ("FilePath", UnicodeString),
];

const REG_CREATE_OPEN: &[(&str, Kind)] = &[
    ("BaseObject", Pointer),
    ("KeyObject", Pointer),
    ("Status", U32),
    ("Disposition", U32),
    ("BaseName", UnicodeString),
    ("RelativeName", UnicodeString),
];
const REG_KEY: &[(&str, Kind)] = &[
    ("KeyObject", Pointer),
    ("Status", U32),
    ("KeyName", UnicodeString),
];
const REG_SET_VALUE: &[(&str, Kind)] = &[
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
const REG_DELETE_VALUE: &[(&str, Kind)] = &[
    ("KeyObject", Pointer),
    ("Status", U32),
    ("KeyName", UnicodeString),
    ("ValueName", UnicodeString),
];

/// The layout of an event fim consumes, or None for events it ignores.
fn layout(provider: Provider, event_id: u16) -> Option<&'static [(&'static str, Kind)]> {
    match provider {
        Provider::KernelFile => match event_id {
            10 | 11 => Some(FILE_NAME),
            12 | 30 => Some(FILE_CREATE),
            13 | 14 => Some(FILE_CLOSE),
            16 => Some(FILE_WRITE),
            17 | 18 | 19 | 31 => Some(FILE_INFO),
            26 | 27 => Some(FILE_INFO_PATH),
            _ => None,
        },
        Provider::KernelRegistry => match event_id {
            1 | 2 => Some(REG_CREATE_OPEN),
            3 | 13 | 15 => Some(REG_KEY),
            5 => Some(REG_SET_VALUE),
            6 => Some(REG_DELETE_VALUE),
            _ => None,
        },
    }
}

/// Whether fim decodes this event at all (lets the session drop the rest
/// before copying anything).
pub fn is_consumed(provider: Provider, event_id: u16) -> bool {
    layout(provider, event_id).is_some()
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

/// Parse a record's UserData into a normalised event. Trailing bytes are
/// tolerated (newer versions append properties); missing bytes are errors.
pub fn parse_user_data(header: RecordHeader, data: &[u8]) -> Result<Option<EtwEvent>> {
    let Some(props) = layout(header.provider, header.event_id) else {
        return Ok(None);
    };
    let mut fields = BTreeMap::new();
    let mut at = 0usize;
    for (name, kind) in props {
        let value = read_property(data, &mut at, *kind, header.pointer_size, &fields)
            .with_context(|| {
                format!(
                    "{:?} event {} v{}: property {name} at byte {at}",
                    header.provider, header.event_id, header.version
                )
            })?;
        fields.insert((*name).to_string(), value);
    }
    Ok(Some(EtwEvent {
        provider: header.provider,
        event_id: header.event_id,
        version: header.version,
        time_ms: header.time_ms,
        pid: header.pid,
        tid: header.tid,
        fields,
    }))
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

    fn header(provider: Provider, event_id: u16) -> RecordHeader {
        RecordHeader {
            provider,
            event_id,
            version: 1,
            time_ms: 5,
            pid: 42,
            tid: 7,
            pointer_size: 8,
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
        let e = parse_user_data(header(Provider::KernelFile, 12), &data)
            .unwrap()
            .unwrap();
        assert_eq!(e.number("FileObject"), Some(0xFFFF_A001));
        assert_eq!(e.number("CreateOptions"), Some(0x0200_0000));
        assert_eq!(e.text("FileName"), Some(r"\Device\HarddiskVolume3\x.txt"));
        assert_eq!(e.pid, 42);
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
        let e = parse_user_data(header(Provider::KernelRegistry, 5), &data)
            .unwrap()
            .unwrap();
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
        let err = parse_user_data(header(Provider::KernelRegistry, 3), &data).unwrap_err();
        assert!(format!("{err:#}").contains("property Status"), "{err:#}");
    }

    #[test]
    fn ignored_events_are_not_parsed() {
        assert!(
            parse_user_data(header(Provider::KernelFile, 15), &[])
                .unwrap()
                .is_none()
        );
        assert!(!is_consumed(Provider::KernelRegistry, 7));
    }

    #[test]
    fn thirty_two_bit_pointers_are_honoured() {
        let mut data = Vec::new();
        data.extend(0x1234u32.to_le_bytes());
        data.extend(utf16z(r"\Device\HarddiskVolume1\a"));
        let mut h = header(Provider::KernelFile, 10);
        h.pointer_size = 4;
        let e = parse_user_data(h, &data).unwrap().unwrap();
        assert_eq!(e.number("FileKey"), Some(0x1234));
    }
}
