//! Names of registry key objects opened before the ETW session started.
//! Kernel-Registry names a key only in the event that opens it (and
//! KeyName is empty on many builds), so a key a service opened long ago
//! never resolves from ETW alone. The system handle table lists every open
//! handle with its object address (the events' KeyObject); each key
//! handle is duplicated and named with NtQueryKey(KeyNameInformation).
//! The decoder keeps only the names of watched keys.

use std::collections::HashMap;
use std::ffi::c_void;

use anyhow::{Result, bail};
use windows_sys::Wdk::System::Registry::{KeyNameInformation, NtQueryKey};
use windows_sys::Wdk::System::SystemInformation::NtQuerySystemInformation;
use windows_sys::Win32::Foundation::{
    CloseHandle, DUPLICATE_SAME_ACCESS, DuplicateHandle, HANDLE, STATUS_INFO_LENGTH_MISMATCH,
};
use windows_sys::Win32::System::Registry::RegOpenKeyExW;
use windows_sys::Win32::System::Registry::{HKEY, HKEY_LOCAL_MACHINE, KEY_READ, RegCloseKey};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetCurrentProcessId, OpenProcess, PROCESS_DUP_HANDLE,
};

use super::wide::to_wide;

/// SystemExtendedHandleInformation.
const SYSTEM_EXTENDED_HANDLE_INFORMATION: i32 = 64;

/// SYSTEM_HANDLE_TABLE_ENTRY_INFO_EX.
#[repr(C)]
#[derive(Clone, Copy)]
struct HandleEntry {
    object: *mut c_void,
    unique_process_id: usize,
    handle_value: usize,
    granted_access: u32,
    creator_back_trace_index: u16,
    object_type_index: u16,
    handle_attributes: u32,
    reserved: u32,
}

/// The whole handle table (SYSTEM_HANDLE_INFORMATION_EX).
fn handle_table() -> Result<Vec<HandleEntry>> {
    let mut size: usize = 1 << 20;
    loop {
        let mut buf = vec![0u64; size / 8];
        let mut needed = 0u32;
        // SAFETY: the buffer is `size` bytes and 8-byte aligned.
        let status = unsafe {
            NtQuerySystemInformation(
                SYSTEM_EXTENDED_HANDLE_INFORMATION,
                buf.as_mut_ptr().cast(),
                size as u32,
                &mut needed,
            )
        };
        if status == STATUS_INFO_LENGTH_MISMATCH {
            size = (needed as usize).max(size * 2) + (1 << 16);
            if size > 1 << 30 {
                bail!("handle table larger than 1 GiB");
            }
            continue;
        }
        if status < 0 {
            bail!(
                "NtQuerySystemInformation(SystemExtendedHandleInformation): NTSTATUS 0x{status:08x}"
            );
        }
        let count = buf[0] as usize;
        let entries = buf.as_ptr().wrapping_add(2).cast::<HandleEntry>();
        let max = (size - 16) / std::mem::size_of::<HandleEntry>();
        // SAFETY: the kernel wrote `count` entries after the two header words.
        let slice = unsafe { std::slice::from_raw_parts(entries, count.min(max)) };
        return Ok(slice.to_vec());
    }
}

/// The kernel name of a key handle (`\REGISTRY\MACHINE\...`).
fn key_name(key: HANDLE) -> Option<String> {
    let mut buf = vec![0u32; 2048];
    let mut len = 0u32;
    // SAFETY: the buffer's size in bytes is passed.
    let status = unsafe {
        NtQueryKey(
            key,
            KeyNameInformation,
            buf.as_mut_ptr().cast(),
            (buf.len() * 4) as u32,
            &mut len,
        )
    };
    if status < 0 {
        return None;
    }
    let bytes = buf[0] as usize;
    // SAFETY: KEY_NAME_INFORMATION: NameLength, then NameLength bytes of UTF-16.
    let units = unsafe {
        std::slice::from_raw_parts(buf.as_ptr().add(1).cast::<u16>(), (bytes / 2).min(4094))
    };
    Some(String::from_utf16_lossy(units))
}

/// The object type index of registry keys on this system: the type of a
/// key handle this process opens itself.
fn key_type_index(table: &[HandleEntry]) -> Option<u16> {
    let mut key: HKEY = std::ptr::null_mut();
    let path = to_wide("SOFTWARE");
    // SAFETY: opening a key for reading; closed below.
    if unsafe { RegOpenKeyExW(HKEY_LOCAL_MACHINE, path.as_ptr(), 0, KEY_READ, &mut key) } != 0 {
        return None;
    }
    // SAFETY: trivial.
    let pid = unsafe { GetCurrentProcessId() } as usize;
    let fresh = handle_table().ok();
    let table = fresh.as_deref().unwrap_or(table);
    let index = table
        .iter()
        .find(|e| e.unique_process_id == pid && e.handle_value == key as usize)
        .map(|e| e.object_type_index);
    // SAFETY: our own key.
    unsafe { RegCloseKey(key) };
    index
}

/// (KeyObject, kernel name) of every key handle open now, in any process
/// this one may duplicate handles from (Administrator: nearly all).
pub fn open_key_objects() -> Result<Vec<(u64, String)>> {
    let table = handle_table()?;
    let Some(key_type) = key_type_index(&table) else {
        bail!("could not find the registry key object type in the handle table");
    };
    // SAFETY: trivial.
    let (me, my_pid) = unsafe { (GetCurrentProcess(), GetCurrentProcessId() as usize) };
    let mut processes: HashMap<usize, HANDLE> = HashMap::new();
    let mut out = Vec::new();
    for entry in table.iter().filter(|e| e.object_type_index == key_type) {
        let process = *processes.entry(entry.unique_process_id).or_insert_with(|| {
            if entry.unique_process_id == my_pid {
                return me;
            }
            // SAFETY: may fail (protected processes): null then.
            unsafe { OpenProcess(PROCESS_DUP_HANDLE, 0, entry.unique_process_id as u32) }
        });
        if process.is_null() {
            continue;
        }
        let mut dup: HANDLE = std::ptr::null_mut();
        // SAFETY: duplicating a handle value of that process into ours.
        let ok = unsafe {
            DuplicateHandle(
                process,
                entry.handle_value as HANDLE,
                me,
                &mut dup,
                0,
                0,
                DUPLICATE_SAME_ACCESS,
            )
        };
        if ok == 0 {
            continue;
        }
        if let Some(name) = key_name(dup) {
            out.push((entry.object as u64, name));
        }
        // SAFETY: our duplicate.
        unsafe { CloseHandle(dup) };
    }
    for (pid, handle) in processes {
        if pid != my_pid && !handle.is_null() {
            // SAFETY: process handles opened above.
            unsafe { CloseHandle(handle) };
        }
    }
    Ok(out)
}
