//! A table keyed by the tags this side hands out in sequence (the initiator's ITTs).
//!
//! Live tags are a small window of a counter, so a tag's low bits almost always name a
//! free slot of a power-of-two array: lookups are a mask and a compare, with no hashing
//! or probing, and an entry is written once instead of being moved through a hash map's
//! insert path (a 288-byte task was copied twice per insert; measured in the commit that
//! added this table). Two live tags that share their low bits (a task that outlived as
//! many newer ones as the table has slots) go to a small overflow map, so every key is
//! still found; growing the array re-homes them.
//!
//! Every lookup compares the stored tag, so a tag from the peer that we never issued (or
//! that shares its slot with a live one) is simply not found. Tags a peer chooses (the
//! target side's ITTs) belong in a hash map instead: a peer could pick colliding ones.

use std::collections::HashMap;

/// Map from a `u32` tag to `V` (see the module docs).
pub struct TagTable<V> {
    /// `slots.len()` is zero or a power of two; an entry sits at `tag & (len - 1)`.
    slots: Vec<Option<(u32, V)>>,
    /// Entries whose home slot was taken by another tag when they came. Rare (a tag
    /// must outlive as many newer ones as there are slots), so std's SipHash map.
    overflow: HashMap<u32, V>,
    /// Entries in `slots` (not counting `overflow`).
    direct: usize,
}

impl<V> Default for TagTable<V> {
    fn default() -> Self {
        TagTable {
            slots: Vec::new(),
            overflow: HashMap::new(),
            direct: 0,
        }
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for TagTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

const MIN_SLOTS: usize = 16;

impl<V> TagTable<V> {
    pub fn len(&self) -> usize {
        self.direct + self.overflow.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn home(&self, tag: u32) -> usize {
        (tag as usize) & (self.slots.len().wrapping_sub(1))
    }

    pub fn get(&self, tag: &u32) -> Option<&V> {
        if let Some(Some((t, v))) = self.slots.get(self.home(*tag)) {
            if t == tag {
                return Some(v);
            }
        }
        if self.overflow.is_empty() {
            None
        } else {
            self.overflow.get(tag)
        }
    }

    pub fn get_mut(&mut self, tag: &u32) -> Option<&mut V> {
        let home = self.home(*tag);
        // Two lookups instead of one borrow: the borrow checker cannot see that the
        // slot's borrow ends when its tag differs.
        if matches!(self.slots.get(home), Some(Some((t, _))) if t == tag) {
            return self.slots[home].as_mut().map(|(_, v)| v);
        }
        if self.overflow.is_empty() {
            None
        } else {
            self.overflow.get_mut(tag)
        }
    }

    pub fn contains_key(&self, tag: &u32) -> bool {
        self.get(tag).is_some()
    }

    /// Insert or replace; returns the value replaced.
    pub fn insert(&mut self, tag: u32, value: V) -> Option<V> {
        self.insert_with(tag, move || value)
    }

    /// Insert the value `make` builds, or replace the one there with it; returns the
    /// value replaced. `make` runs once the slot is known, so a value built in it (a
    /// task) is written into place instead of being copied there twice (measured:
    /// two 288-byte memcpy calls per insert).
    #[inline(always)]
    pub fn insert_with(&mut self, tag: u32, make: impl FnOnce() -> V) -> Option<V> {
        if (self.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let home = self.home(tag);
        match &mut self.slots[home] {
            Some((t, v)) if *t == tag => Some(std::mem::replace(v, make())),
            slot @ None if self.overflow.is_empty() || !self.overflow.contains_key(&tag) => {
                *slot = Some((tag, make()));
                self.direct += 1;
                None
            }
            _ => self.overflow.insert(tag, make()),
        }
    }

    pub fn remove(&mut self, tag: &u32) -> Option<V> {
        let home = self.home(*tag);
        if let Some(slot) = self.slots.get_mut(home) {
            if matches!(slot, Some((t, _)) if t == tag) {
                self.direct -= 1;
                return slot.take().map(|(_, v)| v);
            }
        }
        if self.overflow.is_empty() {
            None
        } else {
            self.overflow.remove(tag)
        }
    }

    /// Remove an entry without handing it out: dropped where it lies, not moved (a
    /// task is 288 bytes; `remove` copies it out).
    pub fn discard(&mut self, tag: &u32) -> bool {
        let home = self.home(*tag);
        if let Some(slot) = self.slots.get_mut(home) {
            if matches!(slot, Some((t, _)) if t == tag) {
                self.direct -= 1;
                *slot = None;
                return true;
            }
        }
        !self.overflow.is_empty() && self.overflow.remove(tag).is_some()
    }

    /// Double the array (at least [`MIN_SLOTS`]) and re-home every entry. Tags that
    /// differ in their low `k` bits also differ in their low `k + 1`, so no entry that
    /// had its own slot loses it; overflowed ones get theirs where they now can.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let new_len = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::take(&mut self.slots);
        let spilled = std::mem::take(&mut self.overflow);
        self.slots = (0..new_len).map(|_| None).collect();
        self.direct = 0;
        let mask = new_len - 1;
        for (tag, v) in old.into_iter().flatten().chain(spilled) {
            let slot = &mut self.slots[tag as usize & mask];
            if slot.is_none() {
                *slot = Some((tag, v));
                self.direct += 1;
            } else {
                self.overflow.insert(tag, v);
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &V)> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.as_ref().map(|(t, v)| (t, v)))
            .chain(self.overflow.iter())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u32, &mut V)> + '_ {
        self.slots
            .iter_mut()
            .filter_map(|s| s.as_mut().map(|(t, v)| (&*t, v)))
            .chain(self.overflow.iter_mut())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.iter_mut().map(|(_, v)| v)
    }

    /// Remove every entry, handing them out (in no particular order).
    pub fn drain(&mut self) -> std::vec::IntoIter<(u32, V)> {
        let mut all: Vec<(u32, V)> = Vec::with_capacity(self.len());
        all.extend(self.slots.iter_mut().filter_map(Option::take));
        all.extend(self.overflow.drain());
        self.direct = 0;
        all.into_iter()
    }

    /// Keep only the entries for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&u32, &mut V) -> bool) {
        for slot in self.slots.iter_mut() {
            if let Some((t, v)) = slot {
                if !keep(t, v) {
                    *slot = None;
                    self.direct -= 1;
                }
            }
        }
        self.overflow.retain(|t, v| keep(t, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sequential_tags_take_their_own_slots() {
        let mut t = TagTable::default();
        for tag in 0x100u32..0x100 + 64 {
            assert_eq!(t.insert(tag, tag), None);
        }
        assert_eq!(t.len(), 64);
        assert!(t.overflow.is_empty(), "sequential tags never collide");
        assert_eq!(t.get(&0x120), Some(&0x120));
        assert_eq!(t.remove(&0x120), Some(0x120));
        assert_eq!(t.get(&0x120), None);
        assert_eq!(t.len(), 63);
    }

    #[test]
    fn a_tag_sharing_low_bits_overflows_and_is_still_found() {
        let mut t = TagTable::default();
        t.insert(0x0000_0101, "old");
        t.insert(0x0001_0101, "new");
        assert_eq!(t.overflow.len(), 1);
        assert_eq!(t.get(&0x0000_0101), Some(&"old"));
        assert_eq!(t.get(&0x0001_0101), Some(&"new"));
        // Removing the one at home leaves the overflowed one reachable.
        assert_eq!(t.remove(&0x0000_0101), Some("old"));
        assert_eq!(t.get(&0x0001_0101), Some(&"new"));
        // An insert of the overflowed tag replaces it where it is, never duplicates it.
        assert_eq!(t.insert(0x0001_0101, "newer"), Some("new"));
        assert_eq!(t.len(), 1);
        assert_eq!(t.drain().collect::<Vec<_>>(), vec![(0x0001_0101, "newer")]);
        assert!(t.is_empty());
    }

    #[test]
    fn unknown_tags_are_not_found() {
        let mut t = TagTable::default();
        assert_eq!(t.get(&7), None);
        assert_eq!(t.remove(&7), None);
        t.insert(7u32, ());
        assert_eq!(t.get(&(7 + 16)), None, "same slot, other tag");
        assert_eq!(t.get(&u32::MAX), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u32),
        Remove(u32),
        Discard(u32),
        Get(u32),
        RetainEven,
        Drain,
    }

    /// Tags drawn so that low-bit collisions are common: a few low values with a few
    /// high bits set, as a long-lived task among wrapped ITTs would be.
    fn tag() -> impl Strategy<Value = u32> {
        (
            0u32..40,
            prop::sample::select(vec![0u32, 1 << 6, 1 << 9, 1 << 16, 1 << 31]),
        )
            .prop_map(|(lo, hi)| lo | hi)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (tag(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => tag().prop_map(Op::Remove),
            2 => tag().prop_map(Op::Discard),
            4 => tag().prop_map(Op::Get),
            1 => Just(Op::RetainEven),
            1 => Just(Op::Drain),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(ops in prop::collection::vec(op(), 0..400)) {
            let mut t: TagTable<u32> = TagTable::default();
            let mut m: HashMap<u32, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(t.insert(k, v), m.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(t.remove(&k), m.remove(&k)),
                    Op::Discard(k) => prop_assert_eq!(t.discard(&k), m.remove(&k).is_some()),
                    Op::Get(k) => {
                        prop_assert_eq!(t.get(&k), m.get(&k));
                        prop_assert_eq!(t.get_mut(&k).copied(), m.get(&k).copied());
                        prop_assert_eq!(t.contains_key(&k), m.contains_key(&k));
                    }
                    Op::RetainEven => {
                        t.retain(|_, v| *v % 2 == 0);
                        m.retain(|_, v| *v % 2 == 0);
                    }
                    Op::Drain => {
                        let mut a: Vec<_> = t.drain().collect();
                        let mut b: Vec<_> = m.drain().collect();
                        a.sort_unstable();
                        b.sort_unstable();
                        prop_assert_eq!(a, b);
                    }
                }
                prop_assert_eq!(t.len(), m.len());
                let mut a: Vec<_> = t.iter().map(|(k, v)| (*k, *v)).collect();
                let mut b: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
                a.sort_unstable();
                b.sort_unstable();
                prop_assert_eq!(a, b);
            }
        }
    }
}
