//! The template language against Go's documented examples (text/template's package docs),
//! and its errors.

use serde_json::{json, Value};

use super::{NoFunctions, Template};

fn render(src: &str, data: Value) -> String {
    Template::parse("t", src, None)
        .unwrap_or_else(|error| panic!("{src}: {error}"))
        .render(&data, &mut NoFunctions)
        .unwrap_or_else(|error| panic!("{src}: {error}"))
}

#[test]
fn gos_documented_pipeline_examples_all_print_output_quoted() {
    // text/template's "Examples" section: each of these prints "output" in quotes.
    let examples = [
        r#"{{"\"output\""}}"#,
        r#"{{`"output"`}}"#,
        r#"{{printf "%q" "output"}}"#,
        r#"{{"output" | printf "%q"}}"#,
        r#"{{printf "%q" (print "out" "put")}}"#,
        r#"{{"put" | printf "%s%s" "out" | printf "%q"}}"#,
        r#"{{"output" | printf "%s" | printf "%q"}}"#,
        r#"{{with "output"}}{{printf "%q" .}}{{end}}"#,
        r#"{{with $x := "output" | printf "%q"}}{{$x}}{{end}}"#,
        r#"{{with $x := "output"}}{{printf "%q" $x}}{{end}}"#,
        r#"{{with $x := "output"}}{{$x | printf "%q"}}{{end}}"#,
    ];
    for src in examples {
        assert_eq!(render(src, Value::Null), "\"output\"", "{src}");
    }
}

#[test]
fn trim_markers_eat_the_adjacent_white_space() {
    // The package docs' example.
    assert_eq!(render("{{23 -}} < {{- 45}}", Value::Null), "23<45");
    assert_eq!(
        render("a\n  {{- range .}}\n  [{{.}}]{{end}}\n", json!([1, 2])),
        "a\n  [1]\n  [2]\n"
    );
}

#[test]
fn range_if_with_and_variables_behave_as_in_go() {
    let data = json!({
        "Name": "web",
        "Tags": ["a", "b"],
        "Meta": {"zone": "z1", "env": "prod", "app": "shop"},
        "Empty": [],
    });
    assert_eq!(
        render(
            "{{range $i, $t := .Tags}}{{if $i}},{{end}}{{$t}}{{end}}",
            data.clone()
        ),
        "a,b"
    );
    // Maps range in key order.
    assert_eq!(
        render(
            "{{range $k, $v := .Meta}}{{$k}}={{$v}} {{end}}",
            data.clone()
        ),
        "app=shop env=prod zone=z1 "
    );
    assert_eq!(
        render("{{range .Empty}}x{{else}}none{{end}}", data.clone()),
        "none"
    );
    assert_eq!(
        render(
            "{{if eq .Name \"db\"}}db{{else if eq .Name \"web\"}}web{{else}}other{{end}}",
            data.clone()
        ),
        "web"
    );
    assert_eq!(
        render(
            "{{with .Missing}}yes{{else}}no{{end}} {{.Meta.zone}}",
            data.clone()
        ),
        "no z1"
    );
    assert_eq!(
        render(
            "{{$n := 0}}{{range .Tags}}{{$n = 1}}{{end}}{{$n}}",
            data.clone()
        ),
        "1"
    );
    assert_eq!(
        render(
            "{{range .Tags}}{{if eq . \"b\"}}{{break}}{{end}}{{.}}{{end}}",
            data.clone()
        ),
        "a"
    );
    assert_eq!(render("{{range 3}}{{.}}{{end}}", Value::Null), "012");
    // `$` is the data wherever the dot has moved.
    assert_eq!(
        render("{{range .Tags}}{{$.Name}}{{end}}", data.clone()),
        "webweb"
    );
    assert_eq!(
        render("{{.Tags}} {{.Meta}}", data),
        "[a b] map[app:shop env:prod zone:z1]"
    );
}

#[test]
fn builtins_compare_index_and_format_as_go_does() {
    let data = json!({"List": [10, 20, 30], "Map": {"k": "v"}, "S": "hello"});
    assert_eq!(
        render("{{index .List 1}} {{index .Map \"k\"}}", data.clone()),
        "20 v"
    );
    assert_eq!(
        render("{{len .List}} {{len .S}} {{slice .S 1 3}}", data.clone()),
        "3 5 el"
    );
    assert_eq!(
        render(
            "{{if and (gt 3 2) (le 2 2) (ne 1 2) (not false)}}ok{{end}}",
            Value::Null
        ),
        "ok"
    );
    assert_eq!(
        render("{{or 0 \"\" \"x\"}} {{and 1 0}}", Value::Null),
        "x 0"
    );
    assert_eq!(render("{{eq 2 1 2 3}}", Value::Null), "true");
    assert_eq!(
        render(
            r#"{{printf "%05d|%-4s|%.2f|%x|%5.1f" 42 "ab" 3.14159 255 2.25}}"#,
            Value::Null
        ),
        "00042|ab  |3.14|ff|  2.2"
    );
    assert_eq!(render("{{print 1 2 \"a\" 3}}", Value::Null), "1 2a3");
    assert_eq!(
        render("{{html \"<a href='x'>\"}}", Value::Null),
        "&lt;a href=&#39;x&#39;&gt;"
    );
    assert_eq!(render("{{urlquery \"a b&c\"}}", Value::Null), "a%20b%26c");
}

#[test]
fn errors_name_the_line_and_column() {
    let cases = [
        ("line one\n{{if}}x{{end}}", "t:2:1: missing value for if"),
        ("{{range .}}", "t:1:1: unexpected EOF in range"),
        ("ok\n\n  {{ .A | }}", "t:3:9: missing command after |"),
        ("{{end}}", "t:1:1: unexpected {{end}}"),
        ("{{\"open}}", "t:1:3: unterminated quoted string"),
        ("{{ nosuch 1 }}", "t:1:4: function \"nosuch\" not defined"),
        (
            "{{ .A 1 }}",
            "t:1:4: can't give argument to non-function .A",
        ),
        ("{{ $x }}", "t:1:4: undefined variable: $x"),
        (
            "{{ index .L 5 }}",
            "t:1:4: error calling index: index out of range: 5",
        ),
    ];
    for (src, expected) in cases {
        let result = Template::parse("t", src, None)
            .and_then(|template| template.render(&json!({"L": [1]}), &mut NoFunctions));
        assert_eq!(result.expect_err(src).to_string(), expected, "{src}");
    }
}

#[test]
fn custom_delimiters() {
    let template = Template::parse("t", "[[ .A ]] {{ .A }}", Some(("[[", "]]"))).expect("parses");
    assert_eq!(
        template
            .render(&json!({"A": 1}), &mut NoFunctions)
            .expect("renders"),
        "1 {{ .A }}"
    );
}

#[test]
fn service_specs_parse_as_consul_template_reads_them() {
    use super::deps::{Dependency, Health};
    let parsed =
        Dependency::service("release.web@east~_agent|passing,warning", false).expect("parses");
    assert_eq!(
        parsed,
        Dependency::Service {
            name: "web".into(),
            tag: Some("release".into()),
            dc: Some("east".into()),
            near: Some("_agent".into()),
            health: Health::States(vec!["passing".into(), "warning".into()]),
            connect: false,
        }
    );
    assert_eq!(
        parsed.path(None).as_deref(),
        Some("/v1/health/service/web?dc=east&tag=release&near=_agent")
    );
    let healthy = Dependency::service("web", true).expect("parses");
    assert_eq!(
        healthy.path(None).as_deref(),
        Some("/v1/health/connect/web?passing")
    );
    assert!(Dependency::service("web|sleepy", false).is_err());
    assert!(Dependency::service("tag.@dc1", false).is_err());
}

#[test]
fn helpers_take_the_piped_value_last() {
    use std::collections::HashMap;
    let data = HashMap::new();
    let mut functions = super::funcs::Render::new(&data);
    let render = |src: &str, functions: &mut super::funcs::Render<'_>| {
        Template::parse("t", src, None)
            .expect("parses")
            .render(&json!({"Tags": ["a", "production"]}), functions)
            .expect("renders")
    };
    assert_eq!(
        render(
            "{{ 5 | subtract 2 }} {{ 2 | add 3 }} {{ 7 | divide 2 }}",
            &mut functions
        ),
        "3 5 3"
    );
    assert_eq!(
        render(
            "{{ if .Tags | contains \"production\" }}prod{{ end }} {{ in .Tags \"b\" }}",
            &mut functions
        ),
        "prod false"
    );
    assert_eq!(
        render("{{ \"a,b\" | split \",\" | join \"-\" }}", &mut functions),
        "a-b"
    );
    assert_eq!(
        render(
            "{{ \"foo.bar\" | regexMatch \"foo([.a-z]+)\" }}",
            &mut functions
        ),
        "true"
    );
    // No API data was asked for, so the render is complete.
    assert!(functions.incomplete.is_none());
}
