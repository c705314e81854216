//! The protobuf codec every generated hotdeploy client and server uses: tonic-prost's, with small
//! per-call buffers.
//!
//! tonic allocates one encode buffer and one decode buffer for every call, 8 KiB each by
//! default, and keeps them for the call's life. A coordinator leader holds one long-lived
//! `Heartbeat` stream per agent, whose messages are tens of bytes, so those two buffers were
//! most of its memory per agent (about 16 KiB per stream, measured with `hd-bench scale`).
//! [`LeanCodec`] starts both at [`BUFFER_SIZE`].
//!
//! Larger messages still work: the decoder reserves a whole message's length at once, and the
//! encoder's buffer grows as prost writes into it; only compressed messages grow in
//! `BUFFER_SIZE` steps, and hotdeploy compresses none. Batching of a stream's ready messages
//! keeps tonic's default threshold ([`YIELD_THRESHOLD`]).
//!
//! Left out: per-method sizes. The generated code builds every method's codec with `Default`,
//! so one size serves all.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The initial size of each call's encode and decode buffer, bytes.
pub const BUFFER_SIZE: usize = 1024;
/// How many encoded bytes of a stream's ready messages go out together (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// tonic-prost's codec with [`BUFFER_SIZE`] buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

/// The buffer settings of every call.
pub fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{HeartbeatRequest, HeartbeatResponse};
    use tonic::codec::Encoder;

    #[test]
    fn every_call_gets_small_buffers() {
        let mut codec = LeanCodec::<HeartbeatResponse, HeartbeatRequest>::default();
        let settings = format!("{:?}", codec.encoder().buffer_settings());
        assert!(settings.contains("buffer_size: 1024"), "{settings}");
        let settings = format!(
            "{:?}",
            tonic::codec::Decoder::buffer_settings(&codec.decoder())
        );
        assert!(settings.contains("buffer_size: 1024"), "{settings}");
    }
}
