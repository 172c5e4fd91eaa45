//! `concord template`: consul-template's job, built in. `parse` and `exec` are Go's
//! text/template (written here: the Rust ports found range over maps in hash order, which
//! would make output, and so reloads, change at random); consul-template's functions over
//! the agent's HTTP API come on top.

pub mod deps;
pub mod exec;
pub mod funcs;
pub mod parse;
pub mod run;
#[cfg(test)]
mod tests;

pub use exec::{Functions, NoFunctions};
pub use parse::TemplateError;

/// A parsed template.
#[derive(Clone, Debug)]
pub struct Template {
    name: String,
    nodes: Vec<parse::Node>,
}

impl Template {
    /// Parses `src`; `delims` replaces `{{` and `}}` (consul-template's
    /// `left_delimiter`/`right_delimiter`).
    pub fn parse(
        name: &str,
        src: &str,
        delims: Option<(&str, &str)>,
    ) -> Result<Template, TemplateError> {
        Ok(Template {
            name: name.to_string(),
            nodes: parse::parse(name, src, delims)?,
        })
    }

    /// Renders with `data` as `.` and `functions` beyond Go's builtins.
    pub fn render(
        &self,
        data: &serde_json::Value,
        functions: &mut dyn Functions,
    ) -> Result<String, TemplateError> {
        exec::execute(&self.name, &self.nodes, data, functions)
    }
}
