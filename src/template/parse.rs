//! Go's text/template syntax, lexed and parsed into a tree: text, actions with pipelines
//! (commands joined by `|`, variable declarations and assignments), `if`/`range`/`with` with
//! `else` (and `else if`, `else with`), `break`, `continue`, comments, trim markers (`{{- `,
//! ` -}}`) and custom delimiters. Errors carry the template's name, line and column.

use serde_json::{Number, Value};

/// Where something is in a template: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A template that does not parse or does not execute, as `name:line:column: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name}:{}:{}: {message}", pos.line, pos.column)]
pub struct TemplateError {
    pub name: String,
    pub pos: Pos,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Text(String),
    Action(Pipe),
    If(Branch),
    Range(Branch),
    With(Branch),
    Break(Pos),
    Continue(Pos),
}

/// `if`, `range` or `with`: its pipeline, body, and what `else` holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub pipe: Pipe,
    pub list: Vec<Node>,
    pub otherwise: Vec<Node>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pipe {
    pub pos: Pos,
    /// Variables declared (`:=`) or assigned (`=`) with the result.
    pub vars: Vec<String>,
    pub assign: bool,
    pub commands: Vec<Command>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub pos: Pos,
    pub args: Vec<Arg>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// `.` followed by any fields: `.`, `.Name`, `.Node.Address`.
    Dot(Vec<String>),
    /// `$x.Field...`.
    Var(String, Vec<String>),
    /// A function name.
    Ident(String),
    Literal(Value),
    /// `(pipeline).Field...`.
    Nested(Box<Pipe>, Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Text(String),
    Open,
    Close,
    Ident(String),
    /// `.Name`, and whether it follows an operand with no space (a field of it).
    Field(String, bool),
    Dot,
    Var(String),
    Str(String),
    Num(Number),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
}

struct Lexer<'a> {
    name: &'a str,
    src: &'a str,
    at: usize,
    left: &'a str,
    right: &'a str,
    tokens: Vec<(Token, Pos)>,
}

impl<'a> Lexer<'a> {
    fn pos_of(&self, at: usize) -> Pos {
        let before = &self.src[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(at, |newline| at - newline - 1) + 1;
        Pos { line, column }
    }

    fn error(&self, at: usize, message: impl Into<String>) -> TemplateError {
        TemplateError {
            name: self.name.to_string(),
            pos: self.pos_of(at),
            message: message.into(),
        }
    }

    fn run(mut self) -> Result<Vec<(Token, Pos)>, TemplateError> {
        let mut trim_next = false;
        while self.at < self.src.len() {
            let rest = &self.src[self.at..];
            let open = rest.find(self.left).unwrap_or(rest.len());
            let mut text = rest[..open].to_string();
            if trim_next {
                text = text.trim_start().to_string();
            }
            let action_at = self.at + open;
            if open == rest.len() {
                if !text.is_empty() {
                    self.tokens.push((Token::Text(text), self.pos_of(self.at)));
                }
                break;
            }
            let mut inside = action_at + self.left.len();
            let trim_left = self.src[inside..].starts_with("- ")
                || self.src[inside..].starts_with("-\t")
                || self.src[inside..].starts_with("-\n");
            if trim_left {
                text = text.trim_end().to_string();
                inside += 1;
            }
            if !text.is_empty() {
                self.tokens.push((Token::Text(text), self.pos_of(self.at)));
            }
            let after_space =
                inside + self.src[inside..].len() - self.src[inside..].trim_start().len();
            if self.src[after_space..].starts_with("/*") {
                let end = self.src[after_space..]
                    .find("*/")
                    .ok_or_else(|| self.error(action_at, "unclosed comment"))?;
                let mut close = after_space + end + 2;
                close += self.src[close..].len() - self.src[close..].trim_start().len();
                trim_next = self.src[close..].starts_with(&format!("-{}", self.right));
                if trim_next {
                    close += 1;
                }
                if !self.src[close..].starts_with(self.right) {
                    return Err(self.error(action_at, "comment ends before closing delimiter"));
                }
                self.at = close + self.right.len();
                continue;
            }
            self.tokens.push((Token::Open, self.pos_of(action_at)));
            self.at = inside;
            trim_next = self.action()?;
        }
        Ok(self.tokens)
    }

    /// Lexes one action up to its closing delimiter; whether it ends with ` -}}`.
    fn action(&mut self) -> Result<bool, TemplateError> {
        loop {
            let rest = &self.src[self.at..];
            let Some(c) = rest.chars().next() else {
                return Err(self.error(self.at, "unclosed action"));
            };
            let start = self.at;
            if rest.starts_with(&format!(" -{}", self.right)) {
                self.at += 2 + self.right.len();
                self.tokens.push((Token::Close, self.pos_of(start)));
                return Ok(true);
            }
            if rest.starts_with(self.right) {
                self.at += self.right.len();
                self.tokens.push((Token::Close, self.pos_of(start)));
                return Ok(false);
            }
            let pos = self.pos_of(start);
            match c {
                ' ' | '\t' | '\r' | '\n' => self.at += 1,
                '|' => {
                    self.at += 1;
                    self.tokens.push((Token::Pipe, pos));
                }
                '(' => {
                    self.at += 1;
                    self.tokens.push((Token::LParen, pos));
                }
                ')' => {
                    self.at += 1;
                    self.tokens.push((Token::RParen, pos));
                }
                ',' => {
                    self.at += 1;
                    self.tokens.push((Token::Comma, pos));
                }
                ':' if rest.starts_with(":=") => {
                    self.at += 2;
                    self.tokens.push((Token::Declare, pos));
                }
                '=' => {
                    self.at += 1;
                    self.tokens.push((Token::Assign, pos));
                }
                '"' => {
                    let text = self.quoted()?;
                    self.tokens.push((Token::Str(text), pos));
                }
                '`' => {
                    let end = rest[1..]
                        .find('`')
                        .ok_or_else(|| self.error(start, "unterminated raw quoted string"))?;
                    self.tokens
                        .push((Token::Str(rest[1..1 + end].to_string()), pos));
                    self.at += end + 2;
                }
                '.' if rest[1..].starts_with(|c: char| c.is_alphabetic() || c == '_') => {
                    let name = word(&rest[1..]);
                    let adjacent = start > 0
                        && !self.src[..start].ends_with(char::is_whitespace)
                        && matches!(
                            self.tokens.last(),
                            Some((Token::Field(..) | Token::Var(_) | Token::RParen, _))
                        );
                    self.at += 1 + name.len();
                    self.tokens
                        .push((Token::Field(name.to_string(), adjacent), pos));
                }
                '.' => {
                    self.at += 1;
                    self.tokens.push((Token::Dot, pos));
                }
                '$' => {
                    let name = word(&rest[1..]);
                    self.at += 1 + name.len();
                    self.tokens.push((Token::Var(format!("${name}")), pos));
                }
                '-' | '+' | '0'..='9' => {
                    let len = rest
                        .char_indices()
                        .skip(1)
                        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_')))
                        .map_or(rest.len(), |(at, _)| at);
                    let text = rest[..len].replace('_', "");
                    let number = parse_number(&text).ok_or_else(|| {
                        self.error(start, format!("bad number syntax: {:?}", &rest[..len]))
                    })?;
                    self.at += len;
                    self.tokens.push((Token::Num(number), pos));
                }
                c if c.is_alphabetic() || c == '_' => {
                    let name = word(rest);
                    self.at += name.len();
                    self.tokens.push((Token::Ident(name.to_string()), pos));
                }
                other => {
                    return Err(self.error(start, format!("unexpected {other:?} in command")));
                }
            }
        }
    }

    /// A double-quoted string with Go's escapes.
    fn quoted(&mut self) -> Result<String, TemplateError> {
        let start = self.at;
        let mut out = String::new();
        let mut chars = self.src[self.at + 1..].char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += offset + 2;
                    return Ok(out);
                }
                '\n' => break,
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some('\\') => out.push('\\'),
                    Some('"') => out.push('"'),
                    Some('\'') => out.push('\''),
                    Some('0') => out.push('\0'),
                    other => {
                        return Err(self.error(start, format!("unknown escape sequence {other:?}")))
                    }
                },
                c => out.push(c),
            }
        }
        Err(self.error(start, "unterminated quoted string"))
    }
}

fn word(text: &str) -> &str {
    let len = text
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(text.len(), |(at, _)| at);
    &text[..len]
}

fn parse_number(text: &str) -> Option<Number> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return i64::from_str_radix(hex, 16).ok().map(Number::from);
    }
    if let Ok(int) = text.parse::<i64>() {
        return Some(Number::from(int));
    }
    text.parse::<f64>().ok().and_then(Number::from_f64)
}

/// Parses `src` with the `{{ }}` delimiters, or the given ones.
pub fn parse(
    name: &str,
    src: &str,
    delims: Option<(&str, &str)>,
) -> Result<Vec<Node>, TemplateError> {
    let (left, right) = delims.unwrap_or(("{{", "}}"));
    let tokens = Lexer {
        name,
        src,
        at: 0,
        left,
        right,
        tokens: Vec::new(),
    }
    .run()?;
    let mut parser = Parser {
        name,
        tokens,
        at: 0,
    };
    let (list, end) = parser.list()?;
    match end {
        None => Ok(list),
        Some((keyword, pos)) => Err(parser.error(pos, format!("unexpected {{{{{keyword}}}}}"))),
    }
}

/// What ended a list: `end` or `else`, and where.
type Ending = (String, Pos);

struct Parser<'a> {
    name: &'a str,
    tokens: Vec<(Token, Pos)>,
    at: usize,
}

impl Parser<'_> {
    fn error(&self, pos: Pos, message: impl Into<String>) -> TemplateError {
        TemplateError {
            name: self.name.to_string(),
            pos,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<&(Token, Pos)> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<(Token, Pos)> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn last_pos(&self) -> Pos {
        self.tokens.last().map(|(_, pos)| *pos).unwrap_or_default()
    }

    fn expect_close(&mut self, what: &str) -> Result<(), TemplateError> {
        match self.next() {
            Some((Token::Close, _)) => Ok(()),
            Some((token, pos)) => Err(self.error(pos, format!("unexpected {token:?} in {what}"))),
            None => Err(self.error(self.last_pos(), format!("unclosed {what}"))),
        }
    }

    /// Nodes up to an `{{end}}` or `{{else ...}}` (returned, with its position, the `else`
    /// action left unconsumed past the keyword) or the end of input (`None`).
    fn list(&mut self) -> Result<(Vec<Node>, Option<Ending>), TemplateError> {
        let mut nodes = Vec::new();
        while let Some((token, pos)) = self.next() {
            match token {
                Token::Text(text) => nodes.push(Node::Text(text)),
                Token::Open => {
                    if let Some((Token::Ident(keyword), _)) = self.peek().cloned() {
                        match keyword.as_str() {
                            "end" => {
                                self.at += 1;
                                self.expect_close("end")?;
                                nodes.shrink_to_fit();
                                return Ok((nodes, Some(("end".into(), pos))));
                            }
                            "else" => {
                                self.at += 1;
                                nodes.shrink_to_fit();
                                return Ok((nodes, Some(("else".into(), pos))));
                            }
                            "if" | "range" | "with" => {
                                self.at += 1;
                                nodes.push(self.branch(&keyword, pos)?);
                                continue;
                            }
                            "break" | "continue" => {
                                self.at += 1;
                                self.expect_close(&keyword)?;
                                nodes.push(match keyword.as_str() {
                                    "break" => Node::Break(pos),
                                    _ => Node::Continue(pos),
                                });
                                continue;
                            }
                            "define" | "template" | "block" => {
                                return Err(self.error(
                                    pos,
                                    format!(
                                        "{{{{{keyword}}}}} is not supported by concord template"
                                    ),
                                ))
                            }
                            _ => {}
                        }
                    }
                    let pipe = self.pipe(pos, true)?;
                    self.expect_close("action")?;
                    nodes.push(Node::Action(pipe));
                }
                other => return Err(self.error(pos, format!("unexpected {other:?}"))),
            }
        }
        nodes.shrink_to_fit();
        Ok((nodes, None))
    }

    fn branch(&mut self, keyword: &str, pos: Pos) -> Result<Node, TemplateError> {
        let pipe = self.pipe(pos, true)?;
        if pipe.commands.is_empty() {
            return Err(self.error(pos, format!("missing value for {keyword}")));
        }
        self.expect_close(keyword)?;
        let (list, end) = self.list()?;
        let otherwise = match end {
            Some((word, _)) if word == "end" => Vec::new(),
            Some((_, else_pos)) => match self.peek().cloned() {
                // `{{else if ...}}` / `{{else with ...}}`: a nested branch sharing our `end`.
                Some((Token::Ident(next), _)) if next == keyword && keyword != "range" => {
                    self.at += 1;
                    vec![self.branch(keyword, else_pos)?]
                }
                _ => {
                    self.expect_close("else")?;
                    let (otherwise, end) = self.list()?;
                    match end {
                        Some((word, _)) if word == "end" => otherwise,
                        Some((word, pos)) => {
                            return Err(self.error(pos, format!("unexpected {{{{{word}}}}}")))
                        }
                        None => return Err(self.error(pos, format!("unexpected EOF in {keyword}"))),
                    }
                }
            },
            None => return Err(self.error(pos, format!("unexpected EOF in {keyword}"))),
        };
        let branch = Branch {
            pipe,
            list,
            otherwise,
        };
        Ok(match keyword {
            "if" => Node::If(branch),
            "range" => Node::Range(branch),
            _ => Node::With(branch),
        })
    }

    /// A pipeline up to `)` or the action's close (neither consumed).
    fn pipe(&mut self, pos: Pos, declarations: bool) -> Result<Pipe, TemplateError> {
        let mut vars = Vec::new();
        let mut assign = false;
        if declarations {
            let save = self.at;
            let mut names = Vec::new();
            while let Some((Token::Var(name), _)) = self.peek().cloned() {
                self.at += 1;
                names.push(name);
                match self.peek() {
                    Some((Token::Comma, _)) if names.len() < 2 => self.at += 1,
                    _ => break,
                }
            }
            match self.peek() {
                Some((Token::Declare, _)) if !names.is_empty() => {
                    self.at += 1;
                    vars = names;
                }
                Some((Token::Assign, _)) if !names.is_empty() => {
                    self.at += 1;
                    vars = names;
                    assign = true;
                }
                _ => self.at = save,
            }
        }
        let mut commands = Vec::new();
        loop {
            match self.peek() {
                Some((Token::Close, _)) | Some((Token::RParen, _)) | None => break,
                _ => {}
            }
            commands.push(self.command()?);
            match self.peek() {
                Some((Token::Pipe, pipe_pos)) => {
                    let pipe_pos = *pipe_pos;
                    self.at += 1;
                    if matches!(
                        self.peek(),
                        Some((Token::Close, _)) | Some((Token::RParen, _))
                    ) {
                        return Err(self.error(pipe_pos, "missing command after |"));
                    }
                }
                _ => break,
            }
        }
        if !vars.is_empty() && commands.is_empty() {
            return Err(self.error(pos, "missing value for declaration"));
        }
        commands.shrink_to_fit();
        Ok(Pipe {
            pos,
            vars,
            assign,
            commands,
        })
    }

    fn command(&mut self) -> Result<Command, TemplateError> {
        let pos = self.peek().map(|(_, pos)| *pos).unwrap_or_default();
        let mut args = Vec::new();
        loop {
            match self.peek().cloned() {
                None
                | Some((Token::Close, _))
                | Some((Token::RParen, _))
                | Some((Token::Pipe, _)) => break,
                Some((token, token_pos)) => {
                    self.at += 1;
                    let arg = match token {
                        Token::Dot => Arg::Dot(self.fields()),
                        Token::Field(name, _) => {
                            let mut fields = vec![name];
                            fields.extend(self.fields());
                            Arg::Dot(fields)
                        }
                        Token::Var(name) => Arg::Var(name, self.fields()),
                        Token::Ident(name) => match name.as_str() {
                            "true" => Arg::Literal(Value::Bool(true)),
                            "false" => Arg::Literal(Value::Bool(false)),
                            "nil" => Arg::Literal(Value::Null),
                            _ => Arg::Ident(name),
                        },
                        Token::Str(text) => Arg::Literal(Value::String(text)),
                        Token::Num(number) => Arg::Literal(Value::Number(number)),
                        Token::LParen => {
                            let inner = self.pipe(token_pos, false)?;
                            match self.next() {
                                Some((Token::RParen, _)) => {}
                                _ => return Err(self.error(token_pos, "unclosed left paren")),
                            }
                            Arg::Nested(Box::new(inner), self.fields())
                        }
                        other => {
                            return Err(
                                self.error(token_pos, format!("unexpected {other:?} in operand"))
                            )
                        }
                    };
                    args.push(arg);
                }
            }
        }
        if args.is_empty() {
            return Err(self.error(pos, "empty command"));
        }
        // Parsed trees live as long as the renderer: no spare capacity (a process rendering
        // 100 templates kept 2.4 MB of trees, a third of it unused).
        args.shrink_to_fit();
        Ok(Command { pos, args })
    }

    /// `.Field` tokens right after an operand.
    fn fields(&mut self) -> Vec<String> {
        let mut fields = Vec::new();
        while let Some((Token::Field(name, true), _)) = self.peek().cloned() {
            self.at += 1;
            fields.push(name);
        }
        fields
    }
}
