//! RFC 1982 serial number arithmetic for CmdSN, StatSN, DataSN and R2TSN.
//!
//! RFC 7143 §4.2.2.1: "All comparisons and arithmetic on CmdSN ... use Serial Number
//! Arithmetic as defined in \[RFC1982\], where SERIAL_BITS = 32." `SerialNumber` therefore
//! has no `PartialOrd`: ordering is only defined between numbers less than 2^31 apart,
//! and the comparison methods say so.

use std::fmt;

const HALF: u32 = 1 << 31;

/// A 32-bit sequence number compared with RFC 1982 rules.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SerialNumber(pub u32);

impl SerialNumber {
    /// `self < other` in serial arithmetic. Undefined (false) when exactly 2^31 apart.
    pub fn lt(self, other: SerialNumber) -> bool {
        let (a, b) = (self.0, other.0);
        a != b && ((a < b && b - a < HALF) || (a > b && a - b > HALF))
    }

    /// `self > other` in serial arithmetic.
    pub fn gt(self, other: SerialNumber) -> bool {
        other.lt(self)
    }

    /// `self <= other`.
    pub fn le(self, other: SerialNumber) -> bool {
        self == other || self.lt(other)
    }

    /// `self >= other`.
    pub fn ge(self, other: SerialNumber) -> bool {
        self == other || self.gt(other)
    }

    /// Serial addition (RFC 1982 §3.1); `n` must be below 2^31 to stay meaningful.
    #[must_use]
    pub fn plus(self, n: u32) -> SerialNumber {
        SerialNumber(self.0.wrapping_add(n))
    }

    /// The next number.
    #[must_use]
    pub fn next(self) -> SerialNumber {
        self.plus(1)
    }

    /// How far `self` is ahead of `base` (`self - base`, wrapping). Only meaningful when
    /// `self.ge(base)`.
    pub fn distance_from(self, base: SerialNumber) -> u32 {
        self.0.wrapping_sub(base.0)
    }
}

impl fmt::Debug for SerialNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for SerialNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u32> for SerialNumber {
    fn from(v: u32) -> Self {
        SerialNumber(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordering_across_wrap() {
        let max = SerialNumber(u32::MAX);
        let zero = SerialNumber(0);
        assert!(max.lt(zero));
        assert!(zero.gt(max));
        assert_eq!(max.next(), zero);
        assert_eq!(zero.distance_from(max), 1);
        assert!(SerialNumber(u32::MAX - 5).lt(SerialNumber(10)));
        assert!(SerialNumber(10).gt(SerialNumber(u32::MAX - 5)));
    }

    #[test]
    fn half_apart_is_unordered() {
        let a = SerialNumber(0);
        let b = SerialNumber(HALF);
        assert!(!a.lt(b) && !a.gt(b) && a != b);
    }

    proptest! {
        #[test]
        fn add_is_greater(base in any::<u32>(), n in 1u32..HALF) {
            let a = SerialNumber(base);
            let b = a.plus(n);
            prop_assert!(a.lt(b));
            prop_assert!(b.gt(a));
            prop_assert!(!b.lt(a));
            prop_assert_eq!(b.distance_from(a), n);
        }
    }
}
