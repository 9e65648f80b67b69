//! Cross-site scripting: markup and script that a browser would run if the value were reflected
//! into a page. Comparisons (`a < b && c > d`) are not tags: a tag name follows `<` directly.

use super::rules::{ANYWHERE, Matcher, RuleInfo};
use super::{Category, Level};

const fn rule(id: &'static str, level: Level, description: &'static str, m: Matcher) -> RuleInfo {
    RuleInfo {
        id,
        category: Category::Xss,
        level,
        description,
        locations: ANYWHERE,
        matcher: m,
    }
}

pub(super) const RULES: &[RuleInfo] = &[
    rule(
        "xss-script-tag",
        Level::Low,
        "a <script> or </script> tag (also UTF-7 +ADw-script)",
        Matcher::Pattern(r"</?script\b|\+adw-/?script\b"),
    ),
    rule(
        "xss-event-handler",
        Level::Low,
        "an on…= event handler attribute inside a tag: <svg onload=…>, <img src=x onerror=…>",
        Matcher::Pattern(r#"<[a-z!/?%][^>]*[\s/"'`]on[a-z]{3,}\s*="#),
    ),
    rule(
        "xss-javascript-uri",
        Level::Low,
        "a javascript:/vbscript: URL with code after it (\"JavaScript: The Good Parts\" passes)",
        Matcher::Pattern(
            r"(?:j[\t\n\r]*a[\t\n\r]*v[\t\n\r]*a[\t\n\r]*|v[\t\n\r]*b[\t\n\r]*|l[\t\n\r]*i[\t\n\r]*v[\t\n\r]*e[\t\n\r]*)s[\t\n\r]*c[\t\n\r]*r[\t\n\r]*i[\t\n\r]*p[\t\n\r]*t[\t\n\r]*:(?:[^\s]|\s*[a-z_$][a-z0-9_$.]*\s*[(`=])",
        ),
    ),
    rule(
        "xss-attribute-breakout",
        Level::Medium,
        "a quote closed (or nothing before), then an event handler: \" onmouseover=…, ' autofocus onfocus=…",
        Matcher::Pattern(r#"["'`](?:[^<>]*[\s/"'`])?on[a-z]{3,}\s*=|^\s*on[a-z]{3,}\s*="#),
    ),
    rule(
        "xss-dangerous-tag",
        Level::Medium,
        "tags that load or run content: iframe, object, embed, svg, math, base, meta, link, style, form, …",
        Matcher::Pattern(
            r"<(?:iframe|frame|frameset|object|embed|applet|svg|math|base|meta|link|style|form|isindex|xml|import|template|marquee|bgsound|layer|ilayer|xss|portal|noscript|plaintext|xmp|listing)(?:[\s/>]|$)",
        ),
    ),
    rule(
        "xss-tag-breakout",
        Level::Medium,
        "an attribute or comment closed, then a new tag: \"><svg, '></title><, --><img",
        Matcher::Pattern(r#"(?:["'`]\s*/?|--)>\s*</?[a-z!]"#),
    ),
    rule(
        "xss-js-sink",
        Level::Medium,
        "alert/confirm/prompt called with a literal or a DOM object, eval of decoded strings, document.write(",
        Matcher::Pattern(
            r"\b(?:alert|confirm|prompt)\)?\s*(?:\(\s*(?:[0-9'`/)]|document\b|window\b|this\b|self\b|top\b|string\b|location\b)|\x22|`)|\beval\s*\(\s*(?:atob|unescape|string\.fromcharcode|decodeuri(?:component)?|location|name|window|document)\b|\bstring\.fromcharcode\s*\(\s*[0-9]|\bdocument\.write(?:ln)?\s*\(|\.innerhtml\s*=",
        ),
    ),
    rule(
        "xss-data-uri",
        Level::Medium,
        "a data: URL of HTML or script, or any data: URL as a src/href/action",
        Matcher::Pattern(
            r#"\bdata:\s*(?:text/html|text/javascript|application/(?:x-)?javascript|text/xml|application/xhtml)|(?:src|href|data|action|formaction)\s*=\s*["'`]?\s*data:"#,
        ),
    ),
    rule(
        "xss-css-expression",
        Level::Medium,
        "CSS that runs script: expression(…), -moz-binding, behavior:url",
        Matcher::Pattern(r"[:{;]\s*expression\s*\(|-moz-binding\s*:|\bbehavior\s*:\s*url"),
    ),
    rule(
        "xss-html-tag",
        Level::High,
        "any HTML tag",
        Matcher::Pattern(r"<[a-z][a-z0-9-]*(?:[\s/][^>]*)?>|</[a-z][a-z0-9-]*\s*>"),
    ),
    rule(
        "xss-dom-access",
        Level::High,
        "DOM properties scripts steal or redirect with, and bare eval(",
        Matcher::Pattern(
            r"\bdocument\.(?:cookie|domain|location)\b|\bwindow\.location\b|\blocation\.href\s*=|\beval\s*\(|\bfromcharcode\b",
        ),
    ),
    rule(
        "xss-template-injection",
        Level::High,
        "client-side template expressions reaching constructors or events: {{constructor.constructor(…)}}",
        Matcher::Pattern(r"\{\{[^}]*(?:constructor|\$eval|\$on|alert|\[)"),
    ),
];
