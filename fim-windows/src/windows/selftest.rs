//! `fim-windows selftest`: make a fixed set of changes under %TEMP% and
//! HKCU while an ETW session configured like the agent's runs, then let
//! [`crate::selftest::analyze`] say what the providers sent and whether
//! fim decodes it right. Needs Administrator (ETW, the handle table).

use std::io::Write as _;
use std::os::windows::fs::OpenOptionsExt;
use std::os::windows::io::AsRawHandle;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use windows_sys::Wdk::System::SystemServices::RtlGetVersion;
use windows_sys::Win32::Foundation::CloseHandle;
use windows_sys::Win32::Storage::FileSystem::{FILE_FLAG_DELETE_ON_CLOSE, MoveFileExW};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, FILE_MAP_WRITE, FlushViewOfFile, MapViewOfFile, PAGE_READWRITE,
    UnmapViewOfFile,
};
use windows_sys::Win32::System::Registry::REG_SZ;
use windows_sys::Win32::System::SystemInformation::OSVERSIONINFOW;

use super::agent::device_map;
use super::etw_session::EtwSession;
use super::key_handles::open_key_objects;
use super::process_info::current_user_sid;
use super::registry::{create_key, delete_tree, read_dword, set_value};
use super::wide::to_wide;
use crate::etw_event::EtwEvent;
use crate::selftest::{Plan, analyze, render};

const SESSION: &str = "fim-windows-selftest";
/// ETW needs a moment after EnableTraceEx2 before events flow, and the
/// session flushes its buffers every second.
const SETTLE: Duration = Duration::from_secs(2);
const DRAIN: Duration = Duration::from_secs(3);

fn windows_version() -> String {
    // SAFETY: zeroed OSVERSIONINFOW with its size set is what RtlGetVersion takes.
    let mut v: OSVERSIONINFOW = unsafe { std::mem::zeroed() };
    v.dwOSVersionInfoSize = std::mem::size_of::<OSVERSIONINFOW>() as u32;
    // SAFETY: valid out pointer.
    unsafe { RtlGetVersion(&mut v) };
    let ubr = read_dword(r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion", "UBR")
        .ok()
        .flatten()
        .map_or(String::new(), |u| format!(".{u}"));
    format!(
        "Windows {}.{} build {}{ubr}",
        v.dwMajorVersion, v.dwMinorVersion, v.dwBuildNumber
    )
}

/// `\\?\C:\...` -> `C:\...` (what the decoder maps ETW's paths to).
fn dos(path: &Path) -> String {
    let s = path.to_string_lossy();
    s.strip_prefix(r"\\?\").unwrap_or(&s).to_string()
}

fn plan(dir: &Path, sid: &str, pid: u32) -> Plan {
    let p = |name: &str| dos(&dir.join(name));
    Plan {
        pid,
        created: p("created.txt"),
        mapped: p("mapped.bin"),
        rename_from: p("rename-src.txt"),
        rename_to: p("rename-dst.txt"),
        delete_on_close: p("delete-on-close.txt"),
        overwritten: p("overwritten.txt"),
        link: p("link.txt"),
        collision_from: p("collide-src.txt"),
        collision_to: p("collide-dst.txt"),
        key_path: format!(r"HKU\{sid}\Software\fim-selftest-{pid}"),
        value_name: "selftest".into(),
    }
}

/// Write through a mapped view of `path` and flush it.
fn write_mapped(path: &str) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid file handle; mapping and view are released below.
    unsafe {
        let mapping = CreateFileMappingW(
            file.as_raw_handle(),
            std::ptr::null(),
            PAGE_READWRITE,
            0,
            0,
            std::ptr::null(),
        );
        if mapping.is_null() {
            bail!("CreateFileMappingW({path}) failed");
        }
        let view = MapViewOfFile(mapping, FILE_MAP_WRITE, 0, 0, 0);
        if view.Value.is_null() {
            CloseHandle(mapping);
            bail!("MapViewOfFile({path}) failed");
        }
        std::ptr::copy_nonoverlapping(b"mapped".as_ptr(), view.Value.cast::<u8>(), 6);
        FlushViewOfFile(view.Value, 0);
        UnmapViewOfFile(view);
        CloseHandle(mapping);
    }
    Ok(())
}

/// The changes whose events the analysis looks for, in this order.
fn make_changes(plan: &Plan, key: &super::registry::Key) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&plan.created)
        .context("CREATE_NEW")?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&plan.created)?
        .write_all(b"cached write")
        .context("cached write")?;
    write_mapped(&plan.mapped)?;
    std::fs::rename(&plan.rename_from, &plan.rename_to).context("rename")?;
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(FILE_FLAG_DELETE_ON_CLOSE)
            .open(&plan.delete_on_close)
            .context("delete-on-close open")?,
    );
    // create + truncate = CREATE_ALWAYS: FILE_OVERWRITE_IF on an existing file.
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&plan.overwritten)
            .context("overwriting open")?,
    );
    std::fs::hard_link(&plan.rename_to, &plan.link).context("hard link")?;
    let (from, to) = (to_wide(&plan.collision_from), to_wide(&plan.collision_to));
    // SAFETY: NUL-terminated paths; no MOVEFILE_REPLACE_EXISTING, so this fails.
    if unsafe { MoveFileExW(from.as_ptr(), to.as_ptr(), 0) } != 0 {
        bail!("renaming onto an existing file succeeded: the failed-rename check is void");
    }
    let data: Vec<u8> = "ok\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
    set_value(key, &plan.value_name, REG_SZ, &data)
}

/// What a session saw.
struct Observed {
    events: Vec<EtwEvent>,
    /// (KeyObject, kernel name) of the key handles open at the start.
    seeds: Vec<(u64, String)>,
}

/// Run the session around the changes: the events of this process and of
/// the System process (pid 4, which writes mapped pages), and the key
/// handles open when the session started.
fn observe(plan: &Plan, key: &super::registry::Key) -> Result<Observed> {
    let session = EtwSession::start_named(SESSION)?;
    let (tx, rx) = mpsc::channel::<EtwEvent>();
    let name = session.name();
    let consumer = std::thread::spawn(move || EtwSession::consume(&name, tx));
    let seeds = open_key_objects().unwrap_or_else(|e| {
        eprintln!("fim-windows selftest: open key handles not read: {e:#}");
        Vec::new()
    });
    std::thread::sleep(SETTLE);
    let made = make_changes(plan, key);
    std::thread::sleep(DRAIN);
    drop(session); // stops the session: ProcessTrace returns
    match consumer.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("ETW consumer: {e:#}"),
        Err(_) => bail!("ETW consumer thread panicked"),
    }
    made?;
    let events = rx
        .try_iter()
        .filter(|e| e.pid == plan.pid || e.pid == 4)
        .collect();
    Ok(Observed { events, seeds })
}

pub fn run() -> Result<bool> {
    let pid = std::process::id();
    let sid = current_user_sid().context("reading this process's user SID")?;
    let dir: PathBuf = std::env::temp_dir().join(format!("fim-selftest-{pid}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let plan = plan(&dir, &sid, pid);
    for (path, content) in [
        (&plan.rename_from, "rename"),
        (&plan.overwritten, "to be emptied"),
        (&plan.collision_from, "a"),
        (&plan.collision_to, "b"),
    ] {
        std::fs::write(path, content).with_context(|| format!("writing {path}"))?;
    }
    std::fs::write(&plan.mapped, vec![0u8; 4096])?;
    // Opened before the session starts: its KeyObject is never named by ETW.
    let hkcu_key = format!(r"HKCU\Software\fim-selftest-{pid}");
    let key = create_key(&hkcu_key)?;

    println!(
        "fim-windows selftest: {}, session {SESSION}, pid {pid}, in {}",
        windows_version(),
        dos(&dir)
    );
    let observed = observe(&plan, &key);
    // Clean up whatever happened.
    drop(key);
    let _ = delete_tree(&hkcu_key);
    let _ = std::fs::remove_dir_all(&dir);
    let Observed { events, seeds } = observed?;

    let current =
        read_dword(r"HKLM\SYSTEM\Select", "Current")?.map(|n| format!("ControlSet{n:03}"));
    let report = analyze(&plan, &events, &device_map(), seeds, current);
    print!("{}", render(&report));
    Ok(!report.failed())
}
