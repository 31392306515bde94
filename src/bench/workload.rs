//! What each request sends: synthetic prompts of a given length in tokens (fixed,
//! or uniform within a range), unique per request apart from an optional shared
//! prefix, or prompts and conversations read from a JSONL file.
//!
//! Synthetic prompts are words of `words::WORDS`, one token each. With a
//! tokenizer of the served model the word list is narrowed to words that really
//! are one token and every prompt's length is checked, so lengths are exact;
//! without one they are close (the server's `usage` still reports the truth).
//! Randomness is seeded: the same seed gives the same prompts on every server.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::endpoint::Endpoint;
use super::words::WORDS;
use super::BenchError;

/// Counts the tokens of a text as the served model's tokenizer does (no BOS).
pub trait TokenCount {
    fn count(&self, text: &str) -> Option<usize>;
}

impl TokenCount for crate::tokenizer::Tokenizer {
    fn count(&self, text: &str) -> Option<usize> {
        self.encode(text, false).ok().map(|ids| ids.len())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Prompt(String),
    Messages(Vec<Message>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    pub input: Input,
    pub max_tokens: usize,
    /// Prompt tokens by the workload's tokenizer, when it has one.
    pub input_tokens: Option<usize>,
}

/// Synthetic prompt shape. Lengths are drawn uniformly from
/// `[len × (1 − ratio), len × (1 + ratio)]`; ratio 0 is a fixed length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyntheticSpec {
    pub input_tokens: usize,
    pub output_tokens: usize,
    pub input_range_ratio: f64,
    pub output_range_ratio: f64,
    /// The first this-many prompt tokens are the same in every request; they count
    /// towards `input_tokens`.
    pub shared_prefix_tokens: usize,
    pub seed: u64,
}

#[derive(Debug)]
enum Source {
    Synthetic { spec: SyntheticSpec, words: Vec<&'static str>, prefix: Vec<&'static str> },
    Dataset(Vec<WorkItem>),
}

pub struct Workload<'a> {
    source: Source,
    counter: Option<&'a dyn TokenCount>,
}

impl std::fmt::Debug for Workload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("source", &self.source)
            .field("counter", &self.counter.is_some())
            .finish()
    }
}

/// How many times a synthetic prompt is redrawn when the tokenizer disagrees with
/// its word count (a rare merge across words) before it is used as it is.
const REDRAWS: usize = 8;

impl<'a> Workload<'a> {
    pub fn synthetic(
        spec: SyntheticSpec,
        counter: Option<&'a dyn TokenCount>,
    ) -> Result<Workload<'a>, BenchError> {
        let bad = |m: &str| Err(BenchError::Config(m.to_string()));
        if spec.input_tokens == 0 || spec.output_tokens == 0 {
            return bad("--input-tokens and --output-tokens must be at least 1");
        }
        if !(0.0..1.0).contains(&spec.input_range_ratio) || !(0.0..1.0).contains(&spec.output_range_ratio) {
            return bad("range ratios must be in [0, 1)");
        }
        let shortest = lengths(spec.input_tokens, spec.input_range_ratio).0;
        if spec.shared_prefix_tokens >= shortest {
            return bad("--shared-prefix-tokens must be shorter than the shortest prompt (it is part of it)");
        }
        let words: Vec<&'static str> = match counter {
            None => WORDS.to_vec(),
            Some(c) => WORDS
                .iter()
                .copied()
                .filter(|w| c.count(w) == Some(1) && c.count(&format!(" {w}")) == Some(1))
                .collect(),
        };
        if words.len() < 16 {
            return bad(
                "the tokenizer encodes almost none of the built-in words as one token; use --dataset",
            );
        }
        let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x005e_ed0f_9e7f_u64);
        let prefix =
            (0..spec.shared_prefix_tokens).map(|_| words[rng.random_range(0..words.len())]).collect();
        Ok(Workload { source: Source::Synthetic { spec, words, prefix }, counter })
    }

    /// A JSONL file: each line `{"prompt": "..."}` or `{"messages": [{"role", "content"}, ...]}`,
    /// optionally with `"max_tokens"`; lines without it get `default_output_tokens`.
    pub fn from_jsonl(
        path: &Path,
        endpoint: Endpoint,
        default_output_tokens: usize,
    ) -> Result<Workload<'a>, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
        let mut items = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let err =
                |message: String| BenchError::Dataset { path: path.to_path_buf(), line: i + 1, message };
            let row: DatasetRow = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
            let input = match (row.prompt, row.messages) {
                (Some(p), None) => match endpoint {
                    Endpoint::Completions => Input::Prompt(p),
                    Endpoint::Chat => Input::Messages(vec![Message { role: "user".into(), content: p }]),
                },
                (None, Some(m)) if endpoint == Endpoint::Chat => Input::Messages(m),
                (None, Some(_)) => return Err(err("`messages` need `--endpoint chat`".into())),
                _ => return Err(err("needs exactly one of `prompt` or `messages`".into())),
            };
            let max_tokens = row.max_tokens.unwrap_or(default_output_tokens);
            if max_tokens == 0 {
                return Err(err("`max_tokens` must be at least 1".into()));
            }
            items.push(WorkItem { input, max_tokens, input_tokens: None });
        }
        if items.is_empty() {
            return Err(BenchError::Dataset {
                path: path.to_path_buf(),
                line: 0,
                message: "no prompts".into(),
            });
        }
        Ok(Workload { source: Source::Dataset(items), counter: None })
    }

    /// `count` requests for stream `stream` (the warmup is stream 0, load level k is
    /// stream k). Synthetic prompts differ between streams, so no level finds
    /// another level's prompts in a prefix cache; a dataset is read on from where
    /// the previous stream stopped, wrapping around.
    pub fn items(&self, stream: u64, count: usize) -> Vec<WorkItem> {
        match &self.source {
            Source::Dataset(rows) => {
                let start = (stream as usize).wrapping_mul(count);
                (0..count).map(|i| rows[(start + i) % rows.len()].clone()).collect()
            }
            Source::Synthetic { spec, words, prefix } => {
                (0..count).map(|i| synthetic_item(spec, words, prefix, stream, i, self.counter)).collect()
            }
        }
    }
}

#[derive(Deserialize)]
struct DatasetRow {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<usize>,
}

/// The inclusive length range for a mean length and a range ratio (at least 1).
fn lengths(len: usize, ratio: f64) -> (usize, usize) {
    let lo = ((len as f64) * (1.0 - ratio)).round().max(1.0) as usize;
    let hi = ((len as f64) * (1.0 + ratio)).round().max(lo as f64) as usize;
    (lo, hi)
}

fn synthetic_item(
    spec: &SyntheticSpec,
    words: &[&'static str],
    prefix: &[&'static str],
    stream: u64,
    index: usize,
    counter: Option<&dyn TokenCount>,
) -> WorkItem {
    // One generator per request, so a request's prompt does not depend on how
    // many others were drawn before it.
    let seed = spec.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (stream << 40) ^ index as u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let (ilo, ihi) = lengths(spec.input_tokens, spec.input_range_ratio);
    let (olo, ohi) = lengths(spec.output_tokens, spec.output_range_ratio);
    let input_len = rng.random_range(ilo..=ihi);
    let max_tokens = rng.random_range(olo..=ohi);
    let mut text = String::new();
    let mut counted = None;
    for _ in 0..REDRAWS {
        let unique = (prefix.len()..input_len).map(|_| words[rng.random_range(0..words.len())]);
        text = prefix.iter().copied().chain(unique).collect::<Vec<_>>().join(" ");
        counted = counter.and_then(|c| c.count(&text));
        if counted.is_none_or(|n| n == input_len) {
            break;
        }
    }
    WorkItem { input: Input::Prompt(text), max_tokens, input_tokens: counted }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts words, except that the "word" `the` is two tokens: a stand-in for a
    /// vocabulary that lacks some of the list.
    struct Fake;
    impl TokenCount for Fake {
        fn count(&self, text: &str) -> Option<usize> {
            Some(text.split_whitespace().map(|w| if w == "the" { 2 } else { 1 }).sum())
        }
    }

    fn spec(input: usize, output: usize) -> SyntheticSpec {
        SyntheticSpec {
            input_tokens: input,
            output_tokens: output,
            input_range_ratio: 0.0,
            output_range_ratio: 0.0,
            shared_prefix_tokens: 0,
            seed: 1,
        }
    }

    fn prompt(item: &WorkItem) -> &str {
        match &item.input {
            Input::Prompt(p) => p,
            Input::Messages(_) => panic!("expected a prompt"),
        }
    }

    #[test]
    fn fixed_lengths_are_exact_by_the_tokenizer() {
        let w = Workload::synthetic(spec(256, 128), Some(&Fake)).unwrap();
        let items = w.items(1, 20);
        assert_eq!(items.len(), 20);
        for it in &items {
            assert_eq!(it.max_tokens, 128);
            assert_eq!(it.input_tokens, Some(256));
            assert_eq!(Fake.count(prompt(it)), Some(256));
            assert!(!prompt(it).split(' ').any(|w| w == "the"), "two-token words are filtered out");
        }
    }

    #[test]
    fn prompts_are_unique_across_requests_and_streams_but_reproducible() {
        let w = Workload::synthetic(spec(32, 8), None).unwrap();
        let a = w.items(1, 50);
        let b = w.items(2, 50);
        let mut all: Vec<&str> = a.iter().chain(&b).map(prompt).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 100);
        assert_eq!(a, w.items(1, 50), "same seed and stream, same prompts");
        assert!(a.iter().all(|it| prompt(it).split(' ').count() == 32 && it.input_tokens.is_none()));
    }

    #[test]
    fn shared_prefix_is_common_and_counts_towards_the_length() {
        let mut s = spec(40, 4);
        s.shared_prefix_tokens = 30;
        let w = Workload::synthetic(s, Some(&Fake)).unwrap();
        let items = w.items(3, 10);
        let heads: Vec<Vec<&str>> = items.iter().map(|it| prompt(it).split(' ').take(30).collect()).collect();
        assert!(heads.windows(2).all(|h| h[0] == h[1]), "the first 30 words are shared");
        let tails: std::collections::HashSet<String> =
            items.iter().map(|it| prompt(it).split(' ').skip(30).collect::<Vec<_>>().join(" ")).collect();
        assert_eq!(tails.len(), 10, "the rest is unique");
        assert!(items.iter().all(|it| it.input_tokens == Some(40)));
        s = spec(40, 4);
        s.shared_prefix_tokens = 40;
        assert!(
            Workload::synthetic(s, None).is_err(),
            "a prefix as long as the prompt leaves nothing unique"
        );
    }

    #[test]
    fn ranged_lengths_stay_in_range_and_vary() {
        let mut s = spec(100, 50);
        s.input_range_ratio = 0.5;
        s.output_range_ratio = 0.2;
        let w = Workload::synthetic(s, Some(&Fake)).unwrap();
        let items = w.items(1, 200);
        let ins: Vec<usize> = items.iter().map(|it| it.input_tokens.unwrap()).collect();
        let outs: Vec<usize> = items.iter().map(|it| it.max_tokens).collect();
        assert!(ins.iter().all(|&n| (50..=150).contains(&n)), "{ins:?}");
        assert!(outs.iter().all(|&n| (40..=60).contains(&n)), "{outs:?}");
        let mean = ins.iter().sum::<usize>() as f64 / ins.len() as f64;
        assert!((mean - 100.0).abs() < 6.0, "uniform around 100: {mean}");
        assert!(ins.iter().min() < Some(&60) && ins.iter().max() > Some(&140));
    }

    #[test]
    fn jsonl_reads_prompts_and_messages_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"hello\", \"max_tokens\": 5}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
        )
        .unwrap();
        let w = Workload::from_jsonl(&path, Endpoint::Chat, 7).unwrap();
        let items = w.items(0, 3);
        assert_eq!(
            items[0].input,
            Input::Messages(vec![Message { role: "user".into(), content: "hello".into() }])
        );
        assert_eq!((items[0].max_tokens, items[1].max_tokens), (5, 7));
        assert_eq!(items[2], items[0], "the file wraps around");
        let err = Workload::from_jsonl(&path, Endpoint::Completions, 7).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("--endpoint chat"), "{err}");
        std::fs::write(&path, "{\"prompt\": 3}\n").unwrap();
        assert!(Workload::from_jsonl(&path, Endpoint::Completions, 7)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }
}
