//! Live per-host progress: bars on a terminal, a plain line per phase change otherwise, nothing with
//! `-o json`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::Format;

enum Mode {
    Bars(MultiProgress),
    Lines,
    Quiet,
}

pub struct Progress {
    mode: Mode,
}

impl Progress {
    pub fn new(format: Format) -> Self {
        let mode = match format {
            Format::Json => Mode::Quiet,
            Format::Text | Format::Csv if std::io::stdout().is_terminal() => {
                Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stdout()))
            }
            Format::Text | Format::Csv => Mode::Lines,
        };
        Progress { mode }
    }

    pub fn host(&self, host: &str) -> HostProgress {
        let bar = match &self.mode {
            Mode::Bars(multi) => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>12} {spinner} {msg:<10} {bytes:>10} {bytes_per_sec:>12} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(host.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
                Some(bar)
            }
            _ => None,
        };
        HostProgress {
            host: host.to_string(),
            bar,
            lines: matches!(self.mode, Mode::Lines),
            phase: Mutex::new(String::new()),
            started: Instant::now(),
        }
    }

    /// Prints a line without tearing the bars.
    pub fn println(&self, line: &str) {
        match &self.mode {
            Mode::Bars(multi) => {
                let _ = multi.println(line);
            }
            _ => outln!("{line}"),
        }
    }
}

pub struct HostProgress {
    host: String,
    bar: Option<ProgressBar>,
    lines: bool,
    phase: Mutex<String>,
    started: Instant,
}

impl HostProgress {
    /// The host is in `phase`, with `bytes` of the phase's work done.
    pub fn update(&self, phase: &str, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_message(phase.to_string());
            bar.set_position(bytes);
        }
        let mut last = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if *last != phase {
            if self.lines {
                outln!(
                    "[{}] {phase} ({:.1}s)",
                    self.host,
                    self.started.elapsed().as_secs_f64()
                );
            }
            *last = phase.to_string();
        }
    }

    pub fn phase(&self) -> String {
        self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
