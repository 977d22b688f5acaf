//! The test actor: a separate process that performs exactly the file operations a test asks
//! for, so tests can check that records are attributed to *this* pid, not the test's.
//!
//! Usage: `fim-test-actor [--cwd DIR] [--root DIR] [--cpu N] OP ARGS... [-- OP ARGS...]...`;
//! `--cpu N` pins the process to CPU N (per-CPU state in the kernel, like the filter's
//! directory memo, is then shared by its operations), and the operation `cpu N` moves it
//! there between operations. Exits 0 when every operation succeeded. Paths are passed through byte for byte (they may be
//! relative to `--cwd`, or under `--root` after a chroot there, contain newlines or invalid
//! UTF-8). The process exits right after its last
//! operation, which is what the "relative path from a process that exits immediately"
//! scenario needs.

use std::{
    ffi::{CString, OsString},
    io,
    os::unix::ffi::OsStrExt,
    process::ExitCode,
};

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // Leading options, in the order given: `--cwd DIR`, `--root DIR`, `--cpu N`.
    while let Some(option) = args.first().and_then(|a| a.to_str()) {
        let (action, change): (&str, fn(&std::path::Path) -> io::Result<()>) = match option {
            "--cwd" => ("chdir", change_dir),
            "--root" => ("chroot", change_root),
            "--cpu" => ("pin to CPU", pin_to_cpu),
            _ => break,
        };
        let Some(dir) = args.get(1) else {
            eprintln!("fim-test-actor: {option} needs a value");
            return ExitCode::FAILURE;
        };
        if let Err(e) = change(std::path::Path::new(dir)) {
            eprintln!("fim-test-actor: {action} {dir:?}: {e}");
            return ExitCode::FAILURE;
        }
        args.drain(..2);
    }
    for op in args.split(|a| a == "--") {
        if let Err(e) = perform(op) {
            eprintln!("fim-test-actor {op:?}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Runs this process on CPU `cpu` (a number) only.
fn pin_to_cpu(cpu: &std::path::Path) -> io::Result<()> {
    let cpu: usize = cpu
        .to_str()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a CPU number"))?;
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "CPU number too large",
            ));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// chroot into `dir` and chdir to the new root: the operations' absolute paths then start
/// there.
fn change_root(dir: &std::path::Path) -> io::Result<()> {
    std::os::unix::fs::chroot(dir)?;
    std::env::set_current_dir("/")
}

/// chdir, one component at a time when the path is too long for one syscall (the tests
/// build trees deeper than PATH_MAX).
fn change_dir(dir: &std::path::Path) -> io::Result<()> {
    if dir.as_os_str().len() < 4000 {
        return std::env::set_current_dir(dir);
    }
    for component in dir.components() {
        std::env::set_current_dir(component.as_os_str())?;
    }
    Ok(())
}

fn c(arg: Option<&OsString>) -> io::Result<CString> {
    let raw = arg.ok_or_else(|| io::Error::other("missing argument"))?;
    CString::new(raw.as_bytes()).map_err(io::Error::other)
}

fn number(arg: Option<&OsString>) -> io::Result<u32> {
    let raw = arg
        .and_then(|a| a.to_str())
        .ok_or_else(|| io::Error::other("missing number"))?;
    u32::from_str_radix(
        raw.trim_start_matches("0o"),
        if raw.starts_with("0o") { 8 } else { 10 },
    )
    .map_err(io::Error::other)
}

fn size(arg: Option<&OsString>) -> io::Result<libc::off_t> {
    arg.and_then(|a| a.to_str())
        .ok_or_else(|| io::Error::other("missing size"))?
        .parse()
        .map_err(io::Error::other)
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn open(path: &CString, flags: libc::c_int) -> io::Result<libc::c_int> {
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o644) })
}

fn write_all(fd: libc::c_int, data: &[u8]) -> io::Result<()> {
    // SAFETY: valid buffer of data.len() bytes.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n as usize != data.len() {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn close(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: fd is ours.
    check(unsafe { libc::close(fd) }).map(|_| ())
}

fn perform(op: &[OsString]) -> io::Result<()> {
    let name = op.first().and_then(|s| s.to_str()).unwrap_or("");
    let a1 = op.get(1);
    let a2 = op.get(2);
    // SAFETY (all libc calls below): arguments are valid NUL-terminated strings, owned
    // buffers, or descriptors this process opened.
    unsafe {
        match name {
            // open(O_CREAT|O_EXCL|O_WRONLY), write, close
            "create" => {
                let fd = open(&c(a1)?, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY)?;
                write_all(fd, b"created\n")?;
                close(fd)
            }
            "write" => {
                let fd = open(&c(a1)?, libc::O_WRONLY)?;
                write_all(fd, b"written\n")?;
                close(fd)
            }
            "append" => {
                let fd = open(&c(a1)?, libc::O_WRONLY | libc::O_APPEND)?;
                write_all(fd, b"appended\n")?;
                close(fd)
            }
            "truncate" => check(libc::truncate(c(a1)?.as_ptr(), 0)).map(|_| ()),
            // open for writing, ftruncate (to 0, or to SIZE when given), close
            "ftruncate" => {
                let fd = open(&c(a1)?, libc::O_WRONLY)?;
                let size = if a2.is_some() { size(a2)? } else { 0 };
                check(libc::ftruncate(fd, size))?;
                close(fd)
            }
            // open(O_WRONLY | O_TRUNC), close
            "opentrunc" => {
                let fd = open(&c(a1)?, libc::O_WRONLY | libc::O_TRUNC)?;
                close(fd)
            }
            "rename" => check(libc::rename(c(a1)?.as_ptr(), c(a2)?.as_ptr())).map(|_| ()),
            // renameat2(RENAME_EXCHANGE): the two names swap their objects.
            "exchange" => {
                let (a, b) = (c(a1)?, c(a2)?);
                let rc = libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_EXCHANGE,
                );
                check(rc as libc::c_int).map(|_| ())
            }
            "unlink" => check(libc::unlink(c(a1)?.as_ptr())).map(|_| ()),
            "unlinkat" => check(libc::unlinkat(libc::AT_FDCWD, c(a1)?.as_ptr(), 0)).map(|_| ()),
            "mkdir" => check(libc::mkdir(c(a1)?.as_ptr(), 0o755)).map(|_| ()),
            // Wait (milliseconds) before the next operation.
            // Moves the process to another CPU between operations.
            "cpu" => {
                let cpu = a1.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "cpu N"))?;
                pin_to_cpu(std::path::Path::new(cpu))
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(number(a1)?.into()));
                Ok(())
            }
            "rmdir" => check(libc::rmdir(c(a1)?.as_ptr())).map(|_| ()),
            "chmod" => check(libc::chmod(c(a1)?.as_ptr(), number(a2)?)).map(|_| ()),
            // chmod PATH COUNT times, to 0600 and 0644 in turn.
            "chmods" => {
                let path = c(a1)?;
                for i in 0..number(a2)? {
                    let mode = if i % 2 == 0 { 0o600 } else { 0o644 };
                    check(libc::chmod(path.as_ptr(), mode))?;
                }
                Ok(())
            }
            "fchmod" => {
                let fd = open(&c(a1)?, libc::O_RDONLY)?;
                check(libc::fchmod(fd, number(a2)?))?;
                close(fd)
            }
            "chown" => check(libc::chown(
                c(a1)?.as_ptr(),
                number(a2)?,
                number(op.get(3))?,
            ))
            .map(|_| ()),
            "setxattr" => {
                let value = b"fim";
                check(libc::setxattr(
                    c(a1)?.as_ptr(),
                    c(a2)?.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                ))
                .map(|_| ())
            }
            "removexattr" => check(libc::removexattr(c(a1)?.as_ptr(), c(a2)?.as_ptr())).map(|_| ()),
            "link" => check(libc::link(c(a1)?.as_ptr(), c(a2)?.as_ptr())).map(|_| ()),
            // symlink TARGET LINKPATH
            "symlink" => check(libc::symlink(c(a1)?.as_ptr(), c(a2)?.as_ptr())).map(|_| ()),
            // A shared, writable mapping of no file (the LSM hook gets a null file).
            "mmapanon" => {
                let len = 4096;
                let map = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if map == libc::MAP_FAILED {
                    return Err(io::Error::last_os_error());
                }
                *map.cast::<u8>() = 1;
                check(libc::munmap(map, len)).map(|_| ())
            }
            "mmapwrite" => {
                let fd = open(&c(a1)?, libc::O_RDWR)?;
                // The file must already hold at least one page.
                let len = 4096;
                let map = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                );
                if map == libc::MAP_FAILED {
                    return Err(io::Error::last_os_error());
                }
                *(map as *mut u8) = b'M';
                libc::munmap(map, len);
                close(fd)
            }
            // mkfifo through the mknodat syscall
            "mkfifo" => check(libc::mknodat(
                libc::AT_FDCWD,
                c(a1)?.as_ptr(),
                libc::S_IFIFO | 0o644,
                0,
            ))
            .map(|_| ()),
            // mknod PATH MAJOR MINOR: a character device, through the mknod syscall itself
            // (glibc's mknod() uses mknodat)
            "mknod" => {
                let dev = libc::makedev(number(a2)?, number(op.get(3))?);
                let rc =
                    libc::syscall(libc::SYS_mknod, c(a1)?.as_ptr(), libc::S_IFCHR | 0o600, dev);
                check(rc as libc::c_int).map(|_| ())
            }
            // sparse PATH SIZE OFFSET: create, ftruncate to SIZE, write "sparse\n" at OFFSET
            "sparse" => {
                let fd = open(&c(a1)?, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY)?;
                check(libc::ftruncate(fd, size(a2)?))?;
                let data = b"sparse\n";
                let n = libc::pwrite(fd, data.as_ptr().cast(), data.len(), size(op.get(3))?);
                if n as usize != data.len() {
                    return Err(io::Error::last_os_error());
                }
                close(fd)
            }
            // big PATH BYTES: create (or replace the content of) PATH with BYTES bytes of
            // [`fim_tests::pattern`]
            "big" => {
                let fd = open(&c(a1)?, libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY)?;
                let total = size(a2)? as usize;
                let mut written = 0;
                let mut chunk = vec![0u8; 1 << 20];
                while written < total {
                    let n = chunk.len().min(total - written);
                    fim_tests::pattern(written, &mut chunk[..n]);
                    write_all(fd, &chunk[..n])?;
                    written += n;
                }
                close(fd)
            }
            // comm NAME: the thread's name (prctl PR_SET_NAME), what records show as comm
            "comm" => check(libc::prctl(libc::PR_SET_NAME, c(a1)?.as_ptr(), 0, 0, 0)).map(|_| ()),
            // setgid GID: real, effective and saved group id (new credentials)
            "setgid" => {
                let gid = number(a1)?;
                check(libc::setresgid(gid, gid, gid)).map(|_| ())
            }
            // thread OP ARGS...: the operation in a new thread (another task of this process)
            "thread" => {
                let rest = op[1..].to_vec();
                std::thread::spawn(move || perform(&rest))
                    .join()
                    .map_err(|_| io::Error::other("the thread panicked"))?
            }
            // chdir DIR: later relative paths start there
            "chdir" => change_dir(std::path::Path::new(
                a1.ok_or_else(|| io::Error::other("missing directory"))?,
            )),
            other => evasion(other, op),
        }
    }
}

/// The operations of the evasion scenarios: changes made through another name, mount,
/// namespace, file handle or system call than a plain open/write/close of the watched path.
fn evasion(name: &str, op: &[OsString]) -> io::Result<()> {
    let a1 = op.get(1);
    let a2 = op.get(2);
    // SAFETY (all libc calls below): arguments are valid NUL-terminated strings, owned
    // buffers, or descriptors this process opened.
    unsafe {
        match name {
            // procfd-write PATH: open PATH read-only, then write through /proc/self/fd/N.
            "procfd-write" => {
                let fd = open(&c(a1)?, libc::O_RDONLY)?;
                let alias =
                    CString::new(format!("/proc/self/fd/{fd}")).map_err(io::Error::other)?;
                let wfd = open(&alias, libc::O_WRONLY | libc::O_APPEND)?;
                write_all(wfd, b"through /proc/self/fd\n")?;
                close(wfd)?;
                close(fd)
            }
            // handle-write PATH: name_to_handle_at, then open_by_handle_at(O_WRONLY) and write.
            "handle-write" => {
                let path = c(a1)?;
                let mut handle = vec![0u8; 8 + 128];
                // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
                handle[..4].copy_from_slice(&128u32.to_ne_bytes());
                let mut mount_id: libc::c_int = 0;
                let rc = libc::syscall(
                    libc::SYS_name_to_handle_at,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    handle.as_mut_ptr(),
                    &mut mount_id,
                    0,
                );
                check(rc as libc::c_int)?;
                let parent = std::path::Path::new(a1.unwrap()).parent().unwrap();
                let mount_fd = open(
                    &CString::new(parent.as_os_str().as_bytes()).map_err(io::Error::other)?,
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )?;
                let rc = libc::syscall(
                    libc::SYS_open_by_handle_at,
                    mount_fd,
                    handle.as_mut_ptr(),
                    libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC,
                );
                let fd = check(rc as libc::c_int)?;
                write_all(fd, b"through a file handle\n")?;
                close(fd)?;
                close(mount_fd)
            }
            // copy-range SRC DST / splice SRC DST / sendfile SRC DST: DST's content replaced
            // by SRC's through copy_file_range, splice (through a pipe) or sendfile.
            "copy-range" | "splice" | "sendfile" => {
                let src = open(&c(a1)?, libc::O_RDONLY)?;
                let dst = open(&c(a2)?, libc::O_WRONLY | libc::O_TRUNC)?;
                let mut st: libc::stat = std::mem::zeroed();
                check(libc::fstat(src, &mut st))?;
                let len = st.st_size as usize;
                let moved = match name {
                    "copy-range" => libc::copy_file_range(
                        src,
                        std::ptr::null_mut(),
                        dst,
                        std::ptr::null_mut(),
                        len,
                        0,
                    ),
                    "sendfile" => libc::sendfile(dst, src, std::ptr::null_mut(), len),
                    _ => {
                        let mut pipe = [0; 2];
                        check(libc::pipe(pipe.as_mut_ptr()))?;
                        let n = libc::splice(
                            src,
                            std::ptr::null_mut(),
                            pipe[1],
                            std::ptr::null_mut(),
                            len,
                            0,
                        );
                        let m = if n > 0 {
                            libc::splice(
                                pipe[0],
                                std::ptr::null_mut(),
                                dst,
                                std::ptr::null_mut(),
                                n as usize,
                                0,
                            )
                        } else {
                            n
                        };
                        libc::close(pipe[0]);
                        libc::close(pipe[1]);
                        m
                    }
                };
                if moved as usize != len {
                    return Err(io::Error::last_os_error());
                }
                close(dst)?;
                close(src)
            }
            // punch PATH OFFSET LEN: fallocate(PUNCH_HOLE | KEEP_SIZE) on PATH.
            "punch" => {
                let fd = open(&c(a1)?, libc::O_WRONLY)?;
                check(libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    size(a2)?,
                    size(op.get(3))?,
                ))?;
                close(fd)
            }
            // tmpfile-link DIR NAME: an O_TMPFILE in DIR, written, then linked in as DIR/NAME
            // (linkat with AT_EMPTY_PATH).
            "tmpfile-link" => {
                let dir = c(a1)?;
                let fd = check(libc::open(
                    dir.as_ptr(),
                    libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                ))?;
                write_all(fd, b"from a temporary file\n")?;
                let mut target = a1.unwrap().as_bytes().to_vec();
                target.push(b'/');
                target.extend_from_slice(
                    a2.ok_or_else(|| io::Error::other("missing name"))?
                        .as_bytes(),
                );
                let target = CString::new(target).map_err(io::Error::other)?;
                check(libc::linkat(
                    fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    libc::AT_EMPTY_PATH,
                ))?;
                close(fd)
            }
            // leaderless-write PATH: a thread writes PATH after the process's main thread
            // (the thread-group leader) has exited.
            "leaderless-write" => {
                let path = c(a1)?;
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    let code = match open(&path, libc::O_WRONLY | libc::O_APPEND) {
                        Ok(fd) => {
                            let ok = write_all(fd, b"by a thread\n").is_ok() && close(fd).is_ok();
                            if ok { 0 } else { 1 }
                        }
                        Err(_) => 1,
                    };
                    // The whole process ends with the thread's result.
                    libc::exit(code);
                });
                // Only the main thread ends here: the process goes on without its leader.
                libc::syscall(libc::SYS_exit, 0);
                unreachable!("SYS_exit returned")
            }
            // unshare-bind SRC DST: from here on this process is in a mount namespace of its
            // own, in which SRC is bind-mounted on DST (made private, so the host sees
            // nothing of it).
            "unshare-bind" => {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    c(a1)?.as_ptr(),
                    c(a2)?.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))
                .map(|_| ())
            }
            other => match uring::perform(other, &op[1..]) {
                Some(result) => result,
                None => Err(io::Error::other(format!("unknown operation {other:?}"))),
            },
        }
    }
}

/// File operations through io_uring only (issue 18: submission interfaces the syscall
/// tracepoints never see). The file itself is never opened, written, closed, renamed or
/// removed by a syscall: `strace -f fim-test-actor uring-create /tmp/f x` shows only
/// `io_uring_setup`, the ring's `mmap`s, `io_uring_enter` and the `close` of the ring itself
/// (checked with Debian's strace for every operation below).
///
/// - `uring-create PATH CONTENT`: OPENAT (O_CREAT | O_WRONLY), WRITE, CLOSE
/// - `uring-write PATH CONTENT`: OPENAT (O_WRONLY) of an existing file, WRITE at 0, CLOSE
/// - `uring-rename OLD NEW`: RENAMEAT
/// - `uring-unlink PATH`: UNLINKAT
/// - `uring-fallocate PATH LEN`: OPENAT (O_WRONLY), FALLOCATE of LEN bytes, CLOSE
/// - `uring-mkdir PATH`: MKDIRAT (Linux 5.15)
mod uring {
    use std::{ffi::OsString, io};

    use io_uring::{IoUring, opcode, squeue, types};

    use super::c;

    /// A ring that runs one operation at a time.
    struct Ring(IoUring);

    impl Ring {
        fn new() -> io::Result<Ring> {
            IoUring::new(4).map(Ring)
        }

        /// Submits `entry`, waits for its completion and returns its result.
        fn run(&mut self, entry: squeue::Entry) -> io::Result<i32> {
            // SAFETY: every buffer and path an entry points to is borrowed by the caller until
            // this returns, after the completion.
            unsafe { self.0.submission().push(&entry.user_data(1)) }
                .map_err(|_| io::Error::other("the submission queue is full"))?;
            self.0.submit_and_wait(1)?;
            let done = self
                .0
                .completion()
                .next()
                .ok_or_else(|| io::Error::other("no completion"))?;
            match done.result() {
                error if error < 0 => Err(io::Error::from_raw_os_error(-error)),
                value => Ok(value),
            }
        }

        fn open(&mut self, path: &std::ffi::CStr, flags: i32) -> io::Result<types::Fd> {
            let entry = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
                .flags(flags | libc::O_CLOEXEC)
                .mode(0o644)
                .build();
            self.run(entry).map(types::Fd)
        }

        fn write_all(&mut self, fd: types::Fd, data: &[u8]) -> io::Result<()> {
            let n = self.run(opcode::Write::new(fd, data.as_ptr(), data.len() as u32).build())?;
            if n as usize != data.len() {
                return Err(io::Error::other(format!("short write: {n} bytes")));
            }
            Ok(())
        }

        fn close(&mut self, fd: types::Fd) -> io::Result<()> {
            self.run(opcode::Close::new(fd).build()).map(|_| ())
        }
    }

    /// Runs the io_uring operation `name`; `None` when it is not one.
    pub fn perform(name: &str, args: &[OsString]) -> Option<io::Result<()>> {
        let run = match name {
            "uring-create" => create,
            "uring-write" => write,
            "uring-rename" => rename,
            "uring-unlink" => unlink,
            "uring-fallocate" => fallocate,
            "uring-mkdir" => mkdir,
            _ => return None,
        };
        Some(Ring::new().and_then(|mut ring| run(&mut ring, args)))
    }

    fn text(arg: Option<&OsString>) -> io::Result<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        arg.map(|a| a.as_bytes().to_vec())
            .ok_or_else(|| io::Error::other("missing content"))
    }

    fn create(ring: &mut Ring, args: &[OsString]) -> io::Result<()> {
        let (path, content) = (c(args.first())?, text(args.get(1))?);
        let fd = ring.open(&path, libc::O_CREAT | libc::O_WRONLY)?;
        ring.write_all(fd, &content)?;
        ring.close(fd)
    }

    fn write(ring: &mut Ring, args: &[OsString]) -> io::Result<()> {
        let (path, content) = (c(args.first())?, text(args.get(1))?);
        let fd = ring.open(&path, libc::O_WRONLY)?;
        ring.write_all(fd, &content)?;
        ring.close(fd)
    }

    fn rename(ring: &mut Ring, args: &[OsString]) -> io::Result<()> {
        let (old, new) = (c(args.first())?, c(args.get(1))?);
        let at = types::Fd(libc::AT_FDCWD);
        let entry = opcode::RenameAt::new(at, old.as_ptr(), at, new.as_ptr()).build();
        ring.run(entry).map(|_| ())
    }

    fn unlink(ring: &mut Ring, args: &[OsString]) -> io::Result<()> {
        let path = c(args.first())?;
        let entry = opcode::UnlinkAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build();
        ring.run(entry).map(|_| ())
    }

    fn fallocate(ring: &mut Ring, args: &[OsString]) -> io::Result<()> {
        let path = c(args.first())?;
        let len: u64 = args
            .get(1)
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| io::Error::other("missing length"))?;
        let fd = ring.open(&path, libc::O_WRONLY)?;
        ring.run(opcode::Fallocate::new(fd, len).build())?;
        ring.close(fd)
    }

    fn mkdir(ring: &mut Ring, args: &[OsString]) -> io::Result<()> {
        let path = c(args.first())?;
        let entry = opcode::MkDirAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .mode(0o755)
            .build();
        ring.run(entry).map(|_| ())
    }
}
