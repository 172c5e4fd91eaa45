//! Envoy string and header matchers as Consul writes them, shared by the resources a snapshot
//! becomes (router matches, upstream SAN checks) and the RBAC filters intentions become
//! (L7 permissions). Both need the same header-match rules, so they live here rather than in
//! either user, which keeps `rbac` and `resources` from importing each other.

use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};

pub fn string_exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(value.into())),
        ignore_case: false,
    }
}

pub fn string_prefix(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Prefix(value.into())),
        ignore_case: false,
    }
}

pub fn string_suffix(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Suffix(value.into())),
        ignore_case: false,
    }
}

/// A header match as Consul writes one, for router routes and L7 intentions alike.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeaderRule<'a> {
    pub name: &'a str,
    pub present: bool,
    pub exact: &'a str,
    pub prefix: &'a str,
    pub suffix: &'a str,
    pub contains: &'a str,
    pub regex: &'a str,
    pub invert: bool,
    /// Applies to exact, prefix, suffix and contains (a regex carries its own flags).
    pub ignore_case: bool,
}

/// Envoy's matcher for `rule`: present, or the first of exact, prefix, suffix, contains,
/// regex that is set, as Consul picks it.
pub fn header_matcher(rule: HeaderRule<'_>) -> HeaderMatcher {
    let pattern = |pattern| StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: rule.ignore_case,
    };
    let string = if !rule.exact.is_empty() {
        pattern(string_matcher::MatchPattern::Exact(rule.exact.into()))
    } else if !rule.prefix.is_empty() {
        pattern(string_matcher::MatchPattern::Prefix(rule.prefix.into()))
    } else if !rule.suffix.is_empty() {
        pattern(string_matcher::MatchPattern::Suffix(rule.suffix.into()))
    } else if !rule.contains.is_empty() {
        pattern(string_matcher::MatchPattern::Contains(rule.contains.into()))
    } else {
        regex_matcher(rule.regex)
    };
    let specifier = if rule.present {
        header_matcher::HeaderMatchSpecifier::PresentMatch(true)
    } else {
        header_matcher::HeaderMatchSpecifier::StringMatch(string)
    };
    HeaderMatcher {
        name: rule.name.into(),
        header_match_specifier: Some(specifier),
        invert_match: rule.invert,
        ..Default::default()
    }
}

pub fn regex_matcher(regex: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: regex.into(),
            ..Default::default()
        })),
        ignore_case: false,
    }
}
