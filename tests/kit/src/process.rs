//! Child processes: the refit binary (or any program) with every stdout and stderr line
//! captured in order (or written to a log file, or handed to a hook), waited for with a deadline,
//! signalled, stopped, killed and reaped; and a process's memory and CPU as /proc tells them,
//! read once or watched while it runs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the reader threads may take for the last lines once the process has exited.
const LAST_LINES_WITHIN: Duration = Duration::from_secs(5);

/// A hook called with each stdout line (see [`Output::on_stdout_line`]).
type LineHook = Box<dyn FnMut(&str) + Send>;

/// What a [`Process`] does with its output lines: kept in memory (the default, as
/// [`Process::spawn`] does), or written to a log file; and each stdout line handed to a hook.
#[derive(Default)]
pub struct Output {
    log_file: Option<PathBuf>,
    on_stdout_line: Option<LineHook>,
}

impl Output {
    /// Every stdout and stderr line kept in memory, for [`Process::lines`] and the waits.
    pub fn kept() -> Output {
        Output::default()
    }

    /// Stdout lines written to `path`, stderr lines to `path` with the extension `stderr`; not
    /// kept in memory (a long run's log may be large), so [`Process::lines`] stays empty.
    pub fn to_file(path: impl Into<PathBuf>) -> Output {
        Output {
            log_file: Some(path.into()),
            ..Output::default()
        }
    }

    /// `hook` is called with each stdout line, in order, on the thread that reads them.
    pub fn on_stdout_line(mut self, hook: impl FnMut(&str) + Send + 'static) -> Output {
        self.on_stdout_line = Some(Box::new(hook));
        self
    }
}

/// Where one stream's lines go.
struct Sink {
    kept: Option<Arc<Mutex<Vec<String>>>>,
    file: Option<BufWriter<File>>,
    hook: Option<LineHook>,
}

impl Sink {
    fn take(&mut self, stream: impl std::io::Read) {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Some(file) = &mut self.file {
                let _ = writeln!(file, "{line}");
            }
            if let Some(hook) = &mut self.hook {
                hook(&line);
            }
            if let Some(kept) = &self.kept {
                kept.lock().unwrap().push(line);
            }
        }
        if let Some(file) = &mut self.file {
            let _ = file.flush();
        }
    }
}

/// What a watch of a process's memory saw (see [`Process::watch_memory`]).
#[derive(Debug, Default, Clone)]
pub struct MemoryRecord {
    /// The highest resident memory (`VmRSS`) sampled, KiB.
    pub max_rss_kib: u64,
    /// The resident high-water mark (`VmHWM`), KiB: the kernel's own peak, samples or not.
    pub hwm_kib: u64,
    /// (seconds since the watch began, `VmRSS` KiB), about one a second.
    pub timeline: Vec<(f64, u64)>,
}

impl MemoryRecord {
    fn add(&mut self, m: ProcMemory) {
        self.max_rss_kib = self.max_rss_kib.max(m.rss_kib);
        self.hwm_kib = self.hwm_kib.max(m.hwm_kib);
    }
}

/// A thread sampling a process's memory.
struct MemoryWatch {
    record: Arc<Mutex<MemoryRecord>>,
    on: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MemoryWatch {
    fn start(pid: u32, every: Duration) -> MemoryWatch {
        let record = Arc::new(Mutex::new(MemoryRecord::default()));
        let on = Arc::new(AtomicBool::new(true));
        let thread = std::thread::spawn({
            let (record, on) = (record.clone(), on.clone());
            move || {
                let started = Instant::now();
                let mut last_sample: Option<f64> = None;
                while on.load(Ordering::Relaxed) {
                    let Some(m) = proc_memory(pid) else { break };
                    let mut r = record.lock().unwrap();
                    r.add(m);
                    let t = started.elapsed().as_secs_f64();
                    if last_sample.is_none_or(|last| t - last >= 1.0) {
                        r.timeline.push((t, m.rss_kib));
                        last_sample = Some(t);
                    }
                    drop(r);
                    std::thread::sleep(every);
                }
            }
        });
        MemoryWatch {
            record,
            on,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.on.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A running child whose stdout and stderr lines are captured, or handled as its [`Output`] says
/// (by a reader thread each, so a line the process wrote may not have been read yet when its
/// effect is visible elsewhere). Dropping it kills the child if it has not exited.
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
    log_dir: Option<PathBuf>,
    memory: Option<MemoryWatch>,
}

impl Process {
    /// Starts `command` with stdout and stderr piped and captured.
    pub fn spawn(command: &mut Command) -> Process {
        Process::spawn_with(command, Output::kept())
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
    }

    /// Starts `command` with stdout and stderr piped, each line handled as `output` says.
    pub fn spawn_with(command: &mut Command, output: Output) -> std::io::Result<Process> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = output.log_file.is_none().then(|| lines.clone());
        let file =
            |path: &PathBuf| File::create(path).map(|f| BufWriter::with_capacity(1 << 20, f));
        let out = Sink {
            kept: kept.clone(),
            file: output.log_file.as_ref().map(file).transpose()?,
            hook: output.on_stdout_line,
        };
        let err = Sink {
            kept,
            file: (output.log_file.as_ref())
                .map(|p| file(&p.with_extension("stderr")))
                .transpose()?,
            hook: None,
        };
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let readers = vec![
            std::thread::spawn(move || {
                let mut out = out;
                out.take(stdout)
            }),
            std::thread::spawn(move || {
                let mut err = err;
                err.take(stderr)
            }),
        ];
        Ok(Process {
            child,
            lines,
            readers,
            exited: None,
            log_dir: None,
            memory: None,
        })
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

    /// Samples the process's memory every `every`, on a thread of its own, until it exits or is
    /// [terminated](Process::terminate); [`Process::memory`] reads what the watch saw.
    pub fn watch_memory(&mut self, every: Duration) {
        if self.memory.is_none() {
            self.memory = Some(MemoryWatch::start(self.id(), every));
        }
    }

    /// What the memory watch saw so far (an empty record without a watch).
    pub fn memory(&self) -> MemoryRecord {
        self.memory
            .as_ref()
            .map(|w| w.record.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The lines read so far (none when they go to a log file, see [`Output::to_file`]).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The process's resident memory (`VmRSS` of /proc/<pid>/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_memory(self.id())
            .expect("the process is running")
            .rss_kib
    }

    /// Lines that contain `needle`.
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

    /// Waits until a line contains `needle` (see [`Process::wait_for_lines`]).
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

    /// The exit status if the process has exited (reaped now), without waiting.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited
    }

    /// Waits for the process to exit and for its last lines to be read (panics with every line
    /// seen after `timeout`).
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.exit_within(timeout).await {
            Some(status) => status,
            None => panic!(
                "the process did not exit within {timeout:?}; saw:\n{}",
                self.lines().join("\n")
            ),
        }
    }

    /// Stops the process: `kill -TERM`, up to `grace` for it to exit, then `kill -9`. The memory
    /// watch, if any, takes a last VmHWM before the signal and ends; the last lines are read.
    /// The exit status, or `None` when it had to be killed.
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let (Some(watch), Some(m)) = (&self.memory, proc_memory(self.id())) {
            watch.record.lock().unwrap().add(m);
        }
        let _ = signal(self.id(), "TERM");
        let status = self.exit_within(grace).await;
        if status.is_none() {
            self.kill9();
            self.finish_reading().await;
        }
        if let Some(watch) = &mut self.memory {
            watch.stop();
        }
        status
    }

    /// The exit status once the process exited and its last lines were read, or `None` if it
    /// is still running after `timeout`.
    async fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exited() {
                self.finish_reading().await;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The reader threads end at end of file; lets them take the last lines.
    async fn finish_reading(&self) {
        let read_by = Instant::now() + LAST_LINES_WITHIN;
        while !self.readers.iter().all(JoinHandle::is_finished) && Instant::now() < read_by {
            tokio::time::sleep(Duration::from_millis(10)).await;
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
        if let Some(watch) = &mut self.memory {
            watch.stop();
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

/// The CPU time (user and system) process `pid` has used so far, in seconds, from
/// /proc/<pid>/stat; `None` once the process is gone.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command name start at `state` (field 3): utime is field 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

/// USER_HZ, the unit of /proc's CPU times: 100 on Linux x86-64 for every kernel this runs on.
pub const CLOCK_TICKS: f64 = 100.0;
