//! JSON-Schema-Test-Suite conformance of the request-body validator ([`CompiledSchema`]), draft-07
//! and draft 2020-12, through the same `compile`/`validate`/`is_valid` calls the filter makes.
//!
//! `cargo test -p portcullis-filter --test json_schema_suite -- --nocapture` prints the figures.
//! A case passes when both `is_valid` and `validate` give the suite's verdict. The pass count of
//! each draft must not fall below its floor, and every failing case must be one listed below as a
//! deliberate difference: a new failure fails the test even if the count stays above the floor.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use portcullis::schema::CompiledSchema;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The suite lives outside the repository: where `PORTCULLIS_CONFORMANCE_DIR` points, else in
/// `shared/conformance/` beside the checkout (the nearest ancestor of this crate that has one),
/// else in the workplace's `/work/shared/conformance`.
fn suite_dir() -> PathBuf {
    const SUB: &str = "json-schema-test-suite";
    if let Ok(dir) = std::env::var("PORTCULLIS_CONFORMANCE_DIR") {
        return Path::new(&dir).join(SUB);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/conformance").join(SUB))
        .chain([Path::new("/work/shared/conformance").join(SUB)])
        .find(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "no shared/conformance/{SUB} above {}: put the conformance suites beside the \
                 repository or set PORTCULLIS_CONFORMANCE_DIR",
                env!("CARGO_MANIFEST_DIR")
            )
        })
}

/// One draft of the suite and what it must achieve.
struct Draft {
    /// Folder of the suite.
    dir: &'static str,
    /// Put into each root schema that has no `$schema` (the suite's draft-07 schemas carry none,
    /// and `CompiledSchema` reads a schema without one as 2020-12).
    schema_uri: &'static str,
    /// Groups not run, with why: `(file, group index, group description, reason)`.
    skipped: &'static [(&'static str, usize, &'static str, &'static str)],
    /// Cases that fail on purpose: `(file, group index, case index, reason)`.
    deviations: &'static [(&'static str, usize, usize, &'static str)],
    /// Cases run (all cases of the draft less those of skipped groups).
    cases: usize,
    /// Cases that must pass, at least: the figure measured when the validator was chosen.
    floor: usize,
}

/// Remote references: the suite's `remotes/` documents served at `http://localhost:1234` are not
/// part of the conformance copy, and the filter never fetches anything. These groups need them.
const REMOTE: &str = "needs a document from the suite's remotes/ (http://localhost:1234), which \
                      the filter never fetches: refused at compile time by design";

/// 2020-12 makes `format` an annotation; the filter asserts it (an API gateway user who writes
/// `"format": "email"` expects it checked). The suite's case 6 of each format group checks the
/// annotation-only default with an invalid string.
const FORMAT_ASSERTED: &str = "format is asserted by the filter; the suite expects an \
                               annotation-only default";

/// `idn-email` and `idn-hostname` need the crate's `idna` feature (Unicode IDNA tables), left out
/// to keep the module small; unknown formats are a compile error, so these schemas are refused.
const NO_IDNA: &str = "idn-email/idn-hostname need jsonschema's `idna` feature, left out: the \
                       schema is refused at compile time as using an unknown format";

const DRAFT7: Draft = Draft {
    dir: "draft7",
    schema_uri: "http://json-schema.org/draft-07/schema#",
    skipped: &[],
    deviations: &[
        ("format.json", 1, 0, NO_IDNA),
        ("format.json", 1, 1, NO_IDNA),
        ("format.json", 1, 2, NO_IDNA),
        ("format.json", 1, 3, NO_IDNA),
        ("format.json", 1, 4, NO_IDNA),
        ("format.json", 1, 5, NO_IDNA),
        ("format.json", 5, 0, NO_IDNA),
        ("format.json", 5, 1, NO_IDNA),
        ("format.json", 5, 2, NO_IDNA),
        ("format.json", 5, 3, NO_IDNA),
        ("format.json", 5, 4, NO_IDNA),
        ("format.json", 5, 5, NO_IDNA),
    ],
    cases: 904,
    floor: 892,
};

const DRAFT2020_12: Draft = Draft {
    dir: "draft2020-12",
    schema_uri: "https://json-schema.org/draft/2020-12/schema",
    skipped: &[
        (
            "dynamicRef.json",
            13,
            "strict-tree schema, guards against misspelled properties",
            REMOTE,
        ),
        (
            "dynamicRef.json",
            14,
            "tests for implementation dynamic anchor and reference link",
            REMOTE,
        ),
        (
            "dynamicRef.json",
            15,
            "$ref and $dynamicAnchor are independent of order - $defs first",
            REMOTE,
        ),
        (
            "dynamicRef.json",
            16,
            "$ref and $dynamicAnchor are independent of order - $ref first",
            REMOTE,
        ),
        (
            "dynamicRef.json",
            17,
            "$ref to $dynamicRef finds detached $dynamicAnchor",
            REMOTE,
        ),
        (
            "vocabulary.json",
            0,
            "schema that uses custom metaschema with with no validation vocabulary",
            REMOTE,
        ),
        (
            "vocabulary.json",
            1,
            "ignore unrecognized optional vocabulary",
            REMOTE,
        ),
    ],
    deviations: &[
        ("format.json", 0, 6, FORMAT_ASSERTED),
        ("format.json", 1, 0, NO_IDNA),
        ("format.json", 1, 1, NO_IDNA),
        ("format.json", 1, 2, NO_IDNA),
        ("format.json", 1, 3, NO_IDNA),
        ("format.json", 1, 4, NO_IDNA),
        ("format.json", 1, 5, NO_IDNA),
        ("format.json", 1, 6, NO_IDNA),
        ("format.json", 2, 6, FORMAT_ASSERTED),
        ("format.json", 3, 6, FORMAT_ASSERTED),
        ("format.json", 4, 6, FORMAT_ASSERTED),
        ("format.json", 5, 0, NO_IDNA),
        ("format.json", 5, 1, NO_IDNA),
        ("format.json", 5, 2, NO_IDNA),
        ("format.json", 5, 3, NO_IDNA),
        ("format.json", 5, 4, NO_IDNA),
        ("format.json", 5, 5, NO_IDNA),
        ("format.json", 5, 6, NO_IDNA),
        ("format.json", 6, 6, FORMAT_ASSERTED),
        ("format.json", 7, 6, FORMAT_ASSERTED),
        ("format.json", 8, 6, FORMAT_ASSERTED),
        ("format.json", 9, 6, FORMAT_ASSERTED),
        ("format.json", 10, 6, FORMAT_ASSERTED),
        ("format.json", 11, 6, FORMAT_ASSERTED),
        ("format.json", 12, 6, FORMAT_ASSERTED),
        ("format.json", 13, 6, FORMAT_ASSERTED),
        ("format.json", 14, 6, FORMAT_ASSERTED),
        ("format.json", 15, 6, FORMAT_ASSERTED),
        ("format.json", 16, 6, FORMAT_ASSERTED),
        ("format.json", 17, 6, FORMAT_ASSERTED),
        ("format.json", 18, 6, FORMAT_ASSERTED),
    ],
    cases: 1250,
    floor: 1219,
};

/// What one draft gave.
#[derive(Default)]
struct Outcome {
    cases: usize,
    passed: usize,
    skipped_cases: usize,
    /// `(file, group, case, what happened)` of every failing case.
    failed: Vec<(String, usize, usize, String)>,
}

fn run(draft: &Draft) -> Outcome {
    let dir = suite_dir().join(draft.dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no test files in {}", dir.display());
    let mut out = Outcome::default();
    let mut skipped_seen = BTreeSet::new();
    for path in files {
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let groups: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for (g, group) in groups.as_array().unwrap().iter().enumerate() {
            let tests = group["tests"].as_array().unwrap();
            if let Some(skip) = draft
                .skipped
                .iter()
                .find(|(f, i, _, _)| *f == file && *i == g)
            {
                assert_eq!(
                    group["description"], skip.2,
                    "{file} group {g} is not the group the skip list names: update the list"
                );
                skipped_seen.insert((skip.0, skip.1));
                out.skipped_cases += tests.len();
                continue;
            }
            let mut schema = group["schema"].clone();
            if let Some(root) = schema.as_object_mut() {
                root.entry("$schema")
                    .or_insert_with(|| Value::from(draft.schema_uri));
            }
            let compiled = CompiledSchema::compile(&schema);
            for (c, case) in tests.iter().enumerate() {
                out.cases += 1;
                let expected = case["valid"].as_bool().unwrap();
                let verdict = match &compiled {
                    Err(e) => Err(format!("compile error: {e}")),
                    Ok(v) => {
                        let quick = v.is_valid(&case["data"]);
                        let listed = v.validate(&case["data"], 10);
                        if quick != listed.is_empty() {
                            Err(format!(
                                "is_valid says {quick} but validate lists {listed:?}"
                            ))
                        } else {
                            Ok(quick)
                        }
                    }
                };
                match verdict {
                    Ok(v) if v == expected => out.passed += 1,
                    Ok(v) => out.failed.push((
                        file.clone(),
                        g,
                        c,
                        format!(
                            "{} / {}: expected valid={expected}, got {v}",
                            group["description"], case["description"]
                        ),
                    )),
                    Err(e) => out.failed.push((file.clone(), g, c, e)),
                }
            }
        }
    }
    for (f, i, _, _) in draft.skipped {
        assert!(
            skipped_seen.contains(&(*f, *i)),
            "{}: skipped group {f}#{i} no longer exists: update the list",
            draft.dir
        );
    }
    out
}

fn check(draft: &Draft) {
    let out = run(draft);
    println!(
        "{:<13} passed {:>4} of {:>4} cases ({:.1}%), {} cases in {} skipped groups, {} listed \
         deviations",
        draft.dir,
        out.passed,
        out.cases,
        100.0 * out.passed as f64 / out.cases as f64,
        out.skipped_cases,
        draft.skipped.len(),
        draft.deviations.len()
    );
    for (f, g, d, why) in draft.skipped {
        println!("    skipped {f}#{g} ({d}): {why}");
    }
    let mut unexpected = String::new();
    for (f, g, c, what) in &out.failed {
        let listed = draft
            .deviations
            .iter()
            .any(|(df, dg, dc, _)| df == f && dg == g && dc == c);
        if !listed {
            writeln!(unexpected, "  {f}#{g}.{c}: {what}").unwrap();
        }
    }
    assert!(
        unexpected.is_empty(),
        "{}: cases failing that are not listed as deliberate deviations:\n{unexpected}",
        draft.dir
    );
    assert_eq!(
        out.cases, draft.cases,
        "{}: the suite changed size: re-measure and update the figures",
        draft.dir
    );
    assert!(
        out.passed >= draft.floor,
        "{}: {} cases passed, below the floor of {}",
        draft.dir,
        out.passed,
        draft.floor
    );
    // The deviation list names real failures: a listed case that starts passing (a crate
    // upgrade) must be removed from the list and the floor raised, not left loose.
    for (f, g, c, why) in draft.deviations {
        assert!(
            out.failed
                .iter()
                .any(|(ff, fg, fc, _)| ff == f && fg == g && fc == c),
            "{}: {f}#{g}.{c} is listed as a deviation ({why}) but passes: remove it and raise \
             the floor",
            draft.dir
        );
    }
    assert_eq!(
        draft.floor + draft.deviations.len(),
        draft.cases,
        "{}: the floor is every case run less the listed deviations",
        draft.dir
    );
}

#[test]
fn draft7() {
    check(&DRAFT7);
}

#[test]
fn draft2020_12() {
    check(&DRAFT2020_12);
}
