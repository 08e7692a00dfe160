//! Progress reporting: a bar on a terminal, periodic log events otherwise (what schedulers
//! collect).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

static INTERACTIVE: AtomicBool = AtomicBool::new(false);

/// Chooses bars (a person at a terminal) or log events; set once by the binary.
pub fn set_interactive(on: bool) {
    INTERACTIVE.store(on, Ordering::Relaxed);
}

/// Counts work items for one phase of a step.
pub struct Progress {
    what: &'static str,
    unit: &'static str,
    bar: Option<ProgressBar>,
    count: AtomicU64,
    started: Instant,
    last_log: Mutex<Instant>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub fn new(what: &'static str, unit: &'static str) -> Self {
        let bar = INTERACTIVE.load(Ordering::Relaxed).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {human_pos} {msg} ({per_sec}, {elapsed})")
                    .expect("valid template"),
            );
            bar.set_prefix(what);
            bar.set_message(unit);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress { what, unit, bar, count: AtomicU64::new(0), started: now, last_log: Mutex::new(now) }
    }

    pub fn inc(&self, n: u64) {
        let total = self.count.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= LOG_EVERY {
            *last = Instant::now();
            let rate = total as f64 / self.started.elapsed().as_secs_f64();
            tracing::info!(phase = self.what, count = total, unit = self.unit, per_sec = rate.round(), "progress");
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Progress of a training run: a bar with the loss, throughput and ETA on a terminal; a log
/// event every few seconds otherwise.
pub struct StepProgress {
    what: &'static str,
    total: u64,
    start_step: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
}

impl StepProgress {
    pub fn new(what: &'static str, total: u64, done: u64) -> Self {
        let bar = INTERACTIVE.load(Ordering::Relaxed).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg} ({per_sec}, ETA {eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(what);
            bar.set_position(done);
            bar.reset_eta();
            bar
        });
        let now = Instant::now();
        StepProgress { what, total, start_step: done, bar, started: now, last_log: now }
    }

    /// Reports that `step` optimizer steps are done, the last with `loss`.
    pub fn update(&mut self, step: u64, loss: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(format!("loss {loss:.4}"));
            return;
        }
        if self.last_log.elapsed() >= LOG_EVERY || step == self.total {
            self.last_log = Instant::now();
            let rate = (step - self.start_step) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            let eta = (self.total - step) as f64 / rate.max(1e-9);
            tracing::info!(
                phase = self.what,
                step,
                total = self.total,
                loss,
                steps_per_sec = (rate * 100.0).round() / 100.0,
                eta_s = eta.round(),
                "progress"
            );
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
