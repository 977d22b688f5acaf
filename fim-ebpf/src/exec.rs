//! Program executions, for attribution: the executable (the task's `mm->exe_file`, what
//! /proc/PID/exe shows) and the argument strings, taken at `sched:sched_process_exec` while
//! the new program is in place. A process that exits right after its change is still
//! attributed to its executable and command line.

use aya_ebpf::helpers::generated::bpf_probe_read_user;
use fim_common::{Backend, EventKind, flags, record::PATH_CAP};

use crate::{
    actor::current_task,
    emit, filter,
    kernel::{off, offsets_loaded, read, read_ptr},
    path::{self, DATA_MASK},
};

pub fn exec(backend: Backend) -> Result<(), i64> {
    if !offsets_loaded() || filter::actor_excluded() {
        return Ok(());
    }
    let Some(mut held) = emit::start::<false>(EventKind::Exec, backend) else {
        return Ok(());
    };
    let record = held.record();
    let data = record.data.as_mut_ptr();
    let mm = read_ptr(current_task(), off!(task_mm))?;
    if mm.is_null() {
        return Ok(());
    }
    let mut len1 = 0;
    let exe = read_ptr(mm, off!(mm_exe_file))?;
    if !exe.is_null() {
        let f_path = exe.wrapping_add(off!(file_f_path));
        let mnt = read_ptr(f_path, off!(path_mnt))?;
        let dentry = read_ptr(f_path, off!(path_dentry))?;
        let piece = path::build::<false>(data, 0, dentry, mnt, flags::PATH1_TRUNCATED);
        len1 = piece.len();
        record.header.path1_len = len1 as u16;
        record.header.flags |= piece.flags();
    }
    let start = read::<u64>(mm, off!(mm_arg_start))?;
    let end = read::<u64>(mm, off!(mm_arg_end))?;
    record.header.flags |= flags::PATH2_IS_STRING;
    if end > start {
        let wanted = (end - start) as usize;
        let n = path::bounded(wanted.min(PATH_CAP - 1), PATH_CAP - 1);
        // SAFETY: (len1 & DATA_MASK) + n < DATA_CAP; the helper checks the user address.
        let rc = unsafe {
            bpf_probe_read_user(
                data.add(path::bounded(len1, DATA_MASK)).cast(),
                n as u32,
                start as *const core::ffi::c_void,
            )
        };
        if rc == 0 {
            record.header.path2_len = n as u16;
            if wanted > n {
                record.header.flags |= flags::PATH2_TRUNCATED;
            }
        }
    }
    emit::submit(record, backend);
    Ok(())
}
