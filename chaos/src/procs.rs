//! The services as processes the suite starts, kills and starts again, as ECS would: the built
//! release binaries, each with its log appended to across restarts.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::process::{Child, Command};

pub struct Service {
    pub name: &'static str,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    /// Answers 200 once the service is ready (`/healthz`, or the gateway's `/readyz`).
    pub ready_url: String,
    /// Its `/metrics`.
    pub metrics_url: String,
    child: Option<Child>,
    pub starts: u32,
}

impl Service {
    pub fn new(
        name: &'static str,
        bin: PathBuf,
        args: &[&str],
        env: Vec<(String, String)>,
        log: PathBuf,
        ready_url: String,
        metrics_url: String,
    ) -> Service {
        Service {
            name,
            bin,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            log,
            ready_url,
            metrics_url,
            child: None,
            starts: 0,
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        self.starts += 1;
        writeln!(
            log,
            "=== chaos: start #{} of {} ===",
            self.starts, self.name
        )?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the ready URL answers 200: the time it took. Fails, with the log's tail, when
    /// the process exits first or `limit` passes.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if matches!(crate::scrape::get(&self.ready_url).await, Some((200, _))) {
                return Ok(started.elapsed());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited ({status}) before it was ready; its log ends:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            if started.elapsed() > limit {
                bail!(
                    "{} not ready at {} within {limit:?}; its log ends:\n{}",
                    self.name,
                    self.ready_url,
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A second instance of this service (the elastic scenario's second engine or gateway): the
    /// same binary, arguments and environment, with `env` set over it and its own log and URLs.
    pub fn twin(
        &self,
        log: PathBuf,
        env: &[(&str, String)],
        ready_url: String,
        metrics_url: String,
    ) -> Service {
        let mut twin = Service::new(
            self.name,
            self.bin.clone(),
            &[],
            self.env.clone(),
            log,
            ready_url,
            metrics_url,
        );
        twin.args = self.args.clone();
        for (k, v) in env {
            twin.set_env(k, v);
        }
        twin
    }

    /// Sets (or replaces) one environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Replaces the arguments for the next start.
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
    }

    pub fn pid(&self) -> Option<i32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .and_then(|p| i32::try_from(p).ok())
    }

    /// SIGKILL: no drain, no flush, no commit (a crash, or an out-of-memory kill).
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit: how long the drain took, and whether it exited 0.
    /// SIGKILL after `limit`.
    pub async fn terminate(&mut self, limit: Duration) -> Result<(Duration, bool)> {
        let Some(pid) = self.pid() else {
            return Ok((Duration::ZERO, true));
        };
        let mut child = self.child.take().expect("a pid means a child");
        let started = Instant::now();
        // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => Ok((started.elapsed(), status?.success())),
            Err(_) => {
                child.start_kill()?;
                child.wait().await?;
                Ok((started.elapsed(), false))
            }
        }
    }

    /// Whether it still runs (a service that died by itself is a finding).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn metrics(&self) -> Option<String> {
        match crate::scrape::get(&self.metrics_url).await {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }
}
