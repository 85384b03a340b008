//! Retry detection: the same `(sensor, seq)` twice counts once.
//!
//! Seen sequence numbers are kept per (sensor, window) as sorted ranges — a sensor's numbers are
//! increasing, so a window usually holds a single range and the state stays tiny. Keying by window
//! means a gateway that restarts its numbering is not mistaken for a flood of retries (its new
//! events carry new times), while a genuine retry (same message, same time, same window) is caught.
//! State is kept for `horizon` after the window became final, then forgotten.

use std::collections::HashMap;

/// Sorted, disjoint, non-adjacent inclusive ranges of seen sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct SeqRanges(Vec<(u64, u64)>);

impl SeqRanges {
    /// Records `seq`; false if it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let r = &mut self.0;
        // Fast path: the next number of the last range.
        if let Some(last) = r.last_mut() {
            if seq == last.1.wrapping_add(1) && last.1 != u64::MAX {
                last.1 = seq;
                return true;
            }
            if seq >= last.0 && seq <= last.1 {
                return false;
            }
        }
        // Index of the first range starting after seq.
        let i = r.partition_point(|&(a, _)| a <= seq);
        if i > 0 && seq <= r[i - 1].1 {
            return false;
        }
        let joins_prev = i > 0 && r[i - 1].1 + 1 == seq;
        let joins_next = i < r.len() && seq + 1 == r[i].0;
        match (joins_prev, joins_next) {
            (true, true) => {
                r[i - 1].1 = r[i].1;
                r.remove(i);
            }
            (true, false) => r[i - 1].1 = seq,
            (false, true) => r[i].0 = seq,
            (false, false) => r.insert(i, (seq, seq)),
        }
        true
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }
}

/// Seen sequence numbers of every (sensor, window) still within the horizon.
#[derive(Debug, Default)]
pub struct Dedup {
    /// foldhash: one lookup per message with a `seq`.
    seen: HashMap<(u32, i64), SeqRanges, foldhash::fast::RandomState>,
    /// Smallest window start still held (for cheap expiry checks).
    oldest: i64,
}

impl Dedup {
    /// Records `(sensor, seq)` of an event in window `window_start`; false for a retry.
    #[inline]
    pub fn first_time(&mut self, sensor: u32, window_start: i64, seq: u64) -> bool {
        if self.seen.is_empty() || window_start < self.oldest {
            self.oldest = window_start;
        }
        self.seen
            .entry((sensor, window_start))
            .or_default()
            .insert(seq)
    }

    /// Forgets windows starting before `cutoff`.
    pub fn expire(&mut self, cutoff: i64) {
        if self.oldest >= cutoff {
            return;
        }
        self.seen.retain(|&(_, ws), _| ws >= cutoff);
        self.oldest = self.seen.keys().map(|&(_, ws)| ws).min().unwrap_or(cutoff);
    }

    /// Every held entry: (sensor, window start, seen ranges), for checkpoints.
    pub fn entries(&self) -> impl Iterator<Item = (u32, i64, &[(u64, u64)])> {
        self.seen.iter().map(|(&(s, ws), r)| (s, ws, r.ranges()))
    }

    /// Restores one entry of a checkpoint (ranges as written by [`Dedup::entries`]).
    pub fn restore(&mut self, sensor: u32, window_start: i64, ranges: Vec<(u64, u64)>) {
        if self.seen.is_empty() || window_start < self.oldest {
            self.oldest = window_start;
        }
        self.seen.insert((sensor, window_start), SeqRanges(ranges));
    }

    /// Number of (sensor, window) entries held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn ranges_behave_like_a_set(seqs in proptest::collection::vec(0u64..200, 0..400)) {
            let mut r = SeqRanges::default();
            let mut set = BTreeSet::new();
            for s in seqs {
                prop_assert_eq!(r.insert(s), set.insert(s));
            }
            // Ranges are sorted, disjoint, non-adjacent and cover exactly the set.
            let covered: BTreeSet<u64> = r.ranges().iter().flat_map(|&(a, b)| a..=b).collect();
            prop_assert_eq!(covered, set);
            prop_assert!(r.ranges().windows(2).all(|w| w[0].1 + 1 < w[1].0));
        }
    }

    #[test]
    fn contiguous_numbers_stay_one_range() {
        let mut r = SeqRanges::default();
        for s in 1000..2000 {
            assert!(r.insert(s));
        }
        assert!(!r.insert(1500));
        assert_eq!(r.ranges(), &[(1000, 1999)]);
    }

    #[test]
    fn expiry_forgets_old_windows_only() {
        let mut d = Dedup::default();
        assert!(d.first_time(1, 0, 5));
        assert!(d.first_time(1, 900_000, 6));
        assert!(!d.first_time(1, 0, 5));
        d.expire(900_000);
        assert_eq!(d.len(), 1);
        assert!(!d.first_time(1, 900_000, 6));
    }
}
