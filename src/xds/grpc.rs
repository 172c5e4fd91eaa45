//! The ADS service's gRPC routing, in place of the generated `AggregatedDiscoveryServiceServer`:
//! the same two methods on the same paths, with a codec whose buffers start small.
//!
//! The generated server uses tonic's default codec, which gives every stream an 8 KiB decode
//! buffer and an 8 KiB encode buffer up front. An idle sidecar stream holds both for as long as
//! Envoy stays connected, which made them a third of the agent's memory per proxy. Requests
//! from Envoy are a few hundred bytes, and the encode buffer grows for a large response, so
//! both start small (`rpc::codec::SmallCodec`).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::server::XdsServer;
use crate::rpc::codec::SmallCodec;

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// The ADS service as tonic's router takes it.
#[derive(Clone)]
pub struct AdsService(Arc<XdsServer>);

impl AdsService {
    pub fn new(server: XdsServer) -> AdsService {
        AdsService(Arc::new(server))
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

struct Delta(Arc<XdsServer>);

impl StreamingService<DeltaDiscoveryRequest> for Delta {
    type Response = DeltaDiscoveryResponse;
    type ResponseStream = <XdsServer as AggregatedDiscoveryService>::DeltaAggregatedResourcesStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { server.delta_aggregated_resources(request).await })
    }
}

struct StateOfTheWorld(Arc<XdsServer>);

impl StreamingService<DiscoveryRequest> for StateOfTheWorld {
    type Response = DiscoveryResponse;
    type ResponseStream =
        <XdsServer as AggregatedDiscoveryService>::StreamAggregatedResourcesStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { server.stream_aggregated_resources(request).await })
    }
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.0.clone();
        match request.uri().path() {
            DELTA_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(SmallCodec::<DeltaDiscoveryResponse, _>::default());
                Ok(grpc.streaming(Delta(server), request).await)
            }),
            SOTW_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(SmallCodec::<DiscoveryResponse, _>::default());
                Ok(grpc.streaming(StateOfTheWorld(server), request).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}
