//! HTTP/2 conformance of the TCP+TLS listener, by a third-party suite: h2spec (built into
//! the cache by `tests/h2spec.mk`, path in `QUIC_INGRESS_H2SPEC`) runs every case against
//! `quic-ingress serve` in front of a demo backend; its JUnit report is read case by case.
//! Every case passes except the known failures listed here (and in the README's
//! "Conformance: h2spec"), so a new failure, or a known one that starts passing, fails
//! this test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap in a test is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, Proxy, catch_all, log_path};

/// Cases that fail for a reason the README explains: `(id, title)`.
const KNOWN_FAILURES: &[(&str, &str)] = &[];

/// Upper bound for the whole run (145 cases, each with h2spec's own timeout).
const RUN_DEADLINE: Duration = Duration::from_secs(240);

#[derive(Debug, PartialEq)]
enum Outcome {
    Passed,
    Failed(String),
    Skipped,
}

#[derive(Debug)]
struct Case {
    /// h2spec's own id: `package/index`, e.g. `http2/3.5/2` (what `h2spec http2/3.5/2` runs).
    id: String,
    title: String,
    outcome: Outcome,
}

/// The value of `name="..."` in a tag's attribute text, unescaped.
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

fn unescape(s: &str) -> String {
    s.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The cases of an h2spec JUnit report. Each `<testsuite>` is one section (`package`);
/// its `<testcase>`s are numbered from 1 in order, as h2spec numbers them.
fn parse_junit(xml: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    for suite in xml.split("<testsuite ").skip(1) {
        let suite = suite.split("</testsuite>").next().unwrap_or("");
        for (index, case) in suite.split("<testcase ").skip(1).enumerate() {
            let (tag, rest) = case.split_once('>').unwrap_or((case, ""));
            let body = if tag.ends_with('/') { "" } else { rest.split("</testcase>").next().unwrap_or("") };
            let package = attr(tag, "package").unwrap_or_default();
            let outcome = if body.contains("<skipped") {
                Outcome::Skipped
            } else if body.contains("<error") || body.contains("<failure") {
                Outcome::Failed(unescape(body.trim()))
            } else {
                Outcome::Passed
            };
            cases.push(Case {
                id: format!("{package}/{}", index + 1),
                title: attr(tag, "classname").unwrap_or_default(),
                outcome,
            });
        }
    }
    cases
}

fn h2spec_bin() -> PathBuf {
    let path = std::env::var_os("QUIC_INGRESS_H2SPEC").map(PathBuf::from).unwrap_or_else(|| {
        panic!("QUIC_INGRESS_H2SPEC is not set: run `make test` (or `make test-h2spec`), which builds h2spec")
    });
    assert!(path.is_file(), "{} is missing: run `make test-h2spec` to build it", path.display());
    path
}

#[test]
fn parses_h2spec_junit_reports() {
    let xml = r#"<testsuites>
  <testsuite name="3.5. HTTP/2 Connection Preface" package="http2/3.5" id="3.5" tests="2">
    <testcase package="http2/3.5" classname="Sends client connection preface" time="0.0001"></testcase>
    <testcase package="http2/3.5" classname="Sends &#34;invalid&#34; preface" time="0.0035">
      <error>Connection closed</error>
    </testcase>
  </testsuite>
  <testsuite name="4.1" package="http2/4.1" id="4.1" tests="1">
    <testcase package="http2/4.1" classname="Skipped one" time="0"><skipped/></testcase>
  </testsuite>
</testsuites>"#;
    let cases = parse_junit(xml);
    let seen: Vec<_> = cases.iter().map(|c| (c.id.as_str(), c.title.as_str(), &c.outcome)).collect();
    assert_eq!(
        seen,
        vec![
            ("http2/3.5/1", "Sends client connection preface", &Outcome::Passed),
            ("http2/3.5/2", "Sends \"invalid\" preface", &Outcome::Failed("<error>Connection closed</error>".into())),
            ("http2/4.1/1", "Skipped one", &Outcome::Skipped),
        ]
    );
}

#[tokio::test]
async fn tcp_listener_passes_h2spec_but_the_known_failures() {
    let h2spec = h2spec_bin();
    let backend = Backend::start("h2spec").await;
    let proxy = Proxy::start(&catch_all(&backend.url("http"))).await;
    let report = log_path(&format!("h2spec-{}.xml", proxy.addr.port()));
    let output = log_path(&format!("h2spec-{}.out", proxy.addr.port()));
    let _ = std::fs::remove_file(&report);

    // h2spec exits 1 when any case fails; the report, not the exit code, is the verdict.
    let mut child = Command::new(&h2spec)
        .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string(), "-t", "-k", "-o", "5", "-j"])
        .arg(&report)
        .stdout(Stdio::from(std::fs::File::create(&output).expect("h2spec output file")))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn h2spec");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait h2spec") {
            break status;
        }
        if start.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("h2spec still running after {RUN_DEADLINE:?}; its output: {}", output.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let xml = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no JUnit report from h2spec ({status}, output in {}): {e}", output.display()));
    let cases = parse_junit(&xml);
    assert!(cases.len() >= 140, "h2spec ran only {} cases; output in {}", cases.len(), output.display());

    let count = |f: fn(&Outcome) -> bool| cases.iter().filter(|c| f(&c.outcome)).count();
    let (passed, failed, skipped) = (
        count(|o| *o == Outcome::Passed),
        count(|o| matches!(o, Outcome::Failed(_))),
        count(|o| *o == Outcome::Skipped),
    );
    println!("h2spec: {} cases, {passed} passed, {failed} failed, {skipped} skipped", cases.len());

    let failures: Vec<(&str, &str)> = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
        .map(|c| (c.id.as_str(), c.title.as_str()))
        .collect();
    let unexpected: Vec<String> = cases
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Failed(why) if !KNOWN_FAILURES.contains(&(c.id.as_str(), c.title.as_str())) => {
                Some(format!("{} {}: {why}", c.id, c.title))
            }
            _ => None,
        })
        .collect();
    assert!(unexpected.is_empty(), "new h2spec failures:\n{}", unexpected.join("\n"));
    let now_passing: Vec<_> = KNOWN_FAILURES.iter().filter(|known| !failures.contains(known)).collect();
    assert!(
        now_passing.is_empty(),
        "known h2spec failures that no longer fail (remove them here and from the README): {now_passing:?}"
    );
    // The proxy still serves HTTP/2 after every malformed connection h2spec threw at it.
    let after =
        Command::new(common::BIN).args(["get", "-k", "--http2", &proxy.https_url("/after")]).output().expect("get");
    assert!(after.status.success(), "request after h2spec: {}", String::from_utf8_lossy(&after.stderr));
}
