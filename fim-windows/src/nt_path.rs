//! NT device paths (\Device\HarddiskVolume3\...) to DOS paths (C:\...).
//! The agent fills the map from QueryDosDeviceW at start; fixtures carry
//! their own map so decoding is deterministic on Linux.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct DeviceMap {
    /// Lower-cased NT device name -> drive ("C:").
    devices: BTreeMap<String, String>,
}

/// Result of mapping: the path and whether it was fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedPath {
    pub path: String,
    pub resolved: bool,
}

impl DeviceMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut map = Self::new();
        for (device, drive) in pairs {
            map.insert(&device, &drive);
        }
        map
    }

    pub fn insert(&mut self, nt_device: &str, drive: &str) {
        let device = nt_device.trim_end_matches('\\').to_ascii_lowercase();
        self.devices
            .insert(device, drive.trim_end_matches('\\').to_string());
    }

    /// Map an NT path to a DOS path. Unknown devices keep the NT path and
    /// report `resolved: false`, so nothing is silently dropped.
    pub fn to_dos(&self, nt_path: &str) -> MappedPath {
        // Win32 namespace prefixes that already hold a DOS path.
        for prefix in [r"\??\", r"\\?\", r"\DosDevices\", r"\GLOBAL??\"] {
            if let Some(rest) = strip_prefix_ci(nt_path, prefix) {
                return MappedPath {
                    path: rest.to_string(),
                    resolved: true,
                };
            }
        }
        if let Some(rest) = strip_prefix_ci(nt_path, r"\Device\Mup\") {
            return MappedPath {
                path: format!(r"\\{rest}"),
                resolved: true,
            };
        }
        if looks_like_dos(nt_path) {
            return MappedPath {
                path: nt_path.to_string(),
                resolved: true,
            };
        }
        let lower = nt_path.to_ascii_lowercase();
        // Longest device first so \Device\HarddiskVolume10 wins over ...1.
        let best = self
            .devices
            .iter()
            .filter(|(device, _)| {
                lower.starts_with(device.as_str())
                    && matches!(lower.as_bytes().get(device.len()), None | Some(b'\\'))
            })
            .max_by_key(|(device, _)| device.len());
        match best {
            Some((device, drive)) => {
                let rest = &nt_path[device.len()..];
                let rest = if rest.is_empty() { "\\" } else { rest };
                MappedPath {
                    path: format!("{drive}{rest}"),
                    resolved: true,
                }
            }
            None => MappedPath {
                path: nt_path.to_string(),
                resolved: false,
            },
        }
    }
}

fn looks_like_dos(path: &str) -> bool {
    let b = path.as_bytes();
    b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\'
}

pub(crate) fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> DeviceMap {
        DeviceMap::from_pairs([
            (r"\Device\HarddiskVolume1".to_string(), "D:".to_string()),
            (r"\Device\HarddiskVolume10".to_string(), "E:".to_string()),
            (r"\Device\HarddiskVolume3".to_string(), "C:".to_string()),
        ])
    }

    #[test]
    fn maps_volume_to_drive_letter_longest_first() {
        let m = map();
        assert_eq!(
            m.to_dos(r"\Device\HarddiskVolume3\Windows\x.dll").path,
            r"C:\Windows\x.dll"
        );
        assert_eq!(m.to_dos(r"\Device\HarddiskVolume10\a").path, r"E:\a");
        assert_eq!(m.to_dos(r"\device\harddiskvolume1\B").path, r"D:\B");
        assert_eq!(m.to_dos(r"\Device\HarddiskVolume3").path, r"C:\");
    }

    #[test]
    fn does_not_match_a_device_prefix_inside_a_longer_name() {
        let m = DeviceMap::from_pairs([(r"\Device\HarddiskVolume1".to_string(), "D:".to_string())]);
        let p = m.to_dos(r"\Device\HarddiskVolume12\x");
        assert!(!p.resolved);
        assert_eq!(p.path, r"\Device\HarddiskVolume12\x");
    }

    #[test]
    fn handles_win32_prefixes_and_unc() {
        let m = map();
        assert_eq!(m.to_dos(r"\??\C:\a.txt").path, r"C:\a.txt");
        assert_eq!(m.to_dos(r"\Device\Mup\srv\share\f").path, r"\\srv\share\f");
        assert_eq!(m.to_dos(r"C:\already").path, r"C:\already");
    }
}
