//! Spawning instances as process-group leaders, stopping whole groups, and pidfiles that let a
//! restarted daemon find and stop what a killed one left behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
}

/// Starts `spec` in a new process group, stdout/stderr piped. The child is sent SIGKILL if the
/// daemon dies, so a `kill -9` of the daemon leaves no running leader behind.
pub fn spawn(spec: &Spec) -> std::io::Result<Child> {
    let program = resolve(&spec.program, &spec.workdir);
    let mut cmd = Command::new(&program);
    cmd.args(&spec.args)
        .current_dir(&spec.workdir)
        .env_clear()
        .envs(inherited_env())
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    set_parent_death_signal(&mut cmd);
    cmd.spawn().map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::NotFound {
            format!("command not found: {} (working directory {})", spec.program, spec.workdir.display())
        } else if e.kind() == std::io::ErrorKind::PermissionDenied {
            format!("permission denied running {}", program.display())
        } else {
            format!("cannot start {}: {e}", program.display())
        };
        std::io::Error::new(e.kind(), what)
    })
}

#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
    }
}

/// A relative program with a `/` is resolved against the working directory; a bare name is
/// looked up on PATH as usual.
fn resolve(program: &str, workdir: &Path) -> PathBuf {
    if program.contains('/') && !program.starts_with('/') {
        workdir.join(program)
    } else {
        PathBuf::from(program)
    }
}

/// The daemon's environment passed on to instances: enough to find programs and behave well,
/// nothing of Yun's own secrets.
fn inherited_env() -> Vec<(String, String)> {
    const KEEP: &[&str] =
        &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR", "TERM", "RUST_BACKTRACE"];
    std::env::vars().filter(|(k, _)| KEEP.contains(&k.as_str())).collect()
}

/// Sends `signal` to the whole group led by `pgid`; a group that is already gone is fine.
pub fn signal_group(pgid: u32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid as i32), signal);
}

/// Whether any process of group `pgid` is still alive.
pub fn group_alive(pgid: u32) -> bool {
    killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

/// The kernel's start time of `pid` (clock ticks since boot), to tell a pid from a reused one.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Pidfiles of running instances, one per instance, under `<YUN_HOME>/run/instances`.
#[derive(Debug, Clone)]
pub struct PidFiles {
    dir: PathBuf,
}

impl PidFiles {
    pub fn new(dir: PathBuf) -> std::io::Result<PidFiles> {
        std::fs::create_dir_all(&dir)?;
        Ok(PidFiles { dir })
    }

    fn path(&self, instance: &str) -> PathBuf {
        self.dir.join(format!("{instance}.pid"))
    }

    pub fn write(&self, instance: &str, pid: u32) {
        let line = format!("{pid} {}\n", start_time(pid).unwrap_or(0));
        if let Err(e) = std::fs::write(self.path(instance), line) {
            tracing::warn!(instance, error = %e, "Could not write pidfile.");
        }
    }

    pub fn remove(&self, instance: &str) {
        let _ = std::fs::remove_file(self.path(instance));
    }

    /// Stops every process group recorded by a previous daemon whose leader is still the same
    /// process (same start time), then forgets them. Returns how many groups were stopped.
    pub async fn reap_leftovers(&self, grace: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let mut groups = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let mut parts = content.split_whitespace();
            let pid: Option<u32> = parts.next().and_then(|p| p.parse().ok());
            let started: Option<u64> = parts.next().and_then(|p| p.parse().ok());
            if let Some(pid) = pid {
                // The leader may be gone (pdeathsig) while its group lives on; the group id
                // cannot be reused while any member lives, so a live group is ours.
                let same = start_time(pid).is_none_or(|t| Some(t) == started);
                if same && group_alive(pid) {
                    signal_group(pid, Signal::SIGTERM);
                    groups.push(pid);
                }
            }
            let _ = std::fs::remove_file(path);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while groups.iter().any(|g| group_alive(*g)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for g in &groups {
            signal_group(*g, Signal::SIGKILL);
        }
        groups.len()
    }
}
