//! A minimal HTTP/1.1 client for the benches: one connection, one request in flight, so a
//! bench controls exactly how many connections and requests it puts on the agent.

// Each bench binary compiles this file and uses its own subset of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long one request may take before the bench gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = Pin<Box<dyn Future<Output = hyper::Result<hyper::Response<Incoming>>> + Send>>;

/// One HTTP/1.1 connection (to the agent or Envoy's admin), one request in flight at a time.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// Aborted on drop, which closes the connection.
    driver: JoinHandle<()>,
    pending: Option<Pending>,
}

pub struct Answer {
    pub status: StatusCode,
    pub index: Option<u64>,
    pub body: Bytes,
}

fn hyper_request(method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = path.parse().unwrap_or_default();
    request
        .headers_mut()
        .insert(header::HOST, header::HeaderValue::from_static("127.0.0.1"));
    request
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Conn::over(stream).await
    }

    /// An HTTP/1.1 client over an open connection (TCP, or TLS over it).
    pub async fn over<S>(stream: S) -> Result<Conn>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            driver,
            pending: None,
        })
    }

    /// Sends a request; once this returns, it has been handed to the connection's driver.
    pub async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Result<()> {
        self.sender.ready().await?;
        self.pending = Some(Box::pin(
            self.sender.send_request(hyper_request(method, path, body)),
        ));
        Ok(())
    }

    /// Waits for the answer to the request `send` sent.
    pub async fn receive(&mut self) -> Result<Answer> {
        let response = self
            .pending
            .take()
            .ok_or_else(|| anyhow!("no request in flight"))?
            .await?;
        let status = response.status();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            index,
            body,
        })
    }

    pub async fn request(&mut self, method: Method, path: &str, body: Bytes) -> Result<Answer> {
        let exchange = async {
            self.send(method, path, body).await?;
            self.receive().await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(answer) => answer,
            Err(_) => bail!("{path}: no answer within {REQUEST_TIMEOUT:?}"),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
