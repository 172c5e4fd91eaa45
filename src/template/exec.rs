//! Runs a parsed template against JSON data: Go's truth, printing and comparison rules,
//! variables scoped to their block, `range` over lists, maps (in key order, as Go sorts
//! them) and integers, and Go's builtin functions (`and`, `or`, `not`, `len`, `index`,
//! `slice`, `print`, `printf`, `println`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `html`, `js`,
//! `urlquery`). Any other function is asked of `Functions`.

use serde_json::{Map, Number, Value};

use super::parse::{Arg, Branch, Command, Node, Pipe, Pos, TemplateError};

/// Functions beyond Go's builtins (consul-template's).
pub trait Functions {
    /// `None` when there is no such function.
    fn call(&mut self, name: &str, args: Vec<Value>) -> Option<Result<Value, String>>;
}

/// No functions beyond the builtins.
pub struct NoFunctions;

impl Functions for NoFunctions {
    fn call(&mut self, _: &str, _: Vec<Value>) -> Option<Result<Value, String>> {
        None
    }
}

enum Flow {
    Normal,
    Break,
    Continue,
}

struct State<'a> {
    name: &'a str,
    functions: &'a mut dyn Functions,
    vars: Vec<(String, Value)>,
    out: String,
}

/// Renders `nodes` with `data` as `.` and `$`.
pub fn execute(
    name: &str,
    nodes: &[Node],
    data: &Value,
    functions: &mut dyn Functions,
) -> Result<String, TemplateError> {
    let mut state = State {
        name,
        functions,
        vars: vec![("$".into(), data.clone())],
        out: String::new(),
    };
    state.walk_list(data, nodes)?;
    Ok(state.out)
}

/// Go's truth: false, 0, nil and empty strings, lists and maps are false.
pub fn truth(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// How Go's `fmt` prints a value with `%v`.
pub fn print(value: &Value) -> String {
    match value {
        Value::Null => "<no value>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(print).collect::<Vec<_>>().join(" ")
        ),
        Value::Object(map) => format!(
            "map[{}]",
            sorted(map)
                .map(|(key, value)| format!("{key}:{}", print(value)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

/// A map's entries in key order, as Go's range and fmt see them.
fn sorted(map: &Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries.into_iter()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "slice",
        Value::Object(_) => "map",
    }
}

impl State<'_> {
    fn error(&self, pos: Pos, message: impl Into<String>) -> TemplateError {
        TemplateError {
            name: self.name.to_string(),
            pos,
            message: message.into(),
        }
    }

    fn walk_list(&mut self, dot: &Value, nodes: &[Node]) -> Result<Flow, TemplateError> {
        for node in nodes {
            match self.walk(dot, node)? {
                Flow::Normal => {}
                other => return Ok(other),
            }
        }
        Ok(Flow::Normal)
    }

    /// Runs a block's body with its variables dropped at its end.
    fn scoped(&mut self, dot: &Value, nodes: &[Node]) -> Result<Flow, TemplateError> {
        let mark = self.vars.len();
        let flow = self.walk_list(dot, nodes);
        self.vars.truncate(mark);
        flow
    }

    fn walk(&mut self, dot: &Value, node: &Node) -> Result<Flow, TemplateError> {
        match node {
            Node::Text(text) => self.out.push_str(text),
            Node::Action(pipe) => {
                let value = self.pipe(dot, pipe)?;
                if pipe.vars.is_empty() {
                    self.out.push_str(&print(&value));
                }
            }
            Node::If(branch) => return self.choose(dot, branch, false),
            Node::With(branch) => return self.choose(dot, branch, true),
            Node::Range(branch) => return self.range(dot, branch),
            Node::Break(_) => return Ok(Flow::Break),
            Node::Continue(_) => return Ok(Flow::Continue),
        }
        Ok(Flow::Normal)
    }

    /// `if` and `with`: the body when the pipeline's value is true (with it as the dot for
    /// `with`), else the `else` part; variables the pipeline declared end with the block.
    fn choose(&mut self, dot: &Value, branch: &Branch, with: bool) -> Result<Flow, TemplateError> {
        let mark = self.vars.len();
        let value = self.pipe(dot, &branch.pipe)?;
        let flow = match (truth(&value), with) {
            (true, true) => self.scoped(&value, &branch.list),
            (true, false) => self.scoped(dot, &branch.list),
            (false, _) => self.scoped(dot, &branch.otherwise),
        };
        self.vars.truncate(mark);
        flow
    }

    fn range(&mut self, dot: &Value, branch: &Branch) -> Result<Flow, TemplateError> {
        let pipe = &branch.pipe;
        // The variables name the key and element, not the whole value.
        let whole = Pipe {
            vars: Vec::new(),
            assign: false,
            ..pipe.clone()
        };
        let value = self.pipe(dot, &whole)?;
        let items: Vec<(Value, Value)> = match &value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(index, item)| (Value::from(index), item.clone()))
                .collect(),
            Value::Object(map) => sorted(map)
                .map(|(key, item)| (Value::String(key.clone()), item.clone()))
                .collect(),
            Value::Number(n) if n.as_i64().is_some() => (0..n.as_i64().unwrap_or(0).max(0))
                .map(|i| (Value::from(i), Value::from(i)))
                .collect(),
            Value::Null => Vec::new(),
            other => {
                return Err(self.error(
                    pipe.pos,
                    format!("range can't iterate over {}", print(other)),
                ))
            }
        };
        if items.is_empty() {
            return self.scoped(dot, &branch.otherwise);
        }
        for (key, item) in items {
            let mark = self.vars.len();
            match pipe.vars.as_slice() {
                [element] => self.vars.push((element.clone(), item.clone())),
                [key_var, element] => {
                    self.vars.push((key_var.clone(), key));
                    self.vars.push((element.clone(), item.clone()));
                }
                _ => {}
            }
            let flow = self.scoped(&item, &branch.list);
            self.vars.truncate(mark);
            match flow? {
                Flow::Break => break,
                Flow::Continue | Flow::Normal => {}
            }
        }
        Ok(Flow::Normal)
    }

    fn pipe(&mut self, dot: &Value, pipe: &Pipe) -> Result<Value, TemplateError> {
        let mut value: Option<Value> = None;
        for command in &pipe.commands {
            value = Some(self.command(dot, command, value.take())?);
        }
        let value = value.unwrap_or(Value::Null);
        match (pipe.assign, pipe.vars.as_slice()) {
            (false, [name]) => self.vars.push((name.clone(), value.clone())),
            (true, [name]) => match self.vars.iter_mut().rev().find(|(var, _)| var == name) {
                Some(slot) => slot.1 = value.clone(),
                None => return Err(self.error(pipe.pos, format!("undefined variable: {name}"))),
            },
            _ => {}
        }
        Ok(value)
    }

    fn var(&self, pos: Pos, name: &str) -> Result<Value, TemplateError> {
        self.vars
            .iter()
            .rev()
            .find(|(var, _)| var == name)
            .map(|(_, value)| value.clone())
            .ok_or_else(|| self.error(pos, format!("undefined variable: {name}")))
    }

    fn fields(
        &self,
        pos: Pos,
        mut value: Value,
        fields: &[String],
    ) -> Result<Value, TemplateError> {
        for field in fields {
            value = match value {
                // A missing key reads as no value, as from a Go map.
                Value::Object(mut map) => map.remove(field).unwrap_or(Value::Null),
                Value::Null => {
                    return Err(self.error(pos, format!("nil pointer evaluating .{field}")))
                }
                other => {
                    return Err(self.error(
                        pos,
                        format!("can't evaluate field {field} in type {}", kind(&other)),
                    ))
                }
            };
        }
        Ok(value)
    }

    fn arg(&mut self, dot: &Value, pos: Pos, arg: &Arg) -> Result<Value, TemplateError> {
        match arg {
            Arg::Dot(fields) => self.fields(pos, dot.clone(), fields),
            Arg::Var(name, fields) => {
                let value = self.var(pos, name)?;
                self.fields(pos, value, fields)
            }
            Arg::Literal(value) => Ok(value.clone()),
            Arg::Nested(pipe, fields) => {
                let value = self.pipe(dot, pipe)?;
                self.fields(pos, value, fields)
            }
            Arg::Ident(name) => self.call(dot, pos, name, &[], None),
        }
    }

    fn command(
        &mut self,
        dot: &Value,
        command: &Command,
        piped: Option<Value>,
    ) -> Result<Value, TemplateError> {
        let pos = command.pos;
        match &command.args[..] {
            [Arg::Ident(name), rest @ ..] => self.call(dot, pos, name, rest, piped),
            [single] if piped.is_none() => self.arg(dot, pos, single),
            [first, ..] => Err(self.error(
                pos,
                format!("can't give argument to non-function {}", describe(first)),
            )),
            [] => Err(self.error(pos, "empty command")),
        }
    }

    fn call(
        &mut self,
        dot: &Value,
        pos: Pos,
        name: &str,
        args: &[Arg],
        piped: Option<Value>,
    ) -> Result<Value, TemplateError> {
        // `and` and `or` stop at the first argument that decides them.
        if matches!(name, "and" | "or") {
            let mut last = Value::Null;
            let count = args.len() + usize::from(piped.is_some());
            if count == 0 {
                return Err(self.error(
                    pos,
                    format!("wrong number of args for {name}: want at least 1 got 0"),
                ));
            }
            for arg in args {
                last = self.arg(dot, pos, arg)?;
                if truth(&last) == (name == "or") {
                    return Ok(last);
                }
            }
            return Ok(piped.unwrap_or(last));
        }
        let mut values = Vec::with_capacity(args.len() + 1);
        for arg in args {
            values.push(self.arg(dot, pos, arg)?);
        }
        values.extend(piped);
        let result = match builtin(name, &values) {
            Some(result) => result,
            None => match self.functions.call(name, values) {
                Some(result) => result,
                None => return Err(self.error(pos, format!("function {name:?} not defined"))),
            },
        };
        result.map_err(|message| self.error(pos, format!("error calling {name}: {message}")))
    }
}

fn describe(arg: &Arg) -> String {
    match arg {
        Arg::Dot(fields) if fields.is_empty() => ".".into(),
        Arg::Dot(fields) => format!(".{}", fields.join(".")),
        Arg::Var(name, _) => name.clone(),
        Arg::Literal(value) => print(value),
        Arg::Nested(..) => "(pipeline)".into(),
        Arg::Ident(name) => name.clone(),
    }
}

fn count(name: &str, args: &[Value], want: usize) -> Result<(), String> {
    match args.len() == want {
        true => Ok(()),
        false => Err(format!(
            "wrong number of args for {name}: want {want} got {}",
            args.len()
        )),
    }
}

fn builtin(name: &str, args: &[Value]) -> Option<Result<Value, String>> {
    let result = match name {
        "not" => count(name, args, 1).map(|()| Value::Bool(!truth(&args[0]))),
        "len" => count(name, args, 1).and_then(|()| match &args[0] {
            Value::String(s) => Ok(Value::from(s.len())),
            Value::Array(a) => Ok(Value::from(a.len())),
            Value::Object(o) => Ok(Value::from(o.len())),
            other => Err(format!("len of type {}", kind(other))),
        }),
        "index" => index(args),
        "slice" => slice(args),
        "print" => Ok(Value::String(sprint(args))),
        "println" => Ok(Value::String(
            args.iter().map(print).collect::<Vec<_>>().join(" ") + "\n",
        )),
        "printf" => match args.split_first() {
            Some((Value::String(format), rest)) => Ok(Value::String(printf(format, rest))),
            _ => Err("printf needs a format string".into()),
        },
        "eq" => equal_any(args),
        "ne" => count(name, args, 2)
            .and_then(|()| compare(&args[0], &args[1]))
            .map(|order| Value::Bool(order != Some(std::cmp::Ordering::Equal))),
        "lt" | "le" | "gt" | "ge" => count(name, args, 2).and_then(|()| {
            let order = compare(&args[0], &args[1])?
                .ok_or_else(|| format!("invalid type for comparison: {}", kind(&args[0])))?;
            Ok(Value::Bool(match name {
                "lt" => order.is_lt(),
                "le" => order.is_le(),
                "gt" => order.is_gt(),
                _ => order.is_ge(),
            }))
        }),
        "html" => Ok(Value::String(
            sprint(args)
                .replace('&', "&amp;")
                .replace('\'', "&#39;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&#34;"),
        )),
        "js" => Ok(Value::String(
            sprint(args)
                .replace('\\', "\\\\")
                .replace('\'', "\\'")
                .replace('"', "\\\"")
                .replace('<', "\\u003C")
                .replace('>', "\\u003E"),
        )),
        "urlquery" => Ok(Value::String(
            percent_encoding::utf8_percent_encode(&sprint(args), QUERY).to_string(),
        )),
        _ => return None,
    };
    Some(result)
}

/// Everything but Go's unreserved characters, with space as `+` done by the caller.
const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Go's `fmt.Sprint`: a space between operands when neither is a string.
fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 && !matches!(arg, Value::String(_)) && !matches!(args[i - 1], Value::String(_)) {
            out.push(' ');
        }
        out.push_str(&print(arg));
    }
    out
}

fn as_index(value: &Value) -> Result<usize, String> {
    value
        .as_i64()
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| format!("cannot index with {}", print(value)))
}

fn index(args: &[Value]) -> Result<Value, String> {
    let Some((first, keys)) = args.split_first() else {
        return Err("wrong number of args for index: want at least 1 got 0".into());
    };
    let mut value = first.clone();
    for key in keys {
        value = match (value, key) {
            (Value::Array(items), key) => {
                let at = as_index(key)?;
                items
                    .get(at)
                    .cloned()
                    .ok_or_else(|| format!("index out of range: {at}"))?
            }
            (Value::Object(mut map), Value::String(key)) => map.remove(key).unwrap_or(Value::Null),
            (Value::String(s), key) => {
                let at = as_index(key)?;
                Value::from(
                    *s.as_bytes()
                        .get(at)
                        .ok_or_else(|| format!("index out of range: {at}"))?,
                )
            }
            (Value::Null, _) => return Err("index of untyped nil".into()),
            (other, _) => return Err(format!("can't index item of type {}", kind(&other))),
        };
    }
    Ok(value)
}

fn slice(args: &[Value]) -> Result<Value, String> {
    let Some((first, bounds)) = args.split_first() else {
        return Err("wrong number of args for slice: want at least 1 got 0".into());
    };
    let len = match first {
        Value::String(s) => s.len(),
        Value::Array(a) => a.len(),
        other => return Err(format!("can't slice item of type {}", kind(other))),
    };
    let start = bounds.first().map(as_index).transpose()?.unwrap_or(0);
    let end = bounds.get(1).map(as_index).transpose()?.unwrap_or(len);
    if start > end || end > len {
        return Err(format!("index out of range: {start}:{end}"));
    }
    Ok(match first {
        Value::String(s) => Value::String(
            s.get(start..end)
                .ok_or("slice splits a character")?
                .to_string(),
        ),
        Value::Array(a) => Value::Array(a[start..end].to_vec()),
        _ => Value::Null,
    })
}

/// Orders two basic values of one kind; `None` for kinds without an order (bools).
fn compare(a: &Value, b: &Value) -> Result<Option<std::cmp::Ordering>, String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Ok(number_order(x, y)),
        (Value::String(x), Value::String(y)) => Ok(Some(x.cmp(y))),
        (Value::Bool(x), Value::Bool(y)) => Ok((x == y).then_some(std::cmp::Ordering::Equal)),
        (Value::Null, Value::Null) => Ok(Some(std::cmp::Ordering::Equal)),
        _ => Err("incompatible types for comparison".into()),
    }
}

fn number_order(x: &Number, y: &Number) -> Option<std::cmp::Ordering> {
    match (x.as_i64(), y.as_i64()) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
    }
}

fn equal_any(args: &[Value]) -> Result<Value, String> {
    let Some((first, others)) = args.split_first() else {
        return Err("missing argument for comparison".into());
    };
    if others.is_empty() {
        return Err("missing argument for comparison".into());
    }
    for other in others {
        if compare(first, other)? == Some(std::cmp::Ordering::Equal) {
            return Ok(Value::Bool(true));
        }
    }
    Ok(Value::Bool(false))
}

/// Go's `fmt.Sprintf` for the verbs templates use: `%v %s %d %q %f %t %x %X %%` with
/// flags `-`, `0`, `+`, width and precision.
pub fn printf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero, mut plus) = (false, false, false);
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut digits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            precision = Some(digits.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let text = match (verb, arg) {
            ('d', Value::Number(n)) => match n.as_i64() {
                Some(i) if plus && i >= 0 => format!("+{i}"),
                Some(i) => i.to_string(),
                None => format!("%!d(float64={n})"),
            },
            ('f' | 'F', Value::Number(n)) => {
                let f = n.as_f64().unwrap_or(0.0);
                format!("{f:.prec$}", prec = precision.unwrap_or(6))
            }
            ('x', Value::Number(n)) => n
                .as_i64()
                .map_or_else(|| n.to_string(), |i| format!("{i:x}")),
            ('X', Value::Number(n)) => n
                .as_i64()
                .map_or_else(|| n.to_string(), |i| format!("{i:X}")),
            ('x', Value::String(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
            ('q', Value::String(s)) => format!("{s:?}"),
            ('t', Value::Bool(b)) => b.to_string(),
            ('s' | 'v', value) => {
                let text = print(value);
                match precision {
                    Some(p) if matches!(value, Value::String(_)) => text.chars().take(p).collect(),
                    _ => text,
                }
            }
            (verb, value) => format!("%!{verb}({}={})", kind(value), print(value)),
        };
        let width: usize = width.parse().unwrap_or(0);
        let pad = width.saturating_sub(text.chars().count());
        if left {
            out.push_str(&text);
            out.push_str(&" ".repeat(pad));
        } else if zero && matches!(arg, Value::Number(_)) {
            let (sign, digits) = match text.strip_prefix('-') {
                Some(rest) => ("-", rest),
                None => ("", text.as_str()),
            };
            out.push_str(sign);
            out.push_str(&"0".repeat(pad));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&text);
        }
    }
    let extra: Vec<&Value> = args.collect();
    if !extra.is_empty() {
        out.push_str(&format!(
            "%!(EXTRA {})",
            extra
                .iter()
                .map(|v| format!("{}={}", kind(v), print(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out
}
