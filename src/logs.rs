//! The agent's logs, twice: to stdout at the configured level, and to any `/v1/agent/monitor`
//! streams at debug and above (so a monitor can ask for more detail than the agent logs),
//! through a bounded broadcast channel that never blocks logging: a monitor too slow to keep
//! up misses lines and is told how many.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Lines buffered per monitor before it starts missing some.
const MONITOR_BUFFER: usize = 1024;

/// One formatted log line and its level.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub level: Level,
    pub text: String,
}

fn monitors() -> &'static broadcast::Sender<Arc<LogLine>> {
    static SENDER: OnceLock<broadcast::Sender<Arc<LogLine>>> = OnceLock::new();
    SENDER.get_or_init(|| broadcast::channel(MONITOR_BUFFER).0)
}

/// A receiver of every log line from now on.
pub fn subscribe() -> broadcast::Receiver<Arc<LogLine>> {
    monitors().subscribe()
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

struct MonitorLayer;

impl<S: Subscriber> Layer<S> for MonitorLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let sender = monitors();
        if sender.receiver_count() == 0 {
            return;
        }
        let level = *event.metadata().level();
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let text = format!(
            "{}.{:03} [{level}]{}",
            now.as_secs(),
            now.subsec_millis(),
            fields.0
        );
        let _ = sender.send(Arc::new(LogLine { level, text }));
    }
}

/// Installs logging: stdout at `level` (text or JSON) and the monitor feed.
pub fn init(level: &str, json: bool) {
    let level = match level {
        "err" => "error",
        other => other,
    };
    // Raft and sled internals are noisy below warn; they follow the agent's level only when
    // it is trace.
    let dependencies = if level == "trace" { "trace" } else { "warn" };
    let filter = |level: &str| {
        EnvFilter::new(format!(
            "{level},openraft={dependencies},sled={dependencies},hyper={dependencies},h2={dependencies},tonic={dependencies},tower={dependencies}"
        ))
    };
    let stdout = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let stdout = if json {
        stdout.json().with_filter(filter(level)).boxed()
    } else {
        stdout.with_filter(filter(level)).boxed()
    };
    let monitor_level = if level == "trace" { "trace" } else { "debug" };
    tracing_subscriber::registry()
        .with(stdout)
        .with(MonitorLayer.with_filter(filter(monitor_level)))
        .init();
}
