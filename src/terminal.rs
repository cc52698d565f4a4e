//! What a person at a terminal sees of long commands (`wharf fsck`):
//! a progress bar with items and bytes done, rate and ETA, and sizes in
//! binary units.
//!
//! Owns: `WorkProgress` (the seam long work reports through) and `Bar`,
//! its face on stderr.
//! Must not: draw anything when stderr is not a terminal (logs, CI, cron
//! mail stay clean), or decide what the work is.

/// Where long work reports how far it got.
pub trait WorkProgress: Send + Sync {
    /// The whole of the work, once known.
    fn start(&self, items: u64, bytes: u64);
    /// One item of `bytes` is done.
    fn advance(&self, bytes: u64);
    fn finish(&self) {}
}

/// A bar on stderr, shown only when stderr is a terminal.
pub struct Bar {
    bar: indicatif::ProgressBar,
    what: &'static str,
    items: std::sync::atomic::AtomicU64,
    total_items: std::sync::atomic::AtomicU64,
}

impl Bar {
    /// `what` names the items ("blobs").
    pub fn new(what: &'static str) -> Bar {
        let target = match std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            true => indicatif::ProgressDrawTarget::stderr(),
            false => indicatif::ProgressDrawTarget::hidden(),
        };
        let bar = indicatif::ProgressBar::with_draw_target(Some(0), target);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar {
            bar,
            what,
            items: 0.into(),
            total_items: 0.into(),
        }
    }
}

impl WorkProgress for Bar {
    fn start(&self, items: u64, bytes: u64) {
        self.total_items
            .store(items, std::sync::atomic::Ordering::Relaxed);
        self.bar.set_length(bytes);
        self.bar.set_message(format!("0/{items} {}", self.what));
    }

    fn advance(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let done = self.items.fetch_add(1, Relaxed) + 1;
        self.bar.inc(bytes);
        self.bar.set_message(format!(
            "{done}/{} {}",
            self.total_items.load(Relaxed),
            self.what
        ));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `n` bytes in binary units, one decimal ("111.5 MiB", "512 B").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(116_955_542), "111.5 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }
}
