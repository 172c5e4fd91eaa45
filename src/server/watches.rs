//! The agent's configured `watches`: each runs its plan against this agent's own HTTP API (as
//! Consul's agent does) and calls its handler, a script or an HTTP endpoint, on every change.
//! A failing read is retried after a pause; a failing handler is logged.

use std::net::SocketAddr;
use std::time::Duration;

use crate::api::client::Client;
use crate::api::watch::{call_http, run_script, Plan};
use crate::config::watches::{WatchConfig, WatchHandler};
use crate::tasks::Tasks;

/// How long a watch waits after its read failed (the agent not serving yet, say).
const RETRY: Duration = Duration::from_secs(1);

pub fn start(watches: &[WatchConfig], http: Option<SocketAddr>, tasks: &Tasks) {
    if watches.is_empty() {
        return;
    }
    let Some(http) = http else {
        tracing::warn!("watches are configured but the HTTP API is off; they do not run");
        return;
    };
    for watch in watches {
        let plan = match Plan::new(&watch.kind, |name| watch.params.get(name).cloned()) {
            Ok(plan) => plan,
            // Checked when the config loaded; kept for a type that could not be planned.
            Err(error) => {
                tracing::warn!(%error, kind = %watch.kind, "watch not started");
                continue;
            }
        };
        let Ok(client) = Client::from_flags(Some(&http.to_string()), None) else {
            continue;
        };
        let (watch, stop) = (watch.clone(), tasks.shutdown().clone());
        tasks.spawn("agent.watch", async move {
            let mut index = 0;
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = plan.next(&client, index, "") => next,
                };
                let (new_index, data) = match next {
                    Ok(answer) => answer,
                    Err(error) => {
                        tracing::debug!(%error, kind = %watch.kind, "watch read failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(RETRY) => continue,
                        }
                    }
                };
                let handled = match &watch.handler {
                    WatchHandler::Script(command) => run_script(command, new_index, &data).await,
                    WatchHandler::Http {
                        path,
                        method,
                        headers,
                        timeout,
                    } => call_http(path, method, headers, *timeout, new_index, &data).await,
                };
                if let Err(error) = handled {
                    tracing::warn!(%error, kind = %watch.kind, "watch handler failed");
                }
                index = plan.following(index, new_index);
            }
        });
    }
}
