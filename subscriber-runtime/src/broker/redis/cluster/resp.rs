//! The few RESP2 frames a sharded subscriber connection reads (confirmations, messages, errors,
//! pongs), and the commands it writes.
//!
//! The `redis` crate's pub/sub connection has no `SSUBSCRIBE`, and its cluster client tracks
//! sharded subscriptions in a way that loses them (see the module above): the subscriber
//! connections are this small codec over a TCP stream, so that every frame, an unsolicited
//! `sunsubscribe` included, is seen.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The largest bulk string accepted (a message's payload): beyond it the connection is dropped
/// rather than buffered.
const MAX_BULK: usize = 64 * 1024 * 1024;
/// The longest line (a simple string, an error, a length).
const MAX_LINE: usize = 64 * 1024;
/// The most elements of an array (pub/sub frames have 2 to 4).
const MAX_ARRAY: usize = 1024;

/// One RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Frame {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Frame>>),
}

impl Frame {
    /// The bytes of a bulk or simple string.
    pub(super) fn bytes(&self) -> Option<&[u8]> {
        match self {
            Frame::Bulk(Some(b)) => Some(b),
            Frame::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

/// The codec: [`Frame`]s in, commands (argument lists) out.
#[derive(Debug, Default)]
pub(super) struct Resp;

/// Where the frame starting at `at` ends, or `None` when it is not complete yet.
fn frame_end(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, String> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some(line_len) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
        if buf.len() - at > MAX_LINE {
            return Err(format!("a line longer than {MAX_LINE} bytes"));
        }
        return Ok(None);
    };
    let line = &buf[at + 1..at + line_len];
    let after_line = at + line_len + 2;
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad RESP length {:?}", String::from_utf8_lossy(line)))
    };
    match kind {
        b'+' | b'-' | b':' => Ok(Some(after_line)),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some(after_line));
            }
            let len = usize::try_from(len).map_err(|_| "bad bulk length".to_owned())?;
            if len > MAX_BULK {
                return Err(format!("bulk string of {len} bytes"));
            }
            let end = after_line + len + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some(after_line));
            }
            let len = usize::try_from(len).map_err(|_| "bad array length".to_owned())?;
            if len > MAX_ARRAY || depth > 4 {
                return Err(format!("array of {len} elements at depth {depth}"));
            }
            let mut end = after_line;
            for _ in 0..len {
                match frame_end(buf, end, depth + 1)? {
                    Some(next) => end = next,
                    None => return Ok(None),
                }
            }
            Ok(Some(end))
        }
        other => Err(format!("unexpected RESP type byte {other:#04x}")),
    }
}

/// Parses the complete frame at the start of `buf` (checked by [`frame_end`]).
fn parse(buf: &mut Bytes) -> Frame {
    let kind = buf[0];
    let line_len = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("checked complete");
    let line = String::from_utf8_lossy(&buf[1..line_len]).into_owned();
    buf.advance(line_len + 2);
    match kind {
        b'+' => Frame::Simple(line),
        b'-' => Frame::Error(line),
        b':' => Frame::Integer(line.parse().unwrap_or_default()),
        // The lengths were checked by `frame_end`, read the same way: negative is null.
        b'$' => match usize::try_from(line.parse::<i64>().unwrap_or(-1)) {
            Ok(len) => {
                let bytes = buf.split_to(len);
                buf.advance(2);
                Frame::Bulk(Some(bytes))
            }
            Err(_) => Frame::Bulk(None),
        },
        _ => match usize::try_from(line.parse::<i64>().unwrap_or(-1)) {
            Ok(len) => Frame::Array(Some((0..len).map(|_| parse(buf)).collect())),
            Err(_) => Frame::Array(None),
        },
    }
}

impl Decoder for Resp {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        match frame_end(src, 0, 0) {
            Ok(Some(end)) => {
                let mut frame = src.split_to(end).freeze();
                Ok(Some(parse(&mut frame)))
            }
            Ok(None) => Ok(None),
            Err(reason) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, reason)),
        }
    }
}

impl Encoder<Vec<Bytes>> for Resp {
    type Error = std::io::Error;

    fn encode(&mut self, args: Vec<Bytes>, dst: &mut BytesMut) -> Result<(), Self::Error> {
        dst.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            dst.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            dst.extend_from_slice(&arg);
            dst.extend_from_slice(b"\r\n");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> (Vec<Frame>, usize) {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(frame) = Resp.decode(&mut buf).unwrap() {
            out.push(frame);
        }
        (out, buf.len())
    }

    #[test]
    fn decodes_pubsub_frames_across_partial_reads() {
        let input: &[u8] = b"*3\r\n$10\r\nssubscribe\r\n$3\r\nabc\r\n:1\r\n*3\r\n$8\r\nsmessage\r\n$3\r\nabc\r\n$5\r\nhe\r\nl\r\n-MOVED 12 127.0.0.1:7001\r\n+OK\r\n$-1\r\n";
        let (frames, rest) = decode_all(input);
        assert_eq!(rest, 0);
        assert_eq!(frames.len(), 5);
        let Frame::Array(Some(message)) = &frames[1] else {
            panic!("{:?}", frames[1])
        };
        assert_eq!(message[2].bytes(), Some(&b"he\r\nl"[..]));
        assert_eq!(frames[2], Frame::Error("MOVED 12 127.0.0.1:7001".into()));
        assert_eq!(frames[4], Frame::Bulk(None));
        // Every cut of the input decodes to nothing more than its complete frames.
        for cut in 0..input.len() {
            let (frames, _) = decode_all(&input[..cut]);
            assert!(frames.len() <= 5);
        }
    }

    #[test]
    fn odd_lengths_decode_like_they_are_checked() {
        // "-0" is a length of 0 for the check and for the parse alike.
        let (frames, rest) = decode_all(b"*2\r\n$-0\r\n\r\n$1\r\nx\r\n");
        assert_eq!(rest, 0);
        assert_eq!(
            frames,
            [Frame::Array(Some(vec![
                Frame::Bulk(Some(Bytes::new())),
                Frame::Bulk(Some(Bytes::from_static(b"x")))
            ]))]
        );
        let (frames, _) = decode_all(b"*-1\r\n$-5\r\n");
        assert_eq!(frames, [Frame::Array(None), Frame::Bulk(None)]);
    }

    #[test]
    fn refuses_garbage() {
        let mut endless = BytesMut::from(&b"+"[..]);
        endless.extend_from_slice(&vec![b'a'; 70 * 1024]);
        assert!(Resp.decode(&mut endless).is_err(), "a line without an end");
        let mut buf = BytesMut::from(&b"?what\r\n"[..]);
        assert!(Resp.decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"$99999999999\r\n"[..]);
        assert!(Resp.decode(&mut buf).is_err());
    }

    #[test]
    fn encodes_commands() {
        let mut out = BytesMut::new();
        let command = vec![
            Bytes::from_static(b"SSUBSCRIBE"),
            Bytes::from_static(b"a{1}"),
        ];
        Resp.encode(command, &mut out).unwrap();
        assert_eq!(&out[..], b"*2\r\n$10\r\nSSUBSCRIBE\r\n$4\r\na{1}\r\n");
    }
}
