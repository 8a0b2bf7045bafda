//! The log lines a crowd or a flood writes by the thousand: stream connects
//! and disconnects, and messages. Each family is logged one line at a time
//! up to [`LOG_EACH_PER_SECOND`] a second; beyond that the lines are counted,
//! and one summary line at the end of the second gives the counts.
//!
//! A crowd of 10,000 arriving was 10,000 lines, and writing them took about
//! a seventh of the server's CPU through the storm; a line per message cost
//! a sixth of the CPU of a POST at 40,000 a second (6 of 36 µs). What an
//! operator reads at 3 a.m. is still there: every line in quiet times; in a
//! storm the first ones of each second, how many more, and how many streams
//! are open.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::Metrics;

/// Lines of one family logged one by one in a second.
pub const LOG_EACH_PER_SECOND: u32 = 20;

#[derive(Clone, Copy, Debug)]
pub enum Line {
    Connect,
    Disconnect,
    /// A message stored and sent.
    Message,
    /// A repeated `client_msg_id`: answered with the original, nothing sent.
    Duplicate,
}

/// Which budget a line draws on, and its counter there.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Streams,
    Messages,
}

impl Line {
    fn family(self) -> Family {
        match self {
            Line::Connect | Line::Disconnect => Family::Streams,
            Line::Message | Line::Duplicate => Family::Messages,
        }
    }

    fn slot(self) -> usize {
        match self {
            Line::Connect | Line::Message => 0,
            Line::Disconnect | Line::Duplicate => 1,
        }
    }
}

/// One family's lines in the current second: how many were logged, and the
/// counts of the rest since the last summary.
#[derive(Default)]
struct Budget {
    second: u64,
    logged: u32,
    skipped: [u64; 2],
    summary_scheduled: bool,
}

enum Admit {
    Log,
    /// Counted; the first one counted since the last summary asks for one.
    Count {
        schedule_summary: bool,
    },
}

impl Budget {
    fn admit(&mut self, second: u64, slot: usize) -> Admit {
        if second != self.second {
            self.second = second;
            self.logged = 0;
        }
        if self.logged < LOG_EACH_PER_SECOND {
            self.logged += 1;
            return Admit::Log;
        }
        self.skipped[slot] += 1;
        let schedule_summary = !std::mem::replace(&mut self.summary_scheduled, true);
        Admit::Count { schedule_summary }
    }

    /// The lines not logged one by one since the last summary, per slot.
    fn summary(&mut self) -> [u64; 2] {
        self.summary_scheduled = false;
        std::mem::take(&mut self.skipped)
    }
}

/// One application's budgets (in [`super::AppState`]: each server, and each
/// test's, counts its own).
pub struct Lines {
    start: tokio::time::Instant,
    streams: Mutex<Budget>,
    messages: Mutex<Budget>,
    /// For the summary's count of open streams.
    metrics: Arc<Metrics>,
}

impl Lines {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Lines {
            start: tokio::time::Instant::now(),
            streams: Mutex::default(),
            messages: Mutex::default(),
            metrics,
        }
    }

    fn budget(&self, family: Family) -> std::sync::MutexGuard<'_, Budget> {
        let b = match family {
            Family::Streams => &self.streams,
            Family::Messages => &self.messages,
        };
        b.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether to log this line; if not, it is counted, and the summary
    /// follows at the end of the second.
    pub fn admit(self: &Arc<Self>, line: Line) -> bool {
        let elapsed = self.start.elapsed();
        let family = line.family();
        let admitted = self.budget(family).admit(elapsed.as_secs(), line.slot());
        match admitted {
            Admit::Log => true,
            Admit::Count { schedule_summary } => {
                if schedule_summary {
                    self.summarize_after(family, elapsed);
                }
                false
            }
        }
    }

    /// Logs the family's summary when the second of `elapsed` ends.
    fn summarize_after(self: &Arc<Self>, family: Family, elapsed: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.summarize(family); // no runtime: at once
        };
        let end = self.start + Duration::from_secs(elapsed.as_secs() + 1);
        let lines = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep_until(end).await;
            lines.summarize(family);
        });
    }

    fn summarize(&self, family: Family) {
        let [first, second] = self.budget(family).summary();
        match family {
            Family::Streams => tracing::info!(
                connects = first,
                disconnects = second,
                streams_open = self.metrics.sse_streams.get(),
                "stream connects and disconnects not logged one by one \
                 (beyond {LOG_EACH_PER_SECOND} a second)"
            ),
            Family::Messages => tracing::info!(
                messages = first,
                duplicates = second,
                "messages not logged one by one (beyond {LOG_EACH_PER_SECOND} a second)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` lines of `line` in `second`: (logged, summaries asked for).
    fn lines(budget: &mut Budget, second: u64, line: Line, n: u32) -> (u32, u32) {
        let (mut logged, mut asked) = (0, 0);
        for _ in 0..n {
            match budget.admit(second, line.slot()) {
                Admit::Log => logged += 1,
                Admit::Count { schedule_summary } => asked += u32::from(schedule_summary),
            }
        }
        (logged, asked)
    }

    #[test]
    fn a_storm_logs_the_first_lines_of_each_second_and_counts_the_rest() {
        let each = LOG_EACH_PER_SECOND;
        let mut b = Budget::default();
        // Quiet: every line.
        assert_eq!(lines(&mut b, 0, Line::Connect, 5), (5, 0));
        // A storm in the same second: up to the budget, then counted, and
        // one summary asked for.
        assert_eq!(lines(&mut b, 0, Line::Connect, 1000), (each - 5, 1));
        assert_eq!(lines(&mut b, 0, Line::Disconnect, 10), (0, 0));
        assert_eq!(b.summary(), [1000 - u64::from(each - 5), 10]);
        assert_eq!(b.summary(), [0, 0], "counted once");
        // A new second, a new budget; a new overflow asks again.
        assert_eq!(lines(&mut b, 1, Line::Disconnect, 30), (each, 1));
        assert_eq!(b.summary(), [0, 30 - u64::from(each)]);
    }

    #[tokio::test(start_paused = true)] // one second throughout
    async fn a_message_flood_does_not_use_up_the_stream_lines() {
        let log = Arc::new(Lines::new(Arc::new(Metrics::default())));
        let logged = |line, n| (0..n).filter(|_| log.admit(line)).count() as u32;
        assert_eq!(logged(Line::Message, 1000), LOG_EACH_PER_SECOND);
        assert_eq!(logged(Line::Duplicate, 10), 0, "same family, same budget");
        // The streams' budget is untouched.
        assert_eq!(logged(Line::Connect, 5), 5);
        assert_eq!(log.budget(Family::Messages).summary()[1], 10);
    }
}
