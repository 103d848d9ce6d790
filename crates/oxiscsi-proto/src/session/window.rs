//! The command window (RFC 7143 §4.2.2.1): CmdSN, ExpCmdSN, MaxCmdSN.

use crate::serial::SerialNumber;

/// Tracks which CmdSN the next non-immediate command takes and whether the target's
/// window admits it.
#[derive(Debug, Clone, Copy)]
pub struct CmdWindow {
    /// CmdSN the next non-immediate command will carry.
    pub cmd_sn: SerialNumber,
    pub exp_cmd_sn: SerialNumber,
    pub max_cmd_sn: SerialNumber,
}

impl CmdWindow {
    pub fn new(cmd_sn: SerialNumber, exp_cmd_sn: SerialNumber, max_cmd_sn: SerialNumber) -> Self {
        let mut w = CmdWindow {
            cmd_sn,
            exp_cmd_sn: cmd_sn,
            max_cmd_sn: cmd_sn.plus(u32::MAX),
        };
        w.update(exp_cmd_sn, max_cmd_sn);
        w
    }

    /// True when a non-immediate command may be sent now: CmdSN ≤ MaxCmdSN (§4.2.2.1).
    pub fn is_open(&self) -> bool {
        self.cmd_sn.le(self.max_cmd_sn)
    }

    /// How many more non-immediate commands the window admits.
    pub fn room(&self) -> u32 {
        if self.is_open() {
            self.max_cmd_sn.distance_from(self.cmd_sn) + 1
        } else {
            0
        }
    }

    /// Take a CmdSN for a non-immediate command (caller checked `is_open`).
    pub fn take(&mut self) -> SerialNumber {
        let sn = self.cmd_sn;
        self.cmd_sn = sn.next();
        sn
    }

    /// Apply ExpCmdSN/MaxCmdSN from a target PDU. §4.2.2.1: "If MaxCmdSN < ExpCmdSN - 1,
    /// ... the values are ignored", and both only ever move forward.
    pub fn update(&mut self, exp: SerialNumber, max: SerialNumber) {
        if max.lt(exp.plus(u32::MAX)) {
            return;
        }
        // ExpCmdSN beyond what we ever sent is nonsense from the target; ignore it.
        if exp.gt(self.cmd_sn) {
            return;
        }
        if exp.gt(self.exp_cmd_sn) {
            self.exp_cmd_sn = exp;
        }
        if max.gt(self.max_cmd_sn) {
            self.max_cmd_sn = max;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_across_wrap() {
        let start = SerialNumber(u32::MAX - 2);
        let mut w = CmdWindow::new(start, start, start.plus(3));
        assert_eq!(w.room(), 4);
        let sns: Vec<u32> = (0..4).map(|_| w.take().0).collect();
        assert_eq!(sns, vec![u32::MAX - 2, u32::MAX - 1, u32::MAX, 0]);
        assert!(!w.is_open());
        // Target acknowledges two and opens two more.
        w.update(SerialNumber(u32::MAX), SerialNumber(2));
        assert_eq!(w.exp_cmd_sn, SerialNumber(u32::MAX));
        assert_eq!(w.room(), 2);
        // Stale (smaller) values are ignored.
        w.update(SerialNumber(u32::MAX - 2), SerialNumber(0));
        assert_eq!(w.max_cmd_sn, SerialNumber(2));
        // MaxCmdSN < ExpCmdSN - 1 is ignored.
        w.update(SerialNumber(1), SerialNumber(u32::MAX - 10));
        assert_eq!(w.max_cmd_sn, SerialNumber(2));
        // A closed window: MaxCmdSN = ExpCmdSN - 1 is valid.
        let mut w = CmdWindow::new(SerialNumber(5), SerialNumber(5), SerialNumber(4));
        assert!(!w.is_open());
        w.update(SerialNumber(5), SerialNumber(5));
        assert!(w.is_open());
    }
}
