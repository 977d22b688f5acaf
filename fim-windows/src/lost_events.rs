//! Lost-event accounting. The agent polls the ETW session's cumulative
//! EventsLost / RealTimeBuffersLost counters; any increase means some
//! changes were never seen, so a registry snapshot is taken at once (the
//! reconciler then reports what ETW missed).

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionCounters {
    pub events_lost: u64,
    pub buffers_lost: u64,
}

#[derive(Debug, Default)]
pub struct LostEventAccounting {
    last: SessionCounters,
    pub total_events_lost: u64,
    pub total_buffers_lost: u64,
}

/// An increase since the previous poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossReport {
    pub events: u64,
    pub buffers: u64,
}

impl LostEventAccounting {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the latest cumulative counters. A counter going backwards means
    /// the session was restarted: its new value is all new loss.
    pub fn observe(&mut self, now: SessionCounters) -> Option<LossReport> {
        let delta = |now: u64, last: u64| if now >= last { now - last } else { now };
        let report = LossReport {
            events: delta(now.events_lost, self.last.events_lost),
            buffers: delta(now.buffers_lost, self.last.buffers_lost),
        };
        self.last = now;
        self.total_events_lost += report.events;
        self.total_buffers_lost += report.buffers;
        (report.events > 0 || report.buffers > 0).then_some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_increases_only_and_handles_restart() {
        let mut a = LostEventAccounting::new();
        assert_eq!(
            a.observe(SessionCounters {
                events_lost: 0,
                buffers_lost: 0
            }),
            None
        );
        assert_eq!(
            a.observe(SessionCounters {
                events_lost: 5,
                buffers_lost: 1
            }),
            Some(LossReport {
                events: 5,
                buffers: 1
            })
        );
        assert_eq!(
            a.observe(SessionCounters {
                events_lost: 5,
                buffers_lost: 1
            }),
            None
        );
        assert_eq!(
            a.observe(SessionCounters {
                events_lost: 2,
                buffers_lost: 1
            }),
            Some(LossReport {
                events: 2,
                buffers: 0
            })
        );
        assert_eq!((a.total_events_lost, a.total_buffers_lost), (7, 1));
    }
}
