//! `concord template` against a real agent: consul-template's documented examples rendered
//! with `-once`, a template that does not parse named with its line, and an nginx upstream
//! block kept current: a third `web` instance re-renders it within a second and runs its
//! command once, and a change that leaves the output alone runs nothing; `-exec` starts a
//! child once the files are rendered and signals it on a change.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{eventually, Agent, AgentOptions, BINARY};

async fn put_key(agent: &Agent, key: &str, value: &str) {
    let response = agent
        .client()
        .put(&format!("/v1/kv/{key}"), value.as_bytes().to_vec())
        .await
        .expect("put");
    assert_eq!(response.status, 200, "{}", response.text());
}

/// A catalog node with one `web` instance (no checks: healthy).
async fn register_web(agent: &Agent, node: &str, address: &str, port: u16, rack: &str) {
    let body = json!({
        "Node": node,
        "Address": address,
        "NodeMeta": {"rack": rack},
        "Service": {"ID": "web", "Service": "web", "Port": port, "Tags": ["production"]},
    });
    let response = agent
        .client()
        .put("/v1/catalog/register", body.to_string().into_bytes())
        .await
        .expect("register");
    assert_eq!(response.status, 200, "{}", response.text());
}

fn concord_template(agent: &Agent, args: &[&str]) -> std::process::Output {
    Command::new(BINARY)
        .arg("template")
        .args(args)
        .env("CONSUL_HTTP_ADDR", agent.address())
        .output()
        .expect("run concord template")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_examples_render_once_as_documented_and_bad_templates_name_their_line() {
    let agent = Agent::start(AgentOptions::default()).await;
    put_key(&agent, "service/redis/maxconns", "15").await;
    put_key(&agent, "service/redis/minconns", "5").await;
    for es in ["es1", "es2", "es3"] {
        put_key(&agent, &format!("groups/elasticsearch/{es}"), "1").await;
    }
    put_key(&agent, "config/admin/port", "1234").await;
    put_key(&agent, "config/maxconns", "5").await;
    put_key(&agent, "config/minconns", "2").await;
    register_web(&agent, "web01", "10.5.2.45", 2492, "r1").await;
    register_web(&agent, "web02", "10.2.6.61", 2904, "r2").await;

    let dir = tempfile::tempdir().expect("dir");
    let source = dir.path().join("examples.ctmpl");
    let output = dir.path().join("examples.out");
    // Examples from consul-template's templating-language documentation.
    std::fs::write(
        &source,
        r#"{{ key "service/redis/maxconns" }}
{{ keyOrDefault "service/redis/absent" "5" }}
{{ range ls "service/redis" }}
{{ .Key }}:{{ .Value }}{{ end }}
{{ range service "web" }}
server {{ .Node }} {{ .Address }}:{{ .Port }}{{ end }}
{{ range $key, $pairs := tree "groups" | byKey }}{{ $key }}:
{{ range $pair := $pairs }}  {{ .Key }}={{ .Value }}
{{ end }}{{ end }}{{ tree "config" | explode | toJSON }}
{{ range $i := loop 5 8 }}
stanza-{{ $i }}{{ end }}
{{ base64Encode "hello" }} {{ base64Decode "aGVsbG8=" }} {{ "foo.bar" | replaceAll "." "_" }} {{ "foo.bar" | regexReplaceAll "foo([.a-z]+)" "$1" }}
{{ if keyExists "service/redis/maxconns" }}exists{{ end }} {{ range $tag, $services := service "web" | byTag }}{{ $tag }}={{ len $services }}{{ end }}
"#,
    )
    .expect("write template");
    let spec = format!("{}:{}", source.display(), output.display());
    let run = concord_template(&agent, &["-once", "-template", &spec]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&output).expect("rendered"),
        "15
5

maxconns:15
minconns:5

server web01 10.5.2.45:2492
server web02 10.2.6.61:2904
elasticsearch:
  es1=1
  es2=1
  es3=1
{\"admin\":{\"port\":\"1234\"},\"maxconns\":\"5\",\"minconns\":\"2\"}

stanza-5
stanza-6
stanza-7
aGVsbG8= hello foo_bar .bar
exists production=2
"
    );

    // -dry prints instead of writing.
    let dry = concord_template(&agent, &["-once", "-dry", "-template", &spec]);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("server web02 10.2.6.61:2904"));

    // A template that does not parse: non-zero, naming the file and line; nothing written.
    let bad = dir.path().join("bad.ctmpl");
    std::fs::write(&bad, "fine\n{{ if }}x{{ end }}\n").expect("write");
    let bad_out = dir.path().join("bad.out");
    let run = concord_template(
        &agent,
        &[
            "-once",
            "-template",
            &format!("{}:{}", bad.display(), bad_out.display()),
        ],
    );
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("{}:2:", bad.display()))
            && stderr.contains("missing value for if"),
        "{stderr}"
    );
    assert!(!bad_out.exists());

    // An unwritable destination (its directory does not exist): an error naming it.
    let missing_dir = dir.path().join("no/such/dir/out.conf");
    let run = concord_template(
        &agent,
        &[
            "-once",
            "-template",
            &format!("{}:{}", source.display(), missing_dir.display()),
        ],
    );
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("no/such/dir/out.conf"));

    // An agent that does not answer: retried, then a clear error.
    let down = Command::new(BINARY)
        .args(["template", "-once", "-template", &spec])
        .env("CONSUL_HTTP_ADDR", "127.0.0.1:1")
        .output()
        .expect("run");
    assert!(!down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("127.0.0.1:1"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );

    // A function called with the wrong arguments.
    std::fs::write(&bad, "{{ keyOrDefault \"a\" }}\n").expect("write");
    let run = concord_template(
        &agent,
        &[
            "-once",
            "-template",
            &format!("{}:{}", bad.display(), bad_out.display()),
        ],
    );
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("wrong number of args for keyOrDefault"));
}

/// A `concord template` process, killed when dropped.
struct Watching(Child);

impl Drop for Watching {
    /// SIGINT first, so an `-exec` child is stopped with it; SIGKILL if it lingers.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_upstream_follows_web_instances_and_reloads_only_on_change() {
    let agent = Agent::start(AgentOptions::default()).await;
    register_web(&agent, "web01", "10.0.0.1", 8080, "r1").await;
    register_web(&agent, "web02", "10.0.0.2", 8080, "r2").await;
    let dir = tempfile::tempdir().expect("dir");
    let upstream = dir.path().join("upstream.ctmpl");
    std::fs::write(
        &upstream,
        "upstream web {\n{{- range service \"web\" }}\n  server {{ .Address }}:{{ .Port }};\n{{- end }}\n}\n",
    )
    .expect("write");
    let racks = dir.path().join("racks.ctmpl");
    std::fs::write(
        &racks,
        "{{ range service \"web\" }}{{ .Node }}={{ .NodeMeta.rack }} {{ end }}",
    )
    .expect("write");
    let conf = dir.path().join("web.conf");
    let racks_out = dir.path().join("racks.out");
    let reloads = dir.path().join("reloads");
    let child = Command::new(BINARY)
        .arg("template")
        .args([
            "-template",
            &format!(
                "{}:{}:echo reload >> {}",
                upstream.display(),
                conf.display(),
                reloads.display()
            ),
            "-template",
            &format!("{}:{}", racks.display(), racks_out.display()),
        ])
        .env("CONSUL_HTTP_ADDR", agent.address())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn concord template");
    let _watching = Watching(child);
    eventually(
        "the first render and reload",
        Duration::from_secs(10),
        || async { (lines(&reloads) == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&conf).expect("conf"),
        "upstream web {\n  server 10.0.0.1:8080;\n  server 10.0.0.2:8080;\n}\n"
    );

    // A third instance: re-rendered within a second, the command run once more.
    register_web(&agent, "web03", "10.0.0.3", 8080, "r3").await;
    let registered = Instant::now();
    loop {
        let text = std::fs::read_to_string(&conf).unwrap_or_default();
        if text.contains("10.0.0.3:8080") {
            break;
        }
        assert!(
            registered.elapsed() < Duration::from_secs(1),
            "not re-rendered within 1 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually(
        "the reload after the change",
        Duration::from_secs(5),
        || async { (lines(&reloads) == 2).then_some(()) },
    )
    .await;

    // A change the upstream does not show (web01's rack): the other template, on the same
    // query, shows it; the upstream's command does not run.
    register_web(&agent, "web01", "10.0.0.1", 8080, "r9").await;
    eventually(
        "the racks template to follow",
        Duration::from_secs(5),
        || async {
            std::fs::read_to_string(&racks_out)
                .ok()
                .filter(|text| text.contains("web01=r9"))
        },
    )
    .await;
    assert_eq!(
        lines(&reloads),
        2,
        "a change that left the output alone ran the command"
    );
    assert_eq!(
        std::fs::read_to_string(&conf).expect("conf"),
        "upstream web {\n  server 10.0.0.1:8080;\n  server 10.0.0.2:8080;\n  server 10.0.0.3:8080;\n}\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_starts_its_child_after_the_first_render_and_signals_it_on_change() {
    let agent = Agent::start(AgentOptions::default()).await;
    put_key(&agent, "app/color", "blue").await;
    let dir = tempfile::tempdir().expect("dir");
    let source = dir.path().join("app.ctmpl");
    std::fs::write(&source, "color={{ key \"app/color\" }}\n").expect("write");
    let conf = dir.path().join("app.conf");
    let log = dir.path().join("child.log");
    // The child reads its config at start and on SIGHUP, noting each read.
    let child_script = format!(
        "trap 'cat {conf} >> {log}' HUP; cat {conf} >> {log}; while true; do sleep 0.05; done",
        conf = conf.display(),
        log = log.display()
    );
    let child = Command::new(BINARY)
        .arg("template")
        .args([
            "-template",
            &format!("{}:{}", source.display(), conf.display()),
            "-exec",
            &child_script,
            "-exec-reload-signal",
            "SIGHUP",
            "-exec-kill-signal",
            "SIGTERM",
        ])
        .env("CONSUL_HTTP_ADDR", agent.address())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn concord template");
    let _watching = Watching(child);
    eventually(
        "the child's first read",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|text| text == "color=blue\n")
        },
    )
    .await;
    put_key(&agent, "app/color", "green").await;
    eventually(
        "the child's read after SIGHUP",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|text| text == "color=blue\ncolor=green\n")
        },
    )
    .await;
}
