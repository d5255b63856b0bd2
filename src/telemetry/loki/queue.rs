//! The queue between the layer and the push task, bounded in lines and in bytes: offering a
//! line never waits; a line that does not fit is dropped and counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::Line;

/// Bytes of line text queued at most, whatever the line count: a few huge lines cannot take
/// more memory than this.
pub(super) const QUEUE_BYTES: usize = 16 << 20;

/// The layer's end.
pub(super) struct Inlet {
    sender: mpsc::Sender<Line>,
    bytes: Arc<AtomicUsize>,
    dropped: IntCounter,
}

/// The push task's end.
pub(super) struct Outlet {
    receiver: mpsc::Receiver<Line>,
    bytes: Arc<AtomicUsize>,
}

/// A queue of at most `lines` lines and [`QUEUE_BYTES`] bytes.
pub(super) fn bounded(lines: usize, dropped: IntCounter) -> (Inlet, Outlet) {
    let (sender, receiver) = mpsc::channel(lines.max(1));
    let bytes = Arc::new(AtomicUsize::new(0));
    let inlet = Inlet {
        sender,
        bytes: bytes.clone(),
        dropped,
    };
    (inlet, Outlet { receiver, bytes })
}

impl Inlet {
    /// Queues `line`, or drops and counts it when the queue is full (or the task is gone).
    pub(super) fn offer(&self, line: Line) {
        let len = line.text.len();
        let queued = self.bytes.fetch_add(len, Ordering::Relaxed);
        if queued + len > QUEUE_BYTES || self.sender.try_send(line).is_err() {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            self.dropped.inc();
        }
    }
}

impl Outlet {
    /// The next line; `None` once every inlet is gone and the queue is empty.
    pub(super) async fn recv(&mut self) -> Option<Line> {
        let line = self.receiver.recv().await?;
        self.bytes.fetch_sub(line.text.len(), Ordering::Relaxed);
        Some(line)
    }

    /// The next line if one is queued.
    pub(super) fn try_recv(&mut self) -> Option<Line> {
        let line = self.receiver.try_recv().ok()?;
        self.bytes.fetch_sub(line.text.len(), Ordering::Relaxed);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: String) -> Line {
        Line {
            level: tracing::Level::INFO,
            at: std::time::SystemTime::now(),
            text,
        }
    }

    #[test]
    fn lines_beyond_the_bound_are_dropped_and_counted() {
        let dropped = IntCounter::new("d", "d").unwrap();
        let (inlet, mut outlet) = bounded(3, dropped.clone());
        for i in 0..5 {
            inlet.offer(line(format!("line {i}")));
        }
        assert_eq!(dropped.get(), 2);
        let kept: Vec<String> = std::iter::from_fn(|| outlet.try_recv())
            .map(|l| l.text)
            .collect();
        assert_eq!(kept, ["line 0", "line 1", "line 2"]);
        // Taking lines off makes room again.
        inlet.offer(line("line 5".into()));
        assert_eq!(outlet.try_recv().map(|l| l.text).as_deref(), Some("line 5"));
        assert_eq!(dropped.get(), 2);
    }

    #[test]
    fn the_byte_bound_holds_whatever_the_line_count() {
        let dropped = IntCounter::new("d", "d").unwrap();
        let (inlet, mut outlet) = bounded(1000, dropped.clone());
        let big = "x".repeat(QUEUE_BYTES / 4 + 1);
        for _ in 0..4 {
            inlet.offer(line(big.clone()));
        }
        assert_eq!(dropped.get(), 1, "the fourth quarter does not fit");
        assert!(outlet.try_recv().is_some());
        inlet.offer(line(big));
        assert_eq!(dropped.get(), 1, "room again once a line is taken");
    }
}
