//! Stop strings over streamed text: text up to a stop string is released, the stop string and
//! any tail that could still become one are held back, so neither is ever streamed out.

/// Filters generated text for one request's stop strings.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    /// Text received but not yet released: a possible start of a stop string.
    held: String,
}

/// What [`StopFilter::push`] lets through.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// Text safe to send.
    pub text: String,
    /// A stop string was found: the generation ends here.
    pub stopped: bool,
}

impl StopFilter {
    /// A filter for these stop strings (each non-empty).
    pub fn new(stops: Vec<String>) -> StopFilter {
        StopFilter {
            stops,
            held: String::new(),
        }
    }

    /// Adds generated text; returns what can be sent and whether a stop string was reached.
    pub fn push(&mut self, text: &str) -> Released {
        self.held.push_str(text);
        let found = self.stops.iter().filter_map(|s| self.held.find(s)).min();
        if let Some(at) = found {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Released {
                text,
                stopped: true,
            };
        }
        let keep = self.partial_tail();
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Released {
            text,
            stopped: false,
        }
    }

    /// Ends the text (length limit or end of generation): a held tail that never became a stop
    /// string is released.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Bytes at the end of `held` that begin some stop string: the longest such suffix.
    fn partial_tail(&self) -> usize {
        let held = self.held.as_str();
        held.char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .map_or(0, |i| held.len() - i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = vec![];
        for p in pieces {
            let r = f.push(p);
            out.push(r.text);
            if r.stopped {
                return (out, true, String::new());
            }
        }
        (out, false, f.finish())
    }

    #[test]
    fn a_stop_string_split_across_pieces_is_never_released() {
        let (out, stopped, _) = run(&["END"], &["abc E", "N", "D tail"]);
        assert_eq!(out, ["abc ", "", ""]);
        assert!(stopped);
    }

    #[test]
    fn a_partial_match_that_fails_is_released_later() {
        let (out, stopped, rest) = run(&["END"], &["x E", "Nx", "y E"]);
        assert_eq!(out, ["x ", "ENx", "y "]);
        assert!(!stopped);
        assert_eq!(rest, "E");
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let (out, stopped, _) = run(&["world", "lo"], &["hello world"]);
        assert_eq!(out, ["hel"]);
        assert!(stopped);
    }

    #[test]
    fn no_stop_strings_pass_everything_through() {
        let (out, stopped, rest) = run(&[], &["a", "é", "b"]);
        assert_eq!(out, ["a", "é", "b"]);
        assert!(!stopped);
        assert_eq!(rest, "");
    }

    #[test]
    fn multibyte_tails_are_split_on_character_boundaries() {
        let (out, stopped, _) = run(&["éé"], &["aé", "é"]);
        assert_eq!(out, ["a", ""]);
        assert!(stopped);
    }
}
