//! Stop strings over streamed text: decides, delta by delta, what text is safe to
//! send to the client now.
//!
//! Invariants: text that could still turn out to be the start of a stop string is
//! held back, so a stop string spanning several tokens is never partly sent; the stop
//! string itself is never sent (as OpenAI does); when stop strings overlap, the one
//! that is complete first in the text wins (at the same end, the longer one), which
//! makes the outcome independent of how the text was split into deltas; everything
//! is cut on char boundaries.

/// What to do after one delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Send `emit` (possibly empty) and keep generating.
    Continue { emit: String },
    /// Send `emit`, the text before the stop string, and finish the sequence.
    Stopped { emit: String, matched: String },
}

#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Received but not yet emitted: always a possible start of some stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty strings are ignored (they would match everywhere).
    pub fn new(stops: Vec<String>) -> Self {
        let mut stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        stops.sort();
        stops.dedup();
        StopMatcher { stops, held: String::new(), stopped: false }
    }

    /// Whether a stop string has matched; later pushes emit nothing.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::Continue { emit: String::new() };
        }
        self.held.push_str(delta);
        if let Some((start, stop)) = self.earliest_match() {
            self.held.truncate(start);
            self.stopped = true;
            return StopOutcome::Stopped {
                emit: std::mem::take(&mut self.held),
                matched: self.stops[stop].clone(),
            };
        }
        let keep = self.partial_suffix_len();
        let emit = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        StopOutcome::Continue { emit }
    }

    /// Emits `delta` (after anything held) without looking for stop strings: text of
    /// tokens that may not end the sequence (`min_tokens`). Matching starts with the
    /// next [`StopMatcher::push`], on text after this.
    pub fn pass(&mut self, delta: &str) -> String {
        self.held.push_str(delta);
        std::mem::take(&mut self.held)
    }

    /// Releases the held-back text when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// `(start, index into stops)` of the match that ends first, longest at equal
    /// ends. Held text before this delta contained no match, so scanning it again
    /// finds nothing new but costs little: it is shorter than the longest stop string.
    fn earliest_match(&self) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, stop)
        for (k, stop) in self.stops.iter().enumerate() {
            if let Some(start) = self.held.find(stop.as_str()) {
                let end = start + stop.len();
                let better = match best {
                    None => true,
                    Some((b_end, b_start, _)) => end < b_end || (end == b_end && start < b_start),
                };
                if better {
                    best = Some((end, start, k));
                }
            }
        }
        best.map(|(_, start, k)| (start, k))
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of
    /// some stop string. Such a suffix starts on a char boundary because a stop
    /// string's prefix cut at its own char boundary starts with a lead byte.
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_bytes();
        let mut longest = 0;
        for stop in &self.stops {
            let max = (stop.len() - 1).min(held.len());
            for len in (longest + 1..=max).rev() {
                if stop.is_char_boundary(len) && held.ends_with(&stop.as_bytes()[..len]) {
                    longest = len;
                    break;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| s.to_string()).collect())
    }

    /// Feeds the deltas; returns everything emitted (plus `finish` if no stop) and
    /// the matched stop string.
    fn run(stops: &[&str], deltas: &[&str]) -> (String, Option<String>) {
        let mut m = matcher(stops);
        let mut out = String::new();
        for d in deltas {
            match m.push(d) {
                StopOutcome::Continue { emit } => out.push_str(&emit),
                StopOutcome::Stopped { emit, matched } => {
                    out.push_str(&emit);
                    return (out, Some(matched));
                }
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    fn cont(emit: &str) -> StopOutcome {
        StopOutcome::Continue { emit: emit.to_string() }
    }

    #[test]
    fn stop_string_spanning_three_deltas_is_never_partly_sent() {
        let mut m = matcher(&["<|end|>"]);
        assert_eq!(m.push("Hello <|"), cont("Hello "));
        assert_eq!(m.push("en"), cont(""));
        assert_eq!(
            m.push("d|> tail"),
            StopOutcome::Stopped { emit: String::new(), matched: "<|end|>".into() }
        );
        assert!(m.is_stopped());
        assert_eq!(m.push("more"), cont(""));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn passed_text_is_sent_whole_and_never_matched() {
        let mut m = matcher(&["END"]);
        // Before `min_tokens`: a stop string, or its start, goes out as text.
        assert_eq!(m.pass("an END"), "an END");
        assert_eq!(m.pass(" E"), " E");
        // Matching starts on the text after: "ND" does not complete the "E" passed.
        assert_eq!(m.push("ND then "), cont("ND then "));
        assert_eq!(m.push("EN"), cont(""));
        // A held start is released by a pass.
        assert_eq!(m.pass("x"), "ENx");
        assert_eq!(m.push(" END"), StopOutcome::Stopped { emit: " ".into(), matched: "END".into() });
    }

    #[test]
    fn stop_at_the_very_start_emits_nothing() {
        assert_eq!(run(&["###"], &["###", "x"]), (String::new(), Some("###".into())));
        assert_eq!(run(&["ab"], &["a", "b", "c"]), (String::new(), Some("ab".into())));
    }

    #[test]
    fn text_after_the_stop_in_the_same_delta_is_dropped() {
        assert_eq!(run(&["STOP"], &["abc STOP def"]), ("abc ".into(), Some("STOP".into())));
    }

    #[test]
    fn overlapping_stops_first_completed_wins_however_split() {
        // "ab" completes before "abc"; "bc" completes before "abcd".
        for deltas in [&["xabc"][..], &["xa", "bc"], &["x", "a", "b", "c"]] {
            assert_eq!(run(&["abc", "ab"], deltas), ("x".into(), Some("ab".into())));
        }
        for deltas in [&["abcd"][..], &["a", "bcd"], &["ab", "c", "d"]] {
            assert_eq!(run(&["abcd", "bc"], deltas), ("a".into(), Some("bc".into())));
        }
        // Same end: the longer (earlier-starting) one.
        assert_eq!(run(&["c", "abc"], &["xabc"]), ("x".into(), Some("abc".into())));
    }

    #[test]
    fn held_back_text_is_released_by_finish() {
        let mut m = matcher(&["</s>"]);
        assert_eq!(m.push("the end </"), cont("the end "));
        assert_eq!(m.finish(), "</");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn false_partial_match_is_emitted_in_order() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("a ST"), cont("a "));
        assert_eq!(m.push("O"), cont(""));
        // "STONE S": not a stop; only the trailing "S" could still start one.
        assert_eq!(m.push("NE S"), cont("STONE "));
        assert_eq!(m.push("ky"), cont("Sky"));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn a_partial_that_becomes_a_new_partial_keeps_only_the_new_one() {
        // "aab": after "a","a" both could start "ab"; only the last one is held.
        let mut m = matcher(&["ab"]);
        assert_eq!(m.push("a"), cont(""));
        assert_eq!(m.push("a"), cont("a"));
        assert_eq!(m.push("b"), StopOutcome::Stopped { emit: String::new(), matched: "ab".into() });
    }

    #[test]
    fn multibyte_text_and_stops_are_cut_on_char_boundaries() {
        // "é" is 2 bytes, "🙂" 4; the stop starts with the same lead byte as "é…".
        let stops = ["éz", "🙂!"];
        assert_eq!(run(&stops, &["café", "z là"]), ("caf".into(), Some("éz".into())));
        assert_eq!(run(&stops, &["ça 🙂", "?"]), ("ça 🙂?".into(), None));
        let mut m = matcher(&stops);
        assert_eq!(m.push("naïve é"), cont("naïve "));
        assert_eq!(m.push("è"), cont("éè"));
        assert_eq!(m.push("🙂"), cont(""));
        assert_eq!(m.push("!"), StopOutcome::Stopped { emit: String::new(), matched: "🙂!".into() });
    }

    #[test]
    fn empty_stop_strings_and_empty_deltas_are_harmless() {
        assert_eq!(run(&["", ""], &["abc", "", "def"]), ("abcdef".into(), None));
        let mut m = matcher(&["xy"]);
        assert_eq!(m.push(""), cont(""));
        assert_eq!(m.push("x"), cont(""));
        assert_eq!(m.push(""), cont(""));
        assert_eq!(m.finish(), "x");
    }

    #[test]
    fn without_a_match_every_split_reassembles_the_text() {
        let text = "Wait for <end of turn>? No: <e, <en, <|e … 🙂 done <|";
        let stops = ["<|end|>", "<|eot_id|>", "\n\nUser:", "🙂🙂"];
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        // Every split into pieces of a fixed number of chars, plus irregular ones.
        for width in 1..=chars.len() {
            let bounds: Vec<usize> = chars.iter().step_by(width).map(|&(i, _)| i).collect();
            let mut deltas: Vec<&str> = Vec::new();
            for (k, &b) in bounds.iter().enumerate() {
                let e = bounds.get(k + 1).copied().unwrap_or(text.len());
                deltas.push(&text[b..e]);
            }
            assert_eq!(run(&stops, &deltas), (text.to_string(), None), "width {width}");
        }
        // Irregular splits, including empty deltas (pieces of 0..=5 chars).
        let mut state = 12345u64;
        for trial in 0..50 {
            let mut deltas = Vec::new();
            let mut at = 0;
            while at < chars.len() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let next = (at + (state >> 33) as usize % 6).min(chars.len());
                let end = chars.get(next).map_or(text.len(), |c| c.0);
                deltas.push(&text[chars[at].0..end]);
                at = next;
            }
            assert_eq!(run(&stops, &deltas), (text.to_string(), None), "trial {trial}");
        }
    }
}
