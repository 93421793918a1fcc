//! NOTIFY aggregation (spec 8.2, 12-limits): a device hears of news on a read fan-out stream at
//! most once per stream per window. The first news goes out at once; news within the window is
//! held and announced once when the window ends, with the stream's latest seq at that moment.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The NOTIFY aggregation window per stream (12-limits).
pub(crate) const NOTIFY_WINDOW: Duration = Duration::from_millis(200);

/// One connection's NOTIFY windows.
#[derive(Debug, Default)]
pub(super) struct NotifyWindows {
    /// Conversation → when its last NOTIFY went out, and whether news came since.
    streams: HashMap<u64, (Instant, bool)>,
}

impl NotifyWindows {
    /// News on `conv` at `now`: whether to send its NOTIFY now (otherwise it is held).
    pub(super) fn admit(&mut self, conv: u64, now: Instant) -> bool {
        match self.streams.get_mut(&conv) {
            Some((sent, held)) if now < *sent + NOTIFY_WINDOW => {
                *held = true;
                false
            }
            _ => {
                self.streams.insert(conv, (now, false));
                true
            }
        }
    }

    /// When the earliest held NOTIFY is due.
    pub(super) fn due(&self) -> Option<Instant> {
        self.streams.values().filter(|(_, held)| *held).map(|(sent, _)| *sent + NOTIFY_WINDOW).min()
    }

    /// The conversations whose held NOTIFY is due at `now` (counted as sent now); streams whose
    /// window ended without news are forgotten.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<u64> {
        let mut due = Vec::new();
        self.streams.retain(|&conv, (sent, held)| {
            if now < *sent + NOTIFY_WINDOW {
                return true;
            }
            if *held {
                due.push(conv);
                *sent = now;
                *held = false;
                return true;
            }
            false
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::{NotifyWindows, NOTIFY_WINDOW};
    use std::time::{Duration, Instant};

    #[test]
    fn news_within_a_window_is_announced_once_when_it_ends() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut w = NotifyWindows::default();
        assert!(w.admit(1, t0), "the first news goes out at once");
        assert!(w.admit(2, ms(1)), "windows are per stream");
        assert!(!w.admit(1, ms(50)) && !w.admit(1, ms(120)), "held within the window");
        assert_eq!(w.due(), Some(t0 + NOTIFY_WINDOW));
        assert!(w.take_due(ms(199)).is_empty());
        assert_eq!(w.take_due(t0 + NOTIFY_WINDOW), vec![1], "one NOTIFY for both");
        // Stream 2 had no news in its window: forgotten, so its next news goes out at once.
        assert!(w.admit(2, ms(300)));
        // Stream 1's new window started when its held NOTIFY went out.
        assert!(!w.admit(1, ms(350)));
        assert_eq!(w.due(), Some(t0 + NOTIFY_WINDOW * 2));
        assert!(w.take_due(ms(1000)) == vec![1] && w.due().is_none());
    }
}
