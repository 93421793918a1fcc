//! Runs selected cases against a target and builds the report.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::case::{selected, CaseInfo, Outcome, Role, Stop};
use crate::cases::{Case, Run};
use crate::client_cx::ClientCx;
use crate::coverage::Coverage;
use crate::cx::Cx;
use crate::expectations::Expectations;
use crate::requirements::Requirement;
use crate::target::Target;
use crate::transcript::Line;

/// Version of the JSON report schema (`docs`: conformance/REPORT.md).
pub const REPORT_SCHEMA: &str = "tern-conformance-report/1";

/// What the run is aimed at.
#[derive(Clone)]
pub enum Subject {
    /// A broker (server mode).
    Broker(Arc<Target>),
    /// A client, through its shim command.
    Client(Vec<String>),
}

/// Run settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--test` globs (empty: all).
    pub tests: Vec<String>,
    /// `--skip` globs.
    pub skips: Vec<String>,
    /// Multiplies every case's time budget and wait.
    pub timeout_scale: f64,
    /// Seed of randomised cases.
    pub seed: u64,
    /// Run each selected case this many times.
    pub repeat: u32,
    /// Known deviations.
    pub expectations: Expectations,
    /// Print one line per case to stderr.
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            tests: Vec::new(),
            skips: Vec::new(),
            timeout_scale: 1.0,
            seed: 1,
            repeat: 1,
            expectations: Expectations::default(),
            progress: false,
        }
    }
}

/// A requirement as quoted in a report.
#[derive(Debug, Clone, Serialize)]
pub struct ReqRef {
    /// `REQ-…`.
    pub id: String,
    /// MUST, SHOULD, ...
    pub level: String,
    /// The normative text.
    pub text: String,
}

/// The result of one run of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// Case id.
    pub id: String,
    /// broker or client.
    pub role: Role,
    /// What it does.
    pub summary: String,
    /// Requirements covered.
    pub requirements: Vec<ReqRef>,
    /// The outcome.
    pub outcome: Outcome,
    /// The requirement violated, when the outcome comes from a violation.
    pub violated: Option<String>,
    /// What was seen (empty on PASS).
    pub detail: String,
    /// The expectations-file reason, when this outcome is a known deviation.
    pub expected_deviation: Option<String>,
    /// 1-based repetition.
    pub repetition: u32,
    /// Wall time of the case.
    pub duration_ms: u64,
    /// Frames sent and received (every non-PASS case).
    pub transcript: Option<Vec<Line>>,
}

/// Outcome counts.
pub type Summary = BTreeMap<&'static str, usize>;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`REPORT_SCHEMA`].
    pub schema: &'static str,
    /// This runner's version.
    pub runner_version: &'static str,
    /// Protocol versions the suite tests.
    pub protocol_versions: Vec<u32>,
    /// `server` or `client`.
    pub mode: &'static str,
    /// The address or shim command.
    pub subject: String,
    /// Seed of randomised cases: rerun with `--seed` to reproduce.
    pub seed: u64,
    /// `--timeout-scale`.
    pub timeout_scale: f64,
    /// `--repeat`.
    pub repeat: u32,
    /// Unix time the run started, in milliseconds.
    pub started_at_ms: u64,
    /// Every case run.
    pub cases: Vec<CaseReport>,
    /// Counts per outcome.
    pub summary: Summary,
    /// Requirement coverage of the whole suite (all cases, both roles).
    pub coverage: Coverage,
    /// Expectation entries whose cases all passed: remove them.
    pub stale_expectations: Vec<String>,
    /// Expectation entries that matched no case of this run.
    pub unmatched_expectations: Vec<String>,
    /// CONFORMANT, NON_CONFORMANT or HARNESS_ERROR.
    pub verdict: &'static str,
    /// The process exit code: 0 conformant, 1 not, 2 harness error.
    pub exit_code: i32,
}

/// Runs every selected case of `cases` that fits the subject's role.
pub async fn run(cases: &[Case], index: &[Requirement], subject: &Subject, opts: &RunOptions) -> Report {
    let role = match subject {
        Subject::Broker(_) => Role::Broker,
        Subject::Client(_) => Role::Client,
    };
    let chosen: Vec<&Case> =
        cases.iter().filter(|c| c.info.role() == role && selected(c.info.id, &opts.tests, &opts.skips)).collect();
    let started_at_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    // Names must not collide with earlier runs against the same broker.
    let run_tag = format!("{:x}", started_at_ms % 0xffff_ffff);
    let total = chosen.len() * opts.repeat.max(1) as usize;
    let mut reports = Vec::new();
    for repetition in 1..=opts.repeat.max(1) {
        for (i, case) in chosen.iter().enumerate() {
            let tag = format!("{run_tag}{i:x}r{repetition}");
            let started = Instant::now();
            let (outcome, violated, detail, transcript) = run_one(case, subject, opts, tag).await;
            let mut report = CaseReport {
                id: case.info.id.to_string(),
                role,
                summary: case.info.summary.to_string(),
                requirements: quote(&case.info, index),
                outcome,
                violated,
                detail,
                expected_deviation: None,
                repetition,
                duration_ms: started.elapsed().as_millis() as u64,
                transcript: (outcome != Outcome::Pass).then_some(transcript),
            };
            if outcome.is_failure() {
                report.expected_deviation = opts.expectations.find(case.info.id).map(|d| d.reason.clone());
            }
            if opts.progress {
                let done = reports.len() + 1;
                let note = if report.expected_deviation.is_some() { " (expected)" } else { "" };
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "[{done:>3}/{total}] {:<13} {}{note}", outcome.name(), case.info.id);
                if outcome != Outcome::Pass && !report.detail.is_empty() {
                    let _ = writeln!(err, "            {}", report.detail);
                }
            }
            reports.push(report);
        }
    }
    finish(cases, index, subject, opts, reports, started_at_ms)
}

async fn run_one(
    case: &Case,
    subject: &Subject,
    opts: &RunOptions,
    tag: String,
) -> (Outcome, Option<String>, String, Vec<Line>) {
    let budget = Duration::from_secs_f64(case.info.timeout.as_secs_f64() * opts.timeout_scale);
    let (result, transcript) = match (subject, &case.run) {
        (Subject::Broker(target), Run::Broker(f)) => {
            if let Some(feature) = case.info.feature {
                if !target.declared.claims(feature, target.tls.is_some()) {
                    let why = format!("the implementation does not claim feature `{}`", feature.name());
                    return (Outcome::Unsupported, None, why, Vec::new());
                }
            }
            let cx = Cx::new(target.clone(), opts.seed, tag, opts.timeout_scale);
            let result = tokio::time::timeout(budget, f(&cx)).await;
            (result, cx.transcript.lines())
        }
        (Subject::Client(cmd), Run::Client(f)) => {
            let cx = ClientCx::new(cmd.clone(), case.info.id, opts.seed, opts.timeout_scale);
            let result = tokio::time::timeout(budget, f(&cx)).await;
            (result, cx.transcript.lines())
        }
        _ => return (Outcome::Error, None, "case role does not match the run mode".into(), Vec::new()),
    };
    match result {
        Err(_) => (Outcome::Timeout, None, format!("did not finish within {:.1} s", budget.as_secs_f64()), transcript),
        Ok(Ok(())) => (Outcome::Pass, None, String::new(), transcript),
        Ok(Err(stop)) => {
            let (outcome, violated, detail) = classify(&stop, case);
            (outcome, violated, detail, transcript)
        }
    }
}

/// Maps a stop to an outcome: a violated requirement's level decides between FAIL (MUST),
/// NON_STRICT (SHOULD) and INFORMATIONAL (MAY).
fn classify(stop: &Stop, case: &Case) -> (Outcome, Option<String>, String) {
    match stop {
        Stop::Violation { req, detail } => {
            let level = crate::requirement_index().iter().find(|r| r.id == *req).map(|r| r.level.clone());
            let outcome = match level.as_deref() {
                Some("SHOULD" | "SHOULD NOT") => Outcome::NonStrict,
                Some("MAY") => Outcome::Informational,
                Some(_) => Outcome::Fail,
                None => {
                    return (Outcome::Error, None, format!("case {} cites unknown requirement {req}", case.info.id))
                }
            };
            (outcome, Some(req.to_string()), format!("{req}: {detail}"))
        }
        Stop::Unsupported(why) => (Outcome::Unsupported, None, why.clone()),
        Stop::Skipped(why) => (Outcome::Skipped, None, why.clone()),
        Stop::Harness(why) => (Outcome::Error, None, why.clone()),
    }
}

fn quote(info: &CaseInfo, index: &[Requirement]) -> Vec<ReqRef> {
    info.reqs
        .iter()
        .map(|id| match index.iter().find(|r| r.id == *id) {
            Some(r) => ReqRef { id: r.id.clone(), level: r.level.clone(), text: r.text.clone() },
            None => ReqRef { id: id.to_string(), level: "?".into(), text: "(not in the index)".into() },
        })
        .collect()
}

fn finish(
    cases: &[Case],
    index: &[Requirement],
    subject: &Subject,
    opts: &RunOptions,
    reports: Vec<CaseReport>,
    started_at_ms: u64,
) -> Report {
    let mut summary = Summary::new();
    for r in &reports {
        *summary.entry(r.outcome.name()).or_default() += 1;
    }
    let mut stale = Vec::new();
    let mut unmatched = Vec::new();
    for d in &opts.expectations.deviation {
        let matching: Vec<&CaseReport> = reports.iter().filter(|r| crate::case::glob_match(&d.case, &r.id)).collect();
        if matching.is_empty() {
            unmatched.push(d.case.clone());
        } else if matching.iter().all(|r| !r.outcome.is_failure()) {
            stale.push(d.case.clone());
        }
    }
    let unexpected_failure = reports.iter().any(|r| r.outcome.is_failure() && r.expected_deviation.is_none());
    let harness_error = reports.iter().any(|r| r.outcome == Outcome::Error);
    let (verdict, exit_code) = if harness_error {
        ("HARNESS_ERROR", 2)
    } else if unexpected_failure {
        ("NON_CONFORMANT", 1)
    } else {
        ("CONFORMANT", 0)
    };
    let (mode, subject) = match subject {
        Subject::Broker(t) => ("server", format!("{}{}", t.addr, if t.tls.is_some() { " (TLS)" } else { "" })),
        Subject::Client(cmd) => ("client", cmd.join(" ")),
    };
    Report {
        schema: REPORT_SCHEMA,
        runner_version: env!("CARGO_PKG_VERSION"),
        protocol_versions: vec![1],
        mode,
        subject,
        seed: opts.seed,
        timeout_scale: opts.timeout_scale,
        repeat: opts.repeat.max(1),
        started_at_ms,
        cases: reports,
        summary,
        coverage: Coverage::compute(index, cases.iter().flat_map(|c| c.info.reqs.iter().copied())),
        stale_expectations: stale,
        unmatched_expectations: unmatched,
        verdict,
        exit_code,
    }
}
