//! The kernel struct offsets the programs need, from the running kernel's BTF.

use anyhow::{Context, Result};
use fim_common::KernelOffsets;

use super::btf::KernelBtf;

pub fn resolve(btf: &KernelBtf) -> Result<KernelOffsets> {
    let o = |s: &str, m: &str| btf.offset_of(s, m);
    let offsets = KernelOffsets {
        loaded: 1,
        dentry_d_parent: o("dentry", "d_parent")?,
        dentry_d_name_name: o("dentry", "d_name.name")?,
        dentry_d_name_len: o("dentry", "d_name.len")?,
        dentry_d_inode: o("dentry", "d_inode")?,
        dentry_d_sb: o("dentry", "d_sb")?,
        inode_i_ino: o("inode", "i_ino")?,
        inode_i_mode: o("inode", "i_mode")?,
        inode_i_nlink: o("inode", "i_nlink")?,
        super_block_s_dev: o("super_block", "s_dev")?,
        path_mnt: o("path", "mnt")?,
        path_dentry: o("path", "dentry")?,
        mount_mnt: o("mount", "mnt")?,
        mount_mnt_parent: o("mount", "mnt_parent")?,
        mount_mnt_mountpoint: o("mount", "mnt_mountpoint")?,
        vfsmount_mnt_root: o("vfsmount", "mnt_root")?,
        file_f_path: o("file", "f_path")?,
        file_f_flags: o("file", "f_flags")?,
        file_f_mode: o("file", "f_mode")?,
        task_real_parent: o("task_struct", "real_parent")?,
        task_tgid: o("task_struct", "tgid")?,
        task_group_leader: o("task_struct", "group_leader")?,
        task_start_boottime: o("task_struct", "start_boottime")?,
        // Only with CONFIG_AUDIT; 0 tells the programs it is absent.
        task_loginuid: o("task_struct", "loginuid").unwrap_or(0),
        task_cred: o("task_struct", "cred")?,
        task_fs: o("task_struct", "fs")?,
        task_files: o("task_struct", "files")?,
        task_nsproxy: o("task_struct", "nsproxy")?,
        task_comm: o("task_struct", "comm")?,
        task_pid: o("task_struct", "pid")?,
        task_flags: o("task_struct", "flags")?,
        cred_uid: o("cred", "uid")?,
        cred_gid: o("cred", "gid")?,
        cred_euid: o("cred", "euid")?,
        fs_struct_root: o("fs_struct", "root")?,
        fs_struct_pwd: o("fs_struct", "pwd")?,
        files_struct_fdt: o("files_struct", "fdt")?,
        fdtable_max_fds: o("fdtable", "max_fds")?,
        fdtable_fd: o("fdtable", "fd")?,
        nsproxy_mnt_ns: o("nsproxy", "mnt_ns")?,
        mnt_namespace_ns_inum: o("mnt_namespace", "ns.inum")?,
        task_mm: o("task_struct", "mm")?,
        mm_exe_file: o("mm_struct", "exe_file")?,
        mm_arg_start: o("mm_struct", "arg_start")?,
        mm_arg_end: o("mm_struct", "arg_end")?,
    };
    Ok(offsets)
}

/// Resolves the offsets from /sys/kernel/btf/vmlinux, naming the kernel on failure.
pub fn from_running_kernel() -> Result<(KernelBtf, KernelOffsets)> {
    let btf = KernelBtf::from_sys_fs()?;
    let offsets = resolve(&btf).with_context(|| {
        format!(
            "kernel {} lacks a struct member fim reads",
            crate::host::kernel_release()
        )
    })?;
    Ok((btf, offsets))
}
