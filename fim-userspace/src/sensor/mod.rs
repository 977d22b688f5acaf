//! The kernel sensor: loads one backend's programs, fills the filter maps, proves the programs
//! fire, and delivers decoded events.
//!
//! Backends are tried best first (LSM, fentry, tracepoint). A backend only counts when it loads,
//! attaches AND delivers the record of a self-test operation: an LSM program attached on a
//! kernel without `bpf` in `lsm=` loads fine but never fires, and must not be trusted.

mod btf;
mod event;
pub mod fanotify;
pub mod kernel_log;
mod offsets;
mod programs;
pub mod undecided;
pub mod watch;

use std::{
    collections::{HashSet, VecDeque},
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{FEntry, FExit, Lsm, TracePoint},
};
pub use event::{Event, Source};
pub use fim_common::{Backend, EventKind};
use fim_common::{
    Excluded, WatchKey, WatchValue, bitmap, flags,
    record::{DCACHE_GEN_UNTRACKED, Scratch},
};
use tokio::io::unix::AsyncFd;
pub use watch::WatchRoot;

use crate::host;
use programs::{Attach, ProgramSpec, programs};

/// The eBPF object built by build.rs from the `fim-ebpf` crate: not one log call in it.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fim-ebpf.o"));
/// The same programs with the kernel diagnostics' log calls (fim-ebpf's `kernel-log` feature),
/// loaded only with [`SensorConfig::kernel_log`]: switched off, the log calls would still
/// lengthen every load (the verifier drops them only after it has read them).
static EBPF_LOG_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fim-ebpf-log.o"));

/// How long a freshly attached backend gets to deliver its self-test record.
pub const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the self-test waits before it looks whether the kernel lost records meanwhile
/// (then its change is made again: its record may have been among them).
const SELF_TEST_RETRY: Duration = Duration::from_millis(100);

/// How often the ring buffer is polled when the kernel sent no wake-up: the upper bound on the
/// delay between a change and its record in user space, bought for far fewer context switches.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The rule id of the self-test directory (never a configured rule).
pub const SELF_TEST_RULE: u32 = u32::MAX;

/// What to watch and how.
#[derive(Clone, Debug)]
pub struct SensorConfig {
    pub roots: Vec<WatchRoot>,
    /// Ring-buffer size in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// Drop fim's own file activity in the kernel (always on in the daemon).
    pub exclude_self: bool,
    /// Let the lsm and fentry programs memoise directory verdicts and paths (fim-ebpf's
    /// dirmemo.rs and pathmemo.rs) where the kernel allows it. Off: every event walks up to
    /// the filesystem root (the tests check that the sensor stays right without them).
    pub memos: bool,
    /// Forward the kernel side's diagnostics to the log (`fim run --kernel-log`, see
    /// [`kernel_log`]): loads the programs built with log calls. Off: the programs built
    /// without any.
    pub kernel_log: bool,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            roots: Vec::new(),
            // Mapped twice into the process (the kernel's wrap-around trick), so it counts
            // double in RSS; 8 MiB holds ~40,000 records while user space catches up.
            ring_buffer_bytes: 8 * 1024 * 1024,
            exclude_self: true,
            memos: true,
            kernel_log: false,
        }
    }
}

/// One attached backend, its filter maps and the ring buffer it writes to.
pub struct Sensor {
    backend: Backend,
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    watched: BpfHashMap<MapData, WatchKey, WatchValue>,
    prefixes: BpfHashMap<MapData, u64, WatchValue>,
    root_prefix: aya::maps::Array<MapData, WatchValue>,
    /// Membership bitmaps in front of `watched` and `prefixes` (`fim_common::bitmap`).
    watched_bits: aya::maps::Array<MapData, u64>,
    prefix_bits: aya::maps::Array<MapData, u64>,
    /// Bumped after every change of the roots: invalidates the kernel's directory memo.
    filter_gen: aya::maps::Array<MapData, u64>,
    generation: u64,
    dir_memo: bool,
    path_memo: bool,
    /// Watched regular files with more than one link (see [`Sensor::watch_links`]).
    linked: BpfHashMap<MapData, WatchKey, WatchValue>,
    /// Process start times (CLOCK_BOOTTIME ns) by pid, from the fork program.
    started: BpfHashMap<MapData, u32, u64>,
    /// The fork program runs and knows where its tracepoint keeps the child's pid.
    starts_recorded: bool,
    /// The keys user space put into `linked`, and when (kernel insertions on link hooks are
    /// learnt from their records, see `note_link`).
    linked_known: std::collections::HashMap<WatchKey, std::time::Instant>,
    excluded: BpfHashMap<MapData, u32, Excluded>,
    /// The membership bitmap in front of `excluded` (keyed by tgid), and what it holds now.
    excluded_bits: aya::maps::Array<MapData, u64>,
    excluded_bitmap: Bitmap,
    registered: watch::FilterEntries,
    roots: Vec<WatchRoot>,
    /// The roots as user space matches undecided records against them.
    root_spellings: Vec<(PathBuf, u32, bool)>,
    mounts: Vec<watch::Mount>,
    /// Events read while waiting for something else (the self-test); handed out first.
    pending: VecDeque<Event>,
    malformed: u64,
    /// Times the ring buffer was read until empty (see [`Sensor::drains`]).
    drains: u64,
    kernel_log: kernel_log::KernelLog,
    // Dropped last: detaches and unloads the programs.
    _ebpf: Ebpf,
}

impl Sensor {
    /// Loads `backend`'s programs with the filter maps filled from `config`, then attaches
    /// them. Does not prove they fire: see [`start`].
    pub fn attach(backend: Backend, config: &SensorConfig) -> Result<Sensor> {
        host::raise_memlock_limit();
        let release = host::kernel_release();
        let (kernel_btf, offsets) = offsets::from_running_kernel()?;
        let specs = usable_programs(backend, &kernel_btf, &release)?;
        // The parsed kernel BTF is large: free it before aya parses its own copy.
        drop(kernel_btf);
        // The filter's directory memo is checked against the kernel's rename sequence
        // (fim-ebpf's dirmemo.rs); without its address the filter walks every time. The
        // programs read the sequence like the kernel's seqlock readers but without their read
        // barriers, which only x86's load ordering makes unnecessary.
        let symbol = |name: &str| {
            if cfg!(target_arch = "x86_64") {
                host::kernel_symbol(name).unwrap_or(0)
            } else {
                0
            }
        };
        let rename_lock = symbol("rename_lock");
        if rename_lock == 0 {
            log::info!(
                "the filter's directory memo is off on kernel {release} (x86_64 only, and \
                 /proc/kallsyms must list rename_lock): every event walks up to the \
                 filesystem root"
            );
        }
        // The path memo (fim-ebpf's pathmemo.rs, lsm and fentry) is checked against the
        // mount sequence too: a mount moved or unmounted changes paths without a rename.
        let mount_lock = if rename_lock == 0 || backend == Backend::Tracepoint {
            0
        } else {
            symbol("mount_lock")
        };
        if mount_lock == 0 && backend != Backend::Tracepoint {
            log::info!(
                "the path memo is off on kernel {release} (x86_64 only, and /proc/kallsyms \
                 must list rename_lock and mount_lock): every watched event reads every \
                 name of its path"
            );
        }
        // Where the fork tracepoint's record has the child's pid (tracepoint backend only).
        let fork_child_pid = if backend == Backend::Tracepoint {
            host::tracepoint_field_offset("sched", "sched_process_fork", "child_pid")
                .unwrap_or_else(|e| {
                    log::warn!("process start times are not recorded: {e:#}");
                    0
                })
        } else {
            0
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global("OFFSETS", &offsets, true)
            .override_global("RENAME_LOCK", &rename_lock, true)
            .override_global("MOUNT_LOCK", &mount_lock, true)
            .override_global("FORK_CHILD_PID", &fork_child_pid, true)
            .map_max_entries("EVENTS", config.ring_buffer_bytes);
        kernel_log::set_level(&mut loader, config.kernel_log);
        let object = if config.kernel_log {
            EBPF_LOG_OBJECT
        } else {
            EBPF_OBJECT
        };
        let mut ebpf = loader
            .load(object)
            .context("loading fim's embedded eBPF object (maps)")?;
        let kernel_log = kernel_log::KernelLog::start(&mut ebpf, config.kernel_log)?;
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("eBPF object has no {name} map"))
        };
        let ring =
            RingBuf::try_from(take(&mut ebpf, "EVENTS")?).context("EVENTS is not a ring buffer")?;
        let lost = PerCpuArray::try_from(take(&mut ebpf, "LOST")?)
            .context("LOST is not a per-CPU array")?;
        let watched = BpfHashMap::try_from(take(&mut ebpf, "WATCHED")?).context("WATCHED map")?;
        let prefixes =
            BpfHashMap::try_from(take(&mut ebpf, "PREFIXES")?).context("PREFIXES map")?;
        let root_prefix = aya::maps::Array::try_from(take(&mut ebpf, "ROOT_PREFIX")?)
            .context("ROOT_PREFIX map")?;
        let excluded =
            BpfHashMap::try_from(take(&mut ebpf, "EXCLUDED")?).context("EXCLUDED map")?;
        let linked = BpfHashMap::try_from(take(&mut ebpf, "LINKED")?).context("LINKED map")?;
        let started = BpfHashMap::try_from(take(&mut ebpf, "STARTED")?).context("STARTED map")?;
        let watched_bits = aya::maps::Array::try_from(take(&mut ebpf, "WATCHED_BITS")?)
            .context("WATCHED_BITS map")?;
        let prefix_bits = aya::maps::Array::try_from(take(&mut ebpf, "PREFIX_BITS")?)
            .context("PREFIX_BITS map")?;
        let filter_gen =
            aya::maps::Array::try_from(take(&mut ebpf, "FILTER_GEN")?).context("FILTER_GEN map")?;
        let excluded_bits = aya::maps::Array::try_from(take(&mut ebpf, "EXCLUDED_BITS")?)
            .context("EXCLUDED_BITS map")?;
        // No memo until the program that counts directory moves is attached (fim-ebpf's
        // dirmemo.rs); it comes first among the programs, so none memoises before.
        let mut dcache_gen: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(take(&mut ebpf, "DCACHE_GEN")?).context("DCACHE_GEN map")?;
        dcache_gen
            .set(0, DCACHE_GEN_UNTRACKED, 0)
            .context("setting the DCACHE_GEN map")?;
        let mut sensor = Sensor {
            backend,
            // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
            // AsyncFd (which owns the RingBuf) is dropped.
            ring: unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| anyhow!("registering the ring buffer with tokio: {e}"))?,
            lost,
            watched,
            prefixes,
            root_prefix,
            watched_bits,
            prefix_bits,
            filter_gen,
            generation: 0,
            dir_memo: rename_lock != 0,
            path_memo: mount_lock != 0,
            linked,
            linked_known: std::collections::HashMap::new(),
            started,
            starts_recorded: false,
            excluded,
            excluded_bits,
            excluded_bitmap: Bitmap::of(std::iter::empty()),
            registered: watch::FilterEntries::default(),
            roots: Vec::new(),
            root_spellings: Vec::new(),
            mounts: watch::mounts(),
            pending: VecDeque::new(),
            malformed: 0,
            drains: 0,
            kernel_log,
            _ebpf: ebpf,
        };
        // Fill the filter before attaching, so nothing watched slips through at start.
        for problem in sensor.set_roots(&config.roots)? {
            log::warn!("not watched: {problem}");
        }
        let btf = match backend {
            Backend::Lsm | Backend::Fentry => Some(Btf::from_sys_fs().with_context(|| {
                format!("reading kernel BTF (/sys/kernel/btf/vmlinux) on {release}")
            })?),
            Backend::Tracepoint => None,
        };
        let mut moves_counted = false;
        let move_hook_tried = specs.iter().any(|spec| spec.name == programs::D_MOVE);
        // Without the program that counts moves the generation keeps DCACHE_GEN_UNTRACKED:
        // no memo is used.
        let specs = specs
            .into_iter()
            .filter(|spec| config.memos || spec.name != programs::D_MOVE);
        for spec in specs {
            let attached = attach_program(&mut sensor._ebpf, spec, btf.as_ref())
                .with_context(|| format!("{} backend on kernel {release}", backend.name()));
            if spec.name == programs::FORK {
                match attached {
                    Ok(()) => sensor.starts_recorded = fork_child_pid != 0,
                    Err(e) => log::warn!(
                        "process start times are not recorded (an actor only the completeness \
                         layer saw is reported by pid alone once it has exited): {e:#}"
                    ),
                }
                continue;
            }
            if spec.name == programs::D_MOVE {
                match attached {
                    Ok(()) => {
                        dcache_gen
                            .set(0, 0, 0)
                            .context("setting the DCACHE_GEN map")?;
                        moves_counted = true;
                    }
                    Err(e) => log::warn!(
                        "the kernel side's memos are off (every event walks up to the \
                         filesystem root): {e:#}"
                    ),
                }
                continue;
            }
            attached?;
        }
        if backend != Backend::Tracepoint && !move_hook_tried && config.memos {
            log::info!(
                "the kernel side's memos are off on kernel {release}: its BTF lacks \
                 __d_move, where fim counts directory moves; every event walks up to the \
                 filesystem root"
            );
        }
        sensor.dir_memo &= moves_counted;
        sensor.path_memo &= moves_counted;
        Ok(sensor)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// When the latest process (or thread) with pid `pid` started (CLOCK_BOOTTIME ns, the
    /// clock of the records' start times), if the sensor saw it fork. The tracepoint backend
    /// only.
    pub fn process_start(&self, pid: u32) -> Option<u64> {
        if !self.starts_recorded {
            return None;
        }
        self.started.get(&pid, 0).ok()
    }

    /// Whether the kernel side memoises directory verdicts (lsm and fentry; it needs
    /// `rename_lock`'s address from /proc/kallsyms and a program on `__d_move`).
    pub fn dir_memo(&self) -> bool {
        self.dir_memo
    }

    /// Whether the kernel side memoises the path of the last directory a path was built in
    /// (lsm and fentry; it needs `rename_lock` and `mount_lock` from /proc/kallsyms and a
    /// program on `__d_move`).
    pub fn path_memo(&self) -> bool {
        self.path_memo
    }

    /// Replaces the watched roots. Returns the roots that could not be registered.
    ///
    /// A root in both the old and the new set stays in the maps throughout: only keys that are
    /// going away are removed, before the new entries are written over the old ones (one
    /// element at a time, each replaced whole). Removing everything and then filling the maps
    /// again left a moment in which no root was watched and the kernel dropped what happened
    /// under them (the daemon's start-up self-test calls this twice). Removing first also
    /// keeps the maps' fill at most the new set's size.
    pub fn set_roots(&mut self, roots: &[WatchRoot]) -> Result<Vec<String>> {
        let entries = watch::entries(roots);
        // The bitmaps first gain the new keys' bits and only lose the old keys' bits once the
        // maps no longer hold them: a clear bit must never hide a key that is in its map.
        let inode_bits = |e: &watch::FilterEntries| {
            Bitmap::of(
                e.inodes
                    .iter()
                    .flat_map(|(k, _)| [bitmap::inode_hash(k.dev, k.ino), bitmap::dev_hash(k.dev)]),
            )
        };
        let prefix_bits = |e: &watch::FilterEntries| Bitmap::of(e.prefixes.iter().map(|p| p.0));
        let (old_inodes, new_inodes) = (inode_bits(&self.registered), inode_bits(&entries));
        let (old_prefixes, new_prefixes) = (prefix_bits(&self.registered), prefix_bits(&entries));
        let both_inodes = old_inodes.union(&new_inodes);
        let both_prefixes = old_prefixes.union(&new_prefixes);
        both_inodes
            .store(&mut self.watched_bits, &old_inodes)
            .context("setting the WATCHED_BITS map")?;
        both_prefixes
            .store(&mut self.prefix_bits, &old_prefixes)
            .context("setting the PREFIX_BITS map")?;
        let kept_inodes: HashSet<WatchKey> = entries.inodes.iter().map(|(k, _)| *k).collect();
        let kept_prefixes: HashSet<u64> = entries.prefixes.iter().map(|p| p.0).collect();
        for (key, _) in &self.registered.inodes {
            if !kept_inodes.contains(key) {
                let _ = self.watched.remove(key);
            }
        }
        for (hash, _, _) in &self.registered.prefixes {
            if !kept_prefixes.contains(hash) {
                let _ = self.prefixes.remove(hash);
            }
        }
        // From here the maps may hold any of the old and the new keys until all is written:
        // if a write fails, both sets count as registered, so that the next call removes
        // whatever of them it does not keep.
        let mut registered = std::mem::take(&mut self.registered);
        let filled = self.fill_roots(&entries);
        if let Err(e) = filled {
            registered.inodes.extend(entries.inodes.iter().copied());
            registered.prefixes.extend(entries.prefixes.iter().cloned());
            self.registered = registered;
            return Err(e);
        }
        let problems = entries.problems.clone();
        self.registered = entries;
        new_inodes
            .store(&mut self.watched_bits, &both_inodes)
            .context("setting the WATCHED_BITS map")?;
        new_prefixes
            .store(&mut self.prefix_bits, &both_prefixes)
            .context("setting the PREFIX_BITS map")?;
        // Last: verdicts the kernel memoised before (or during) the change are void from here.
        self.generation += 1;
        self.filter_gen
            .set(0, self.generation, 0)
            .context("setting the FILTER_GEN map")?;
        self.roots = roots.to_vec();
        self.root_spellings = undecided::spellings(roots);
        self.mounts = watch::mounts();
        Ok(problems)
    }

    /// Writes `entries` into the roots' maps (over any entry of the same key).
    fn fill_roots(&mut self, entries: &watch::FilterEntries) -> Result<()> {
        for (key, value) in &entries.inodes {
            self.watched
                .insert(key, value, 0)
                .context("filling the WATCHED map (too many roots?)")?;
        }
        for (hash, value, _) in &entries.prefixes {
            self.prefixes
                .insert(hash, value, 0)
                .context("filling the PREFIXES map (too many roots?)")?;
        }
        let root = entries
            .prefixes
            .iter()
            .find(|(_, _, bytes)| bytes == b"/")
            .map(|(_, value, _)| *value)
            .unwrap_or_default();
        self.root_prefix
            .set(0, root, 0)
            .context("setting the ROOT_PREFIX map")
    }

    /// Watches these regular files through every name they have: a write, truncation,
    /// chmod, chown or xattr change through another hard link (maybe in a directory no rule
    /// covers) is reported (flagged `VIA_LINK`; user space reports it at the watched names).
    /// `files`: (st_dev, inode, rule id). Returns how many did not fit in the kernel's map
    /// (they are found by the next scan instead).
    pub fn watch_links(&mut self, files: impl IntoIterator<Item = (u64, u64, u32)>) -> usize {
        let now = std::time::Instant::now();
        let mut failed = 0;
        for (st_dev, ino, rule_id) in files {
            let key = WatchKey {
                dev: watch::kernel_dev(st_dev),
                _pad: 0,
                ino,
            };
            let value = WatchValue {
                rule_id,
                flags: fim_common::watch::SELF,
            };
            if self.linked.insert(key, value, 0).is_ok() {
                self.linked_known.insert(key, now);
            } else {
                failed += 1;
            }
        }
        failed
    }

    /// A link record the kernel reported: its programs already watch the object's inode
    /// (lsm, fentry), or, for the tracepoint backend, this does (from a path: `st_dev` and
    /// inode as `lstat` gave them).
    pub fn note_link(&mut self, st_dev: u64, ino: u64, rule_id: u32) {
        let _ = self.watch_links([(st_dev, ino, rule_id)]);
    }

    /// After a scan of everything: forgets the linked inodes that were known before
    /// `scan_started` and that the scan did not see with more than one link (`seen`:
    /// (st_dev, inode)). Kernel insertions user space never learnt of stay: a stale key costs
    /// a lookup for a file with several links, never a wrong report (user space checks the
    /// names it reports).
    pub fn prune_links(
        &mut self,
        seen: &std::collections::HashSet<(u64, u64)>,
        scan_started: std::time::Instant,
    ) {
        let seen: HashSet<WatchKey> = seen
            .iter()
            .map(|&(st_dev, ino)| WatchKey {
                dev: watch::kernel_dev(st_dev),
                _pad: 0,
                ino,
            })
            .collect();
        let stale: Vec<WatchKey> = self
            .linked_known
            .iter()
            .filter(|(key, added)| **added < scan_started && !seen.contains(key))
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            let _ = self.linked.remove(&key);
            self.linked_known.remove(&key);
        }
    }

    /// Drops a process's activity in the kernel from now on.
    pub fn exclude_process(&mut self, tgid: u32) -> Result<()> {
        self.exclude(tgid, 0, fim_common::excluded::SELF)
    }

    /// Drops the activity of the process `tgid` that started at `start_boottime_ns` (an
    /// executable the configuration excludes) in the kernel from now on; a later process
    /// with the same pid is not affected. When the map is full, the entries of processes
    /// that are gone make room.
    pub fn exclude_actor(&mut self, tgid: u32, start_boottime_ns: u64) -> Result<()> {
        self.exclude(tgid, start_boottime_ns, fim_common::excluded::CONFIGURED)
    }

    fn exclude(&mut self, tgid: u32, start_boottime_ns: u64, reason: u32) -> Result<()> {
        let value = Excluded {
            reason,
            _pad: 0,
            start_boottime_ns,
        };
        // The bit first: the kernel looks the map up only where it is set.
        self.set_excluded_bits(Some(tgid), true)?;
        if self.excluded.insert(tgid, value, 0).is_ok() {
            return Ok(());
        }
        let gone: Vec<u32> = self
            .excluded
            .keys()
            .filter_map(|k| k.ok())
            .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        for pid in gone {
            let _ = self.excluded.remove(&pid);
        }
        // Clear what only the removed entries needed (after their removal).
        self.set_excluded_bits(Some(tgid), false)?;
        self.excluded
            .insert(tgid, value, 0)
            .context("filling the EXCLUDED map")
    }

    /// Stores the bitmap of the `excluded` map's keys and `extra`; `keep`: also every bit set
    /// now (only adding, no map read).
    fn set_excluded_bits(&mut self, extra: Option<u32>, keep: bool) -> Result<()> {
        let bits = if keep {
            self.excluded_bitmap
                .union(&Bitmap::of(extra.into_iter().map(u64::from)))
        } else {
            let keys: Vec<u32> = self.excluded.keys().filter_map(|k| k.ok()).collect();
            Bitmap::of(keys.into_iter().chain(extra).map(u64::from))
        };
        bits.store(&mut self.excluded_bits, &self.excluded_bitmap)
            .context("setting the EXCLUDED_BITS map")?;
        self.excluded_bitmap = bits;
        Ok(())
    }

    /// Waits until at least one event is available and appends everything available to `out`.
    pub async fn recv(&mut self, out: &mut Vec<Event>) -> Result<()> {
        if !self.pending.is_empty() {
            out.extend(self.pending.drain(..));
            return Ok(());
        }
        loop {
            // The kernel side only wakes us when a lot is pending (see fim-ebpf's emit.rs), so
            // besides readiness the buffer is polled every POLL_INTERVAL.
            let before = out.len();
            let decoded = drain(
                self.ring.get_mut(),
                out,
                &mut self.malformed,
                |event: &mut Event| {
                    absolutize(event, &self.mounts);
                    undecided::decide(event, &self.root_spellings)
                },
            );
            self.drains += 1;
            if out.len() > before {
                return Ok(());
            }
            if decoded > 0 {
                continue;
            }
            tokio::select! {
                ready = self.ring.readable_mut() => {
                    let mut guard = ready.context("waiting on the ring buffer")?;
                    guard.clear_ready();
                }
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Whether the loaded programs have log calls in them (only with
    /// [`SensorConfig::kernel_log`]; the tests check that without it they have none).
    pub fn kernel_log_calls(&self) -> bool {
        self.kernel_log.calls()
    }

    /// Ring-buffer outputs that failed in the kernel for this backend, summed over CPUs.
    pub fn lost_events(&self) -> Result<u64> {
        let per_cpu = self
            .lost
            .get(&(self.backend as u32), 0)
            .context("reading the LOST map")?;
        Ok(per_cpu.iter().sum())
    }

    /// Ring-buffer items that could not be decoded (never expected; counted, not trusted).
    /// How many times the ring buffer has been read until it was empty. Once this has grown
    /// by two since a moment, every record the kernel wrote before that moment has been
    /// returned by [`Sensor::recv`] (one whole drain started after it).
    pub fn drains(&self) -> u64 {
        self.drains
    }

    pub fn malformed_records(&self) -> u64 {
        self.malformed
    }

    /// Marks the kernel side's scratch slot (fim-ebpf's `emit`) as held on every CPU, as a
    /// program preempted while it builds a record would: from then on the lsm, fentry and exec
    /// programs drop every event and count it as lost. For the test of that path only: the
    /// sensor reports none of those events afterwards.
    #[doc(hidden)]
    pub fn hold_scratch_for_test(&mut self) -> Result<()> {
        let map = self
            ._ebpf
            .map_mut("SCRATCH")
            .context("fim's eBPF object has no SCRATCH map")?;
        let mut scratch: PerCpuArray<_, Scratch> =
            PerCpuArray::try_from(map).context("opening the SCRATCH map")?;
        let slots = scratch.get(&0, 0).context("reading the SCRATCH map")?;
        let held: Vec<Scratch> = slots
            .iter()
            .map(|slot| Scratch {
                entered: slot.left.wrapping_add(1),
                ..*slot
            })
            .collect();
        let held = PerCpuValues::try_from(held).context("one value per CPU")?;
        scratch.set(0, held, 0).context("writing the SCRATCH map")
    }

    /// Creates and removes a file in a private watched directory and waits for this process's
    /// record of it.
    pub async fn self_test(&mut self, timeout: Duration) -> Result<()> {
        let dir = SelfTestDir::create()?;
        let mut roots: Vec<WatchRoot> = Vec::new();
        roots.push(WatchRoot {
            path: dir.path.clone(),
            rule_id: SELF_TEST_RULE,
            recursive: true,
        });
        let previous = self.roots.clone();
        roots.extend(previous.iter().cloned());
        self.set_roots(&roots)?;
        let result = self.self_test_in(&dir.path, timeout).await;
        self.set_roots(&previous)?;
        result
    }

    /// Makes a change under `dir` and waits for its record. A record lost in the kernel
    /// (a small ring buffer filled by everyone else's exec records, say) proves nothing either
    /// way: then the change is made again, until `timeout`.
    async fn self_test_in(&mut self, dir: &Path, timeout: Duration) -> Result<()> {
        let probe = |attempt: u32| -> Result<()> {
            let file = dir.join(format!("probe-{attempt}"));
            std::fs::write(&file, b"fim self-test")
                .with_context(|| format!("writing {}", file.display()))?;
            unlinkat(&file)
        };
        let mut attempt = 0;
        probe(attempt)?;
        let mut lost_at_probe = self.lost_events().unwrap_or(0);
        let me = std::process::id();
        let started = tokio::time::Instant::now();
        let mut deadline = started + timeout;
        // While records are being lost the verdict is postponed (up to this long): a ring that
        // overflows may be losing every probe's record.
        let longest = started + timeout * 6;
        let mut batch = Vec::new();
        // Other records read meanwhile are handed out later. They are kept aside until the
        // self-test ends: put back into `pending` at once, the next `recv` would return them
        // without reading the ring or yielding, and the loop would spin without its deadline
        // ever firing (it did, with a 4 KiB ring on a busy host).
        let mut others = Vec::new();
        let outcome = loop {
            batch.clear();
            let wait_until = deadline.min(tokio::time::Instant::now() + SELF_TEST_RETRY);
            match tokio::time::timeout_at(wait_until, self.recv(&mut batch)).await {
                Err(_) if tokio::time::Instant::now() < deadline => {
                    let lost = self.lost_events().unwrap_or(0);
                    if lost > lost_at_probe {
                        attempt += 1;
                        probe(attempt)?;
                        lost_at_probe = lost;
                        deadline = (deadline + SELF_TEST_RETRY).min(longest);
                    }
                    continue;
                }
                Err(_) => {
                    break Err(anyhow!(
                        "the {} backend attached but did not deliver its self-test event \
                         within {:?}; its hooks do not fire on this kernel",
                        self.backend.name(),
                        timeout
                    ));
                }
                Ok(Err(e)) => break Err(e),
                Ok(Ok(())) => {}
            }
            let mut found = false;
            for event in batch.drain(..) {
                if event.rule_id == SELF_TEST_RULE && event.actor.tgid == me {
                    found |= event.kind == EventKind::Unlink;
                } else {
                    others.push(event);
                }
            }
            if found {
                break Ok(());
            }
        };
        self.pending.extend(others);
        outcome
    }
}

/// Paths the kernel could only build relative to a filesystem root get their mount point.
fn absolutize(event: &mut Event, mounts: &[watch::Mount]) {
    if event.flags & flags::PATH_FS_RELATIVE == 0 {
        return;
    }
    if let Some(mount_point) = watch::mount_point_of(mounts, event.target.dev) {
        if mount_point != Path::new("/") {
            let mut full = mount_point.as_os_str().as_bytes().to_vec();
            full.extend_from_slice(&event.path);
            event.path = full;
        }
        event.flags &= !flags::PATH_FS_RELATIVE;
    }
}

/// Decodes everything in the ring buffer and appends to `out` each event `keep` (which may
/// amend it) keeps; returns how many records were decoded. Each event is moved once, into
/// `out`.
fn drain(
    ring: &mut RingBuf<MapData>,
    out: &mut Vec<Event>,
    malformed: &mut u64,
    mut keep: impl FnMut(&mut Event) -> bool,
) -> usize {
    let mut decoded = 0;
    while let Some(item) = ring.next() {
        let event = Event::decode(&item);
        // The item's space goes back to the kernel before `keep`, which may look at the
        // file system.
        drop(item);
        match event {
            Some(mut event) => {
                decoded += 1;
                if keep(&mut event) {
                    out.push(event);
                }
            }
            None => *malformed += 1,
        }
    }
    decoded
}

/// Compares the prototype a program relies on with the running kernel's BTF.
fn check_prototype(btf: &btf::KernelBtf, spec: &ProgramSpec) -> Result<()> {
    let function = match &spec.attach {
        Attach::Lsm { hook } => format!("bpf_lsm_{hook}"),
        Attach::Fexit { function } | Attach::Fentry { function } => function.to_string(),
        Attach::Tracepoints { .. } | Attach::Tracepoint { .. } => return Ok(()),
    };
    let actual = btf
        .function_params(&function)
        .with_context(|| format!("program {} needs {function}", spec.name))?;
    let matches = actual.len() == spec.params.len()
        && actual
            .iter()
            .zip(spec.params)
            .all(|(a, e)| *e == "_" || a == e);
    if !matches {
        bail!(
            "hook {function}: the kernel's prototype is ({}) but program {} expects ({}) on kernel {}",
            actual.join(", "),
            spec.name,
            spec.params.join(", "),
            host::kernel_release()
        );
    }
    Ok(())
}

fn attach_program(ebpf: &mut Ebpf, spec: &ProgramSpec, btf: Option<&Btf>) -> Result<()> {
    let name = spec.name;
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} is missing from the eBPF object"))?;
    match &spec.attach {
        Attach::Lsm { hook } => {
            let btf = btf.context("LSM programs need kernel BTF")?;
            let lsm: &mut Lsm = program.try_into()?;
            lsm.load(hook, btf).map_err(|e| {
                explain(
                    e.into(),
                    &format!("loading LSM program {name} (hook {hook})"),
                )
            })?;
            lsm.attach().map_err(|e| {
                explain(
                    e.into(),
                    &format!("attaching LSM program {name} (hook {hook})"),
                )
            })?;
        }
        Attach::Fexit { function } => {
            let btf = btf.context("fexit programs need kernel BTF")?;
            let fexit: &mut FExit = program.try_into()?;
            fexit.load(function, btf).map_err(|e| {
                explain(
                    e.into(),
                    &format!("loading fexit program {name} ({function})"),
                )
            })?;
            fexit.attach().map_err(|e| {
                explain(
                    e.into(),
                    &format!("attaching fexit program {name} ({function})"),
                )
            })?;
        }
        Attach::Fentry { function } => {
            let btf = btf.context("fentry programs need kernel BTF")?;
            let fentry: &mut FEntry = program.try_into()?;
            fentry.load(function, btf).map_err(|e| {
                explain(
                    e.into(),
                    &format!("loading fentry program {name} ({function})"),
                )
            })?;
            fentry.attach().map_err(|e| {
                explain(
                    e.into(),
                    &format!("attaching fentry program {name} ({function})"),
                )
            })?;
        }
        Attach::Tracepoints { events, optional } => {
            let tracepoint: &mut TracePoint = program.try_into()?;
            tracepoint
                .load()
                .map_err(|e| explain(e.into(), &format!("loading tracepoint program {name}")))?;
            for event in *events {
                tracepoint.attach("syscalls", event).map_err(|e| {
                    explain(e.into(), &format!("attaching {name} to syscalls:{event}"))
                })?;
            }
            for event in *optional {
                if let Err(e) = tracepoint.attach("syscalls", event) {
                    log::debug!("optional tracepoint syscalls:{event} not attached: {e}");
                }
            }
        }
        Attach::Tracepoint {
            category,
            name: event,
        } => {
            let tracepoint: &mut TracePoint = program.try_into()?;
            tracepoint
                .load()
                .map_err(|e| explain(e.into(), &format!("loading tracepoint program {name}")))?;
            tracepoint.attach(category, event).map_err(|e| {
                explain(e.into(), &format!("attaching {name} to {category}:{event}"))
            })?;
        }
    }
    Ok(())
}

/// A membership bitmap as user space builds it (`fim_common::bitmap`).
#[derive(Clone, PartialEq, Eq, Debug)]
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn of(hashes: impl Iterator<Item = u64>) -> Bitmap {
        let mut words = vec![0u64; bitmap::WORDS as usize];
        for hash in hashes {
            let (word, mask) = bitmap::bit(hash);
            words[word as usize] |= mask;
        }
        Bitmap(words)
    }

    fn union(&self, other: &Bitmap) -> Bitmap {
        Bitmap(self.0.iter().zip(&other.0).map(|(a, b)| a | b).collect())
    }

    /// Writes the words that differ from `current` (what the map holds now).
    fn store(&self, map: &mut aya::maps::Array<MapData, u64>, current: &Bitmap) -> Result<()> {
        for (index, (word, old)) in self.0.iter().zip(&current.0).enumerate() {
            if word != old {
                map.set(index as u32, *word, 0)
                    .with_context(|| format!("word {index}"))?;
            }
        }
        Ok(())
    }
}

/// The programs of `backend` that this kernel can take (optional ones whose hook prototype
/// does not match are left out), after checking what the backend needs: BPF LSM active for
/// lsm, tracefs for the tracepoint programs every backend has (at least the exec one).
fn usable_programs<'a>(
    backend: Backend,
    kernel_btf: &btf::KernelBtf,
    release: &str,
) -> Result<Vec<&'a ProgramSpec>> {
    if backend == Backend::Lsm {
        let lsms = host::active_lsms().context("checking whether BPF LSM is active")?;
        if !lsms.iter().any(|l| l == "bpf") {
            bail!(
                "BPF LSM is not active on kernel {release}: /sys/kernel/security/lsm is `{}`; \
                 add `bpf` to the `lsm=` boot parameter to use the lsm backend",
                lsms.join(",")
            );
        }
    }
    host::ensure_tracefs()?;
    let mut specs = Vec::new();
    for spec in programs(backend) {
        match check_prototype(kernel_btf, spec) {
            Ok(()) => specs.push(spec),
            Err(e) if spec.optional => {
                log::debug!("{} not used on kernel {release}: {e:#}", spec.name);
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{} backend on kernel {release}", backend.name()));
            }
        }
    }
    Ok(specs)
}

/// A backend's attach points with programs that do nothing: what the benchmark measures as
/// the floor of that backend (the kernel's hook and trampoline or syscall-tracing path),
/// apart from fim's own work. Detached when dropped.
pub struct Floor {
    _ebpf: Ebpf,
}

/// The floor of `backend`: its own programs, loaded so that each returns at once (fim-ebpf's
/// `FLOOR`); for the tracepoint backend one program that does nothing, attached to every
/// tracepoint it uses.
pub fn attach_floor(backend: Backend) -> Result<Floor> {
    if backend == Backend::Tracepoint {
        return attach_tracepoint_floor();
    }
    host::raise_memlock_limit();
    let release = host::kernel_release();
    let kernel_btf = btf::KernelBtf::from_sys_fs()?;
    let specs = usable_programs(backend, &kernel_btf, &release)?;
    drop(kernel_btf);
    let mut ebpf = EbpfLoader::new()
        .override_global("FLOOR", &1u8, true)
        .load(EBPF_OBJECT)
        .context("loading fim's embedded eBPF object")?;
    let btf = Btf::from_sys_fs()
        .with_context(|| format!("reading kernel BTF (/sys/kernel/btf/vmlinux) on {release}"))?;
    for spec in specs {
        let attached = attach_program(&mut ebpf, spec, Some(&btf))
            .with_context(|| format!("{} floor on kernel {release}", backend.name()));
        // As in `Sensor::attach`: without it the backend runs, with its memos off.
        if spec.name != programs::D_MOVE {
            attached?;
        }
    }
    Ok(Floor { _ebpf: ebpf })
}

/// Attaches `tp_noop` to every tracepoint the tracepoint backend uses.
fn attach_tracepoint_floor() -> Result<Floor> {
    host::raise_memlock_limit();
    host::ensure_tracefs()?;
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .context("loading fim's embedded eBPF object")?;
    let program: &mut TracePoint = ebpf
        .program_mut("tp_noop")
        .context("program tp_noop is missing from the eBPF object")?
        .try_into()?;
    program.load().context("loading tp_noop")?;
    for spec in programs(Backend::Tracepoint) {
        match &spec.attach {
            Attach::Tracepoints { events, optional } => {
                for event in *events {
                    program
                        .attach("syscalls", event)
                        .with_context(|| format!("attaching tp_noop to syscalls:{event}"))?;
                }
                for event in *optional {
                    let _ = program.attach("syscalls", event);
                }
            }
            Attach::Tracepoint { category, name } => {
                program
                    .attach(category, name)
                    .with_context(|| format!("attaching tp_noop to {category}:{name}"))?;
            }
            _ => bail!("{} is not a tracepoint program", spec.name),
        }
    }
    Ok(Floor { _ebpf: ebpf })
}

/// The kernel-internal "operation not supported" errno, which BPF syscalls can leak to user space.
const ENOTSUPP: i32 = 524;

/// Adds what the raw errno means for fim to an aya error, so the log says why, not just what.
fn explain(error: anyhow::Error, doing: &str) -> anyhow::Error {
    let errno = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error);
    let hint = match errno {
        Some(libc::EPERM) => {
            "; the kernel refused this program type with EPERM (not permitted for this kernel \
             configuration or without CAP_BPF/CAP_SYS_ADMIN)"
        }
        Some(libc::EINVAL) => "; the kernel rejected the program or its attach target (EINVAL)",
        Some(libc::ENOENT) => "; the attach target does not exist on this kernel (ENOENT)",
        Some(ENOTSUPP) | Some(libc::EOPNOTSUPP) => "; not supported by this kernel",
        _ => "",
    };
    error.context(format!("{doing}{hint}"))
}

/// The outcome of backend selection: the running sensor and why better backends were skipped.
pub struct Selection {
    pub sensor: Sensor,
    pub skipped: Vec<(Backend, anyhow::Error)>,
}

/// Attaches `backend`, proves it fires, and (per config) excludes this process.
pub async fn start(backend: Backend, config: &SensorConfig) -> Result<Sensor> {
    let mut sensor = match Sensor::attach(backend, config) {
        // The verifier may refuse programs with the log calls in them on a kernel fim was not
        // tested on: the backend then runs without its diagnostics rather than not at all.
        Err(with_log) if config.kernel_log => {
            let without = SensorConfig {
                kernel_log: false,
                ..config.clone()
            };
            let sensor = Sensor::attach(backend, &without)?;
            log::warn!(
                "the {} backend runs without its kernel diagnostics: its programs did not load \
                 with them ({with_log:#})",
                backend.name()
            );
            sensor
        }
        attached => attached?,
    };
    sensor.self_test(SELF_TEST_TIMEOUT).await?;
    if config.exclude_self {
        sensor.exclude_process(std::process::id())?;
    }
    Ok(sensor)
}

/// Starts the best backend that works, or exactly `forced` when given.
pub async fn start_best(forced: Option<Backend>, config: &SensorConfig) -> Result<Selection> {
    if let Some(backend) = forced {
        let sensor = start(backend, config)
            .await
            .with_context(|| format!("the forced backend {} failed", backend.name()))?;
        return Ok(Selection {
            sensor,
            skipped: Vec::new(),
        });
    }
    let mut skipped = Vec::new();
    for backend in Backend::ALL {
        match start(backend, config).await {
            Ok(sensor) => return Ok(Selection { sensor, skipped }),
            Err(error) => skipped.push((backend, error)),
        }
    }
    let reasons: Vec<String> = skipped
        .iter()
        .map(|(b, e)| format!("{}: {e:#}", b.name()))
        .collect();
    bail!(
        "no sensor backend works on kernel {}:\n  {}",
        host::kernel_release(),
        reasons.join("\n  ")
    )
}

/// A private directory for the self-test, removed on drop.
struct SelfTestDir {
    path: PathBuf,
}

impl SelfTestDir {
    fn create() -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("fim-selftest-{}-{}", std::process::id(), nonce()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(SelfTestDir { path })
    }
}

impl Drop for SelfTestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `unlinkat(AT_FDCWD, path, 0)`.
fn unlinkat(path: &Path) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).context("path contains a NUL byte")?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::unlinkat(libc::AT_FDCWD, c_path.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("unlinking {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_its_bit_and_the_union_keeps_both_sets() {
        let old: Vec<u64> = (0..500u64).map(|i| bitmap::inode_hash(2049, i)).collect();
        let new: Vec<u64> = (0..500u64)
            .map(|i| fim_common::record::fnv1a(&i.to_le_bytes()))
            .collect();
        let (a, b) = (
            Bitmap::of(old.iter().copied()),
            Bitmap::of(new.iter().copied()),
        );
        let both = a.union(&b);
        let has = |m: &Bitmap, h: u64| {
            let (word, mask) = bitmap::bit(h);
            m.0[word as usize] & mask != 0
        };
        assert!(old.iter().all(|&h| has(&a, h) && has(&both, h)));
        assert!(new.iter().all(|&h| has(&b, h) && has(&both, h)));
        assert_eq!(both.union(&a), both);
    }

    #[test]
    fn sequential_inodes_and_sibling_paths_spread_over_the_bitmap() {
        // Inode numbers of one directory are often consecutive; paths differ in a last byte.
        // Few shared bits keep the bitmap's false positives (useless lookups) rare.
        let inodes = Bitmap::of((1_000_000..1_004_000u64).map(|i| bitmap::inode_hash(66306, i)));
        let paths = Bitmap::of(
            (0..4000u32).map(|i| fim_common::record::fnv1a(format!("/srv/app/f{i}").as_bytes())),
        );
        for map in [inodes, paths] {
            let set: u32 = map.0.iter().map(|w| w.count_ones()).sum();
            // 4,000 random keys in 65,536 bits would set about 3,880.
            assert!(set > 3_700, "only {set} distinct bits for 4,000 keys");
        }
    }
}
