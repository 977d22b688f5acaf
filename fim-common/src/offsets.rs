//! Kernel struct member offsets, read from the running kernel's BTF by user space at load time
//! and handed to the programs as a global (Rust eBPF has no CO-RE relocations).

/// Byte offsets of the members the programs read. All fields are `u32`; the programs treat a
/// zeroed struct (`loaded == 0`) as "offsets unknown" and do not walk kernel structures.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub loaded: u32,
    // struct dentry
    pub dentry_d_parent: u32,
    pub dentry_d_name_name: u32,
    pub dentry_d_name_len: u32,
    pub dentry_d_inode: u32,
    pub dentry_d_sb: u32,
    // struct inode
    pub inode_i_ino: u32,
    pub inode_i_mode: u32,
    pub inode_i_nlink: u32,
    // struct super_block
    pub super_block_s_dev: u32,
    // struct path
    pub path_mnt: u32,
    pub path_dentry: u32,
    // struct mount (vfsmount is embedded at `mount_mnt`)
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    // struct vfsmount
    pub vfsmount_mnt_root: u32,
    // struct file
    pub file_f_path: u32,
    pub file_f_flags: u32,
    pub file_f_mode: u32,
    // struct task_struct
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub task_loginuid: u32,
    pub task_cred: u32,
    pub task_fs: u32,
    pub task_files: u32,
    pub task_nsproxy: u32,
    pub task_comm: u32,
    pub task_pid: u32,
    pub task_flags: u32,
    // struct cred
    pub cred_uid: u32,
    pub cred_gid: u32,
    pub cred_euid: u32,
    // struct fs_struct
    pub fs_struct_root: u32,
    pub fs_struct_pwd: u32,
    // struct files_struct / fdtable
    pub files_struct_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    // struct nsproxy / mnt_namespace
    pub nsproxy_mnt_ns: u32,
    pub mnt_namespace_ns_inum: u32,
    // struct task_struct -> mm_struct (the executable and the argument strings)
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
}

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, only `u32` fields, no padding.
unsafe impl aya::Pod for KernelOffsets {}
