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

/// A header match as Consul writes one (router routes and L7 intentions alike): present, or
/// the first of exact, prefix, suffix, regex that is set.
pub fn header_matcher(name: &str, present: bool, values: [&str; 4], invert: bool) -> HeaderMatcher {
    let [exact, prefix, suffix, regex] = values;
    let string = if !exact.is_empty() {
        string_exact(exact)
    } else if !prefix.is_empty() {
        string_prefix(prefix)
    } else if !suffix.is_empty() {
        string_suffix(suffix)
    } else {
        regex_matcher(regex)
    };
    let specifier = if present {
        header_matcher::HeaderMatchSpecifier::PresentMatch(true)
    } else {
        header_matcher::HeaderMatchSpecifier::StringMatch(string)
    };
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(specifier),
        invert_match: invert,
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
