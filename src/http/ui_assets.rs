//! The web UI's files under `ui_config.content_path` (`/ui/`): the three files in the
//! repository's `ui/` directory, built into the binary (or read from `ui_config.dir` when
//! set, for working on them without rebuilding). Every path that is not an asset is the
//! single page, whose script routes on the URL's hash; `index.html` carries the settings the
//! page needs (content path, datacenters, whether ACLs are on), as Consul's does.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

const INDEX: &str = include_str!("../../ui/index.html");
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "assets/app.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/app.css"),
    ),
];

/// Answers `rest`, the path below the content path.
pub async fn serve(state: &AppState, rest: &str) -> Response {
    let config = &state.config;
    if let Some((name, content_type, built_in)) = ASSETS.iter().find(|(name, _, _)| *name == rest) {
        let body = match read(state, name.trim_start_matches("assets/")).await {
            Some(body) => body,
            None => built_in.to_string(),
        };
        return ([(header::CONTENT_TYPE, *content_type)], body).into_response();
    }
    let index = read(state, "index.html")
        .await
        .unwrap_or_else(|| INDEX.to_string());
    let settings = json!({
        "ContentPath": config.ui_content_path,
        "LocalDatacenter": config.datacenter,
        "PrimaryDatacenter": config.primary_datacenter,
        "ACLsEnabled": config.acl.enabled,
    });
    // `</` never appears inside the script element, whatever a datacenter is called.
    let settings = settings.to_string().replace("</", "<\\/");
    let page = index
        .replace("{{CONTENT_PATH}}", &config.ui_content_path)
        .replace("{{SETTINGS}}", &settings);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        page,
    )
        .into_response()
}

/// A file of `ui_config.dir`, when set and readable.
async fn read(state: &AppState, name: &str) -> Option<String> {
    let dir = state.config.ui_dir.as_ref()?;
    match tokio::fs::read_to_string(dir.join(name)).await {
        Ok(text) => Some(text),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), name, %error, "ui_config.dir: using the built-in file");
            None
        }
    }
}
