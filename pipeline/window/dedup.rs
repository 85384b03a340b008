//! Retry detection: the same `(sensor, seq)` twice counts once.
//!
//! Seen sequence numbers are kept per (sensor, window) as an interval set — a sensor's numbers are
//! increasing, so a window usually holds a single range and the state stays tiny. Keying by window
//! means a gateway that restarts its numbering is not mistaken for a flood of retries (its new
//! events carry new times), while a genuine retry (same message, same time, same window) is caught.
//! State is kept for `horizon` after the window became final, then forgotten.
//!
//! Cost and size are bounded whatever a device sends: each lookup and insert is O(log n) in the
//! number of ranges (a `BTreeMap` keyed by range start), and one (sensor, window) holds at most
//! [`MAX_RANGES`] ranges. Numbers that arrive in order extend the last range and never reach the
//! bound. Beyond it (numbers scattered at random) the *lowest* range is forgotten: counting stays
//! exact for numbers that are new, and only a retry of a forgotten number would be counted again.
//! Every forgotten range is counted ([`Seen::NewForgot`]) so the operator can see it happened.

use std::collections::{BTreeMap, HashMap};

/// Most ranges one (sensor, window) keeps (16 bytes each in memory, about 40 in a checkpoint).
pub const MAX_RANGES: usize = 4096;

/// What [`SeqRanges::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A number not seen before.
    New,
    /// A number seen before: a retry.
    Retry,
    /// A number not seen before; keeping it pushed the set past [`MAX_RANGES`], so the lowest
    /// range was forgotten.
    NewForgot,
}

/// Disjoint, non-adjacent inclusive ranges of seen sequence numbers, by start.
///
/// The usual case — one range, numbers in order — is held inline, without a tree node (there is
/// one set per (sensor, window): millions over a month of input). A second range moves the set
/// into a tree, where it stays.
#[derive(Debug, Default, Clone)]
pub struct SeqRanges {
    /// The only range, while there is no tree.
    one: Option<(u64, u64)>,
    /// All ranges, once there were two (then `one` is `None`). Boxed on purpose: 8 bytes in every
    /// entry of the retry memory instead of 24 for a tree that few entries ever need.
    #[allow(clippy::box_collection)]
    many: Option<Box<BTreeMap<u64, u64>>>,
}

impl SeqRanges {
    /// Ranges as written by [`SeqRanges::ranges`] (sorted, disjoint; adjacent ones are merged).
    pub fn from_ranges(ranges: &[(u64, u64)]) -> SeqRanges {
        let mut r = SeqRanges::default();
        for &(a, b) in ranges {
            r.insert_range(a, b.max(a));
        }
        r
    }

    /// The tree, holding the inline range if there was one.
    fn tree(&mut self) -> &mut BTreeMap<u64, u64> {
        let one = self.one.take();
        let tree = self.many.get_or_insert_default();
        if let Some((a, b)) = one {
            tree.insert(a, b);
        }
        tree
    }

    fn insert_range(&mut self, a: u64, b: u64) {
        // Only used on restore, where input is sorted and disjoint; merge with a touching neighbour.
        if self.is_empty() {
            self.one = Some((a, b));
            return;
        }
        let tree = self.tree();
        if let Some((_, end)) = tree.range_mut(..a).next_back()
            && end.checked_add(1).is_some_and(|n| n >= a)
        {
            *end = (*end).max(b);
            return;
        }
        tree.insert(a, b);
    }

    /// Records `seq`.
    #[inline]
    pub fn insert(&mut self, seq: u64) -> Seen {
        if self.many.is_none() {
            match &mut self.one {
                None => {
                    self.one = Some((seq, seq));
                    return Seen::New;
                }
                Some((a, b)) => {
                    if (*a..=*b).contains(&seq) {
                        return Seen::Retry;
                    }
                    if b.checked_add(1) == Some(seq) {
                        *b = seq;
                        return Seen::New;
                    }
                    if seq.checked_add(1) == Some(*a) {
                        *a = seq;
                        return Seen::New;
                    }
                }
            }
        }
        let r = self.tree();
        // The range starting at or before seq, if any.
        let mut joins_prev = None;
        if let Some((&a, end)) = r.range_mut(..=seq).next_back() {
            if seq <= *end {
                return Seen::Retry;
            }
            if *end + 1 == seq {
                joins_prev = Some(a);
            }
        }
        let next = seq.checked_add(1).and_then(|n| r.remove_entry(&n));
        match (joins_prev, next) {
            (Some(a), Some((_, b))) => {
                r.insert(a, b);
            }
            (Some(a), None) => {
                r.insert(a, seq);
            }
            (None, Some((_, b))) => {
                r.insert(seq, b);
            }
            (None, None) => {
                r.insert(seq, seq);
                if r.len() > MAX_RANGES {
                    r.pop_first();
                    return Seen::NewForgot;
                }
            }
        }
        Seen::New
    }

    /// Whether `seq` was seen (and not forgotten).
    pub fn contains(&self, seq: u64) -> bool {
        match (&self.one, &self.many) {
            (Some((a, b)), _) => (*a..=*b).contains(&seq),
            (None, Some(tree)) => tree
                .range(..=seq)
                .next_back()
                .is_some_and(|(_, &end)| seq <= end),
            (None, None) => false,
        }
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let tree = self
            .many
            .iter()
            .flat_map(|t| t.iter().map(|(&a, &b)| (a, b)));
        self.one.into_iter().chain(tree).collect()
    }

    /// Number of ranges held.
    pub fn len(&self) -> usize {
        usize::from(self.one.is_some()) + self.many.as_ref().map_or(0, |t| t.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Seen sequence numbers of every (sensor, window) still within the horizon, by window: expiry
/// drops whole windows from the front (O(windows expired)), so a run over many days costs the same
/// per event as a run over one.
#[derive(Debug, Default)]
pub struct Dedup {
    /// window start → sensor → seen ranges (foldhash: one lookup per message with a `seq`).
    windows: BTreeMap<i64, HashMap<u32, SeqRanges, foldhash::fast::RandomState>>,
}

impl Dedup {
    /// Records `(sensor, seq)` of an event in window `window_start`.
    #[inline]
    pub fn first_time(&mut self, sensor: u32, window_start: i64, seq: u64) -> Seen {
        self.windows
            .entry(window_start)
            .or_default()
            .entry(sensor)
            .or_default()
            .insert(seq)
    }

    /// Forgets windows starting before `cutoff`.
    pub fn expire(&mut self, cutoff: i64) {
        while let Some(first) = self.windows.first_entry() {
            if *first.key() >= cutoff {
                break;
            }
            first.remove();
        }
    }

    /// Every held entry: (sensor, window start, seen ranges), for checkpoints.
    pub fn entries(&self) -> impl Iterator<Item = (u32, i64, Vec<(u64, u64)>)> + '_ {
        self.windows
            .iter()
            .flat_map(|(&ws, m)| m.iter().map(move |(&s, r)| (s, ws, r.ranges())))
    }

    /// Restores one entry of a checkpoint (ranges as written by [`Dedup::entries`]). A checkpoint
    /// written before the bound existed may hold more than [`MAX_RANGES`]: the lowest are dropped.
    pub fn restore(&mut self, sensor: u32, window_start: i64, ranges: &[(u64, u64)]) {
        let keep = &ranges[ranges.len().saturating_sub(MAX_RANGES)..];
        self.windows
            .entry(window_start)
            .or_default()
            .insert(sensor, SeqRanges::from_ranges(keep));
    }

    /// Number of (sensor, window) entries held.
    pub fn len(&self) -> usize {
        self.windows.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.values().all(HashMap::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn covered(r: &SeqRanges) -> BTreeSet<u64> {
        r.ranges().iter().flat_map(|&(a, b)| a..=b).collect()
    }

    proptest! {
        #[test]
        fn ranges_behave_like_a_set(seqs in proptest::collection::vec(0u64..200, 0..400)) {
            let mut r = SeqRanges::default();
            let mut set = BTreeSet::new();
            for s in seqs {
                let expect = if set.insert(s) { Seen::New } else { Seen::Retry };
                prop_assert_eq!(r.insert(s), expect);
            }
            // Ranges are sorted, disjoint, non-adjacent and cover exactly the set.
            prop_assert_eq!(covered(&r), set);
            prop_assert!(r.ranges().windows(2).all(|w| w[0].1 + 1 < w[1].0));
            // A checkpoint round trip keeps the same set.
            prop_assert_eq!(SeqRanges::from_ranges(&r.ranges()).ranges(), r.ranges());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Past the bound, the lowest ranges are forgotten and nothing else changes: new numbers
        /// are always new, retries of kept numbers are still caught.
        #[test]
        fn bound_forgets_only_the_lowest(seqs in proptest::collection::vec(0u64..40_000, 0..12_000)) {
            let mut r = SeqRanges::default();
            let mut set = BTreeSet::new();
            let mut forgot = 0;
            for s in seqs {
                let was_kept = r.contains(s);
                let lowest = r.ranges().first().map_or(s, |&(a, _)| a.min(s));
                let got = r.insert(s);
                if was_kept {
                    prop_assert_eq!(got, Seen::Retry);
                } else {
                    prop_assert_ne!(got, Seen::Retry);
                    forgot += u32::from(got == Seen::NewForgot);
                }
                if got == Seen::NewForgot {
                    // What was forgotten is the lowest range: everything kept is above it.
                    prop_assert!(!r.contains(lowest));
                    prop_assert!(r.ranges().first().is_some_and(|&(a, _)| a > lowest));
                }
                set.insert(s);
                prop_assert!(r.len() <= MAX_RANGES);
            }
            // Only numbers that were inserted are kept, and forgetting happened only at the bound.
            prop_assert!(covered(&r).is_subset(&set));
            prop_assert!(forgot == 0 || set.len() > MAX_RANGES);
        }
    }

    #[test]
    fn contiguous_numbers_stay_one_range() {
        let mut r = SeqRanges::default();
        for s in 1000..2000 {
            assert_eq!(r.insert(s), Seen::New);
        }
        assert_eq!(r.insert(1500), Seen::Retry);
        assert_eq!(r.ranges(), vec![(1000, 1999)]);
        // Filling a gap joins both neighbours; the extremes of u64 do not overflow.
        let mut r = SeqRanges::default();
        for s in [u64::MAX, 0, 2, u64::MAX - 1, 1] {
            assert_eq!(r.insert(s), Seen::New);
        }
        assert_eq!(r.ranges(), vec![(0, 2), (u64::MAX - 1, u64::MAX)]);
    }

    #[test]
    fn random_numbers_stay_bounded_and_in_order_ones_exact() {
        // 3 x MAX_RANGES scattered numbers: the set stays at the bound.
        let mut r = SeqRanges::default();
        let mut forgot = 0;
        for i in 0..(3 * MAX_RANGES as u64) {
            let s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15); // distinct, scattered
            match r.insert(s) {
                Seen::NewForgot => forgot += 1,
                Seen::New => {}
                Seen::Retry => panic!("{s} is new"),
            }
        }
        assert_eq!(r.len(), MAX_RANGES);
        assert_eq!(forgot, 2 * MAX_RANGES);
        // In-order numbers after that extend one range and never forget anything.
        for s in 10..100_000u64 {
            assert_ne!(r.insert((1 << 40) + s), Seen::Retry);
            assert!(r.len() <= MAX_RANGES);
        }
    }

    #[test]
    fn restore_keeps_the_highest_ranges_of_an_oversized_checkpoint() {
        let ranges: Vec<(u64, u64)> = (0..MAX_RANGES as u64 + 10)
            .map(|i| (i * 3, i * 3))
            .collect();
        let mut d = Dedup::default();
        d.restore(0, 0, &ranges);
        let (_, _, kept) = d.entries().next().unwrap();
        assert_eq!(kept.len(), MAX_RANGES);
        assert_eq!(kept[0], (30, 30));
    }

    #[test]
    fn expiry_forgets_old_windows_only() {
        let mut d = Dedup::default();
        assert_eq!(d.first_time(1, 0, 5), Seen::New);
        assert_eq!(d.first_time(1, 900_000, 6), Seen::New);
        assert_eq!(d.first_time(1, 0, 5), Seen::Retry);
        d.expire(900_000);
        assert_eq!(d.len(), 1);
        assert_eq!(d.first_time(1, 900_000, 6), Seen::Retry);
    }
}
