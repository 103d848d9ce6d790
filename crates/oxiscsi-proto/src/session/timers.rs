//! One table of deadlines, indexed by an enum (STYLE §2, after quinn-proto's TimerTable).
//! Per-task deadlines live in the task table; this holds the connection-wide ones.

use std::time::Instant;

/// Connection-wide timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Send a NOP-Out ping when nothing was received for the interval.
    NopInterval = 0,
    /// Our ping must be answered by then.
    NopResponse = 1,
    /// The Logout Response must arrive by then.
    Logout = 2,
    /// The target asked for a logout (Async event 1): log out by then at the latest.
    LogoutRequested = 3,
    /// Scan the task table for task deadlines (once a second while tasks exist).
    TaskCheck = 4,
}

const COUNT: usize = 5;
const ALL: [Timer; COUNT] = [
    Timer::NopInterval,
    Timer::NopResponse,
    Timer::Logout,
    Timer::LogoutRequested,
    Timer::TaskCheck,
];

#[derive(Debug, Clone, Default)]
pub struct TimerTable {
    data: [Option<Instant>; COUNT],
}

impl TimerTable {
    pub fn set(&mut self, t: Timer, at: Instant) {
        self.data[t as usize] = Some(at);
    }

    pub fn get(&self, t: Timer) -> Option<Instant> {
        self.data[t as usize]
    }

    pub fn stop(&mut self, t: Timer) {
        self.data[t as usize] = None;
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.data.iter().flatten().min().copied()
    }

    /// Timers that have expired at `now`, cleared as they are returned.
    pub fn expired(&mut self, now: Instant) -> Vec<Timer> {
        let mut out = Vec::new();
        for t in ALL {
            if self.data[t as usize].is_some_and(|at| at <= now) {
                self.data[t as usize] = None;
                out.push(t);
            }
        }
        out
    }
}
