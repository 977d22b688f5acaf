//! RegNotifyChangeKeyValue watchers: wake the agent as soon as a watched
//! key changes, so the snapshot runs early instead of at the next interval.

use anyhow::{Context, Result, bail};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, WAIT_OBJECT_0, WAIT_TIMEOUT};
use windows_sys::Win32::System::Registry::{
    KEY_NOTIFY, KEY_READ, REG_NOTIFY_CHANGE_ATTRIBUTES, REG_NOTIFY_CHANGE_LAST_SET,
    REG_NOTIFY_CHANGE_NAME, REG_NOTIFY_CHANGE_SECURITY, RegNotifyChangeKeyValue,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, WaitForMultipleObjects, WaitForSingleObject,
};

use super::registry::{Key, open_key};

pub struct KeyWatcher {
    pub path: String,
    key: Key,
    event: HANDLE,
    recursive: bool,
}

// SAFETY: the key and event handles are process-wide kernel handles; the
// watcher is used by one thread at a time.
unsafe impl Send for KeyWatcher {}

impl KeyWatcher {
    /// Open `path` and arm the first notification. Ok(None) if the key does
    /// not exist.
    pub fn new(path: &str, recursive: bool) -> Result<Option<Self>> {
        let Some(key) = open_key(path, KEY_NOTIFY | KEY_READ)? else {
            return Ok(None);
        };
        // SAFETY: auto-reset, initially non-signalled, unnamed event.
        let event = unsafe { CreateEventW(std::ptr::null(), 0, 0, std::ptr::null()) };
        if event.is_null() {
            bail!("CreateEventW failed for {path}");
        }
        let watcher = Self {
            path: path.to_string(),
            key,
            event,
            recursive,
        };
        watcher.arm()?;
        Ok(Some(watcher))
    }

    /// Register for the next change (notifications are one-shot).
    pub fn arm(&self) -> Result<()> {
        let filter = REG_NOTIFY_CHANGE_NAME
            | REG_NOTIFY_CHANGE_ATTRIBUTES
            | REG_NOTIFY_CHANGE_LAST_SET
            | REG_NOTIFY_CHANGE_SECURITY;
        // SAFETY: valid key and event; asynchronous mode.
        let code = unsafe {
            RegNotifyChangeKeyValue(self.key.0, i32::from(self.recursive), filter, self.event, 1)
        };
        if code != 0 {
            bail!("RegNotifyChangeKeyValue {}: Win32 error {code}", self.path);
        }
        Ok(())
    }

    /// Wait up to `timeout_ms` for a change; re-arms after a wake.
    pub fn wait(&self, timeout_ms: u32) -> Result<bool> {
        // SAFETY: valid event handle.
        match unsafe { WaitForSingleObject(self.event, timeout_ms) } {
            WAIT_OBJECT_0 => {
                self.arm()
                    .with_context(|| format!("re-arming {}", self.path))?;
                Ok(true)
            }
            WAIT_TIMEOUT => Ok(false),
            other => bail!("WaitForSingleObject on {}: {other}", self.path),
        }
    }
}

impl Drop for KeyWatcher {
    fn drop(&mut self) {
        // SAFETY: event created by CreateEventW.
        unsafe { CloseHandle(self.event) };
    }
}

/// Wait on up to 64 watchers at once; returns the index that fired.
pub fn wait_any(watchers: &[KeyWatcher], timeout_ms: u32) -> Result<Option<usize>> {
    if watchers.is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(u64::from(timeout_ms)));
        return Ok(None);
    }
    let handles: Vec<HANDLE> = watchers.iter().take(64).map(|w| w.event).collect();
    // SAFETY: valid handles, count <= MAXIMUM_WAIT_OBJECTS.
    let r =
        unsafe { WaitForMultipleObjects(handles.len() as u32, handles.as_ptr(), 0, timeout_ms) };
    if r == WAIT_TIMEOUT {
        return Ok(None);
    }
    let index = r.wrapping_sub(WAIT_OBJECT_0) as usize;
    let Some(w) = watchers.get(index) else {
        bail!("WaitForMultipleObjects returned {r}")
    };
    w.arm()?;
    Ok(Some(index))
}
