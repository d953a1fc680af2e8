//! Counts by code and case kind, and the calls that must not happen, grouped so
//! that a failure reads as a short list.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::Code;

use super::call::Answer;
use super::generate::Case;
use super::{CALL_TIMEOUT, truncate};

/// Counts and offenders.
#[derive(Default)]
pub(super) struct Report {
    by_code: BTreeMap<String, usize>,
    /// `(kind without its detail, code)` → calls.
    by_kind: BTreeMap<(String, String), usize>,
    /// One message of each code that is neither OK nor a usual refusal.
    samples: BTreeMap<String, String>,
    /// `(code, message up to its first colon)` → the calls that must not happen.
    offences: BTreeMap<(String, String), Offence>,
    framing: Vec<String>,
}

/// The calls that got one kind of wrong answer.
#[derive(Default)]
struct Offence {
    /// A few distinct full messages.
    examples: Vec<String>,
    /// By method (`Points/GetBalance`).
    methods: BTreeMap<String, OffendingMethod>,
}

#[derive(Default)]
struct OffendingMethod {
    /// Calls by case kind.
    kinds: BTreeMap<String, usize>,
    /// The lowest case number and the hostile values it holds.
    first: Option<(usize, Vec<String>)>,
}

impl Report {
    pub(super) fn record(&mut self, case: &Case, answer: &Answer) {
        let code = self.count(
            case.kind.split('/').next().unwrap_or_default(),
            &case.path,
            &case.kind,
            answer,
        );
        let message = match answer {
            Answer::Timeout => Some(format!("no answer within {CALL_TIMEOUT:?}")),
            Answer::Transport(message) => Some(format!("the call failed alone too: {message}")),
            Answer::Status(Code::Internal | Code::Unknown, message) => Some(message.clone()),
            Answer::Status(Code::ResourceExhausted | Code::InvalidArgument, _) => None,
            Answer::Status(_, message) if case.kind == "oversized" => {
                Some(format!("expected RESOURCE_EXHAUSTED: {message}"))
            }
            Answer::Status(..) => None,
        };
        if let Some(message) = message {
            self.offend(
                code,
                message,
                &case.path,
                &case.kind,
                Some((case.number, &case.notes)),
            );
        }
    }

    pub(super) fn record_framing(&mut self, path: &str, how: &str, answer: &Answer) {
        let kind = format!("framing/{how}");
        let code = self.count("framing", path, &kind, answer);
        let message = match answer {
            Answer::Status(_, message) | Answer::Transport(message) => message.clone(),
            Answer::Timeout => format!("no answer within {CALL_TIMEOUT:?}"),
        };
        self.framing
            .push(format!("{path} {how}: {code} {:?}", truncate(&message, 100)));
        if !matches!(answer, Answer::Status(code, _) if *code == Code::InvalidArgument) {
            self.offend(code, message, path, &kind, None);
        }
    }

    /// Counts an answer; returns its code's name.
    fn count(&mut self, family: &str, path: &str, kind: &str, answer: &Answer) -> String {
        let code = code_name(answer);
        *self.by_code.entry(code.clone()).or_default() += 1;
        *self.by_kind.entry((family.to_owned(), code.clone())).or_default() += 1;
        if let Answer::Status(status, message) = answer {
            let usual = [
                Code::Ok,
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
                Code::AlreadyExists,
            ];
            if !usual.contains(status) {
                let sample = format!("{} [{kind}] {:?}", short(path), truncate(message, 100));
                self.samples.entry(code.clone()).or_insert(sample);
            }
        }
        code
    }

    fn offend(
        &mut self,
        code: String,
        message: String,
        path: &str,
        kind: &str,
        case: Option<(usize, &Vec<String>)>,
    ) {
        let class = message.split(':').next().unwrap_or_default().to_owned();
        let offence = self.offences.entry((code, class)).or_default();
        let example = truncate(&message, 160);
        if offence.examples.len() < 4 && !offence.examples.contains(&example) {
            offence.examples.push(example);
        }
        let method = offence.methods.entry(short(path).to_owned()).or_default();
        *method.kinds.entry(kind.to_owned()).or_default() += 1;
        if let Some((number, notes)) = case
            && method.first.as_ref().is_none_or(|(first, _)| number < *first)
        {
            method.first = Some((number, notes.clone()));
        }
    }

    pub(super) fn print(&self, elapsed: Duration) {
        let total: usize = self.by_code.values().sum();
        eprintln!("fuzz: {total} calls in {:.1} s", elapsed.as_secs_f64());
        eprintln!("fuzz: by code: {}", join_counts(self.by_code.iter()));
        let mut kinds: Vec<&str> = self.by_kind.keys().map(|(kind, _)| kind.as_str()).collect();
        kinds.dedup();
        for kind in kinds {
            let counts = self
                .by_kind
                .iter()
                .filter(|((k, _), _)| k == kind)
                .map(|((_, code), n)| (code, n));
            eprintln!("fuzz:   {kind}: {}", join_counts(counts));
        }
        for (code, sample) in &self.samples {
            eprintln!("fuzz: e.g. {code}: {sample}");
        }
        for line in &self.framing {
            eprintln!("fuzz: framing {line}");
        }
    }

    /// The calls that must not happen, grouped by code and message, then by method.
    pub(super) fn offences(&self, seed: u64, cases: usize) -> Vec<String> {
        if self.offences.is_empty() {
            return Vec::new();
        }
        let calls: usize = self
            .offences
            .values()
            .flat_map(|o| o.methods.values())
            .flat_map(|m| m.kinds.values())
            .sum();
        let mut lines = vec![format!(
            "{calls} call(s) got INTERNAL, UNKNOWN, no answer (transport failure, timeout), or \
             another code than RESOURCE_EXHAUSTED for an oversized message (replay: LOYALTY_FUZZ_SEED={seed} \
             LOYALTY_FUZZ_CASES={cases}):"
        )];
        for ((code, class), offence) in &self.offences {
            let calls: usize = offence.methods.values().flat_map(|m| m.kinds.values()).sum();
            lines.push(format!(
                "{code} {class:?}: {calls} call(s) on {} method(s), e.g.",
                offence.methods.len()
            ));
            for example in &offence.examples {
                lines.push(format!("      {example:?}"));
            }
            for (method, offending) in &offence.methods {
                let kinds = join_counts(offending.kinds.iter());
                let first = match &offending.first {
                    Some((number, notes)) if notes.is_empty() => format!(" (first #{number})"),
                    Some((number, notes)) => format!(" (first #{number}: {})", notes.join("; ")),
                    None => String::new(),
                };
                lines.push(format!("  {method}: {kinds}{first}"));
            }
        }
        lines
    }
}

/// `Points/GetBalance` for `/loyalty.v1.Points/GetBalance`.
fn short(path: &str) -> &str {
    path.trim_start_matches("/loyalty.v1.")
}

/// The gRPC name of an answer's code (`INVALID_ARGUMENT`), `TRANSPORT` or `TIMEOUT`.
fn code_name(answer: &Answer) -> String {
    let code = match answer {
        Answer::Status(code, _) => code,
        Answer::Transport(_) => return "TRANSPORT".to_owned(),
        Answer::Timeout => return "TIMEOUT".to_owned(),
    };
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn join_counts<'a>(counts: impl Iterator<Item = (&'a String, &'a usize)>) -> String {
    counts
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
