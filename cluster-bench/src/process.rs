//! The benchmark's side of its child processes: start them, read their lines, stop them.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::child::Job;
use crate::{BenchError, ChildCommand, PHASE_DEADLINE};

/// A child process, killed (by its pid, through tokio's `kill_on_drop`) when dropped.
pub(crate) struct ChildProcess {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildProcess {
    /// Starts `command` with the words of `job`.
    pub(crate) fn spawn(command: &ChildCommand, job: &Job) -> Result<Self, BenchError> {
        let words = job.to_words();
        let mut child = Command::new(&command.program)
            .args(&command.args_prefix)
            .args(&words)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                BenchError::Child(format!(
                    "cannot start {} for {:?}: {e}",
                    command.program.display(),
                    words.join(" ")
                ))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Child("no stdout".into()))?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The child and the lines of its stdout, apart: to read the lines in one task while
    /// another signals the child (the child is still killed when dropped).
    pub(crate) fn into_parts(self) -> (Child, Lines<BufReader<ChildStdout>>) {
        (self.child, self.lines)
    }

    /// The child's process id, while it runs.
    pub(crate) fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The next line starting with `prefix`, within the phase deadline. Cancel-safe: a
    /// line is only consumed in the poll that returns it (`Lines::next_line`).
    pub(crate) async fn expect(&mut self, prefix: &str) -> Result<String, BenchError> {
        let wait = async {
            loop {
                match self.lines.next_line().await {
                    Ok(Some(line)) if line.starts_with(prefix) => return Ok(line),
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        return Err(BenchError::Child(format!(
                            "exited before saying {prefix:?}"
                        )));
                    }
                    Err(e) => return Err(BenchError::Child(e.to_string())),
                }
            }
        };
        tokio::time::timeout(PHASE_DEADLINE, wait)
            .await
            .map_err(|_| BenchError::Child(format!("no {prefix:?} within {PHASE_DEADLINE:?}")))?
    }

    /// Gives the child, which has reported, a moment to exit on its own; then kills it.
    pub(crate) async fn finish(mut self) {
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Starts one child process per job; on any failure the ones started are killed.
pub(crate) fn spawn_all(
    command: &ChildCommand,
    jobs: impl IntoIterator<Item = Job>,
) -> Result<Vec<ChildProcess>, BenchError> {
    jobs.into_iter()
        .map(|job| ChildProcess::spawn(command, &job))
        .collect()
}

/// The next line starting with `prefix` from each child, in order.
pub(crate) async fn expect_all(
    children: &mut [ChildProcess],
    prefix: &str,
) -> Result<Vec<String>, BenchError> {
    let mut lines = Vec::with_capacity(children.len());
    for child in children {
        lines.push(child.expect(prefix).await?);
    }
    Ok(lines)
}

/// Waits a moment for each child to exit, then kills it.
pub(crate) async fn finish_all(children: Vec<ChildProcess>) {
    for child in children {
        child.finish().await;
    }
}

/// Runs `work` while watching `children`: if one of them fails or is killed first, gives
/// `work` up at once (a child that exits successfully has done its part).
pub(crate) async fn while_alive<T>(
    children: &mut [ChildProcess],
    work: impl Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    let failure = async {
        loop {
            for child in children.iter_mut() {
                if let Ok(Some(status)) = child.child.try_wait()
                    && !status.success()
                {
                    return status;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        result = work => result,
        status = failure => Err(BenchError::Child(format!("exited during the run: {status}"))),
    }
}
