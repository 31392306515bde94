//! Progress of long byte-counting jobs (hashing, extracting): an indicatif bar on an
//! interactive stderr, otherwise a tracing line every few seconds so logs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

pub(crate) struct Progress {
    label: String,
    total: u64,
    done: u64,
    bar: Option<ProgressBar>,
    last_log: Instant,
}

impl Progress {
    pub(crate) fn new(label: impl Into<String>, total: u64, enabled: bool) -> Progress {
        let label = label.into();
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.clone());
            bar
        });
        Progress { label, total, done: 0, bar, last_log: Instant::now() }
    }

    pub(crate) fn inc(&mut self, bytes: u64) {
        self.done += bytes;
        match &self.bar {
            Some(bar) => bar.inc(bytes),
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                tracing::info!("{}: {} of {} MiB", self.label, self.done >> 20, self.total >> 20);
            }
            None => {}
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
