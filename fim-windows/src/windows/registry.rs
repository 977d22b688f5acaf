//! Registry snapshot reader (values, types, BLAKE3 of data, subkeys,
//! security descriptor digest) plus the few write helpers the Wine tests use.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use windows_sys::Win32::Foundation::{
    ERROR_FILE_NOT_FOUND, ERROR_MORE_DATA, ERROR_NO_MORE_ITEMS, ERROR_SUCCESS,
};
use windows_sys::Win32::Security::{
    DACL_SECURITY_INFORMATION, GROUP_SECURITY_INFORMATION, OWNER_SECURITY_INFORMATION,
};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE, HKEY_USERS, KEY_READ, KEY_WRITE,
    REG_OPTION_NON_VOLATILE, RegCloseKey, RegCreateKeyExW, RegDeleteTreeW, RegDeleteValueW,
    RegEnumKeyExW, RegEnumValueW, RegGetKeySecurity, RegOpenKeyExW, RegQueryInfoKeyW,
    RegQueryValueExW, RegSetValueExW,
};

use super::wide::{from_wide, to_wide};
use crate::change::{RegistryValueState, blake3_hex};
use crate::snapshot::{KeySnapshot, RegistryReader, RegistrySnapshot, take_snapshot};

/// An open key, closed on drop.
pub struct Key(pub HKEY);

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegOpenKeyExW/RegCreateKeyExW.
        unsafe { RegCloseKey(self.0) };
    }
}

fn check(code: u32, what: &str) -> Result<()> {
    if code == ERROR_SUCCESS {
        Ok(())
    } else {
        bail!("{what}: Win32 error {code}")
    }
}

/// Split `HKLM\a\b` into the predefined root and the subkey.
pub fn split_root(path: &str) -> Result<(HKEY, &str)> {
    let (root, rest) = path.split_once('\\').unwrap_or((path, ""));
    let hkey = match root.to_ascii_uppercase().as_str() {
        "HKLM" => HKEY_LOCAL_MACHINE,
        "HKU" => HKEY_USERS,
        // The agent rewrites HKCU to HKU\<sid>; the reader still accepts it
        // so tests can use a private HKCU key.
        "HKCU" => HKEY_CURRENT_USER,
        _ => bail!("key path {path:?} must start with HKLM, HKU or HKCU"),
    };
    Ok((hkey, rest))
}

/// Open a key for reading; Ok(None) if it does not exist.
pub fn open_key(path: &str, access: u32) -> Result<Option<Key>> {
    let (root, sub) = split_root(path)?;
    let wide = to_wide(sub);
    let mut hkey: HKEY = std::ptr::null_mut();
    // SAFETY: valid root handle, NUL-terminated name, out pointer.
    let code = unsafe { RegOpenKeyExW(root, wide.as_ptr(), 0, access, &mut hkey) };
    if code == ERROR_FILE_NOT_FOUND {
        return Ok(None);
    }
    check(code, &format!("RegOpenKeyExW {path}"))?;
    Ok(Some(Key(hkey)))
}

pub fn create_key(path: &str) -> Result<Key> {
    let (root, sub) = split_root(path)?;
    let wide = to_wide(sub);
    let mut hkey: HKEY = std::ptr::null_mut();
    // SAFETY: valid arguments; optional pointers are null.
    let code = unsafe {
        RegCreateKeyExW(
            root,
            wide.as_ptr(),
            0,
            std::ptr::null(),
            REG_OPTION_NON_VOLATILE,
            KEY_READ | KEY_WRITE,
            std::ptr::null(),
            &mut hkey,
            std::ptr::null_mut(),
        )
    };
    check(code, &format!("RegCreateKeyExW {path}"))?;
    Ok(Key(hkey))
}

pub fn set_value(key: &Key, name: &str, value_type: u32, data: &[u8]) -> Result<()> {
    let wide = to_wide(name);
    let len = u32::try_from(data.len())?;
    // SAFETY: data pointer/length pair is valid.
    let code = unsafe { RegSetValueExW(key.0, wide.as_ptr(), 0, value_type, data.as_ptr(), len) };
    check(code, &format!("RegSetValueExW {name}"))
}

pub fn delete_value(key: &Key, name: &str) -> Result<()> {
    let wide = to_wide(name);
    // SAFETY: valid key and name.
    check(
        unsafe { RegDeleteValueW(key.0, wide.as_ptr()) },
        &format!("RegDeleteValueW {name}"),
    )
}

/// Delete a key and everything below it.
pub fn delete_tree(path: &str) -> Result<()> {
    let (root, sub) = split_root(path)?;
    if sub.is_empty() {
        bail!("refusing to delete a hive root");
    }
    let wide = to_wide(sub);
    // SAFETY: valid root and NUL-terminated subkey.
    let code = unsafe { RegDeleteTreeW(root, wide.as_ptr()) };
    if code == ERROR_FILE_NOT_FOUND {
        return Ok(());
    }
    check(code, &format!("RegDeleteTreeW {path}"))
}

/// A REG_DWORD value; None if the key or value is missing or not a DWORD.
pub fn read_dword(path: &str, name: &str) -> Result<Option<u32>> {
    let Some(key) = open_key(path, KEY_READ)? else {
        return Ok(None);
    };
    let wide = to_wide(name);
    let mut value_type = 0u32;
    let mut data = [0u8; 4];
    let mut len = 4u32;
    // SAFETY: 4-byte buffer with its length.
    let code = unsafe {
        RegQueryValueExW(
            key.0,
            wide.as_ptr(),
            std::ptr::null(),
            &mut value_type,
            data.as_mut_ptr(),
            &mut len,
        )
    };
    const REG_DWORD: u32 = 4;
    Ok(
        (code == ERROR_SUCCESS && value_type == REG_DWORD && len == 4)
            .then(|| u32::from_le_bytes(data)),
    )
}

struct KeyInfo {
    subkeys: u32,
    max_subkey_len: u32,
    values: u32,
    max_value_name_len: u32,
    max_value_len: u32,
}

fn query_info(key: &Key) -> Result<KeyInfo> {
    let mut info = KeyInfo {
        subkeys: 0,
        max_subkey_len: 0,
        values: 0,
        max_value_name_len: 0,
        max_value_len: 0,
    };
    let null = std::ptr::null_mut();
    // SAFETY: out pointers are valid or null as allowed.
    let code = unsafe {
        RegQueryInfoKeyW(
            key.0,
            null as _,
            null as _,
            std::ptr::null(),
            &mut info.subkeys,
            &mut info.max_subkey_len,
            null as _,
            &mut info.values,
            &mut info.max_value_name_len,
            &mut info.max_value_len,
            null as _,
            null as _,
        )
    };
    check(code, "RegQueryInfoKeyW")?;
    Ok(info)
}

fn subkey_names(key: &Key, info: &KeyInfo) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut buf = vec![0u16; info.max_subkey_len as usize + 2];
    for index in 0.. {
        let mut len = buf.len() as u32;
        let null = std::ptr::null_mut();
        // SAFETY: buffer and its length in characters.
        let code = unsafe {
            RegEnumKeyExW(
                key.0,
                index,
                buf.as_mut_ptr(),
                &mut len,
                std::ptr::null(),
                null as _,
                null as _,
                null as _,
            )
        };
        match code {
            ERROR_NO_MORE_ITEMS => break,
            ERROR_MORE_DATA => {
                // A longer name appeared since RegQueryInfoKeyW: grow, retry.
                buf.resize(buf.len() * 2 + 256, 0);
                continue;
            }
            _ => check(code, "RegEnumKeyExW")?,
        }
        names.push(from_wide(&buf[..len as usize]));
    }
    names.sort_by_key(|n| n.to_lowercase());
    Ok(names)
}

fn values(key: &Key, info: &KeyInfo) -> Result<BTreeMap<String, RegistryValueState>> {
    let mut out = BTreeMap::new();
    let mut name = vec![0u16; info.max_value_name_len as usize + 2];
    let mut data = vec![0u8; info.max_value_len as usize + 2];
    let mut index = 0u32;
    loop {
        let mut name_len = name.len() as u32;
        let mut data_len = data.len() as u32;
        let mut value_type = 0u32;
        // SAFETY: buffers with their lengths.
        let code = unsafe {
            RegEnumValueW(
                key.0,
                index,
                name.as_mut_ptr(),
                &mut name_len,
                std::ptr::null(),
                &mut value_type,
                data.as_mut_ptr(),
                &mut data_len,
            )
        };
        match code {
            ERROR_NO_MORE_ITEMS => break,
            ERROR_MORE_DATA => {
                // Value grew between calls: enlarge both buffers, retry.
                name.resize(name.len() * 2 + 256, 0);
                data.resize((data_len as usize).max(data.len() * 2), 0);
                continue;
            }
            _ => check(code, "RegEnumValueW")?,
        }
        let bytes = &data[..data_len as usize];
        out.insert(
            from_wide(&name[..name_len as usize]),
            RegistryValueState {
                value_type,
                size: u64::from(data_len),
                blake3: Some(blake3_hex(bytes)),
            },
        );
        index += 1;
    }
    Ok(out)
}

/// BLAKE3 of the self-relative security descriptor (owner, group, DACL);
/// None if the key's security cannot be read (access denied).
pub fn security_digest(key: &Key) -> Option<String> {
    let info = OWNER_SECURITY_INFORMATION | GROUP_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION;
    let mut len = 0u32;
    // SAFETY: size query with a null buffer.
    unsafe { RegGetKeySecurity(key.0, info, std::ptr::null_mut(), &mut len) };
    if len == 0 {
        return None;
    }
    let mut buf = vec![0u8; len as usize];
    // SAFETY: buffer of the reported size.
    let code = unsafe { RegGetKeySecurity(key.0, info, buf.as_mut_ptr().cast(), &mut len) };
    (code == ERROR_SUCCESS).then(|| blake3_hex(&buf[..len as usize]))
}

pub fn read_key(key: &Key) -> Result<KeySnapshot> {
    let info = query_info(key)?;
    Ok(KeySnapshot {
        values: values(key, &info)?,
        subkeys: subkey_names(key, &info)?,
        security_digest: security_digest(key),
    })
}

/// The live registry, for the platform-independent snapshot walk.
pub struct WinRegistry;

impl RegistryReader for WinRegistry {
    fn read_key(&self, path: &str) -> Result<Option<KeySnapshot>> {
        let Some(key) = open_key(path, KEY_READ)? else {
            return Ok(None);
        };
        // A key deleted or locked mid-walk is skipped, not fatal.
        Ok(read_key(&key).ok())
    }

    fn subkeys(&self, path: &str) -> Result<Option<Vec<String>>> {
        let Some(key) = open_key(path, KEY_READ)? else {
            return Ok(None);
        };
        Ok(query_info(&key)
            .and_then(|info| subkey_names(&key, &info))
            .ok())
    }
}

/// Snapshot the given roots (path or pattern with `*`/`**` segments,
/// recursive), visiting at most `max_keys`; see `snapshot::take_snapshot`.
pub fn read_snapshot(
    roots: &[(String, bool)],
    max_keys: usize,
    taken_ms: u64,
) -> Result<RegistrySnapshot> {
    take_snapshot(&WinRegistry, roots, max_keys, taken_ms)
}
