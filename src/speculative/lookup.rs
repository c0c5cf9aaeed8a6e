//! Prompt-lookup drafting: the text so far is searched for an earlier occurrence of its last
//! n tokens, and the tokens that followed that occurrence are proposed as the continuation.
//! No second model; it pays when the output repeats the input (editing code, quoting a
//! document).
#![forbid(unsafe_code)]

use super::Drafter;
use crate::error::{Error, Result};

/// Drafts by n-gram match over the sequence so far (prompt and generated tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptLookup {
    /// Shortest n-gram that may match.
    pub n_min: usize,
    /// Longest suffix compared: among the earlier occurrences of the last `n_min` tokens, the
    /// one preceded by the longest run (up to `n_max` tokens) equal to the end of the sequence
    /// wins, the most recent among equals.
    pub n_max: usize,
}

impl Default for PromptLookup {
    /// At least 2 tokens must match (a single token matches too often by chance in free
    /// text); up to 32 are compared, which tells apart the many places of a source file that
    /// share a short n-gram (`self.items[`), so a copy follows the right one.
    fn default() -> PromptLookup {
        PromptLookup {
            n_min: 2,
            n_max: 32,
        }
    }
}

impl PromptLookup {
    /// A drafter matching at least `n_min` and comparing up to `n_max` tokens; both at least 1.
    pub fn new(n_min: usize, n_max: usize) -> Result<PromptLookup> {
        if n_min == 0 || n_max < n_min {
            return Err(Error::InvalidArgument(format!(
                "prompt lookup: n-gram range {n_min}..={n_max} (need 1 <= n_min <= n_max)"
            )));
        }
        Ok(PromptLookup { n_min, n_max })
    }

    /// Up to `max` tokens that followed the earlier occurrence of the end of `history` with
    /// the longest match (at least `n_min`, compared up to `n_max` tokens; the most recent
    /// among equals); empty when none matches.
    pub fn lookup(&self, history: &[u32], max: usize) -> Vec<u32> {
        let len = history.len();
        if max == 0 || self.n_min >= len {
            return vec![];
        }
        // (match length, end of the occurrence): the occurrence is history[end - n..end].
        let mut best: Option<(usize, usize)> = None;
        // Occurrences end before len, so at least one token follows them.
        for end in self.n_min..len {
            let n = (1..=self.n_max.min(end))
                .take_while(|&i| history[end - i] == history[len - i])
                .count();
            if n >= self.n_min && best.is_none_or(|(m, _)| n >= m) {
                best = Some((n, end));
            }
        }
        match best {
            Some((_, end)) => history[end..len.min(end + max)].to_vec(),
            None => vec![],
        }
    }
}

impl Drafter for PromptLookup {
    fn draft(&mut self, history: &[u32], max: usize) -> Result<Vec<u32>> {
        Ok(self.lookup(history, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_ngram_wins_over_a_later_shorter_match() {
        // "1 2 3 4 5 | 9 3 7 | 1 2 3": the trigram 1 2 3 occurs at 0 (followed by 4 5 9 …); the
        // bigram 2 3 and the unigram 3 also occur later (3 at 6, followed by 7).
        let h = [1, 2, 3, 4, 5, 9, 3, 7, 1, 2, 3];
        let lookup = PromptLookup::new(1, 3).unwrap();
        assert_eq!(lookup.lookup(&h, 3), vec![4, 5, 9]);
        let unigram = PromptLookup::new(1, 1).unwrap();
        assert_eq!(unigram.lookup(&h, 3), vec![7, 1, 2]);
    }

    #[test]
    fn a_longer_match_beats_a_more_recent_shorter_one() {
        // The end "8 1 2" matches at 0..3 (then 4) with 3 tokens; "1 2" at 5..7 (then 6) with
        // only 2, although it is more recent.
        let h = [8, 1, 2, 4, 9, 1, 2, 6, 8, 1, 2];
        assert_eq!(PromptLookup::default().lookup(&h, 2), vec![4, 9]);
        assert_eq!(PromptLookup::new(2, 2).unwrap().lookup(&h, 2), vec![6, 8]);
    }

    #[test]
    fn the_most_recent_occurrence_is_used_and_the_draft_stops_at_the_end() {
        // "5 6" occurs at 0 (then 1) and at 3 (then 2); the most recent is at 3.
        let h = [5, 6, 1, 5, 6, 2, 5, 6];
        let lookup = PromptLookup::new(2, 2).unwrap();
        assert_eq!(lookup.lookup(&h, 4), vec![2, 5, 6]);
        assert_eq!(lookup.lookup(&h, 1), vec![2]);
    }

    #[test]
    fn overlapping_repeats_continue_the_run() {
        // 7 7 7 7: the bigram 7 7 last occurs at 1 (ending before the end), followed by 7.
        let lookup = PromptLookup::new(2, 2).unwrap();
        assert_eq!(lookup.lookup(&[7, 7, 7, 7], 5), vec![7]);
        assert_eq!(lookup.lookup(&[7, 7, 7, 7, 7, 7], 5), vec![7]);
    }

    #[test]
    fn no_match_short_history_or_zero_max_draft_nothing() {
        let lookup = PromptLookup::default();
        assert!(lookup.lookup(&[1, 2, 3, 4], 4).is_empty());
        assert!(lookup.lookup(&[1, 2], 4).is_empty());
        assert!(lookup.lookup(&[], 4).is_empty());
        assert!(lookup.lookup(&[1, 2, 1, 2], 0).is_empty());
        assert_eq!(lookup.lookup(&[1, 2, 9, 1, 2], 4), vec![9, 1, 2]);
    }

    #[test]
    fn a_bad_range_is_refused() {
        assert!(PromptLookup::new(0, 2).is_err());
        assert!(PromptLookup::new(3, 2).is_err());
    }
}
