//! Child processes: the refit binary (or any program) with every stdout and stderr line
//! captured in order, waited for with a deadline, signalled, killed and reaped; and a process's
//! memory as /proc tells it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running child whose stdout and stderr lines are captured (by a reader thread each, so a
/// line the process wrote may not have been read yet when its effect is visible elsewhere).
/// Dropping it kills the child if it has not exited.
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
    log_dir: Option<PathBuf>,
}

impl Process {
    /// Starts `command` with stdout and stderr piped and captured.
    pub fn spawn(command: &mut Command) -> Process {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .map(|stream| {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        })
        .collect();
        Process {
            child,
            lines,
            readers,
            exited: None,
            log_dir: None,
        }
    }

    /// Starts `<bin> run` with exactly `vars`, plus JSON logs, no HTTP server and
    /// `RUST_LOG=info` unless `vars` says otherwise. `bin` is `env!("CARGO_BIN_EXE_refit")`.
    pub fn refit_run(bin: &str, vars: &BTreeMap<String, String>) -> Process {
        Process::spawn(
            Command::new(bin)
                .arg("run")
                .env_clear()
                .env("REFIT_LOG_FORMAT", "json")
                .env("REFIT_HTTP_ADDR", "off")
                .env("RUST_LOG", "info")
                .envs(vars),
        )
    }

    /// When a test fails (panics) while this process is alive, its lines are left in
    /// `dir/refit-<pid>.log` for diagnosis.
    pub fn keep_log_on_panic(mut self, dir: impl Into<PathBuf>) -> Process {
        self.log_dir = Some(dir.into());
        self
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The process's resident memory (`VmRSS` of /proc/<pid>/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_memory(self.id())
            .expect("the process is running")
            .rss_kib
    }

    pub fn count(&self, needle: &str) -> usize {
        self.count_matching(|l| l.contains(needle))
    }

    /// Lines for which `matches` holds.
    pub fn count_matching(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| matches(l))
            .count()
    }

    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) {
        self.wait_for_lines(needle, 1, timeout).await;
    }

    /// Waits until `n` lines contain `needle` (panics with every line seen after `timeout`).
    pub async fn wait_for_lines(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} lines with {needle:?} within {timeout:?}; saw:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -<name>`, e.g. `TERM`, `INT`, `STOP`.
    pub fn signal(&self, name: &str) {
        let status = signal(self.id(), name).unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// `kill -9`, and reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited
    }

    /// Waits for the process to exit and for its last lines to be read (panics with every line
    /// seen after `timeout`).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exited() {
                // The reader threads end at end of file; let them take the last lines.
                let read_by = Instant::now() + Duration::from_secs(2);
                while !self.readers.iter().all(JoinHandle::is_finished) && Instant::now() < read_by
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit within {timeout:?}; saw:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let (true, Some(dir)) = (std::thread::panicking(), &self.log_dir) {
            let _ = std::fs::create_dir_all(dir);
            let path = dir.join(format!("refit-{}.log", self.child.id()));
            let _ = std::fs::write(&path, self.lines().join("\n"));
            eprintln!("refit log: {}", path.display());
        }
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kill -<name> <pid>`.
pub fn signal(pid: u32, name: &str) -> std::io::Result<ExitStatus> {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
}

/// A process's memory, from /proc/<pid>/status.
#[derive(Debug, Clone, Copy)]
pub struct ProcMemory {
    /// Resident now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// The resident high-water mark (`VmHWM`), KiB.
    pub hwm_kib: u64,
}

/// `None` once the process is gone.
pub fn proc_memory(pid: u32) -> Option<ProcMemory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(ProcMemory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}
