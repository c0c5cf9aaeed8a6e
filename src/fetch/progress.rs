//! Progress bars on stderr, drawn only for a person watching a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

const BYTES_TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
const STEPS_TEMPLATE: &str = "{msg} [{bar:30}] {pos}/{len}";

/// A bar that clears itself when dropped; hidden when `quiet` or stderr is not a terminal.
pub(super) struct Progress(ProgressBar);

impl Progress {
    /// A bar counting bytes toward `total` (a spinner-like bar when unknown).
    pub(super) fn bytes(label: &str, total: Option<u64>, quiet: bool) -> Progress {
        Progress::new(label, total, BYTES_TEMPLATE, quiet)
    }

    /// A bar counting `total` steps.
    pub(super) fn steps(label: &str, total: u64, quiet: bool) -> Progress {
        Progress::new(label, Some(total), STEPS_TEMPLATE, quiet)
    }

    fn new(label: &str, total: Option<u64>, template: &str, quiet: bool) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress(ProgressBar::hidden());
        }
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
            .with_style(style)
            .with_message(label.to_string());
        Progress(bar)
    }

    /// Sets the count reached.
    pub(super) fn set_position(&self, position: u64) {
        self.0.set_position(position);
    }

    /// Adds `delta` to the count.
    pub(super) fn inc(&self, delta: u64) {
        self.0.inc(delta);
    }

    /// Replaces the label.
    pub(super) fn set_message(&self, message: String) {
        self.0.set_message(message);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
