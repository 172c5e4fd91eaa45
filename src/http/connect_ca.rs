//! The CA endpoints: `/v1/connect/ca/roots`, `/v1/connect/ca/configuration`, and the
//! agent's `/v1/agent/connect/ca/roots` and `/v1/agent/connect/ca/leaf/:service`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Reply};
use super::AppState;
use crate::acl::Access;
use crate::connect::ca_config;
use crate::state::connect::CA_TOPIC;
use crate::state::Match;
use crate::types::connect::{CaRoot, CaState};
use crate::types::duration::{format_rfc3339, unix_secs};

fn root_json(root: &CaRoot) -> Value {
    json!({
        "ID": root.id,
        "Name": root.name,
        "SerialNumber": root.serial,
        "SigningKeyID": root.id,
        "ExternalTrustDomain": "",
        "NotBefore": format_rfc3339(root.not_before_unix),
        "NotAfter": format_rfc3339(root.not_after_unix),
        "RootCert": root.cert_pem,
        "IntermediateCerts": if root.intermediate_certs.is_empty() {
            Value::Null
        } else {
            json!(root.intermediate_certs)
        },
        "Active": root.active,
        "PrivateKeyType": root.key_type,
        "PrivateKeyBits": root.key_bits,
        "CreateIndex": root.indexes.create,
        "ModifyIndex": root.indexes.modify,
    })
}

fn roots_json(ca: &CaState) -> Value {
    json!({
        "ActiveRootID": ca.active_root().map(|root| root.id.clone()).unwrap_or_default(),
        "TrustDomain": ca.trust_domain(),
        "Roots": ca.roots.iter().map(root_json).collect::<Vec<_>>(),
    })
}

/// Every root and cross-signed certificate, concatenated (`?pem`).
fn roots_pem(ca: &CaState) -> String {
    let mut out = String::new();
    for pem in ca
        .roots
        .iter()
        .flat_map(|root| std::iter::once(&root.cert_pem).chain(&root.intermediate_certs))
    {
        out.push_str(pem.trim_end());
        out.push('\n');
    }
    out
}

pub async fn roots(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let pem = call.has("pem");
    let topics = vec![(CA_TOPIC.to_string(), Match::Exact)];
    let response = reply::blocking(&state, &options, topics, |tables| {
        let ca = tables
            .ca()
            .ok_or_else(|| ApiError::Internal("Connect CA is not initialized yet".into()))?;
        let body = if pem {
            Reply::Raw(roots_pem(ca).into_bytes())
        } else {
            Reply::Json(roots_json(ca))
        };
        Ok((ca.indexes.modify, body))
    })
    .await?;
    if !pem {
        return Ok(response);
    }
    let mut response = response;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/pem-certificate-chain"),
    );
    Ok(response)
}

pub async fn get_configuration(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::OperatorRead)?;
    let topics = vec![(CA_TOPIC.to_string(), Match::Exact)];
    reply::blocking(&state, &options, topics, |tables| {
        let ca = tables
            .ca()
            .ok_or_else(|| ApiError::Internal("Connect CA is not initialized yet".into()))?;
        let body = json!({
            "Provider": "consul",
            "Config": crate::api::ca_config::config(&ca.config),
            "State": null,
            "ForceWithoutCrossSigning": false,
            "CreateIndex": ca.indexes.create,
            "ModifyIndex": ca.indexes.modify,
        });
        Ok((ca.indexes.modify, Reply::Json(body)))
    })
    .await
}

pub async fn put_configuration(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::OperatorWrite)?;
    let body = super::body::read_json(&state, &call, body).await?;
    let body = crate::api::decode::canonicalize(body);
    let provider = body
        .get("Provider")
        .and_then(Value::as_str)
        .unwrap_or("consul");
    if !provider.is_empty() && provider != "consul" {
        return Err(ApiError::BadRequest(format!(
            "Provider {provider:?} is not supported; concord has the built-in \"consul\" provider"
        )));
    }
    if body
        .get("ForceWithoutCrossSigning")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return Err(ApiError::BadRequest(
            "ForceWithoutCrossSigning is not needed: the built-in provider always cross-signs"
                .into(),
        ));
    }
    let current = state
        .cluster
        .ca_state()
        .ok_or_else(|| ApiError::Internal("Connect CA is not initialized yet".into()))?;
    let config = match body.get("Config") {
        None | Some(Value::Null) => current.config.clone(),
        Some(Value::Object(map)) => ca_config::apply(&current.config, map)?,
        Some(_) => return Err(ApiError::BadRequest("Config must be an object".into())),
    };
    state.cluster.set_ca_config(config).await?;
    Ok(reply::json(&Value::Null, call.pretty(&state)).into_response())
}

fn rfc3339(time: std::time::SystemTime) -> String {
    format_rfc3339(unix_secs(time))
}

pub async fn leaf(
    State(state): State<Arc<AppState>>,
    Path(service): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::ServiceWrite(&service))?;
    // A first issue may wait for the CA to bootstrap; without ?index it waits briefly.
    let wait = if options.index > 0 {
        options.wait
    } else {
        Duration::from_secs(10)
    };
    let cert = state
        .leaves
        .get(&service, options.index, wait)
        .await
        .ok_or_else(|| {
            ApiError::Internal(format!(
                "no leaf certificate for {service:?} yet: the CA is not ready or signing failed (see the agent log)"
            ))
        })?;
    let body = json!({
        "SerialNumber": cert.serial,
        "CertPEM": cert.cert_pem,
        "PrivateKeyPEM": cert.private_key_pem,
        "Service": cert.service,
        "ServiceURI": cert.service_uri,
        "ValidAfter": rfc3339(cert.valid_after),
        "ValidBefore": rfc3339(cert.valid_before),
        "CreateIndex": cert.index,
        "ModifyIndex": cert.index,
    });
    let mut response = reply::json(&body, options.pretty);
    response
        .headers_mut()
        .insert("X-Consul-Index", header::HeaderValue::from(cert.index));
    Ok(response)
}

/// `POST /v1/internal/ca/sign-intermediate` (`{"CSR": pem}`): the primary datacenter's active
/// root certifies a secondary's intermediate (`server::replication`), answering
/// `{"Certificate": pem}`. Takes `operator:write`, as the replication token has.
pub async fn sign_intermediate(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::OperatorWrite)?;
    let value = super::body::read_json(&state, &call, body).await?;
    let csr = value["CSR"]
        .as_str()
        .ok_or_else(|| ApiError::BadRequest("Missing CSR".into()))?;
    let server = state
        .cluster
        .server()
        .ok_or_else(|| ApiError::Internal("only servers sign intermediates".into()))?;
    let certificate = server.ca.sign_intermediate(csr)?;
    Ok(reply::json(&json!({ "Certificate": certificate }), false))
}
