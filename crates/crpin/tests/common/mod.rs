//! Runs a check against a model and parses its output back with the
//! runner's parser, so assertions are about what the runner will see.

#![allow(dead_code)]

use ukci_protocol::Reporter;
use ukci_protocol::line::{self, Line, Status};

#[derive(Debug, Clone)]
pub struct Res {
    pub status: Status,
    pub name: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug)]
pub struct Outcome {
    pub results: Vec<Res>,
    pub infos: Vec<String>,
    pub text: String,
}

pub fn run<C>(check: impl FnOnce(&mut C, &mut Reporter<String>), cpu: &mut C) -> Outcome {
    let mut r = Reporter::new(String::new());
    check(cpu, &mut r);
    let text = r.out().clone();
    let mut results: Vec<Res> = Vec::new();
    let mut infos = Vec::new();
    for l in text.lines() {
        match line::parse(l) {
            Some(Line::Result {
                status,
                name,
                reason,
            }) => results.push(Res {
                status,
                name: name.to_string(),
                reason: reason.map(str::to_string),
                detail: None,
            }),
            Some(Line::Detail(d)) => {
                let last = results.last_mut().expect("a detail line follows a result");
                assert!(last.detail.is_none(), "two details for {}", last.name);
                last.detail = Some(d.to_string());
            }
            Some(Line::Info(i)) => infos.push(i.to_string()),
            Some(other) => panic!("a check must not print {other:?}"),
            None => panic!("not protocol: {l:?}"),
        }
    }
    Outcome {
        results,
        infos,
        text,
    }
}

impl Outcome {
    pub fn get(&self, name: &str) -> &Res {
        let found: Vec<_> = self.results.iter().filter(|r| r.name == name).collect();
        match found.as_slice() {
            [one] => one,
            [] => panic!("no result {name:?} in\n{}", self.text),
            _ => panic!("{name:?} reported twice in\n{}", self.text),
        }
    }

    pub fn status(&self, name: &str) -> Status {
        self.get(name).status
    }

    pub fn names(&self) -> Vec<&str> {
        self.results.iter().map(|r| r.name.as_str()).collect()
    }

    pub fn with(&self, status: Status) -> Vec<&str> {
        self.results
            .iter()
            .filter(|r| r.status == status)
            .map(|r| r.name.as_str())
            .collect()
    }

    pub fn failures(&self) -> Vec<&str> {
        self.with(Status::Fail)
    }

    /// Every result passed, none skipped.
    pub fn assert_all_pass(&self) {
        assert!(!self.results.is_empty(), "no results");
        let bad: Vec<_> = self
            .results
            .iter()
            .filter(|r| r.status != Status::Pass)
            .collect();
        assert!(
            bad.is_empty(),
            "expected all PASS, got {bad:#?}\n{}",
            self.text
        );
    }

    /// A single SKIP of the whole check, and its reason.
    pub fn assert_skipped(&self, check: &str) -> &str {
        match self.results.as_slice() {
            [r] if r.status == Status::Skip && r.name == check => {
                r.reason.as_deref().expect("a skip carries a reason")
            }
            _ => panic!("expected one SKIP of {check}, got\n{}", self.text),
        }
    }

    /// Names are unique within one run (JUnit test cases, expectations).
    pub fn assert_unique_names(&self) {
        let mut names = self.names();
        names.sort();
        for w in names.windows(2) {
            assert_ne!(w[0], w[1], "duplicate result name in\n{}", self.text);
        }
    }
}
