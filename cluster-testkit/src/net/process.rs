//! [`Process`]: a child process driven by a test through its stdin and stdout, killed
//! (SIGKILL, by its pid) and reaped when dropped — also when the test panics.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// How many of the last lines of each stream an error quotes.
const TAIL: usize = 20;

/// A child process with piped stdin, stdout and stderr. Threads collect its output line by
/// line as it comes; a test writes lines to it ([`send_line`](Self::send_line)), waits for
/// a line it expects ([`wait_line`](Self::wait_line), with [`DEADLINE`] unless
/// [`with_deadline`](Self::with_deadline) says otherwise), freezes and thaws it
/// ([`stop`](Self::stop), [`cont`](Self::cont)), and kills it ([`kill`](Self::kill)).
///
/// Dropping a `Process` that is still running sends it SIGKILL (by its pid) and reaps it, so
/// that a failed test leaves no process behind. Errors name the process and quote the last
/// lines it printed on stdout and stderr.
///
/// ```
/// use cluster_testkit::net::Process;
///
/// # fn main() -> Result<(), cluster_testkit::net::ProcessError> {
/// let mut cat = Process::spawn("cat", &mut std::process::Command::new("cat"))?;
/// cat.send_line("hello")?;
/// assert_eq!(cat.wait_line_blocking("the echo", |l| l == "hello")?, "hello");
/// cat.close_stdin();
/// assert!(cat.wait_exit_blocking()?.success());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Stream>,
    stderr: Arc<Stream>,
    /// Index of the first stdout line the next wait looks at.
    cursor: usize,
    deadline: Duration,
    /// Set once the child has been reaped: its pid may then belong to another process.
    status: Option<ExitStatus>,
}

/// A finished process: how it exited and everything it printed (see [`Process::finish`]).
#[derive(Debug, Clone)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its stdout, every line ending in `\n`.
    pub stdout: String,
    /// Its stderr, every line ending in `\n`.
    pub stderr: String,
}

/// A [`Process`] operation failed. The message names the process and, for waits, quotes
/// the last lines of its output.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Spawning, writing to, signalling or waiting for the process failed.
    #[error("{name}: {action}: {source}")]
    Io {
        /// The process's name.
        name: String,
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// What was awaited did not happen within the deadline.
    #[error("{name}: timed out after {waited:?} waiting for {what}{output}")]
    TimedOut {
        /// The process's name.
        name: String,
        /// What was awaited.
        what: String,
        /// How long it waited.
        waited: Duration,
        /// The last lines of its stdout and stderr.
        output: String,
    },
    /// The process closed its stdout (it exited, most likely) before printing the line
    /// that was awaited.
    #[error("{name}: its output ended before {what}{output}")]
    Ended {
        /// The process's name.
        name: String,
        /// What was awaited.
        what: String,
        /// The last lines of its stdout and stderr.
        output: String,
    },
    /// The process has already been reaped: its pid may belong to another process now.
    #[error("{name}: cannot {action}: it has exited ({status})")]
    Exited {
        /// The process's name.
        name: String,
        /// What was asked.
        action: &'static str,
        /// How it exited.
        status: ExitStatus,
    },
}

/// The lines of one output stream, filled by a reader thread.
#[derive(Debug, Default)]
struct Stream {
    state: Mutex<Lines>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Lines {
    lines: Vec<String>,
    /// End of file (or a read error): no more lines will come.
    closed: bool,
}

impl Stream {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        // A reader thread cannot panic while holding the lock; tolerate poison anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a thread that reads `pipe` line by line (lossily decoded) until it closes.
    fn collect(pipe: impl Read + Send + 'static) -> Arc<Self> {
        let stream = Arc::new(Self::default());
        let sink = Arc::clone(&stream);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if buf.last() == Some(&b'\n') {
                            buf.pop();
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        sink.lock().lines.push(line);
                        sink.changed.notify_all();
                    }
                }
            }
            sink.lock().closed = true;
            sink.changed.notify_all();
        });
        stream
    }

    fn text(&self) -> String {
        self.lock().lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// The outcome of looking for a line once.
enum Found {
    Line(usize, String),
    Ended,
    NotYet,
}

impl Process {
    /// Spawns `command` (its stdin, stdout and stderr are replaced by pipes), under `name`
    /// (used in error messages, e.g. `"node 3"`).
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Result<Self, ProcessError> {
        let name = name.into();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ProcessError::Io {
                name: name.clone(),
                action: "spawning",
                source,
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(Stream::collect).unwrap_or_default();
        let stderr = child.stderr.take().map(Stream::collect).unwrap_or_default();
        Ok(Self {
            name,
            child,
            stdin,
            stdout,
            stderr,
            cursor: 0,
            deadline: DEADLINE,
            status: None,
        })
    }

    /// Runs `command` to its end with `input` on its stdin: [`spawn`](Self::spawn), then
    /// [`finish`](Self::finish). Blocks the calling thread.
    pub fn run(
        name: impl Into<String>,
        command: &mut Command,
        input: &str,
    ) -> Result<Finished, ProcessError> {
        Self::spawn(name, command)?.finish(input)
    }

    /// Writes `input` to its stdin, closes it, waits until it exits (killing it if that
    /// takes longer than the deadline) and returns what it printed. Blocks the calling
    /// thread.
    pub fn finish(mut self, input: &str) -> Result<Finished, ProcessError> {
        match self.write(input.as_bytes()) {
            // It may exit without reading its input: that is for the caller to judge.
            Err(ProcessError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other?,
        }
        self.close_stdin();
        let status = self.wait_exit_blocking()?;
        Ok(Finished {
            status,
            stdout: self.stdout_text(),
            stderr: self.stderr_text(),
        })
    }

    /// Waits at most `deadline` (instead of [`DEADLINE`]) in each wait from now on.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's OS pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Writes `line` and a newline to the child's stdin, and flushes.
    pub fn send_line(&mut self, line: &str) -> Result<(), ProcessError> {
        self.write(format!("{line}\n").as_bytes())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ProcessError> {
        let io = |source| ProcessError::Io {
            name: self.name.clone(),
            action: "writing to its stdin",
            source,
        };
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdin was closed",
            ))
        })?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .map_err(io)
    }

    /// Closes the child's stdin (it reads end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Every line printed on stdout so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().lines.clone()
    }

    /// How many lines it has printed on stdout so far.
    pub fn line_count(&self) -> usize {
        self.stdout.lock().lines.len()
    }

    /// Every line printed on stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().lines.clone()
    }

    /// Its stdout so far, every line ending in `\n`.
    pub fn stdout_text(&self) -> String {
        self.stdout.text()
    }

    /// Its stderr so far, every line ending in `\n`.
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// From now on, waits look only at lines printed after the ones printed so far.
    pub fn skip_seen(&mut self) {
        self.cursor = self.line_count();
    }

    /// Looks once for the first stdout line at or after the cursor matching `pred`.
    fn find(&self, pred: &mut impl FnMut(&str) -> bool) -> Found {
        let state = self.stdout.lock();
        match state.lines[self.cursor.min(state.lines.len())..]
            .iter()
            .position(|l| pred(l))
        {
            Some(i) => Found::Line(self.cursor + i, state.lines[self.cursor + i].clone()),
            None if state.closed => Found::Ended,
            None => Found::NotYet,
        }
    }

    fn found(
        &mut self,
        what: &str,
        found: Found,
        start: Instant,
    ) -> Option<Result<String, ProcessError>> {
        match found {
            Found::Line(i, line) => {
                self.cursor = i + 1;
                Some(Ok(line))
            }
            Found::Ended => Some(Err(ProcessError::Ended {
                name: self.name.clone(),
                what: what.to_owned(),
                output: self.tail(),
            })),
            Found::NotYet if start.elapsed() >= self.deadline => {
                Some(Err(self.timed_out(what, start)))
            }
            Found::NotYet => None,
        }
    }

    /// Waits until the process prints a stdout line matching `pred`, among those after the
    /// last line a wait returned (or [`skip_seen`](Self::skip_seen) passed), and returns
    /// it; later waits start after it. Fails at once if stdout closes first, and after the
    /// deadline. Polls every 10 ms on the tokio clock.
    pub async fn wait_line(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String, ProcessError> {
        let start = Instant::now();
        loop {
            let found = self.find(&mut pred);
            if let Some(result) = self.found(what, found, start) {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Like [`wait_line`](Self::wait_line), blocking the calling thread (woken as each line
    /// arrives).
    pub fn wait_line_blocking(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String, ProcessError> {
        let start = Instant::now();
        loop {
            let seen = self.line_count();
            let found = self.find(&mut pred);
            if let Some(result) = self.found(what, found, start) {
                return result;
            }
            // Sleep until a line arrives (or the stream closes), at most until the deadline.
            let left = self.deadline.saturating_sub(start.elapsed());
            let state = self.stdout.lock();
            let _wait = self
                .stdout
                .changed
                .wait_timeout_while(state, left, |s| s.lines.len() == seen && !s.closed)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The next stdout line after the last one a wait returned, blocking.
    pub fn next_line_blocking(&mut self) -> Result<String, ProcessError> {
        self.wait_line_blocking("a line", |_| true)
    }

    /// Whether it has exited (reaping it if so), without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| ProcessError::Io {
                name: self.name.clone(),
                action: "checking whether it exited",
                source,
            })?;
        }
        Ok(self.status)
    }

    /// Whether the exited process's output has been read to its end.
    fn output_closed(&self) -> bool {
        self.stdout.lock().closed && self.stderr.lock().closed
    }

    /// Waits until the process exits and its output has been read to the end; returns how
    /// it exited. Fails after the deadline (the process keeps running: drop it to kill it).
    /// Polls every 10 ms on the tokio clock.
    pub async fn wait_exit(&mut self) -> Result<ExitStatus, ProcessError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_status()?
                && self.output_closed()
            {
                return Ok(status);
            }
            if start.elapsed() >= self.deadline {
                return Err(self.timed_out("it to exit", start));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Like [`wait_exit`](Self::wait_exit), blocking the calling thread.
    pub fn wait_exit_blocking(&mut self) -> Result<ExitStatus, ProcessError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_status()?
                && self.output_closed()
            {
                return Ok(status);
            }
            if start.elapsed() >= self.deadline {
                return Err(self.timed_out("it to exit", start));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills it with SIGKILL (by its pid) and reaps it. Nothing happens if it was reaped
    /// already.
    pub fn kill(&mut self) -> Result<ExitStatus, ProcessError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let io = |action| {
            let name = self.name.clone();
            move |source| ProcessError::Io {
                name,
                action,
                source,
            }
        };
        // On Unix `Child::kill` is kill(pid, SIGKILL); it succeeds if the child has exited
        // but is not reaped yet.
        self.child.kill().map_err(io("sending SIGKILL"))?;
        let status = self.child.wait().map_err(io("reaping it"))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Freezes it with SIGSTOP (by its pid): it keeps its sockets open but runs no more.
    #[cfg(unix)]
    pub fn stop(&mut self) -> Result<(), ProcessError> {
        self.signal(rustix::process::Signal::STOP, "send SIGSTOP")
    }

    /// Thaws it with SIGCONT (by its pid) after [`stop`](Self::stop).
    #[cfg(unix)]
    pub fn cont(&mut self) -> Result<(), ProcessError> {
        self.signal(rustix::process::Signal::CONT, "send SIGCONT")
    }

    #[cfg(unix)]
    fn signal(
        &mut self,
        signal: rustix::process::Signal,
        action: &'static str,
    ) -> Result<(), ProcessError> {
        // Only while not reaped: after that the pid may name another process.
        if let Some(status) = self.status {
            return Err(ProcessError::Exited {
                name: self.name.clone(),
                action,
                status,
            });
        }
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal)
            .map_err(|e| ProcessError::Io {
                name: self.name.clone(),
                action,
                source: e.into(),
            })
    }

    fn timed_out(&self, what: &str, start: Instant) -> ProcessError {
        ProcessError::TimedOut {
            name: self.name.clone(),
            what: what.to_owned(),
            waited: start.elapsed(),
            output: self.tail(),
        }
    }

    /// The last lines of stdout and stderr, for error messages.
    fn tail(&self) -> String {
        let mut text = String::new();
        for (label, stream) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let state = stream.lock();
            let from = state.lines.len().saturating_sub(TAIL);
            text.push_str(&format!(
                "\n--- {label} (last {} of {} lines{}) ---",
                state.lines.len() - from,
                state.lines.len(),
                if state.closed { ", closed" } else { "" }
            ));
            for line in &state.lines[from..] {
                text.push('\n');
                text.push_str(line);
            }
        }
        text
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stdin = None;
        if self.status.is_none() {
            // SIGKILL by pid (a stopped process dies too), then reap it.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    #[test]
    fn lines_in_and_out_and_waits_move_on() {
        let mut cat = Process::spawn("cat", &mut Command::new("cat")).unwrap();
        for line in ["one", "two", "three"] {
            cat.send_line(line).unwrap();
        }
        assert_eq!(
            cat.wait_line_blocking("two", |l| l == "two").unwrap(),
            "two"
        );
        // Waits start after the last line returned.
        assert_eq!(cat.next_line_blocking().unwrap(), "three");
        assert_eq!(cat.lines(), ["one", "two", "three"]);
        cat.send_line("four").unwrap();
        cat.wait_line_blocking("four", |l| l == "four").unwrap();
        cat.skip_seen();
        cat.close_stdin();
        let e = cat.next_line_blocking().unwrap_err();
        assert!(matches!(e, ProcessError::Ended { .. }), "{e}");
        assert!(e.to_string().contains("four"), "quotes the output: {e}");
        assert!(cat.wait_exit_blocking().unwrap().success());
    }

    #[test]
    fn a_wait_times_out_naming_the_process_and_its_output() {
        let mut p = Process::spawn(
            "sleeper",
            &mut sh("echo started; echo oops >&2; exec sleep 30"),
        )
        .unwrap()
        .with_deadline(Duration::from_millis(300));
        let e = p.wait_line_blocking("never", |l| l == "never").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ProcessError::TimedOut { .. }), "{msg}");
        for part in ["sleeper", "never", "started", "oops"] {
            assert!(msg.contains(part), "{part:?} missing in {msg}");
        }
        let status = p.kill().unwrap();
        assert!(!status.success());
        assert!(p.stop().is_err(), "no signal to a reaped pid");
    }

    #[test]
    fn run_collects_both_streams_and_the_status() {
        let done = Process::run("sh", &mut sh("cat; echo err >&2; exit 3"), "in\nput\n").unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.stdout, "in\nput\n");
        assert_eq!(done.stderr, "err\n");
        // A process that ignores its input.
        let done = Process::run("true", &mut Command::new("true"), &"x".repeat(1 << 20)).unwrap();
        assert!(done.status.success());
        // One that runs too long is killed.
        let e = Process::spawn("sleep", &mut sh("echo started; exec sleep 30"))
            .unwrap()
            .with_deadline(Duration::from_millis(200))
            .finish("")
            .unwrap_err();
        assert!(matches!(e, ProcessError::TimedOut { .. }), "{e}");
        assert!(e.to_string().contains("it to exit"), "{e}");
    }

    /// The state letter of a Linux process (`T` = stopped), from `/proc`.
    #[cfg(target_os = "linux")]
    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) S ...": the state follows the last ')'.
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn stop_cont_and_kill_on_drop() {
        let mut p =
            Process::spawn("ticker", &mut sh("while :; do echo tick; sleep 0.01; done")).unwrap();
        let pid = p.id();
        p.wait_line("a tick", |l| l == "tick").await.unwrap();
        p.stop().unwrap();
        super::super::wait_until("the ticker to be stopped", DEADLINE, || {
            state(pid) == Some('T')
        })
        .await
        .unwrap();
        p.cont().unwrap();
        super::super::wait_until("the ticker to run again", DEADLINE, || {
            state(pid) != Some('T')
        })
        .await
        .unwrap();
        p.skip_seen();
        p.wait_line("a tick after SIGCONT", |l| l == "tick")
            .await
            .unwrap();
        p.stop().unwrap();
        drop(p);
        // Killed and reaped: no such process any more (a zombie would still exist).
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        assert!(
            rustix::process::test_kill_process(pid).is_err(),
            "process {pid:?} outlived its Process"
        );
    }
}
