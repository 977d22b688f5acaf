//! Process enrichment: image path (QueryFullProcessImageNameW), command
//! line (NtQueryInformationProcess, ProcessCommandLineInformation) and
//! token user (SID and DOMAIN\name). Cached per pid, bounded.

use std::collections::HashMap;

use windows_sys::Wdk::System::Threading::NtQueryInformationProcess;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, HLOCAL, LocalFree};
use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
use windows_sys::Win32::Security::{
    GetTokenInformation, LookupAccountSidW, TOKEN_QUERY, TOKEN_USER, TokenUser,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
    QueryFullProcessImageNameW,
};

use super::wide::{from_wide, from_wide_ptr};
use crate::actor::{ProcessInfo, ProcessResolver};

/// PROCESSINFOCLASS ProcessCommandLineInformation (Windows 8.1+).
const PROCESS_COMMAND_LINE_INFORMATION: i32 = 60;

struct Handle(HANDLE);
impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: handle opened by this module.
        unsafe { CloseHandle(self.0) };
    }
}

fn image_path(process: &Handle) -> Option<String> {
    let mut buf = vec![0u16; 32_768];
    let mut len = buf.len() as u32;
    // SAFETY: buffer and length in characters.
    let ok = unsafe { QueryFullProcessImageNameW(process.0, 0, buf.as_mut_ptr(), &mut len) };
    (ok != 0).then(|| from_wide(&buf[..len as usize]))
}

fn command_line(process: &Handle) -> Option<String> {
    let mut buf = vec![0u8; 8192];
    let mut needed = 0u32;
    // SAFETY: buffer of the given size; the kernel writes a UNICODE_STRING
    // header followed by the string it points to.
    let status = unsafe {
        NtQueryInformationProcess(
            process.0,
            PROCESS_COMMAND_LINE_INFORMATION,
            buf.as_mut_ptr().cast(),
            buf.len() as u32,
            &mut needed,
        )
    };
    if status != 0 && needed as usize > buf.len() {
        buf.resize(needed as usize, 0);
        // SAFETY: as above with the larger buffer.
        let status = unsafe {
            NtQueryInformationProcess(
                process.0,
                PROCESS_COMMAND_LINE_INFORMATION,
                buf.as_mut_ptr().cast(),
                buf.len() as u32,
                &mut needed,
            )
        };
        if status != 0 {
            return None;
        }
    } else if status != 0 {
        return None;
    }
    let length = usize::from(u16::from_le_bytes([buf[0], buf[1]]));
    let ptr_size = std::mem::size_of::<usize>();
    let mut ptr_bytes = [0u8; 8];
    ptr_bytes[..ptr_size].copy_from_slice(&buf[ptr_size..2 * ptr_size]);
    let ptr = usize::from_le_bytes(ptr_bytes) as *const u16;
    let start = buf.as_ptr() as usize;
    // The string must lie inside our buffer; anything else is not trusted.
    if (ptr as usize) < start || (ptr as usize) + length > start + buf.len() {
        return None;
    }
    // SAFETY: bounds checked above.
    let units = unsafe { std::slice::from_raw_parts(ptr, length / 2) };
    Some(String::from_utf16_lossy(units))
}

/// (SID string, DOMAIN\name) of a process token.
fn token_user(process: HANDLE) -> (Option<String>, Option<String>) {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: out pointer for the token handle.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return (None, None);
    }
    let token = Handle(token);
    let mut buf = vec![0u8; 256];
    let mut len = 0u32;
    // SAFETY: buffer and size; retried once with the reported size.
    let mut ok = unsafe {
        GetTokenInformation(
            token.0,
            TokenUser,
            buf.as_mut_ptr().cast(),
            buf.len() as u32,
            &mut len,
        )
    };
    if ok == 0 && len as usize > buf.len() {
        buf.resize(len as usize, 0);
        // SAFETY: as above.
        ok = unsafe {
            GetTokenInformation(
                token.0,
                TokenUser,
                buf.as_mut_ptr().cast(),
                buf.len() as u32,
                &mut len,
            )
        };
    }
    if ok == 0 {
        return (None, None);
    }
    // SAFETY: GetTokenInformation(TokenUser) filled a TOKEN_USER.
    let sid = unsafe { (*(buf.as_ptr() as *const TOKEN_USER)).User.Sid };
    let mut sid_str = std::ptr::null_mut();
    // SAFETY: sid is valid; the string is freed with LocalFree.
    let sid_string = unsafe {
        if ConvertSidToStringSidW(sid, &mut sid_str) != 0 {
            let s = from_wide_ptr(sid_str);
            LocalFree(sid_str as HLOCAL);
            Some(s)
        } else {
            None
        }
    };
    let mut name = vec![0u16; 256];
    let mut domain = vec![0u16; 256];
    let (mut name_len, mut domain_len, mut use_) = (256u32, 256u32, 0);
    // SAFETY: buffers with their lengths.
    let looked_up = unsafe {
        LookupAccountSidW(
            std::ptr::null(),
            sid,
            name.as_mut_ptr(),
            &mut name_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut use_,
        )
    };
    let account = (looked_up != 0).then(|| {
        let (d, n) = (from_wide(&domain), from_wide(&name));
        if d.is_empty() { n } else { format!("{d}\\{n}") }
    });
    (sid_string, account)
}

/// SID of the agent's own user (HKCU in rules means this user's hive).
pub fn current_user_sid() -> Option<String> {
    // SAFETY: pseudo handle, no close needed.
    token_user(unsafe { GetCurrentProcess() }).0
}

pub struct WindowsProcesses {
    cache: HashMap<u32, ProcessInfo>,
    capacity: usize,
}

impl WindowsProcesses {
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: HashMap::new(),
            capacity,
        }
    }

    fn query(pid: u32) -> Option<ProcessInfo> {
        // SAFETY: plain OpenProcess; null on failure.
        let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if raw.is_null() {
            return None;
        }
        let process = Handle(raw);
        let (user_sid, user_name) = token_user(process.0);
        Some(ProcessInfo {
            pid,
            image_path: image_path(&process),
            cmd_line: command_line(&process),
            user_sid,
            user_name,
        })
    }
}

impl ProcessResolver for WindowsProcesses {
    fn resolve(&mut self, pid: u32) -> Option<ProcessInfo> {
        if let Some(hit) = self.cache.get(&pid) {
            return Some(hit.clone());
        }
        let info = Self::query(pid)?;
        if self.cache.len() >= self.capacity {
            // Pids are reused: a full reset is cheaper than tracking exits.
            self.cache.clear();
        }
        self.cache.insert(pid, info.clone());
        Some(info)
    }
}
