//! The one place that decides what humans see on stderr: progress bars appear only on a
//! terminal, never with `--quiet` or JSON logs.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::LogFormat;
use crate::config::Config;

#[derive(Debug, Clone)]
pub struct Printer {
    show_progress: bool,
}

impl Printer {
    pub fn new(cfg: &Config) -> Self {
        Printer {
            show_progress: !cfg.quiet
                && cfg.log_format == LogFormat::Text
                && std::io::stderr().is_terminal(),
        }
    }

    /// A byte-counting bar (files, bytes, throughput), hidden when progress is off.
    pub fn bytes_progress(&self, total: u64, label: &str) -> ProgressBar {
        if !self.show_progress {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ({elapsed})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_prefix(label.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }

    /// A spinner with a message, for work whose size is not known up front.
    pub fn spinner(&self, label: &str) -> ProgressBar {
        if !self.show_progress {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("{prefix:>8} {spinner} {msg} ({elapsed})")
                .expect("valid template"),
        );
        pb.set_prefix(label.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }
}
