//! Report writers: versioned JSON, JUnit XML, a Markdown summary, and one transcript file per
//! non-passing case.

use std::fmt::Write as _;
use std::path::Path;

use crate::case::Outcome;
use crate::runner::{CaseReport, Report};

/// Writes `report.json`, `junit.xml`, `summary.md` and `transcripts/*.txt` into `dir`.
pub fn write_all(report: &Report, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("transcripts"))?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(report).map_err(std::io::Error::other)?)?;
    std::fs::write(dir.join("junit.xml"), junit(report))?;
    std::fs::write(dir.join("summary.md"), markdown(report))?;
    for case in report.cases.iter().filter(|c| c.transcript.is_some()) {
        let name = format!("{}.r{}.txt", case.id.replace(['/', '@'], "_"), case.repetition);
        std::fs::write(dir.join("transcripts").join(name), transcript_text(case))?;
    }
    Ok(())
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters at all.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: one testcase per case run; FAIL and TIMEOUT are failures (unless expected),
/// ERROR is an error, UNSUPPORTED and SKIPPED are skipped; NON_STRICT and INFORMATIONAL pass
/// with their detail in system-out.
pub fn junit(report: &Report) -> String {
    let count = |o: Outcome| report.cases.iter().filter(|c| c.outcome == o && c.expected_deviation.is_none()).count();
    let failures = count(Outcome::Fail) + count(Outcome::Timeout);
    let skipped = count(Outcome::Unsupported) + count(Outcome::Skipped);
    let time: f64 = report.cases.iter().map(|c| c.duration_ms as f64 / 1000.0).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites><testsuite name=\"tern-conformance {} {}\" tests=\"{}\" failures=\"{failures}\" errors=\"{}\" skipped=\"{skipped}\" time=\"{time:.3}\">",
        report.mode,
        xml_escape(&report.subject),
        report.cases.len(),
        count(Outcome::Error)
    );
    let _ = writeln!(x, "<properties><property name=\"seed\" value=\"{}\"/></properties>", report.seed);
    for c in &report.cases {
        let name = if report.repeat > 1 { format!("{} #{}", c.id, c.repetition) } else { c.id.clone() };
        let reqs: Vec<&str> = c.requirements.iter().map(|r| r.id.as_str()).collect();
        let _ = write!(
            x,
            "<testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            xml_escape(c.id.split('.').next().unwrap_or("")),
            xml_escape(&name),
            c.duration_ms as f64 / 1000.0
        );
        let msg = xml_escape(&c.detail);
        match (c.outcome, &c.expected_deviation) {
            (Outcome::Fail | Outcome::Timeout, None) => {
                let _ = write!(
                    x,
                    "<failure type=\"{}\" message=\"{msg}\">{}</failure>",
                    c.outcome.name(),
                    xml_escape(&transcript_text(c))
                );
            }
            (Outcome::Error, _) => {
                let _ = write!(x, "<error message=\"{msg}\">{}</error>", xml_escape(&transcript_text(c)));
            }
            (Outcome::Unsupported | Outcome::Skipped, _) => {
                let _ = write!(x, "<skipped message=\"{}: {msg}\"/>", c.outcome.name());
            }
            (outcome, deviation) => {
                let _ = write!(
                    x,
                    "<system-out>{} [{}] {msg}{}</system-out>",
                    outcome.name(),
                    reqs.join(" "),
                    deviation.as_ref().map(|d| xml_escape(&format!(" (expected deviation: {d})"))).unwrap_or_default()
                );
            }
        }
        x.push_str("</testcase>\n");
    }
    x.push_str("</testsuite></testsuites>\n");
    x
}

/// A readable summary.
pub fn markdown(report: &Report) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Tern conformance: {}\n", report.verdict);
    let _ = writeln!(m, "- mode: {} — {}", report.mode, report.subject);
    let _ = writeln!(
        m,
        "- seed: {} (rerun with `--seed {}`), timeout scale {}, repeat {}",
        report.seed, report.seed, report.timeout_scale, report.repeat
    );
    let counts: Vec<String> = report.summary.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(m, "- outcomes: {}", counts.join(", "));
    let cov = &report.coverage;
    let _ = writeln!(
        m,
        "- coverage: {}/{} wire-testable requirements ({:.1}%), {} pending, {} uncovered\n",
        cov.wire_covered,
        cov.wire_total,
        cov.percent(),
        cov.pending.len(),
        cov.uncovered.len()
    );
    if !report.stale_expectations.is_empty() {
        let _ = writeln!(
            m,
            "Stale expectations (these cases pass now; remove the entries): {}\n",
            report.stale_expectations.join(", ")
        );
    }
    if !report.unmatched_expectations.is_empty() {
        let _ = writeln!(m, "Expectations matching no case: {}\n", report.unmatched_expectations.join(", "));
    }
    m.push_str("| case | outcome | requirements | detail |\n|---|---|---|---|\n");
    for c in &report.cases {
        let reqs: Vec<&str> = c.requirements.iter().map(|r| r.id.as_str()).collect();
        let outcome = match &c.expected_deviation {
            Some(_) => format!("{} (expected)", c.outcome.name()),
            None => c.outcome.name().to_string(),
        };
        let _ = writeln!(m, "| `{}` | {outcome} | {} | {} |", c.id, reqs.join(" "), c.detail.replace('|', "\\|"));
    }
    m
}

/// A case's transcript as text: time, connection, direction, hex, decoded fields.
pub fn transcript_text(c: &CaseReport) -> String {
    let mut t = format!("{} — {}\n{}\n", c.id, c.outcome.name(), c.detail);
    for r in &c.requirements {
        let _ = writeln!(t, "  {} {}: {}", r.id, r.level, r.text);
    }
    for line in c.transcript.iter().flatten() {
        let _ = writeln!(t, "{:>6} ms {:<10} {:<4} {}", line.t_ms, line.conn, line.dir, line.decoded);
        if !line.hex.is_empty() {
            let _ = writeln!(t, "{:>22} {}", "", line.hex);
        }
    }
    t
}
