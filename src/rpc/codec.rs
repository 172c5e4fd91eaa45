//! A protobuf codec for tonic whose buffers start small, shared by the ADS service and the
//! server RPC service.
//!
//! tonic's default codec gives every stream an 8 KiB decode buffer and an 8 KiB encode buffer
//! up front, and a long-lived stream (an idle Envoy sidecar, a client agent's state feed)
//! holds both for as long as it stays connected. Requests on both are small, and the encode
//! buffer grows for a large response, so both start at `INITIAL_BUFFER`.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Initial capacity of a stream's decode and encode buffers.
const INITIAL_BUFFER: usize = 1024;
/// Encoded messages are handed to HTTP/2 once this much is buffered (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// Protobuf encoding of `E` out and `D` in, with small initial buffers.
pub struct SmallCodec<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for SmallCodec<E, D> {
    fn default() -> Self {
        SmallCodec(PhantomData)
    }
}

impl<E, D> Codec for SmallCodec<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = SmallEncoder<E>;
    type Decoder = SmallDecoder<D>;

    fn encoder(&mut self) -> SmallEncoder<E> {
        SmallEncoder(PhantomData)
    }

    fn decoder(&mut self) -> SmallDecoder<D> {
        SmallDecoder(PhantomData)
    }
}

pub struct SmallEncoder<T>(PhantomData<fn(T)>);

impl<T: prost::Message> Encoder for SmallEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // EncodeBuf grows on demand, so this cannot run out of room.
        item.encode(dst)
            .map_err(|error| Status::internal(format!("encoding a message: {error}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

pub struct SmallDecoder<T>(PhantomData<fn() -> T>);

impl<T: prost::Message + Default> Decoder for SmallDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::decode(src)
            .map(Some)
            .map_err(|error| Status::invalid_argument(format!("malformed request: {error}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
