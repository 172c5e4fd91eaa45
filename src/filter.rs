//! Consul's `?filter=` expression language (HashiCorp's go-bexpr), evaluated
//! against the JSON wire shape of one element of a list response.
//!
//! List endpoints such as `/v1/catalog/nodes` or `/v1/health/service/:name`
//! accept `?filter=<expression>` and return only the elements for which the
//! expression holds. [`Filter::parse`] turns the expression into a small AST
//! once per request (compiling any regular expressions up front, so a bad one
//! is reported as a 400-style parse error), and [`Filter::matches`] is then run
//! against each element as a `serde_json::Value`, e.g. a catalog Node
//! `{"Node":"n1","Address":"127.0.0.1","Meta":{"env":"prod"}}` or a
//! ServiceNode with `"ServiceTags":["a","b"]`.
//!
//! Supported syntax:
//!
//! * match operators: `Sel == value`, `Sel != value`, `Sel is empty`,
//!   `Sel is not empty`, `value in Sel`, `value not in Sel`,
//!   `Sel contains value`, `Sel not contains value`, `Sel matches "re"`,
//!   `Sel not matches "re"`;
//! * logic: `not` binds tighter than `and`, which binds tighter than `or`;
//!   parentheses group;
//! * selectors: `A.B.C`, map keys as `Meta.key` or `Meta["key"]` (the bracket
//!   form allows any key, e.g. `Meta["key with.dots"]`), list positions as
//!   `ServiceTags.0`; names match JSON keys exactly (case-sensitive);
//! * values: `"double quoted"` with Go escapes, `` `raw` ``, numbers, and bare
//!   words such as `prod`, `true` or `web-1`, which are taken as text.
//!
//! As in go-bexpr, every value is kept as text and converted to the type of
//! the selected JSON value at evaluation time: `Port == "80"` and `Port == 80`
//! mean the same thing.
//!
//! Where go-bexpr would fail the whole request at evaluation time (for
//! example `==` against a list, or `matches` against a number), this module
//! treats the positive operator as false and its negated form (`!=`,
//! `not contains`, ...) as true, so that every negated operator is exactly the
//! negation of its positive form. A selector that leads nowhere behaves like
//! JSON `null`: nothing equals, contains or matches it, and it is empty, which
//! is go-bexpr's documented behaviour for missing map keys.
//!
//! Not supported: go-bexpr's `any`/`all` collection expressions, `is nil`,
//! JSON-pointer selectors (`"/a/b"`), and selectors used as the left-hand value
//! of `in` (`Meta["x"] in Tags`). Regular expressions use the `regex` crate,
//! whose syntax is close to Go's RE2; with this crate's feature set, Unicode
//! case-insensitive flags and Unicode classes like `\pL` are not available.

use regex::Regex;
use serde_json::{Number, Value};

/// How deep parentheses and `not`s may nest. The parser is recursive, so a
/// hostile expression like `((((...` must not be allowed to exhaust the stack.
const MAX_NESTING: usize = 64;

/// A parsed filter expression, ready to be evaluated against many values.
#[derive(Debug, Clone)]
pub struct Filter {
    expr: Expr,
}

/// A filter expression that could not be parsed. The message says what is
/// wrong and at which column (counting characters from 1).
#[derive(Debug, thiserror::Error)]
#[error("Failed to create boolean expression evaluator: {0}")]
pub struct FilterError(pub String);

impl Filter {
    /// Parses a go-bexpr expression. An empty (or all-whitespace) expression is
    /// an error; callers that treat a missing `?filter=` as "no filtering"
    /// should not call this at all.
    pub fn parse(expression: &str) -> Result<Filter, FilterError> {
        let mut parser = Parser::new(expression);
        parser.skip_ws();
        if parser.at_end() {
            return Err(FilterError("filter expression is empty".to_string()));
        }
        let expr = parser.parse_or()?;
        parser.skip_ws();
        match parser.peek() {
            None => Ok(Filter { expr }),
            Some(b')') => {
                Err(parser.error_here("unbalanced parentheses: \")\" has no matching \"(\""))
            }
            Some(_) => Err(parser.unexpected("\"and\", \"or\" or the end of the expression")),
        }
    }

    /// Reports whether `value` satisfies the expression.
    pub fn matches(&self, value: &Value) -> bool {
        self.expr.eval(value)
    }
}

/// The expression tree. `and`/`or` chains are kept flat (rather than as nested
/// binary nodes) so that evaluating a long chain does not recurse deeply.
#[derive(Debug, Clone)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Match(Match),
}

/// One comparison: a selector path, a test, and whether the test is negated
/// (`!=`, `is not empty`, `not in`, `not contains`, `not matches`).
#[derive(Debug, Clone)]
struct Match {
    selector: Vec<String>,
    test: Test,
    negated: bool,
}

#[derive(Debug, Clone)]
enum Test {
    /// `==`; the literal is converted to the selected value's type.
    Equal(String),
    /// `is empty`.
    Empty,
    /// `in` / `contains`.
    Contains(String),
    /// `matches`, compiled at parse time.
    Matches(Regex),
}

impl Expr {
    fn eval(&self, value: &Value) -> bool {
        match self {
            Expr::Or(terms) => terms.iter().any(|term| term.eval(value)),
            Expr::And(terms) => terms.iter().all(|term| term.eval(value)),
            Expr::Not(inner) => !inner.eval(value),
            Expr::Match(m) => m.eval(value),
        }
    }
}

impl Match {
    fn eval(&self, root: &Value) -> bool {
        // A missing path is treated like JSON null; see the module docs.
        let target = lookup(root, &self.selector).unwrap_or(&Value::Null);
        let positive = match &self.test {
            Test::Equal(literal) => equals(target, literal),
            Test::Empty => is_empty(target),
            Test::Contains(literal) => contains(target, literal),
            Test::Matches(re) => target.as_str().is_some_and(|s| re.is_match(s)),
        };
        positive != self.negated
    }
}

/// Follows a selector path: object members by key, list elements by a
/// decimal position. Anything else (or a missing key) yields `None`.
fn lookup<'v>(root: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut current = root;
    for segment in path {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// `==`: compares the literal with a scalar, converting it to that scalar's
/// type. Null, lists and objects never equal anything (go-bexpr errors there).
fn equals(target: &Value, literal: &str) -> bool {
    match target {
        Value::String(s) => s == literal,
        Value::Bool(b) => parse_go_bool(literal) == Some(*b),
        Value::Number(n) => number_equals(n, literal),
        Value::Null | Value::Array(_) | Value::Object(_) => false,
    }
}

fn number_equals(number: &Number, literal: &str) -> bool {
    // Compare integers exactly so large values (Raft indexes, u64 IDs) don't
    // lose precision by going through f64.
    if let Ok(wanted) = literal.parse::<i128>() {
        if let Some(i) = number.as_i64() {
            return i128::from(i) == wanted;
        }
        if let Some(u) = number.as_u64() {
            return i128::from(u) == wanted;
        }
    }
    match (number.as_f64(), literal.parse::<f64>()) {
        (Some(have), Ok(wanted)) => have == wanted,
        _ => false,
    }
}

/// The spellings Go's `strconv.ParseBool` accepts, which go-bexpr uses.
fn parse_go_bool(literal: &str) -> Option<bool> {
    match literal {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `is empty`: null, "", [] and {} are empty; numbers and booleans are not.
fn is_empty(target: &Value) -> bool {
    match target {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

/// `in` / `contains`: element equality for lists, key presence for objects,
/// substring for strings.
fn contains(target: &Value, literal: &str) -> bool {
    match target {
        Value::Array(items) => items.iter().any(|item| equals(item, literal)),
        Value::Object(map) => map.contains_key(literal),
        Value::String(s) => s.contains(literal),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A hand-written recursive-descent parser working directly on the input
/// text. All of the syntax is ASCII, so it walks bytes; string literals are
/// decoded as `char`s so `pos` always stays on a character boundary.
struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

type ParseResult<T> = Result<T, FilterError>;

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Bytes allowed in an unquoted word value after its leading letter. This is
/// a little wider than go-bexpr (which only allows selector-shaped words) so
/// that common names like `web-1` or `us-east/1` need no quotes; it stops at
/// whitespace, parentheses, brackets, quotes and operators, so it never
/// swallows the rest of the expression.
fn is_bare_word_byte(b: u8) -> bool {
    is_ident_byte(b) || matches!(b, b'.' | b'-' | b'/' | b':')
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser {
            src,
            bytes: src.as_bytes(),
            pos: 0,
            depth: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
    }

    /// Consumes `text` if the input continues with it.
    fn eat(&mut self, text: &str) -> bool {
        let end = self.pos + text.len();
        if self.bytes.get(self.pos..end) == Some(text.as_bytes()) {
            self.pos = end;
            true
        } else {
            false
        }
    }

    /// Consumes the keyword `kw` only if it is a whole word, so that `in` does
    /// not match the start of `inventory`.
    fn eat_keyword(&mut self, kw: &str) -> bool {
        let end = self.pos + kw.len();
        let whole_word = self.bytes.get(self.pos..end) == Some(kw.as_bytes())
            && !self.bytes.get(end).copied().is_some_and(is_ident_byte);
        if whole_word {
            self.pos = end;
        }
        whole_word
    }

    /// The 1-based character column of byte offset `at`.
    fn column(&self, at: usize) -> usize {
        self.src.get(..at).map_or(at, |s| s.chars().count()) + 1
    }

    fn error_at(&self, at: usize, message: &str) -> FilterError {
        FilterError(format!("{message} at column {}", self.column(at)))
    }

    fn error_here(&self, message: &str) -> FilterError {
        self.error_at(self.pos, message)
    }

    /// Describes what is at the current position, for error messages: a short
    /// quoted snippet, or "the end of the expression".
    fn found(&self) -> String {
        let rest = self.src.get(self.pos..).unwrap_or("");
        if rest.is_empty() {
            return "the end of the expression".to_string();
        }
        let snippet: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace())
            .take(20)
            .collect();
        format!("{snippet:?}")
    }

    /// "expected X but found Y at column N" for the current position.
    fn unexpected(&self, expected: &str) -> FilterError {
        self.error_here(&format!("expected {expected} but found {}", self.found()))
    }

    /// Tracks nesting of `(` and `not` to bound recursion depth.
    fn enter(&mut self, at: usize) -> ParseResult<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.error_at(
                at,
                &format!("expression is nested too deeply (more than {MAX_NESTING} levels)"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    // or := and ("or" and)*
    fn parse_or(&mut self) -> ParseResult<Expr> {
        self.parse_joined("or", Self::parse_and, Expr::Or)
    }

    // and := not ("and" not)*
    fn parse_and(&mut self) -> ParseResult<Expr> {
        self.parse_joined("and", Self::parse_not, Expr::And)
    }

    /// `term (keyword term)*`: one term alone, or all of them joined by `join`.
    fn parse_joined(
        &mut self,
        keyword: &str,
        term: fn(&mut Self) -> ParseResult<Expr>,
        join: fn(Vec<Expr>) -> Expr,
    ) -> ParseResult<Expr> {
        let mut terms = vec![term(self)?];
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.eat_keyword(keyword) {
                terms.push(term(self)?);
            } else {
                self.pos = save;
                break;
            }
        }
        match terms.len() {
            1 => Ok(terms.remove(0)),
            _ => Ok(join(terms)),
        }
    }

    // not := "not" not | primary
    fn parse_not(&mut self) -> ParseResult<Expr> {
        self.skip_ws();
        let start = self.pos;
        // At the start of an expression "not" can only be the unary operator;
        // the infix forms (`not in`, `not contains`, ...) come after an operand.
        if self.eat_keyword("not") {
            self.enter(start)?;
            let inner = self.parse_not()?;
            self.leave();
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.parse_primary()
    }

    // primary := "(" or ")" | match
    fn parse_primary(&mut self) -> ParseResult<Expr> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            None => Err(self.unexpected("a match expression, \"not\" or \"(\"")),
            Some(b'(') => {
                self.pos += 1;
                self.enter(start)?;
                let inner = self.parse_or()?;
                self.skip_ws();
                if self.peek() != Some(b')') {
                    return Err(self.error_here(&format!(
                        "unbalanced parentheses: expected \")\" to close the \"(\" at column {} but found {}",
                        self.column(start),
                        self.found()
                    )));
                }
                self.pos += 1;
                self.leave();
                Ok(inner)
            }
            Some(_) => self.parse_match().map(Expr::Match),
        }
    }

    /// match := value ("in" | "not in") selector
    ///        | selector ("==" | "!=" | "contains" | "not contains" | "matches" | "not matches") value
    ///        | selector ("is empty" | "is not empty")
    fn parse_match(&mut self) -> ParseResult<Match> {
        let start = self.pos;
        match self.peek() {
            Some(b'"' | b'`' | b'-' | b'0'..=b'9') => {
                // Only `in` / `not in` may follow a literal on the left.
                let value = self.parse_value()?;
                let Some(negated) = self.parse_in_operator() else {
                    self.skip_ws();
                    return Err(self.unexpected("\"in\" or \"not in\" after a value"));
                };
                let selector = self.parse_selector()?;
                Ok(Match {
                    selector,
                    test: Test::Contains(value),
                    negated,
                })
            }
            Some(b) if b.is_ascii_alphabetic() => {
                // A leading word is either a bare value (`primary in Tags`) or
                // a selector (`Node == x`); only the operator after it tells,
                // so look for `in` first and otherwise re-read it as a selector.
                let word = self.scan_bare_word();
                if let Some(negated) = self.parse_in_operator() {
                    let selector = self.parse_selector()?;
                    return Ok(Match {
                        selector,
                        test: Test::Contains(word),
                        negated,
                    });
                }
                self.pos = start;
                let selector = self.parse_selector()?;
                self.parse_selector_operator(selector)
            }
            _ => Err(self.unexpected("a selector or a value")),
        }
    }

    /// Consumes `in` (returns `Some(false)`) or `not in` (`Some(true)`),
    /// leaving the position untouched if neither follows.
    fn parse_in_operator(&mut self) -> Option<bool> {
        let save = self.pos;
        self.skip_ws();
        if self.eat_keyword("in") {
            return Some(false);
        }
        if self.eat_keyword("not") {
            self.skip_ws();
            if self.eat_keyword("in") {
                return Some(true);
            }
        }
        self.pos = save;
        None
    }

    fn parse_selector_operator(&mut self, selector: Vec<String>) -> ParseResult<Match> {
        self.skip_ws();
        let op_start = self.pos;
        let (test, negated) = if self.eat("==") {
            (Test::Equal(self.parse_value()?), false)
        } else if self.eat("!=") {
            (Test::Equal(self.parse_value()?), true)
        } else if self.eat_keyword("is") {
            self.skip_ws();
            let negated = self.eat_keyword("not");
            self.skip_ws();
            if !self.eat_keyword("empty") {
                return Err(self.unexpected("\"empty\" or \"not empty\" after \"is\""));
            }
            (Test::Empty, negated)
        } else if self.eat_keyword("contains") {
            (Test::Contains(self.parse_value()?), false)
        } else if self.eat_keyword("matches") {
            (self.parse_regex()?, false)
        } else if self.eat_keyword("not") {
            self.skip_ws();
            if self.eat_keyword("contains") {
                (Test::Contains(self.parse_value()?), true)
            } else if self.eat_keyword("matches") {
                (self.parse_regex()?, true)
            } else {
                return Err(self.unexpected("\"contains\", \"matches\" or \"in\" after \"not\""));
            }
        } else {
            self.pos = op_start;
            return Err(self.unexpected(
                "an operator (==, !=, is empty, is not empty, contains, not contains, matches, not matches)",
            ));
        };
        Ok(Match {
            selector,
            test,
            negated,
        })
    }

    fn parse_regex(&mut self) -> ParseResult<Test> {
        self.skip_ws();
        let start = self.pos;
        let pattern = self.parse_value()?;
        match Regex::new(&pattern) {
            Ok(re) => Ok(Test::Matches(re)),
            Err(err) => {
                // The regex crate's syntax errors are multi-line diagrams that
                // end in "error: <reason>"; keep just the reason so the
                // message stays on one line in an HTTP response.
                let text = err.to_string();
                let reason = text
                    .lines()
                    .rev()
                    .map(str::trim)
                    .find(|line| !line.is_empty())
                    .unwrap_or("unknown error");
                let reason = reason.strip_prefix("error: ").unwrap_or(reason);
                Err(self.error_at(
                    start,
                    &format!("invalid regular expression {pattern:?}: {reason}"),
                ))
            }
        }
    }

    /// selector := ident ("." ident | "." digits | "[" string "]")*
    fn parse_selector(&mut self) -> ParseResult<Vec<String>> {
        self.skip_ws();
        let Some(first) = self.scan_identifier() else {
            return Err(self.unexpected("a selector"));
        };
        let mut path = vec![first];
        loop {
            match self.peek() {
                Some(b'.') => {
                    self.pos += 1;
                    if let Some(name) = self.scan_identifier() {
                        path.push(name);
                    } else if let Some(index) = self.scan_digits() {
                        path.push(index);
                    } else {
                        return Err(self.unexpected("a field name after \".\""));
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    self.skip_ws();
                    if !matches!(self.peek(), Some(b'"' | b'`')) {
                        return Err(self.unexpected("a quoted key after \"[\""));
                    }
                    path.push(self.parse_string()?);
                    self.skip_ws();
                    if !self.eat("]") {
                        return Err(self.unexpected("\"]\" to close the index"));
                    }
                }
                _ => break,
            }
        }
        Ok(path)
    }

    /// ident := [A-Za-z][A-Za-z0-9_]*
    fn scan_identifier(&mut self) -> Option<String> {
        if !self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        let start = self.pos;
        while self.peek().is_some_and(is_ident_byte) {
            self.pos += 1;
        }
        self.src.get(start..self.pos).map(str::to_string)
    }

    fn scan_digits(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        if self.pos == start {
            return None;
        }
        self.src.get(start..self.pos).map(str::to_string)
    }

    /// An unquoted word value; the caller has checked it starts with a letter.
    fn scan_bare_word(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_bare_word_byte) {
            self.pos += 1;
        }
        self.src.get(start..self.pos).unwrap_or("").to_string()
    }

    /// value := string | raw-string | number | bare-word
    fn parse_value(&mut self) -> ParseResult<String> {
        self.skip_ws();
        match self.peek() {
            Some(b'"' | b'`') => self.parse_string(),
            Some(b'-' | b'0'..=b'9') => self.parse_number(),
            Some(b) if b.is_ascii_alphabetic() => Ok(self.scan_bare_word()),
            _ => Err(self.unexpected("a value")),
        }
    }

    /// number := "-"? digits ("." digits)?, which must end at whitespace, ")"
    /// or the end of input, so `10.0.0.1` or `80abc` are rejected rather than
    /// silently split (they must be quoted).
    fn parse_number(&mut self) -> ParseResult<String> {
        let start = self.pos;
        self.eat("-");
        if self.scan_digits().is_none() {
            return Err(self.error_at(start, "invalid number literal"));
        }
        if self.peek() == Some(b'.')
            && self
                .bytes
                .get(self.pos + 1)
                .is_some_and(|b| b.is_ascii_digit())
        {
            self.pos += 1;
            self.scan_digits();
        }
        let ends_cleanly = match self.peek() {
            None => true,
            Some(b) => is_ws(b) || b == b')',
        };
        if !ends_cleanly {
            return Err(self.error_at(
                start,
                "invalid number literal (quote values that are not plain numbers)",
            ));
        }
        Ok(self.src.get(start..self.pos).unwrap_or("").to_string())
    }

    /// A `"double quoted"` string with Go-style escapes, or a `` `raw` ``
    /// string taken literally (minus carriage returns, as Go does).
    fn parse_string(&mut self) -> ParseResult<String> {
        let start = self.pos;
        let raw = self.peek() == Some(b'`');
        let body_start = start + 1;
        let body = self.src.get(body_start..).unwrap_or("");
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '`' if raw => {
                    self.pos = body_start + i + 1;
                    return Ok(out);
                }
                '"' if !raw => {
                    self.pos = body_start + i + 1;
                    return Ok(out);
                }
                '\r' if raw => {}
                '\\' if !raw => {
                    let escape_at = body_start + i;
                    match decode_escape(&mut chars) {
                        Ok(decoded) => out.push(decoded),
                        Err(problem) => return Err(self.error_at(escape_at, &problem)),
                    }
                }
                other => out.push(other),
            }
        }
        Err(self.error_at(start, "unterminated string literal"))
    }
}

/// Decodes the escape after a backslash inside a double-quoted string, with
/// the escapes Go's `strconv.Unquote` accepts. `\x` and octal escapes are
/// limited to ASCII because Go would produce raw (non-UTF-8) bytes above that.
fn decode_escape(chars: &mut std::str::CharIndices<'_>) -> Result<char, String> {
    let Some((_, kind)) = chars.next() else {
        return Err("unterminated string literal".to_string());
    };
    let simple = match kind {
        'a' => Some('\u{07}'),
        'b' => Some('\u{08}'),
        'f' => Some('\u{0C}'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\u{0B}'),
        '\\' => Some('\\'),
        '"' => Some('"'),
        _ => None,
    };
    if let Some(c) = simple {
        return Ok(c);
    }
    let (radix, digits, first) = match kind {
        'x' => (16, 2, None),
        'u' => (16, 4, None),
        'U' => (16, 8, None),
        '0'..='7' => (8, 2, Some(kind)),
        other => return Err(format!("invalid escape sequence \"\\{other}\" in string")),
    };
    let mut text: String = first.into_iter().collect();
    for _ in 0..digits {
        match chars.next() {
            Some((_, c)) if c.is_digit(radix) => text.push(c),
            _ => return Err(format!("invalid \"\\{kind}\" escape in string")),
        }
    }
    let code = u32::from_str_radix(&text, radix)
        .map_err(|_| format!("invalid \"\\{kind}\" escape in string"))?;
    // Octal escapes carry their first digit in `text` already.
    let shown = if first.is_some() {
        format!("\\{text}")
    } else {
        format!("\\{kind}{text}")
    };
    let ascii_only = matches!(kind, 'x' | '0'..='7');
    if ascii_only && code > 0x7F {
        return Err(format!(
            "escape \"{shown}\" is above ASCII; use \\u for non-ASCII characters"
        ));
    }
    char::from_u32(code).ok_or_else(|| format!("escape \"{shown}\" is not a valid character"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({
            "ID": "0a1b2c3d",
            "Node": "web-1",
            "Address": "127.0.0.1",
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "127.0.0.1", "wan": "10.0.0.1"},
            "Meta": {"env": "prod", "key with.dots": "dotted", "empty": ""},
            "CreateIndex": 12,
            "ModifyIndex": 18446744073709551615u64,
        })
    }

    fn service_node() -> Value {
        json!({
            "Node": "web-1",
            "ServiceName": "api",
            "ServiceTags": ["primary", "v2"],
            "ServicePort": 8080,
            "ServiceWeight": 1.5,
            "ServiceEnableTagOverride": false,
            "ServiceMeta": {},
            "ServiceAddress": "",
            "Ports": [80, 443],
            "Mixed": ["a", 1, true, null],
            "Proxy": null,
            "Service": {"Meta": {"version": "2"}},
        })
    }

    /// Parses (panicking in the test if invalid) and evaluates.
    fn eval(expr: &str, value: &Value) -> bool {
        match Filter::parse(expr) {
            Ok(filter) => filter.matches(value),
            Err(err) => panic!("{expr:?} should parse: {err}"),
        }
    }

    fn parse_error(expr: &str) -> String {
        match Filter::parse(expr) {
            Ok(filter) => panic!("{expr:?} should not parse, got {filter:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn equality_on_strings() {
        let n = node();
        assert!(eval(r#"Node == "web-1""#, &n));
        assert!(eval("Node == web-1", &n));
        assert!(!eval(r#"Node == "web-2""#, &n));
        assert!(eval(r#"Node != "web-2""#, &n));
        assert!(!eval(r#"Node != "web-1""#, &n));
        assert!(eval(r#"Address=="127.0.0.1""#, &n));
    }

    #[test]
    fn selectors_are_case_sensitive() {
        let n = node();
        assert!(!eval(r#"node == "web-1""#, &n));
        assert!(!eval(r#"Node == "WEB-1""#, &n));
    }

    #[test]
    fn equality_coerces_numbers() {
        let s = service_node();
        assert!(eval("ServicePort == 8080", &s));
        assert!(eval(r#"ServicePort == "8080""#, &s));
        assert!(!eval("ServicePort == 80", &s));
        assert!(eval("ServicePort != 80", &s));
        assert!(!eval("ServicePort == abc", &s));
        assert!(eval("ServiceWeight == 1.5", &s));
        assert!(!eval("ServiceWeight == 1", &s));
        // Integers compare exactly, even beyond f64 precision.
        let n = node();
        assert!(eval("ModifyIndex == 18446744073709551615", &n));
        assert!(!eval("ModifyIndex == 18446744073709551614", &n));
        assert!(eval("CreateIndex == 12", &n));
        assert!(eval("Delta == -3", &json!({"Delta": -3})));
    }

    #[test]
    fn equality_coerces_bools() {
        let s = service_node();
        assert!(eval("ServiceEnableTagOverride == false", &s));
        assert!(eval(r#"ServiceEnableTagOverride == "false""#, &s));
        assert!(eval("ServiceEnableTagOverride == F", &s));
        assert!(!eval("ServiceEnableTagOverride == true", &s));
        assert!(eval("ServiceEnableTagOverride != true", &s));
        assert!(!eval("ServiceEnableTagOverride == yes", &s));
    }

    #[test]
    fn equality_on_lists_objects_and_null_is_false() {
        let s = service_node();
        assert!(!eval(r#"ServiceTags == "primary""#, &s));
        assert!(eval(r#"ServiceTags != "primary""#, &s));
        assert!(!eval(r#"ServiceMeta == "x""#, &s));
        assert!(!eval(r#"Proxy == "null""#, &s));
        assert!(eval(r#"Proxy != "null""#, &s));
    }

    #[test]
    fn is_empty_and_is_not_empty() {
        let s = service_node();
        assert!(eval("ServiceMeta is empty", &s));
        assert!(eval("ServiceAddress is empty", &s));
        assert!(eval("Proxy is empty", &s));
        assert!(eval("Empty is empty", &json!({"Empty": []})));
        assert!(!eval("ServiceTags is empty", &s));
        assert!(eval("ServiceTags is not empty", &s));
        assert!(!eval("ServiceMeta is not empty", &s));
        // Scalars are never empty.
        assert!(!eval("ServicePort is empty", &s));
        assert!(eval("ServiceEnableTagOverride is not empty", &s));
        assert!(eval("Meta.empty is empty", &node()));
    }

    #[test]
    fn in_and_contains_on_lists() {
        let s = service_node();
        assert!(eval(r#""primary" in ServiceTags"#, &s));
        assert!(eval("primary in ServiceTags", &s));
        assert!(eval(r#"ServiceTags contains "v2""#, &s));
        assert!(!eval(r#""v3" in ServiceTags"#, &s));
        assert!(eval(r#""v3" not in ServiceTags"#, &s));
        assert!(!eval(r#"ServiceTags not contains "v2""#, &s));
        assert!(eval(r#"ServiceTags not contains "v3""#, &s));
        // Elements are compared with `==` semantics, including coercion.
        assert!(eval("443 in Ports", &s));
        assert!(eval(r#""80" in Ports"#, &s));
        assert!(!eval("8 in Ports", &s));
        assert!(eval("true in Mixed", &s));
        assert!(eval("1 in Mixed", &s));
        assert!(eval("a in Mixed", &s));
        assert!(!eval("b in Mixed", &s));
    }

    #[test]
    fn in_and_contains_on_objects_and_strings() {
        let n = node();
        assert!(eval(r#""env" in Meta"#, &n));
        assert!(eval("Meta contains env", &n));
        assert!(!eval(r#""prod" in Meta"#, &n));
        assert!(eval(r#""prod" not in Meta"#, &n));
        // On strings, `in`/`contains` is a substring test.
        assert!(eval(r#""web" in Node"#, &n));
        assert!(eval(r#"Address contains "0.0""#, &n));
        assert!(!eval(r#"Node contains "db""#, &n));
        // Numbers and booleans contain nothing.
        assert!(!eval("CreateIndex contains 1", &n));
        assert!(eval("CreateIndex not contains 1", &n));
    }

    #[test]
    fn matches_and_not_matches() {
        let n = node();
        assert!(eval(r#"Node matches "^web-[0-9]+$""#, &n));
        assert!(eval("Node matches `^web-\\d$`", &n));
        assert!(eval(r#"Node matches "\\d""#, &n));
        assert!(eval(r#"Node matches "eb""#, &n), "matching is unanchored");
        assert!(!eval(r#"Node matches "^db""#, &n));
        assert!(eval(r#"Node not matches "^db""#, &n));
        // Only strings can match.
        assert!(!eval(r#"CreateIndex matches "1""#, &n));
        assert!(eval(r#"CreateIndex not matches "1""#, &n));
    }

    #[test]
    fn missing_selectors_use_not_present_disposition() {
        let n = node();
        for (expr, expected) in [
            (r#"Meta.missing == "x""#, false),
            (r#"Meta.missing != "x""#, true),
            ("Meta.missing is empty", true),
            ("Meta.missing is not empty", false),
            (r#""x" in Meta.missing"#, false),
            (r#""x" not in Meta.missing"#, true),
            (r#"Meta.missing contains "x""#, false),
            (r#"Meta.missing not contains "x""#, true),
            (r#"Meta.missing matches ".*""#, false),
            (r#"Meta.missing not matches ".*""#, true),
            // Top-level and through a scalar behave the same way.
            (r#"Nope == "x""#, false),
            (r#"Node.deeper != "x""#, true),
            ("Node.deeper is empty", true),
        ] {
            assert_eq!(eval(expr, &n), expected, "{expr}");
        }
    }

    #[test]
    fn map_key_syntax() {
        let n = node();
        assert!(eval(r#"Meta.env == "prod""#, &n));
        assert!(eval(r#"Meta["env"] == "prod""#, &n));
        assert!(eval(r#"Meta[ "env" ] == prod"#, &n));
        assert!(eval("Meta[`env`] == prod", &n));
        assert!(eval(r#"Meta["key with.dots"] == "dotted""#, &n));
        assert!(eval(r#"TaggedAddresses.wan == "10.0.0.1""#, &n));
        assert!(eval(r#"Service.Meta["version"] == 2"#, &service_node()));
        assert!(eval(r#"Service["Meta"].version == "2""#, &service_node()));
    }

    #[test]
    fn list_positions_in_selectors() {
        let s = service_node();
        assert!(eval(r#"ServiceTags.0 == "primary""#, &s));
        assert!(eval(r#"ServiceTags.1 == "v2""#, &s));
        assert!(!eval(r#"ServiceTags.2 == "v2""#, &s));
        assert!(eval("ServiceTags.9 is empty", &s));
    }

    #[test]
    fn string_literals() {
        let v = json!({"S": "a\"b\\c\nd", "U": "é", "R": "x\\y"});
        assert!(eval(r#"S == "a\"b\\c\nd""#, &v));
        assert!(eval(r#"U == "\u00e9""#, &v));
        assert!(eval(r#"U == "\U000000e9""#, &v));
        assert!(eval(r#"U == "é""#, &v));
        assert!(eval(r#"S contains "\x61""#, &v));
        assert!(eval(r#"S contains "\142""#, &v));
        // Raw strings take backslashes literally.
        assert!(eval("R == `x\\y`", &v));
        assert!(eval("R matches `^x\\\\y$`", &v));
        // Quotes of the other kind are ordinary characters.
        assert!(eval("Q == `say \"hi\"`", &json!({"Q": "say \"hi\""})));
    }

    #[test]
    fn precedence_not_and_or() {
        let v = json!({"A": "1", "B": "0", "C": "0"});
        // or binds loosest: A or (B and C) is true; (A or B) and C would be false.
        assert!(eval("A == 1 or B == 1 and C == 1", &v));
        assert!(!eval("(A == 1 or B == 1) and C == 1", &v));
        // and binds tighter than or on the left too.
        assert!(eval("B == 1 and C == 1 or A == 1", &v));
        // not binds tighter than and/or: (not A) or A is true, whereas
        // not (A or A) is false.
        assert!(eval("not A == 1 or A == 1", &v));
        assert!(!eval("not (A == 1 or A == 1)", &v));
        assert!(!eval("not A == 1 and A == 1", &v));
        assert!(eval("not not A == 1", &v));
        assert!(eval("not(B == 1)", &v));
        assert!(eval(" ( A == 1 ) ", &v));
        assert!(eval("((A == 1) and (not (B == 1)))", &v));
        assert!(eval("A == 1 and A == 1 and B == 0 and C == 0", &v));
        assert!(!eval("A == 1 and A == 1 and B == 1 and C == 0", &v));
        assert!(eval("B == 1 or C == 1 or A == 1", &v));
    }

    #[test]
    fn whitespace_is_flexible() {
        let v = json!({"A": "x", "T": ["t"]});
        assert!(eval("\tA\n==\r\nx ", &v));
        assert!(eval("A   ==   x   and   t   in   T", &v));
    }

    #[test]
    fn keywords_are_whole_words() {
        // `inventory` is a selector, not `in` + `ventory`.
        let v = json!({"inventory": "x", "notes": "n", "island": "y"});
        assert!(eval("inventory == x", &v));
        assert!(eval("notes == n", &v));
        assert!(eval("island == y or notes == z", &v));
    }

    #[test]
    fn bare_words_keep_dots_and_dashes() {
        let v = json!({"A": "us-east-1.prod", "T": ["us-east/1"]});
        assert!(eval("A == us-east-1.prod", &v));
        assert!(eval("us-east/1 in T", &v));
    }

    #[test]
    fn invalid_regex_is_a_parse_error() {
        let msg = parse_error(r#"Node matches "(""#);
        assert!(msg.contains("invalid regular expression"), "{msg}");
        assert!(msg.contains("unclosed group"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("column 14"), "{msg}");
    }

    #[test]
    fn error_messages_name_problem_and_position() {
        let msg = parse_error("(Node == a");
        assert!(
            msg.starts_with("Failed to create boolean expression evaluator: "),
            "{msg}"
        );
        assert!(msg.contains("unbalanced parentheses"), "{msg}");
        assert!(msg.contains("column 11"), "{msg}");

        let msg = parse_error("Node == a)");
        assert!(msg.contains("unbalanced parentheses"), "{msg}");
        assert!(msg.contains("column 10"), "{msg}");

        let msg = parse_error("Node <> a");
        assert!(msg.contains("expected an operator"), "{msg}");
        assert!(msg.contains("\"<>\""), "{msg}");
        assert!(msg.contains("column 6"), "{msg}");

        let msg = parse_error("Node == a b");
        assert!(msg.contains("\"and\", \"or\""), "{msg}");
        assert!(msg.contains("column 11"), "{msg}");

        let msg = parse_error("");
        assert!(msg.contains("empty"), "{msg}");

        let msg = parse_error("Node ==");
        assert!(msg.contains("expected a value"), "{msg}");
        assert!(msg.contains("end of the expression"), "{msg}");

        let msg = parse_error(r#"Node == "abc"#);
        assert!(msg.contains("unterminated string"), "{msg}");
        assert!(msg.contains("column 9"), "{msg}");

        // Columns count characters, not bytes.
        let msg = parse_error(r#"Node == "é" x"#);
        assert!(msg.contains("column 13"), "{msg}");

        let msg = parse_error(r#"Node == "\q""#);
        assert!(msg.contains("invalid escape"), "{msg}");
        assert!(msg.contains("column 10"), "{msg}");

        let msg = parse_error("Address == 10.0.0.1");
        assert!(msg.contains("invalid number literal"), "{msg}");
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        let deep_parens = format!("{}A == 1{}", "(".repeat(10_000), ")".repeat(10_000));
        let deep_nots = format!("{}A == 1", "not ".repeat(10_000));
        let inputs: Vec<&str> = vec![
            "",
            "   \t\n",
            "(",
            ")",
            "()",
            "(Node == a",
            "Node == a)",
            "((Node == a)",
            "Node = a",
            "Node === a",
            "Node ==",
            "== a",
            "Node",
            "Node is",
            "Node is not",
            "Node is full",
            "Node not",
            "Node not equals a",
            "Node == a b",
            "Node == a and",
            "Node == a or",
            "and",
            "or",
            "not",
            "not not",
            "Node == a AND Port == 1",
            "Meta[",
            "Meta[\"x\"",
            "Meta[\"x\" == a",
            "Meta[foo] == a",
            "Meta[] == a",
            "Meta. == a",
            "Meta.. == a",
            ".Meta == a",
            "_Meta == a",
            "1Meta == a",
            "\"a\" == Node",
            "\"a\" in",
            "\"a\" in \"b\"",
            "a not in",
            "\"unterminated",
            "Node == `raw",
            "Node == \"\\",
            "Node == \"\\u12\"",
            "Node == \"\\uD800\"",
            "Node == \"\\U00110000\"",
            "Node == \"\\xff\"",
            "Node == \"\\400\"",
            "Node matches \"(\"",
            "Node matches \"[z-a]\"",
            "Node matches",
            "Node == -",
            "Node == 1.",
            "Node == 80abc",
            "Node == 1.2.3",
            "Nöde == x",
            "Node == ünquoted",
            "\u{0}",
            "Node == \u{0}",
            "💥",
            "Node == a or (",
            "not (",
            &deep_parens,
            &deep_nots,
        ];
        for input in inputs {
            match Filter::parse(input) {
                Ok(filter) => panic!("{input:?} should be rejected, parsed as {filter:?}"),
                Err(FilterError(msg)) => assert!(!msg.is_empty(), "{input:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_of_a_valid_expression_parses_or_errors() {
        // Truncating a rich expression at every character boundary exercises
        // the error paths; none may panic, and any that parse must evaluate.
        let expr = r#"not (Meta["key with.dots"] == "dotted" or "v2" in ServiceTags) and Node matches `^web-\d$` and ServicePort != 80 and Meta.x is not empty or "é\u00e9" not in Tags"#;
        let values = [
            node(),
            service_node(),
            Value::Null,
            json!([1, 2]),
            json!("s"),
        ];
        for (i, _) in expr
            .char_indices()
            .chain(std::iter::once((expr.len(), ' ')))
        {
            let prefix = &expr[..i];
            if let Ok(filter) = Filter::parse(prefix) {
                for value in &values {
                    let _ = filter.matches(value);
                }
            }
        }
        assert!(Filter::parse(expr).is_ok());
    }

    #[test]
    fn nesting_limit_allows_reasonable_depth() {
        let ok = format!(
            "{}A == 1{}",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        assert!(eval(&ok, &json!({"A": 1})));
        let too_deep = format!(
            "{}A == 1{}",
            "(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        );
        assert!(parse_error(&too_deep).contains("nested too deeply"));
    }

    #[test]
    fn long_flat_chains_are_fine() {
        // Long and/or chains are not nesting and must not hit the depth limit.
        let expr = ["A == 1"; 5_000].join(" and ");
        assert!(eval(&expr, &json!({"A": 1})));
        let expr = ["A == 2"; 5_000].join(" or ");
        assert!(!eval(&expr, &json!({"A": 1})));
    }

    #[test]
    fn non_object_roots_never_panic() {
        let filter = Filter::parse(r#"A == "x" or A is empty"#).expect("valid expression");
        assert!(filter.matches(&Value::Null));
        assert!(filter.matches(&json!(3)));
        assert!(filter.matches(&json!(["x"])));
        assert!(!Filter::parse(r#"A == "x""#)
            .expect("valid expression")
            .matches(&json!("x")));
    }

    #[test]
    fn filter_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Filter>();
        assert_send_sync::<FilterError>();
    }
}
