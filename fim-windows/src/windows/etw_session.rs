//! The real-time ETW session for Microsoft-Windows-Kernel-File and
//! Microsoft-Windows-Kernel-Registry. The callback copies header facts and
//! UserData into the platform-independent parser and sends normalised
//! events over a channel; lost-event counters are read with ControlTraceW.

use std::sync::mpsc::Sender;

use anyhow::{Result, bail};
use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, ERROR_SUCCESS};
use windows_sys::Win32::System::Diagnostics::Etw::{
    CONTROLTRACE_HANDLE, CloseTrace, ControlTraceW, ENABLE_TRACE_PARAMETERS,
    ENABLE_TRACE_PARAMETERS_VERSION_2, EVENT_CONTROL_CODE_ENABLE_PROVIDER, EVENT_FILTER_DESCRIPTOR,
    EVENT_FILTER_TYPE_EVENT_ID, EVENT_RECORD, EVENT_TRACE_CONTROL_QUERY, EVENT_TRACE_CONTROL_STOP,
    EVENT_TRACE_LOGFILEW, EVENT_TRACE_NO_PER_PROCESSOR_BUFFERING, EVENT_TRACE_PROPERTIES,
    EVENT_TRACE_REAL_TIME_MODE, EnableTraceEx2, OpenTraceW, PROCESS_TRACE_MODE_EVENT_RECORD,
    PROCESS_TRACE_MODE_REAL_TIME, PROCESSTRACE_HANDLE, ProcessTrace, StartTraceW,
    WNODE_FLAG_TRACED_GUID,
};
use windows_sys::core::GUID;

use super::wide::to_wide;
use crate::etw_event::{EtwEvent, Provider, filetime_to_epoch_ms};
use crate::etw_filter::{self, ProviderFilter, event_id_filter_payload};
use crate::etw_layout::{Parsed, RecordHeader, is_consumed, parse_user_data};
use crate::lost_events::SessionCounters;

pub const SESSION_NAME: &str = "fim-windows";

const KERNEL_FILE: GUID = GUID::from_u128(0xEDD08927_9CC4_4E65_B970_C2560FB5C289);
const KERNEL_REGISTRY: GUID = GUID::from_u128(0x70EB4F03_C1DE_4F73_A051_33D13D5413BD);

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
        // Room for any session name up to 256 characters.
        let name_bytes = 257 * 2;
        let total = std::mem::size_of::<EVENT_TRACE_PROPERTIES>() + name_bytes + 1024;
        let mut p = Self {
            buf: vec![0u64; total.div_ceil(8)],
        };
        let props = p.props();
        props.Wnode.BufferSize = total as u32;
        props.Wnode.Flags = WNODE_FLAG_TRACED_GUID;
        props.Wnode.ClientContext = 1; // QPC timestamps, converted to FILETIME on delivery
        // One buffer for all CPUs: events arrive in the order they were
        // logged, so a late Write or RenamePath never follows its Close (the
        // decoder still tolerates reordering, see name_cache).
        props.LogFileMode = EVENT_TRACE_REAL_TIME_MODE | EVENT_TRACE_NO_PER_PROCESSOR_BUFFERING;
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
        // An unknown version goes on header-only: the decoder counts it.
        Ok(Parsed::Event(event) | Parsed::UnknownVersion(event)) => {
            let _ = context.sender.send(event);
        }
        Ok(Parsed::NotConsumed) => {}
        Err(e) => eprintln!("fim-windows: undecodable ETW record: {e:#}"),
    }
}

/// Enable one provider with its keywords and event-id filter.
fn enable_provider(
    control: CONTROLTRACE_HANDLE,
    guid: &GUID,
    filter: &ProviderFilter,
    label: &str,
) -> Result<()> {
    let payload = filter.event_ids.map(event_id_filter_payload);
    let mut descriptor = EVENT_FILTER_DESCRIPTOR {
        Ptr: payload.as_ref().map_or(0, |p| p.as_ptr() as u64),
        Size: payload.as_ref().map_or(0, |p| p.len() as u32),
        Type: EVENT_FILTER_TYPE_EVENT_ID,
    };
    let parameters = ENABLE_TRACE_PARAMETERS {
        Version: ENABLE_TRACE_PARAMETERS_VERSION_2,
        EnableProperty: 0,
        ControlFlags: 0,
        SourceId: GUID::from_u128(0),
        EnableFilterDesc: if payload.is_some() {
            &mut descriptor
        } else {
            std::ptr::null_mut()
        },
        FilterDescCount: u32::from(payload.is_some()),
    };
    // SAFETY: valid session handle and provider GUID; the parameters and
    // the filter payload outlive the call.
    let code = unsafe {
        EnableTraceEx2(
            control,
            guid,
            EVENT_CONTROL_CODE_ENABLE_PROVIDER,
            TRACE_LEVEL_INFORMATION,
            filter.keywords,
            0,
            0,
            &parameters,
        )
    };
    if code != ERROR_SUCCESS {
        bail!("EnableTraceEx2({label}): Win32 error {code}");
    }
    Ok(())
}

impl EtwSession {
    /// Start (or restart, if a stale one exists) the agent's session and
    /// enable the two providers.
    pub fn start() -> Result<Self> {
        Self::start_named(SESSION_NAME)
    }

    /// Start a session of this name (the selftest uses its own).
    pub fn start_named(session_name: &str) -> Result<Self> {
        let name = to_wide(session_name);
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
            bail!("StartTraceW({session_name}): Win32 error {code} (needs Administrator)");
        }
        let session = Self { control, name };
        enable_provider(
            session.control,
            &KERNEL_FILE,
            &etw_filter::KERNEL_FILE,
            "Microsoft-Windows-Kernel-File",
        )?;
        enable_provider(
            session.control,
            &KERNEL_REGISTRY,
            &etw_filter::KERNEL_REGISTRY,
            "Microsoft-Windows-Kernel-Registry",
        )?;
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
