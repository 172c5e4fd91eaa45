//! Consul's ACL rules language: the `Rules` string of a policy, parsed into [`Rules`], plus
//! the built-in and templated policies (global-management, service and node identities, ...).
//!
//! Consul decodes rules with HCL1, which accepts forms HCL2 (and so `hcl-rs`) refuses and
//! that real policies use: several attributes in a one-line block
//! (`service_prefix "" { policy = "read" intentions = "read" }`), several blocks on one line,
//! a block's `{` on the next line, commas between attributes. So the HCL side is a small
//! HCL1 reader of its own; JSON (text starting with `{`) goes through serde_json. Both produce
//! the same [`Value`] tree, which one decoder turns into rules, so the two syntaxes cannot
//! drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A rule's disposition. Consul compares them case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Disposition {
    Read,
    /// Read plus listing; valid only in key rules.
    List,
    Write,
    Deny,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Read => "read",
            Disposition::List => "list",
            Disposition::Write => "write",
            Disposition::Deny => "deny",
        }
    }

    fn parse(text: &str, allow_list: bool) -> Option<Disposition> {
        match text.to_ascii_lowercase().as_str() {
            "read" => Some(Disposition::Read),
            "list" if allow_list => Some(Disposition::List),
            "write" => Some(Disposition::Write),
            "deny" => Some(Disposition::Deny),
            _ => None,
        }
    }

    /// Rank when several policies name the same thing: deny > write > list > read.
    fn precedence(self) -> u8 {
        match self {
            Disposition::Read => 0,
            Disposition::List => 1,
            Disposition::Write => 2,
            Disposition::Deny => 3,
        }
    }

    /// The disposition that wins when both appear for the same rule in different policies.
    pub fn strongest(self, other: Disposition) -> Disposition {
        if other.precedence() > self.precedence() {
            other
        } else {
            self
        }
    }

    /// [`Disposition::strongest`] where an unset side (Consul's `""`) always loses.
    pub fn strongest_of(
        left: Option<Disposition>,
        right: Option<Disposition>,
    ) -> Option<Disposition> {
        match (left, right) {
            (Some(left), Some(right)) => Some(left.strongest(right)),
            (left, right) => left.or(right),
        }
    }
}

impl fmt::Display for Disposition {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The resources whose rules carry a label (a key, a node name, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Agent,
    Event,
    Key,
    Node,
    Query,
    Service,
    Session,
}

impl Resource {
    pub const ALL: [Resource; 7] = [
        Resource::Agent,
        Resource::Event,
        Resource::Key,
        Resource::Node,
        Resource::Query,
        Resource::Service,
        Resource::Session,
    ];

    /// The HCL word of the exact-match rule; the prefix rule appends `_prefix`.
    pub fn word(self) -> &'static str {
        match self {
            Resource::Agent => "agent",
            Resource::Event => "event",
            Resource::Key => "key",
            Resource::Node => "node",
            Resource::Query => "query",
            Resource::Service => "service",
            Resource::Session => "session",
        }
    }

    fn from_word(word: &str) -> Option<(Resource, MatchKind)> {
        let (base, kind) = match word.strip_suffix("_prefix") {
            Some(base) => (base, MatchKind::Prefix),
            None => (word, MatchKind::Exact),
        };
        let resource = Resource::ALL
            .into_iter()
            .find(|resource| resource.word() == base)?;
        Some((resource, kind))
    }
}

/// Whether a rule names one label exactly or every label starting with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchKind {
    Exact,
    Prefix,
}

/// What a labelled rule applies to: `key_prefix "app/"` is (Key, Prefix, "app/").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleKey {
    pub resource: Resource,
    pub kind: MatchKind,
    pub label: String,
}

impl RuleKey {
    /// The rule's HCL word: `key` or `key_prefix`.
    pub fn word(&self) -> String {
        match self.kind {
            MatchKind::Exact => self.resource.word().to_string(),
            MatchKind::Prefix => format!("{}_prefix", self.resource.word()),
        }
    }
}

/// What a labelled rule grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub policy: Disposition,
    /// Service rules only. Kept unset when the text leaves it out, as Consul does: policies
    /// are merged before the default (read for read/write, deny for deny) is filled in, so
    /// an unset value must lose to any value another policy sets.
    pub intentions: Option<Disposition>,
}

/// One policy's rules. Labelled rules are keyed by (resource, kind, label), so two texts
/// naming the same rules in a different order compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub acl: Option<Disposition>,
    pub keyring: Option<Disposition>,
    pub mesh: Option<Disposition>,
    pub operator: Option<Disposition>,
    pub peering: Option<Disposition>,
    pub labeled: BTreeMap<RuleKey, Grant>,
}

/// Builds the text of the two global built-in policies from Consul's one template, so the
/// management and read-only texts cannot disagree in shape.
// One line of the macro per line of HCL, which rustfmt would split into three.
#[rustfmt::skip]
macro_rules! global_rules_text {
    ($level:literal) => {
        concat!(
            "\nacl = \"", $level, "\"\n",
            "agent_prefix \"\" {\n\tpolicy = \"", $level, "\"\n}\n",
            "event_prefix \"\" {\n\tpolicy = \"", $level, "\"\n}\n",
            "key_prefix \"\" {\n\tpolicy = \"", $level, "\"\n}\n",
            "keyring = \"", $level, "\"\n",
            "node_prefix \"\" {\n\tpolicy = \"", $level, "\"\n}\n",
            "operator = \"", $level, "\"\n",
            "mesh = \"", $level, "\"\n",
            "peering = \"", $level, "\"\n",
            "query_prefix \"\" {\n\tpolicy = \"", $level, "\"\n}\n",
            "service_prefix \"\" {\n\tpolicy = \"", $level, "\"\n\tintentions = \"", $level, "\"\n}\n",
            "session_prefix \"\" {\n\tpolicy = \"", $level, "\"\n}",
        )
    };
}

/// The `Rules` Consul shows for the built-in `global-management` policy, byte for byte.
pub const GLOBAL_MANAGEMENT_TEXT: &str = global_rules_text!("write");

/// The `Rules` Consul shows for the built-in `builtin/global-read-only` policy.
pub const GLOBAL_READ_ONLY_TEXT: &str = global_rules_text!("read");

impl Rules {
    /// Everything at `level`: the template behind both global built-in policies.
    fn global(level: Disposition) -> Rules {
        let mut rules = Rules {
            acl: Some(level),
            keyring: Some(level),
            mesh: Some(level),
            operator: Some(level),
            peering: Some(level),
            labeled: BTreeMap::new(),
        };
        for resource in [
            Resource::Agent,
            Resource::Event,
            Resource::Key,
            Resource::Node,
            Resource::Query,
            Resource::Session,
        ] {
            rules.add(resource, MatchKind::Prefix, "", level, None);
        }
        rules.add(Resource::Service, MatchKind::Prefix, "", level, Some(level));
        rules
    }

    /// The built-in `global-management` policy: write on everything.
    pub fn global_management() -> Rules {
        Rules::global(Disposition::Write)
    }

    /// The built-in `builtin/global-read-only` policy: read on everything.
    pub fn global_read_only() -> Rules {
        Rules::global(Disposition::Read)
    }

    /// The `builtin/service` templated policy, which is also what a service identity grants.
    pub fn service_identity(name: &str) -> Rules {
        let mut rules = Rules::default();
        rules.add(
            Resource::Service,
            MatchKind::Exact,
            name,
            Disposition::Write,
            None,
        );
        let sidecar = format!("{name}-sidecar-proxy");
        rules.add(
            Resource::Service,
            MatchKind::Exact,
            &sidecar,
            Disposition::Write,
            None,
        );
        rules.add(
            Resource::Service,
            MatchKind::Prefix,
            "",
            Disposition::Read,
            None,
        );
        rules.add(
            Resource::Node,
            MatchKind::Prefix,
            "",
            Disposition::Read,
            None,
        );
        rules
    }

    /// The `builtin/node` templated policy, which is also what a node identity grants.
    pub fn node_identity(name: &str) -> Rules {
        let mut rules = Rules::default();
        rules.add(
            Resource::Node,
            MatchKind::Exact,
            name,
            Disposition::Write,
            None,
        );
        rules.add(
            Resource::Service,
            MatchKind::Prefix,
            "",
            Disposition::Read,
            None,
        );
        rules
    }

    /// The `builtin/dns` templated policy: enough to answer every DNS question.
    pub fn dns() -> Rules {
        let mut rules = Rules::default();
        for resource in [Resource::Node, Resource::Service, Resource::Query] {
            rules.add(resource, MatchKind::Prefix, "", Disposition::Read, None);
        }
        rules
    }

    /// True when the policy grants and denies nothing (an empty `Rules` string).
    pub fn is_empty(&self) -> bool {
        *self == Rules::default()
    }

    fn add(
        &mut self,
        resource: Resource,
        kind: MatchKind,
        label: &str,
        policy: Disposition,
        intentions: Option<Disposition>,
    ) {
        let key = RuleKey {
            resource,
            kind,
            label: label.to_string(),
        };
        self.labeled.insert(key, Grant { policy, intentions });
    }

    fn labelless_mut(&mut self, word: &str) -> Option<&mut Option<Disposition>> {
        match word {
            "acl" => Some(&mut self.acl),
            "keyring" => Some(&mut self.keyring),
            "mesh" => Some(&mut self.mesh),
            "operator" => Some(&mut self.operator),
            "peering" => Some(&mut self.peering),
            _ => None,
        }
    }
}

/// Why a `Rules` string was refused; `Display` is the message Consul returns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// Syntax, shape, duplicate or unknown-key problems; the detail names line and column
    /// where the input has them.
    #[error("Failed to parse ACL rules: {0}")]
    Parse(String),
    /// A disposition the rule does not accept; `rule` is `acl`, `key_prefix`,
    /// `service intentions`, ...
    #[error("Invalid {rule} policy: {value:?}")]
    InvalidPolicy { rule: String, value: String },
}

/// Parses a policy's `Rules`: HCL1, or JSON when the trimmed text starts with `{`. Blank
/// text is a policy with no rules.
pub fn parse(text: &str) -> Result<Rules, RulesError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Rules::default());
    }
    let entries = if trimmed.starts_with('{') {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(entries)) => entries,
            Ok(_) => return Err(RulesError::Parse("expected a JSON object".to_string())),
            Err(error) => return Err(RulesError::Parse(error.to_string())),
        }
    } else {
        Parser::new(text).body_to_end()?
    };
    decode(entries)
}

/// Where something sits in HCL text, 1-based. JSON values carry none: serde reports
/// positions for syntax errors only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    line: usize,
    column: usize,
}

fn parse_error(at: Option<Position>, message: impl fmt::Display) -> RulesError {
    match at {
        // HCL1's own wording, so messages read as Consul's do.
        Some(Position { line, column }) => {
            RulesError::Parse(format!("At {line}:{column}: {message}"))
        }
        None => RulesError::Parse(message.to_string()),
    }
}

/// The syntax-neutral tree both readers produce. Object entries keep their order and their
/// duplicates, so the decoder can refuse a rule given twice.
#[derive(Debug)]
enum Value {
    String(String),
    /// A number, boolean or null: never valid in rules, kept only to name it in errors.
    Other(&'static str),
    List(Vec<Value>),
    Object(Vec<Entry>),
}

#[derive(Debug)]
struct Entry {
    key: String,
    at: Option<Position>,
    value: Value,
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Other(kind) => kind,
            Value::List(_) => "a list",
            Value::Object(_) => "an object",
        }
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Other("a number"))
    }

    fn visit_str<E>(self, text: &str) -> Result<Value, E> {
        Ok(Value::String(text.to_string()))
    }

    fn visit_string<E>(self, text: String) -> Result<Value, E> {
        Ok(Value::String(text))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Other("null"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            entries.push(Entry {
                key,
                at: None,
                value,
            });
        }
        Ok(Value::Object(entries))
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Identifier(String),
    String(String),
    Number,
    LeftBrace,
    RightBrace,
    LeftBracket,
    RightBracket,
    Equals,
    Comma,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Identifier(name) => format!("identifier {name:?}"),
            Token::String(text) => format!("string {text:?}"),
            Token::Number => "number".to_string(),
            Token::LeftBrace => "'{'".to_string(),
            Token::RightBrace => "'}'".to_string(),
            Token::LeftBracket => "'['".to_string(),
            Token::RightBracket => "']'".to_string(),
            Token::Equals => "'='".to_string(),
            Token::Comma => "','".to_string(),
            Token::End => "end of input".to_string(),
        }
    }
}

/// Splits HCL1 text into tokens. Newlines carry no meaning in HCL1 object bodies, so they
/// are skipped like any other whitespace.
struct Lexer<'t> {
    chars: std::iter::Peekable<std::str::Chars<'t>>,
    line: usize,
    column: usize,
}

impl<'t> Lexer<'t> {
    fn new(text: &'t str) -> Lexer<'t> {
        Lexer {
            chars: text.chars().peekable(),
            line: 1,
            column: 1,
        }
    }

    fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }

    fn bump(&mut self) -> Option<char> {
        let next = self.chars.next()?;
        if next == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(next)
    }

    fn skip_trivia(&mut self) -> Result<(), RulesError> {
        loop {
            match self.chars.peek().copied() {
                Some(next) if next.is_whitespace() => {
                    self.bump();
                }
                Some('#') => self.skip_line(),
                Some('/') => {
                    let at = self.position();
                    self.bump();
                    match self.bump() {
                        Some('/') => self.skip_line(),
                        Some('*') => self.skip_block_comment(at)?,
                        _ => return Err(parse_error(Some(at), "illegal char '/'")),
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(next) = self.chars.peek().copied() {
            if next == '\n' {
                return;
            }
            self.bump();
        }
    }

    fn skip_block_comment(&mut self, at: Position) -> Result<(), RulesError> {
        let mut previous = ' ';
        loop {
            match self.bump() {
                Some('/') if previous == '*' => return Ok(()),
                Some(next) => previous = next,
                None => return Err(parse_error(Some(at), "comment not terminated")),
            }
        }
    }

    fn next_token(&mut self) -> Result<(Token, Position), RulesError> {
        self.skip_trivia()?;
        let at = self.position();
        let Some(first) = self.chars.peek().copied() else {
            return Ok((Token::End, at));
        };
        let single = match first {
            '{' => Some(Token::LeftBrace),
            '}' => Some(Token::RightBrace),
            '[' => Some(Token::LeftBracket),
            ']' => Some(Token::RightBracket),
            '=' => Some(Token::Equals),
            ',' => Some(Token::Comma),
            _ => None,
        };
        if let Some(token) = single {
            self.bump();
            return Ok((token, at));
        }
        if first == '"' {
            self.bump();
            return Ok((Token::String(self.string_rest(at)?), at));
        }
        if first.is_alphabetic() || first == '_' {
            let mut name = String::new();
            while let Some(next) = self.chars.peek().copied() {
                if !(next.is_alphanumeric() || matches!(next, '_' | '-' | '.')) {
                    break;
                }
                name.push(next);
                self.bump();
            }
            return Ok((Token::Identifier(name), at));
        }
        if first.is_ascii_digit() || first == '-' || first == '+' {
            while let Some(next) = self.chars.peek().copied() {
                if !(next.is_ascii_alphanumeric() || matches!(next, '.' | '-' | '+')) {
                    break;
                }
                self.bump();
            }
            return Ok((Token::Number, at));
        }
        Err(parse_error(Some(at), format!("illegal char {first:?}")))
    }

    /// The rest of a double-quoted string, its opening quote already consumed.
    fn string_rest(&mut self, at: Position) -> Result<String, RulesError> {
        let mut text = String::new();
        loop {
            let escape_at = self.position();
            match self.bump() {
                None | Some('\n') => return Err(parse_error(Some(at), "literal not terminated")),
                Some('"') => return Ok(text),
                Some('\\') => {
                    let escaped = match self.bump() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('/') => '/',
                        Some('u') => self.unicode_escape(escape_at)?,
                        _ => return Err(parse_error(Some(escape_at), "unknown escape sequence")),
                    };
                    text.push(escaped);
                }
                Some(other) => text.push(other),
            }
        }
    }

    fn unicode_escape(&mut self, at: Position) -> Result<char, RulesError> {
        let mut code = 0u32;
        for _ in 0..4 {
            let digit = self.bump().and_then(|next| next.to_digit(16));
            let Some(digit) = digit else {
                return Err(parse_error(Some(at), "invalid unicode escape"));
            };
            code = code * 16 + digit;
        }
        char::from_u32(code).ok_or_else(|| parse_error(Some(at), "invalid unicode escape"))
    }
}

/// Recursive descent over HCL1's object grammar:
/// `body := (key+ ('=' value | object) ','?)*`, `key := identifier | string`,
/// `value := string | number | bool | object | list`.
struct Parser<'t> {
    lexer: Lexer<'t>,
    current: Token,
    at: Position,
    /// Nesting depth, bounded so hostile input cannot exhaust the stack.
    depth: usize,
}

const MAX_DEPTH: usize = 32;

impl<'t> Parser<'t> {
    fn new(text: &'t str) -> Parser<'t> {
        Parser {
            lexer: Lexer::new(text),
            current: Token::End,
            at: Position { line: 1, column: 1 },
            depth: 0,
        }
    }

    fn advance(&mut self) -> Result<(), RulesError> {
        let (token, at) = self.lexer.next_token()?;
        self.current = token;
        self.at = at;
        Ok(())
    }

    fn unexpected(&self, expected: &str) -> RulesError {
        let found = self.current.describe();
        parse_error(Some(self.at), format!("expected {expected}, got {found}"))
    }

    fn body_to_end(mut self) -> Result<Vec<Entry>, RulesError> {
        self.advance()?;
        let entries = self.body()?;
        if self.current != Token::End {
            return Err(self.unexpected("a key"));
        }
        Ok(entries)
    }

    /// Items up to (not including) a closing brace or the end of input.
    fn body(&mut self) -> Result<Vec<Entry>, RulesError> {
        let mut entries = Vec::new();
        loop {
            let (first_key, first_at) = match &self.current {
                Token::Identifier(name) => (name.clone(), self.at),
                Token::String(text) => (text.clone(), self.at),
                Token::RightBrace | Token::End => return Ok(entries),
                _ => return Err(self.unexpected("a key")),
            };
            self.advance()?;
            let mut labels = Vec::new();
            loop {
                match &self.current {
                    Token::Identifier(name) => labels.push((name.clone(), self.at)),
                    Token::String(text) => labels.push((text.clone(), self.at)),
                    _ => break,
                }
                self.advance()?;
            }
            let value = match self.current {
                Token::Equals if labels.is_empty() => {
                    self.advance()?;
                    self.value()?
                }
                Token::LeftBrace => self.object()?,
                _ if labels.is_empty() => return Err(self.unexpected("'=' or '{'")),
                _ => return Err(self.unexpected("'{'")),
            };
            // `key "a" "b" { ... }` is HCL1 shorthand for `key = { "a" = { "b" = { ... } } }`.
            let value = labels.into_iter().rev().fold(value, |inner, (label, at)| {
                Value::Object(vec![Entry {
                    key: label,
                    at: Some(at),
                    value: inner,
                }])
            });
            entries.push(Entry {
                key: first_key,
                at: Some(first_at),
                value,
            });
            if self.current == Token::Comma {
                self.advance()?;
            }
        }
    }

    fn value(&mut self) -> Result<Value, RulesError> {
        let value = match &self.current {
            Token::String(text) => Value::String(text.clone()),
            Token::Number => Value::Other("a number"),
            Token::Identifier(name) if name == "true" || name == "false" => {
                Value::Other("a boolean")
            }
            Token::LeftBrace => return self.object(),
            Token::LeftBracket => return self.list(),
            _ => return Err(self.unexpected("a value")),
        };
        self.advance()?;
        Ok(value)
    }

    fn enter(&mut self) -> Result<(), RulesError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(parse_error(Some(self.at), "nesting too deep"));
        }
        Ok(())
    }

    fn object(&mut self) -> Result<Value, RulesError> {
        self.enter()?;
        self.advance()?;
        let entries = self.body()?;
        if self.current != Token::RightBrace {
            return Err(self.unexpected("'}'"));
        }
        self.advance()?;
        self.depth -= 1;
        Ok(Value::Object(entries))
    }

    fn list(&mut self) -> Result<Value, RulesError> {
        self.enter()?;
        self.advance()?;
        let mut items = Vec::new();
        while self.current != Token::RightBracket {
            items.push(self.value()?);
            match self.current {
                Token::Comma => self.advance()?,
                Token::RightBracket => {}
                _ => return Err(self.unexpected("',' or ']'")),
            }
        }
        self.advance()?;
        self.depth -= 1;
        Ok(Value::List(items))
    }
}

/// Turns the parsed tree into rules, checking every key, shape and disposition.
fn decode(entries: Vec<Entry>) -> Result<Rules, RulesError> {
    let mut rules = Rules::default();
    let mut labelless_seen = BTreeSet::new();
    for entry in entries {
        let word = entry.key.as_str();
        if let Some(slot) = rules.labelless_mut(word) {
            let Value::String(text) = &entry.value else {
                let message = format!("{word}: expected a string, got {}", entry.value.kind());
                return Err(parse_error(entry.at, message));
            };
            if !labelless_seen.insert(entry.key.clone()) {
                return Err(parse_error(entry.at, already_set(word)));
            }
            // Consul treats an empty string as "not set" for these, not as an error.
            *slot = if text.is_empty() {
                None
            } else {
                let disposition = Disposition::parse(text, false);
                Some(disposition.ok_or_else(|| RulesError::InvalidPolicy {
                    rule: word.to_string(),
                    value: text.clone(),
                })?)
            };
        } else if let Some((resource, kind)) = Resource::from_word(word) {
            decode_labeled(&mut rules, resource, kind, word, entry.at, entry.value)?;
        } else if word == "identity" || word == "identity_prefix" {
            // Deprecated: Consul still decodes these for old snapshots but zeroes them.
        } else {
            let message = format!("unknown rule {word:?}; expected one of acl, agent, agent_prefix, event, event_prefix, key, key_prefix, keyring, mesh, node, node_prefix, operator, peering, query, query_prefix, service, service_prefix, session, session_prefix");
            return Err(parse_error(entry.at, message));
        }
    }
    Ok(rules)
}

fn already_set(what: &str) -> String {
    format!("{what} was already set. Each argument can only be defined once")
}

fn decode_labeled(
    rules: &mut Rules,
    resource: Resource,
    kind: MatchKind,
    word: &str,
    at: Option<Position>,
    value: Value,
) -> Result<(), RulesError> {
    let blocks = match value {
        Value::Object(entries) => entries,
        // HCL1's JSON form may give a resource as a list of objects.
        Value::List(items) => {
            let mut entries = Vec::new();
            for item in items {
                match item {
                    Value::Object(more) => entries.extend(more),
                    other => {
                        let message = format!("{word}: expected objects, got {}", other.kind());
                        return Err(parse_error(at, message));
                    }
                }
            }
            entries
        }
        other => {
            let message = format!(
                "{word}: expected a block such as {word} \"<name>\" {{ policy = \"read\" }}, got {}",
                other.kind()
            );
            return Err(parse_error(at, message));
        }
    };
    for block in blocks {
        let block_at = block.at.or(at);
        let label = block.key;
        let Value::Object(fields) = block.value else {
            let message = format!(
                "{word} {label:?}: expected a block such as {{ policy = \"read\" }}, got {}",
                block.value.kind()
            );
            return Err(parse_error(block_at, message));
        };
        let grant = decode_grant(resource, word, &label, block_at, fields)?;
        let key = RuleKey {
            resource,
            kind,
            label,
        };
        if rules.labeled.contains_key(&key) {
            let what = format!("{word} {:?}", key.label);
            return Err(parse_error(block_at, already_set(&what)));
        }
        rules.labeled.insert(key, grant);
    }
    Ok(())
}

fn decode_grant(
    resource: Resource,
    word: &str,
    label: &str,
    at: Option<Position>,
    fields: Vec<Entry>,
) -> Result<Grant, RulesError> {
    let mut policy = None;
    let mut intentions = None;
    for field in fields {
        let field_at = field.at.or(at);
        let slot = match field.key.as_str() {
            "policy" => &mut policy,
            "intentions" if resource == Resource::Service => &mut intentions,
            other => {
                let allowed = if resource == Resource::Service {
                    "policy and intentions"
                } else {
                    "policy"
                };
                let message = format!(
                    "{word} {label:?}: unknown field {other:?}; {word} rules take {allowed}"
                );
                return Err(parse_error(field_at, message));
            }
        };
        let Value::String(text) = field.value else {
            let message = format!(
                "{word} {label:?}: {} must be a string, got {}",
                field.key,
                field.value.kind()
            );
            return Err(parse_error(field_at, message));
        };
        if slot.is_some() {
            return Err(parse_error(field_at, already_set(&field.key)));
        }
        *slot = Some(text);
    }
    // A missing policy is Consul's empty string, which no rule accepts.
    let policy_text = policy.unwrap_or_default();
    let policy = Disposition::parse(&policy_text, resource == Resource::Key).ok_or_else(|| {
        RulesError::InvalidPolicy {
            rule: word.to_string(),
            value: policy_text.clone(),
        }
    })?;
    let intentions = match intentions {
        None => None,
        Some(text) if text.is_empty() => None,
        Some(text) => {
            Some(
                Disposition::parse(&text, false).ok_or_else(|| RulesError::InvalidPolicy {
                    rule: format!("{word} intentions"),
                    value: text.clone(),
                })?,
            )
        }
    };
    Ok(Grant { policy, intentions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(resource: Resource, kind: MatchKind, label: &str) -> RuleKey {
        RuleKey {
            resource,
            kind,
            label: label.to_string(),
        }
    }

    fn parse_message(text: &str) -> String {
        match parse(text) {
            Ok(rules) => format!("unexpectedly parsed: {rules:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn blank_text_is_no_rules() {
        assert_eq!(parse(""), Ok(Rules::default()));
        assert_eq!(parse("  \n\t "), Ok(Rules::default()));
        assert_eq!(parse("# only a comment\n"), Ok(Rules::default()));
        assert!(Rules::default().is_empty());
        assert!(!Rules::dns().is_empty());
    }

    #[test]
    fn hcl_reads_every_resource() {
        let text = r#"
            acl = "read"
            keyring = "write"
            mesh = "deny"
            operator = "READ"
            peering = "write"
            agent "node-1" { policy = "write" }
            agent_prefix "" { policy = "read" }
            event_prefix "deploy-" { policy = "write" }
            key "app/config" { policy = "list" }
            key_prefix "app/" { policy = "write" }
            node_prefix "" { policy = "read" }
            query "q" { policy = "write" }
            session_prefix "" { policy = "deny" }
            service "web" { policy = "write" intentions = "deny" }
            service_prefix "" { policy = "deny" }
            identity "legacy" { policy = "write" }
        "#;
        let rules = parse(text).expect("valid rules");
        assert_eq!(rules.acl, Some(Disposition::Read));
        assert_eq!(rules.keyring, Some(Disposition::Write));
        assert_eq!(rules.mesh, Some(Disposition::Deny));
        assert_eq!(
            rules.operator,
            Some(Disposition::Read),
            "dispositions are case-insensitive"
        );
        assert_eq!(rules.peering, Some(Disposition::Write));
        assert_eq!(rules.labeled.len(), 10, "identity is accepted and ignored");
        let grant = |key| rules.labeled.get(&key).copied();
        assert_eq!(
            grant(rule(Resource::Key, MatchKind::Exact, "app/config")),
            Some(Grant {
                policy: Disposition::List,
                intentions: None
            })
        );
        assert_eq!(
            grant(rule(Resource::Service, MatchKind::Exact, "web")),
            Some(Grant {
                policy: Disposition::Write,
                intentions: Some(Disposition::Deny)
            })
        );
        assert_eq!(
            grant(rule(Resource::Session, MatchKind::Prefix, "")),
            Some(Grant {
                policy: Disposition::Deny,
                intentions: None
            })
        );
        assert_eq!(
            grant(rule(Resource::Agent, MatchKind::Exact, "node-1")).map(|g| g.policy),
            Some(Disposition::Write)
        );
    }

    #[test]
    fn hcl1_forms_hcl2_refuses_are_accepted() {
        let one_line = r#"agent_prefix "" { policy = "read" } node_prefix "" { policy = "read" } service_prefix "" { policy = "write" } acl = "write""#;
        let rules = parse(one_line).expect("one-line policy");
        assert_eq!(rules.labeled.len(), 3);
        assert_eq!(rules.acl, Some(Disposition::Write));

        let next_line_brace = "agent_prefix \"\"\n{\n  policy = \"read\"\n}\n";
        assert_eq!(
            parse(next_line_brace).map(|rules| rules.labeled.len()),
            Ok(1)
        );

        let commas = "key \"a\" { policy = \"read\", }, key = { \"b\" = { policy = \"write\" } }";
        let rules = parse(commas).expect("commas and object form");
        assert_eq!(rules.labeled.len(), 2);

        let comments = "/* block\ncomment */ // line\n# hash\nkey \"a\" { policy = \"read\" }";
        assert_eq!(parse(comments).map(|rules| rules.labeled.len()), Ok(1));
    }

    #[test]
    fn json_and_hcl_give_equal_rules() {
        let json = r#"{"acl":"write","key_prefix":{"":{"policy":"read"}},"service":{"web":{"policy":"write","intentions":"read"}}}"#;
        let hcl = r#"
            service "web" {
                policy = "write"
                intentions = "read"
            }
            key_prefix "" { policy = "read" }
            acl = "write"
        "#;
        let from_json = parse(json).expect("json");
        assert_eq!(from_json, parse(hcl).expect("hcl"));
        assert_eq!(from_json.labeled.len(), 2);

        let json_list = r#"{"key": [{"a": {"policy": "read"}}, {"b": {"policy": "write"}}]}"#;
        assert_eq!(parse(json_list).map(|rules| rules.labeled.len()), Ok(2));
    }

    #[test]
    fn builtin_texts_parse_to_their_constructors() {
        assert_eq!(
            parse(GLOBAL_MANAGEMENT_TEXT),
            Ok(Rules::global_management())
        );
        assert_eq!(parse(GLOBAL_READ_ONLY_TEXT), Ok(Rules::global_read_only()));
        assert!(GLOBAL_MANAGEMENT_TEXT
            .starts_with("\nacl = \"write\"\nagent_prefix \"\" {\n\tpolicy = \"write\"\n}"));
        assert!(GLOBAL_READ_ONLY_TEXT.ends_with("session_prefix \"\" {\n\tpolicy = \"read\"\n}"));
        assert_ne!(Rules::global_management(), Rules::global_read_only());
    }

    #[test]
    fn templated_policies_match_their_hcl() {
        let service = r#"
            service "web" { policy = "write" }
            service "web-sidecar-proxy" { policy = "write" }
            service_prefix "" { policy = "read" }
            node_prefix "" { policy = "read" }
        "#;
        assert_eq!(parse(service), Ok(Rules::service_identity("web")));
        let node = r#"
            node "n1" { policy = "write" }
            service_prefix "" { policy = "read" }
        "#;
        assert_eq!(parse(node), Ok(Rules::node_identity("n1")));
        let dns = r#"
            node_prefix "" { policy = "read" }
            service_prefix "" { policy = "read" }
            query_prefix "" { policy = "read" }
        "#;
        assert_eq!(parse(dns), Ok(Rules::dns()));
    }

    #[test]
    fn invalid_dispositions_name_the_rule() {
        let cases = [
            (r#"acl = "x""#, r#"Invalid acl policy: "x""#),
            (r#"keyring = "list""#, r#"Invalid keyring policy: "list""#),
            (
                r#"operator = "admin""#,
                r#"Invalid operator policy: "admin""#,
            ),
            (r#"mesh = "x""#, r#"Invalid mesh policy: "x""#),
            (r#"peering = "x""#, r#"Invalid peering policy: "x""#),
            (
                r#"key_prefix "a/" { policy = "x" }"#,
                r#"Invalid key_prefix policy: "x""#,
            ),
            (
                r#"key "a" { policy = "admin" }"#,
                r#"Invalid key policy: "admin""#,
            ),
            (
                r#"service "web" { policy = "list" }"#,
                r#"Invalid service policy: "list""#,
            ),
            (
                r#"node "n" { policy = "list" }"#,
                r#"Invalid node policy: "list""#,
            ),
            (
                r#"agent_prefix "" { policy = "x" }"#,
                r#"Invalid agent_prefix policy: "x""#,
            ),
            (
                r#"event "e" { policy = "x" }"#,
                r#"Invalid event policy: "x""#,
            ),
            (
                r#"query_prefix "" { policy = "x" }"#,
                r#"Invalid query_prefix policy: "x""#,
            ),
            (
                r#"session "n" { policy = "x" }"#,
                r#"Invalid session policy: "x""#,
            ),
            (
                r#"service "web" { intentions = "read" }"#,
                r#"Invalid service policy: """#,
            ),
            (
                r#"service_prefix "" { policy = "read" intentions = "list" }"#,
                r#"Invalid service_prefix intentions policy: "list""#,
            ),
            (
                r#"service "web" { policy = "read" intentions = "x" }"#,
                r#"Invalid service intentions policy: "x""#,
            ),
            (r#"{"acl": "x"}"#, r#"Invalid acl policy: "x""#),
            (
                r#"{"key_prefix": {"": {"policy": "x"}}}"#,
                r#"Invalid key_prefix policy: "x""#,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_message(text), expected, "rules: {text}");
        }
    }

    #[test]
    fn empty_labelless_values_and_intentions_mean_unset() {
        let rules =
            parse(r#"acl = "" service "web" { policy = "deny" intentions = "" }"#).expect("valid");
        assert_eq!(rules.acl, None);
        let web = rules
            .labeled
            .get(&rule(Resource::Service, MatchKind::Exact, "web"));
        assert_eq!(
            web,
            Some(&Grant {
                policy: Disposition::Deny,
                intentions: None
            })
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let cases = [
            (
                "key \"a\" {\n  policy = \"read\"\n",
                "Failed to parse ACL rules: At 3:1: expected '}', got end of input",
            ),
            (
                "key \"a\" {\n  policy \"read\"\n}",
                "Failed to parse ACL rules: At 3:1: expected '{', got '}'",
            ),
            (
                "acl = \"write",
                "Failed to parse ACL rules: At 1:7: literal not terminated",
            ),
            (
                "acl = write",
                "Failed to parse ACL rules: At 1:7: expected a value, got identifier \"write\"",
            ),
            (
                "\n\n   @",
                "Failed to parse ACL rules: At 3:4: illegal char '@'",
            ),
            (
                "/* open",
                "Failed to parse ACL rules: At 1:1: comment not terminated",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_message(text), expected, "rules: {text:?}");
        }
        let json = parse_message("{\"acl\": \"write\",\n \"key\" }");
        assert!(json.starts_with("Failed to parse ACL rules: "), "{json}");
        assert!(json.contains("line 2 column"), "{json}");
    }

    #[test]
    fn shape_errors_are_parse_errors() {
        let cases = [
            ("acl = 1", "Failed to parse ACL rules: At 1:1: acl: expected a string, got a number"),
            ("key_prefix = \"read\"", "Failed to parse ACL rules: At 1:1: key_prefix: expected a block such as key_prefix \"<name>\" { policy = \"read\" }, got a string"),
            ("key \"a\" { policy = true }", "Failed to parse ACL rules: At 1:11: key \"a\": policy must be a string, got a boolean"),
            ("key \"a\" { policy = \"read\" intentions = \"read\" }", "Failed to parse ACL rules: At 1:27: key \"a\": unknown field \"intentions\"; key rules take policy"),
            ("key { policy = \"read\" }", "Failed to parse ACL rules: At 1:7: key \"policy\": expected a block such as { policy = \"read\" }, got a string"),
            ("{\"acl\": true}", "Failed to parse ACL rules: acl: expected a string, got a boolean"),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_message(text), expected, "rules: {text:?}");
        }
    }

    #[test]
    fn unknown_top_level_keys_are_refused_by_name() {
        let message = parse_message("servce \"web\" { policy = \"read\" }");
        assert!(
            message.starts_with("Failed to parse ACL rules: At 1:1: unknown rule \"servce\""),
            "{message}"
        );
        let message = parse_message(r#"{"namespace_prefix": {}}"#);
        assert!(
            message.contains("unknown rule \"namespace_prefix\""),
            "{message}"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let cases = [
            (
                "key_prefix \"a/\" { policy = \"read\" }\nkey_prefix \"a/\" { policy = \"write\" }",
                "Failed to parse ACL rules: At 2:12: key_prefix \"a/\" was already set. Each argument can only be defined once",
            ),
            (
                "acl = \"read\"\nacl = \"write\"",
                "Failed to parse ACL rules: At 2:1: acl was already set. Each argument can only be defined once",
            ),
            (
                "key \"a\" {\n policy = \"read\"\n policy = \"write\"\n}",
                "Failed to parse ACL rules: At 3:2: policy was already set. Each argument can only be defined once",
            ),
            (
                r#"{"service": {"web": {"policy": "read"}}, "service": {"web": {"policy": "write"}}}"#,
                "Failed to parse ACL rules: service \"web\" was already set. Each argument can only be defined once",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_message(text), expected, "rules: {text:?}");
        }
        // Same label as exact and as prefix are two different rules, not a duplicate.
        let both = parse("key \"a\" { policy = \"read\" }\nkey_prefix \"a\" { policy = \"deny\" }");
        assert_eq!(both.map(|rules| rules.labeled.len()), Ok(2));
    }

    #[test]
    fn hostile_nesting_is_an_error_not_a_crash() {
        let text = format!("acl = {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_message(&text).contains("nesting too deep"));
        let escapes = "acl = \"\\u00e9\\q\"";
        assert_eq!(
            parse_message(escapes),
            "Failed to parse ACL rules: At 1:14: unknown escape sequence"
        );
    }

    #[test]
    fn precedence_is_deny_write_list_read() {
        use Disposition::*;
        assert_eq!(Read.strongest(List), List);
        assert_eq!(List.strongest(Write), Write);
        assert_eq!(Deny.strongest(Write), Deny);
        assert_eq!(Write.strongest(Read), Write);
        assert_eq!(Disposition::strongest_of(None, Some(Read)), Some(Read));
        assert_eq!(Disposition::strongest_of(Some(Deny), None), Some(Deny));
        assert_eq!(Disposition::strongest_of(None, None), None);
    }
}
