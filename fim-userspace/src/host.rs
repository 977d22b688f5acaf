//! Facts about, and preparation of, the host kernel that the sensor depends on.

use std::{fs, io, path::Path};

use anyhow::{Context, Result, bail};

const TRACEFS: &str = "/sys/kernel/tracing";
const SECURITYFS: &str = "/sys/kernel/security";

/// What fim reads from `/proc/PID/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The command name, cut to 15 bytes and NUL-padded like the kernel's `comm`.
    pub comm: [u8; 16],
    /// Field 4.
    pub ppid: u32,
    /// Field 22: the start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses a `/proc/PID/stat` line. The command name is in parentheses and may hold anything,
/// parentheses and spaces included, so the numbered fields are counted from the last `)`.
pub fn parse_proc_stat(stat: &[u8]) -> Option<ProcStat> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let name = stat.get(open + 1..close)?;
    let mut comm = [0u8; 16];
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name[..n]);
    // Fields after the name start at field 3 (state).
    let mut fields = std::str::from_utf8(&stat[close + 1..])
        .ok()?
        .split_ascii_whitespace();
    let ppid = fields.nth(1)?.parse().ok()?;
    let start_ticks = fields.nth(17)?.parse().ok()?;
    Some(ProcStat {
        comm,
        ppid,
        start_ticks,
    })
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The address of kernel data symbol `name` from /proc/kallsyms; `None` when the kernel does
/// not list data symbols (built without `CONFIG_KALLSYMS_ALL`) or hides addresses
/// (`kernel.kptr_restrict`, shown as zeros).
pub fn kernel_symbol(name: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/kallsyms").ok()?;
    symbol_in(&text, name)
}

fn symbol_in(kallsyms: &str, name: &str) -> Option<u64> {
    kallsyms.lines().find_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let (address, kind, symbol) = (fields.next()?, fields.next()?, fields.next()?);
        // Data (d/D), read-only data (r/R) or bss (b/B); module symbols carry a fourth field.
        let data = matches!(kind, "d" | "D" | "b" | "B" | "r" | "R");
        if symbol != name || !data || fields.next().is_some() {
            return None;
        }
        u64::from_str_radix(address, 16).ok().filter(|a| *a != 0)
    })
}

/// Lifts RLIMIT_MEMLOCK as far as allowed: kernels before 5.11 charge BPF maps against it,
/// later ones charge the memory cgroup instead. A refusal (no CAP_SYS_RESOURCE, e.g. in a
/// container) is not fatal: it is logged, and map creation reports the real problem if any.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscalls with valid pointers to initialised structs.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) == 0 {
            return;
        }
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut current) == 0
            && current.rlim_cur < current.rlim_max
        {
            current.rlim_cur = current.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_MEMLOCK, &current);
        }
    }
    log::debug!(
        "RLIMIT_MEMLOCK could not be lifted: {}",
        io::Error::last_os_error()
    );
}

/// Mounts tracefs when it is not mounted yet: syscall tracepoints are attached through it and
/// some hosts (and minimal VMs) do not mount it at boot.
pub fn ensure_tracefs() -> Result<()> {
    if dir_has_entries(Path::new(TRACEFS))
        || dir_has_entries(Path::new("/sys/kernel/debug/tracing"))
    {
        return Ok(());
    }
    mount_pseudo_fs("tracefs", TRACEFS)
}

/// The offset of `field` in the records of tracepoint `category:event`, from its format in
/// tracefs (layouts differ between kernels).
pub fn tracepoint_field_offset(category: &str, event: &str, field: &str) -> Result<u32> {
    let format = [TRACEFS, "/sys/kernel/debug/tracing"]
        .iter()
        .map(|root| {
            Path::new(root)
                .join("events")
                .join(category)
                .join(event)
                .join("format")
        })
        .find(|p| p.exists())
        .with_context(|| format!("no format for tracepoint {category}:{event}"))?;
    let text =
        fs::read_to_string(&format).with_context(|| format!("reading {}", format.display()))?;
    field_offset(&text, field).with_context(|| format!("no field {field} in {}", format.display()))
}

/// `offset:N` of the line declaring `field` in a tracepoint format.
fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let decl = parts.next()?.strip_prefix("field:")?;
        if decl.rsplit(' ').next()? != field {
            return None;
        }
        parts
            .find_map(|p| p.trim().strip_prefix("offset:"))?
            .parse()
            .ok()
    })
}

/// The active LSMs in order, from securityfs (mounted on demand).
pub fn active_lsms() -> Result<Vec<String>> {
    let list = Path::new(SECURITYFS).join("lsm");
    if !list.exists() {
        mount_pseudo_fs("securityfs", SECURITYFS)?;
    }
    let text = fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    Ok(text
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

fn dir_has_entries(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

fn mount_pseudo_fs(fstype: &str, target: &str) -> Result<()> {
    let c_type = std::ffi::CString::new(fstype)?;
    let c_target = std::ffi::CString::new(target)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c_type.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EBUSY) {
            return Ok(()); // mounted concurrently by someone else
        }
        bail!("mounting {fstype} at {target} failed: {err} (fim needs root / CAP_SYS_ADMIN)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::symbol_in;

    const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff82a1b2c0 D rename_lock_other
ffffffff82a1b300 D rename_lock
ffffffff82a1b340 t rename_lock_slow
ffffffffc0001000 d rename_lock\t[some_module]
";

    #[test]
    fn finds_a_data_symbol_by_its_exact_name() {
        assert_eq!(symbol_in(KALLSYMS, "rename_lock"), Some(0xffffffff82a1b300));
    }

    #[test]
    fn ignores_code_module_and_hidden_symbols() {
        assert_eq!(symbol_in(KALLSYMS, "rename_lock_slow"), None);
        assert_eq!(symbol_in(KALLSYMS, "_stext"), None);
        assert_eq!(
            symbol_in("0000000000000000 D rename_lock\n", "rename_lock"),
            None
        );
        assert_eq!(symbol_in("", "rename_lock"), None);
        let module_only = "ffffffffc0001000 d rename_lock\t[some_module]\n";
        assert_eq!(symbol_in(module_only, "rename_lock"), None);
    }
}

#[cfg(test)]
mod proc_stat_tests {
    use super::{ProcStat, parse_proc_stat};

    #[test]
    fn a_stat_line_is_read_whatever_the_name() {
        let stat = b"1234 (a) b (c)) S 77 1234 1234 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 \
                     1000 10 18446744073709551615";
        let ProcStat {
            comm,
            ppid,
            start_ticks,
        } = parse_proc_stat(stat).unwrap();
        assert_eq!((ppid, start_ticks), (77, 98765));
        assert_eq!(&comm[..8], b"a) b (c)");
        assert_eq!(comm[8], 0);
        let long = b"9 (a-name-longer-than-15) R 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5";
        let parsed = parse_proc_stat(long).unwrap();
        assert_eq!(&parsed.comm[..15], b"a-name-longer-t");
        assert_eq!(parsed.comm[15], 0);
        assert_eq!(parsed.start_ticks, 5);
        assert_eq!(parse_proc_stat(b"1 (x) S 0 1 1"), None);
        assert_eq!(parse_proc_stat(b"no parentheses"), None);
    }
}

#[cfg(test)]
mod format_tests {
    use super::field_offset;

    /// Both layouts of `sched_process_fork`: fixed comms (6.1, 6.12) and `__data_loc` ones.
    #[test]
    fn a_field_offset_is_read_from_either_layout() {
        let fixed = "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
                     \tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
                     \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
                     \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
                     \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(fixed, "child_pid"), Some(44));
        assert_eq!(field_offset(fixed, "parent_pid"), Some(24));
        let data_loc = "\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
                        \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(data_loc, "child_pid"), Some(20));
        assert_eq!(field_offset(data_loc, "child_comm"), Some(16));
        assert_eq!(field_offset(data_loc, "pid"), None);
    }
}
