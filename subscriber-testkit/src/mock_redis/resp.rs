//! RESP2 on the wire: the codec, and builders for the replies the mock sends.

use std::io;

use bytes::{Bytes, BytesMut};
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;
use tokio_util::codec::{Decoder, Encoder};

/// Largest amount of unparsed input a connection may buffer before it is closed.
const MAX_BUFFERED_INPUT: usize = 64 * 1024 * 1024;

/// The RESP2 codec, with a bound on buffered input.
#[derive(Debug, Default)]
pub(super) struct Codec(Resp2);

impl Decoder for Codec {
    type Item = BytesFrame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesFrame>, io::Error> {
        match self.0.decode(src) {
            Ok(None) if src.len() > MAX_BUFFERED_INPUT => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request larger than the mock's limit",
            )),
            Ok(frame) => Ok(frame),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }
}

impl Encoder<BytesFrame> for Codec {
    type Error = io::Error;

    fn encode(&mut self, item: BytesFrame, dst: &mut BytesMut) -> Result<(), io::Error> {
        self.0
            .encode(item, dst)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }
}
pub(super) fn bulk(data: impl Into<Bytes>) -> BytesFrame {
    BytesFrame::BulkString(data.into())
}

pub(super) fn error(message: impl Into<String>) -> BytesFrame {
    BytesFrame::Error(message.into().into())
}

pub(super) fn ok() -> BytesFrame {
    BytesFrame::SimpleString(Bytes::from_static(b"OK"))
}

pub(super) fn wrong_arity(name: &str) -> BytesFrame {
    error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}
