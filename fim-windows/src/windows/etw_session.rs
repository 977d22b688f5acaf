//! The real-time ETW session for Microsoft-Windows-Kernel-File and
//! Microsoft-Windows-Kernel-Registry. The callback copies header facts and
//! UserData into the platform-independent parser and sends normalised
//! events over a channel; lost-event counters are read with ControlTraceW.

use std::sync::mpsc::Sender;

use anyhow::{Result, bail};
use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, ERROR_SUCCESS};
use windows_sys::Win32::System::Diagnostics::Etw::{
    CONTROLTRACE_HANDLE, CloseTrace, ControlTraceW, EVENT_CONTROL_CODE_ENABLE_PROVIDER,
    EVENT_RECORD, EVENT_TRACE_CONTROL_QUERY, EVENT_TRACE_CONTROL_STOP, EVENT_TRACE_LOGFILEW,
    EVENT_TRACE_PROPERTIES, EVENT_TRACE_REAL_TIME_MODE, EnableTraceEx2, OpenTraceW,
    PROCESS_TRACE_MODE_EVENT_RECORD, PROCESS_TRACE_MODE_REAL_TIME, PROCESSTRACE_HANDLE,
    ProcessTrace, StartTraceW, WNODE_FLAG_TRACED_GUID,
};
use windows_sys::core::GUID;

use super::wide::to_wide;
use crate::etw_event::{EtwEvent, Provider, filetime_to_epoch_ms};
use crate::etw_layout::{RecordHeader, is_consumed, parse_user_data};
use crate::lost_events::SessionCounters;

pub const SESSION_NAME: &str = "fim-windows";

const KERNEL_FILE: GUID = GUID::from_u128(0xEDD08927_9CC4_4E65_B970_C2560FB5C289);
const KERNEL_REGISTRY: GUID = GUID::from_u128(0x70EB4F03_C1DE_4F73_A051_33D13D5413BD);

/// Kernel-File keywords (logman query providers Microsoft-Windows-Kernel-File):
/// FILENAME 0x10, FILEIO 0x20, CREATE 0x80, WRITE 0x200, DELETE_PATH 0x400,
/// RENAME_SETLINK_PATH 0x800, CREATE_NEW_FILE 0x1000. READ (0x100) is left
/// out: reads never change integrity and dominate the volume.
const KERNEL_FILE_KEYWORDS: u64 = 0x10 | 0x20 | 0x80 | 0x200 | 0x400 | 0x800 | 0x1000;
/// Kernel-Registry: all keywords. OpenKey/CloseKey events are needed to name
/// KeyObjects; the callback drops unconsumed event ids before copying.
const KERNEL_REGISTRY_KEYWORDS: u64 = 0;
const TRACE_LEVEL_INFORMATION: u8 = 4;
const EVENT_HEADER_FLAG_32_BIT_HEADER: u16 = 0x0020;

fn guid_eq(a: &GUID, b: &GUID) -> bool {
    a.data1 == b.data1 && a.data2 == b.data2 && a.data3 == b.data3 && a.data4 == b.data4
}

/// EVENT_TRACE_PROPERTIES followed by room for the session name.
struct Properties {
    buf: Vec<u64>,
}

impl Properties {
    fn new() -> Self {
        let name_bytes = (SESSION_NAME.len() + 1) * 2;
        let total = std::mem::size_of::<EVENT_TRACE_PROPERTIES>() + name_bytes + 1024;
        let mut p = Self {
            buf: vec![0u64; total.div_ceil(8)],
        };
        let props = p.props();
        props.Wnode.BufferSize = total as u32;
        props.Wnode.Flags = WNODE_FLAG_TRACED_GUID;
        props.Wnode.ClientContext = 1; // QPC timestamps, converted to FILETIME on delivery
        props.LogFileMode = EVENT_TRACE_REAL_TIME_MODE;
        props.BufferSize = 256; // KB
        props.MinimumBuffers = 16;
        props.MaximumBuffers = 128;
        props.FlushTimer = 1;
        props.LoggerNameOffset = std::mem::size_of::<EVENT_TRACE_PROPERTIES>() as u32;
        p
    }

    fn props(&mut self) -> &mut EVENT_TRACE_PROPERTIES {
        // SAFETY: the buffer is 8-byte aligned and larger than the struct.
        unsafe { &mut *(self.buf.as_mut_ptr() as *mut EVENT_TRACE_PROPERTIES) }
    }

    fn ptr(&mut self) -> *mut EVENT_TRACE_PROPERTIES {
        self.buf.as_mut_ptr() as *mut EVENT_TRACE_PROPERTIES
    }
}

pub struct EtwSession {
    control: CONTROLTRACE_HANDLE,
    name: Vec<u16>,
}

// SAFETY: the control handle is a plain session id usable from any thread.
unsafe impl Send for EtwSession {}

struct CallbackContext {
    sender: Sender<EtwEvent>,
}

unsafe extern "system" fn on_event(record: *mut EVENT_RECORD) {
    // SAFETY: ETW passes a valid record for the duration of the callback;
    // UserContext is the CallbackContext leaked in `consume`.
    let record = unsafe { &*record };
    let header = &record.EventHeader;
    let provider = if guid_eq(&header.ProviderId, &KERNEL_FILE) {
        Provider::KernelFile
    } else if guid_eq(&header.ProviderId, &KERNEL_REGISTRY) {
        Provider::KernelRegistry
    } else {
        return;
    };
    let event_id = header.EventDescriptor.Id;
    if !is_consumed(provider, event_id) || record.UserContext.is_null() {
        return;
    }
    let data: &[u8] = if record.UserData.is_null() {
        &[]
    } else {
        // SAFETY: UserData/UserDataLength describe the record's payload.
        unsafe {
            std::slice::from_raw_parts(
                record.UserData as *const u8,
                usize::from(record.UserDataLength),
            )
        }
    };
    let parsed = parse_user_data(
        RecordHeader {
            provider,
            event_id,
            version: header.EventDescriptor.Version,
            time_ms: filetime_to_epoch_ms(u64::try_from(header.TimeStamp).unwrap_or(0)),
            pid: header.ProcessId,
            tid: header.ThreadId,
            pointer_size: if header.Flags & EVENT_HEADER_FLAG_32_BIT_HEADER != 0 {
                4
            } else {
                8
            },
        },
        data,
    );
    // SAFETY: see above.
    let context = unsafe { &*(record.UserContext as *const CallbackContext) };
    match parsed {
        Ok(Some(event)) => {
            let _ = context.sender.send(event);
        }
        Ok(None) => {}
        Err(e) => eprintln!("fim-windows: undecodable ETW record: {e:#}"),
    }
}

impl EtwSession {
    /// Start (or restart, if a stale one exists) the session and enable the
    /// two providers.
    pub fn start() -> Result<Self> {
        let name = to_wide(SESSION_NAME);
        let mut control = CONTROLTRACE_HANDLE { Value: 0 };
        let mut props = Properties::new();
        // SAFETY: properties buffer sized for the name.
        let mut code = unsafe { StartTraceW(&mut control, name.as_ptr(), props.ptr()) };
        if code == ERROR_ALREADY_EXISTS {
            let mut stop = Properties::new();
            // SAFETY: stopping by name.
            unsafe {
                ControlTraceW(
                    CONTROLTRACE_HANDLE { Value: 0 },
                    name.as_ptr(),
                    stop.ptr(),
                    EVENT_TRACE_CONTROL_STOP,
                )
            };
            props = Properties::new();
            // SAFETY: as above.
            code = unsafe { StartTraceW(&mut control, name.as_ptr(), props.ptr()) };
        }
        if code != ERROR_SUCCESS {
            bail!("StartTraceW({SESSION_NAME}): Win32 error {code} (needs Administrator)");
        }
        let session = Self { control, name };
        for (guid, keywords, label) in [
            (
                KERNEL_FILE,
                KERNEL_FILE_KEYWORDS,
                "Microsoft-Windows-Kernel-File",
            ),
            (
                KERNEL_REGISTRY,
                KERNEL_REGISTRY_KEYWORDS,
                "Microsoft-Windows-Kernel-Registry",
            ),
        ] {
            // SAFETY: valid session handle and provider GUID.
            let code = unsafe {
                EnableTraceEx2(
                    session.control,
                    &guid,
                    EVENT_CONTROL_CODE_ENABLE_PROVIDER,
                    TRACE_LEVEL_INFORMATION,
                    keywords,
                    0,
                    0,
                    std::ptr::null(),
                )
            };
            if code != ERROR_SUCCESS {
                bail!("EnableTraceEx2({label}): Win32 error {code}");
            }
        }
        Ok(session)
    }

    /// Block in ProcessTrace delivering events to `sender` until the session
    /// stops. Run it on its own thread.
    pub fn consume(name: &str, sender: Sender<EtwEvent>) -> Result<()> {
        let mut wide_name = to_wide(name);
        let context = Box::into_raw(Box::new(CallbackContext { sender }));
        // SAFETY: zeroed EVENT_TRACE_LOGFILEW is a valid "all fields unset".
        let mut logfile: EVENT_TRACE_LOGFILEW = unsafe { std::mem::zeroed() };
        logfile.LoggerName = wide_name.as_mut_ptr();
        logfile.Anonymous1.ProcessTraceMode =
            PROCESS_TRACE_MODE_REAL_TIME | PROCESS_TRACE_MODE_EVENT_RECORD;
        logfile.Anonymous2.EventRecordCallback = Some(on_event);
        logfile.Context = context.cast();
        // SAFETY: logfile fully initialised for real-time consumption.
        let handle: PROCESSTRACE_HANDLE = unsafe { OpenTraceW(&mut logfile) };
        if handle.Value == u64::MAX {
            // SAFETY: reclaim the context we leaked above.
            drop(unsafe { Box::from_raw(context) });
            bail!("OpenTraceW({name}) failed");
        }
        // SAFETY: one valid handle; null times = real-time.
        let code = unsafe { ProcessTrace(&handle, 1, std::ptr::null(), std::ptr::null()) };
        // SAFETY: handle from OpenTraceW; context no longer referenced.
        unsafe {
            CloseTrace(handle);
            drop(Box::from_raw(context));
        }
        if code != ERROR_SUCCESS {
            bail!("ProcessTrace({name}): Win32 error {code}");
        }
        Ok(())
    }

    /// Cumulative EventsLost / RealTimeBuffersLost of the session.
    pub fn counters(&self) -> Result<SessionCounters> {
        let mut props = Properties::new();
        // SAFETY: query into a properly sized buffer.
        let code = unsafe {
            ControlTraceW(
                self.control,
                std::ptr::null(),
                props.ptr(),
                EVENT_TRACE_CONTROL_QUERY,
            )
        };
        if code != ERROR_SUCCESS {
            bail!("ControlTraceW(QUERY): Win32 error {code}");
        }
        let p = props.props();
        Ok(SessionCounters {
            events_lost: u64::from(p.EventsLost),
            buffers_lost: u64::from(p.RealTimeBuffersLost),
        })
    }

    pub fn name(&self) -> String {
        super::wide::from_wide(&self.name)
    }
}

impl Drop for EtwSession {
    fn drop(&mut self) {
        let mut props = Properties::new();
        // SAFETY: stop our own session.
        unsafe {
            ControlTraceW(
                self.control,
                std::ptr::null(),
                props.ptr(),
                EVENT_TRACE_CONTROL_STOP,
            )
        };
    }
}
