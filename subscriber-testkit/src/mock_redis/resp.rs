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

pub(super) fn int(n: usize) -> BytesFrame {
    BytesFrame::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

pub(super) fn simple(text: &'static str) -> BytesFrame {
    BytesFrame::SimpleString(Bytes::from_static(text.as_bytes()))
}

/// An array of bulk strings.
pub(super) fn bulks(items: impl IntoIterator<Item = Bytes>) -> BytesFrame {
    BytesFrame::Array(items.into_iter().map(BytesFrame::BulkString).collect())
}

pub(super) fn wrong_type() -> BytesFrame {
    error("WRONGTYPE Operation against a key holding the wrong kind of value")
}

pub(super) fn syntax_error() -> BytesFrame {
    error("ERR syntax error")
}

pub(super) fn not_an_integer() -> BytesFrame {
    error("ERR value is not an integer or out of range")
}

pub(super) fn overflow() -> BytesFrame {
    error("ERR increment or decrement would overflow")
}

/// Parses an integer as Redis's `string2ll` does: digits with an optional `-`, no `+`, no spaces,
/// no leading zeros, within `i64`.
pub(super) fn parse_int(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == text.len(),
        [first, rest @ ..] => (b'1'..=b'9').contains(first) && rest.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// [`parse_int`], or the error Redis answers.
pub(super) fn int_arg(text: &[u8]) -> Result<i64, BytesFrame> {
    parse_int(text).ok_or_else(not_an_integer)
}
