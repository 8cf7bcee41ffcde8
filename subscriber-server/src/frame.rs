//! What travels to clients: [`ClientId`], [`Frame`] (serialized once) and [`Outgoing`].

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

/// A server-assigned client id: 32 lowercase hex characters, new for every connection.
///
/// ```
/// # use switchboard::ClientId;
/// # fn show(id: &ClientId) {
/// assert_eq!(id.as_str().len(), 32);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub(crate) fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string().into())
    }

    pub(crate) fn from_wire(id: &str) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text is not a client id (it is empty or holds whitespace or control characters).
#[derive(Debug, thiserror::Error)]
#[error("not a client id: {0:?}")]
pub struct InvalidClientId(String);

impl std::str::FromStr for ClientId {
    type Err = InvalidClientId;

    /// Parses an id as clients and other workers send it (the server makes 32 lowercase hex
    /// digits; any non-empty text without whitespace is accepted).
    fn from_str(s: &str) -> Result<Self, InvalidClientId> {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidClientId(s.to_owned()));
        }
        Ok(Self(s.into()))
    }
}

impl<'de> serde::Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::borrow::Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A text frame for WebSocket clients, serialized once: every recipient gets the same bytes
/// (cloning a frame copies a pointer, not the text).
///
/// ```
/// use switchboard::Frame;
///
/// let frame = Frame::json(&serde_json::json!({"type": "jobs"})).unwrap();
/// assert_eq!(frame.as_str(), r#"{"type":"jobs"}"#);
/// let copy = frame.clone(); // no copy of the text
/// assert_eq!(copy, frame);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(pub(crate) Utf8Bytes);

impl Frame {
    /// Serializes `value` to JSON once.
    ///
    /// # Errors
    /// The serde error when `value` cannot be serialized.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_string(value).map(Self::text)
    }

    /// A frame with this text as it is.
    pub fn text(text: impl Into<String>) -> Self {
        Self(Utf8Bytes::from(text.into()))
    }

    /// A frame from bytes that are already UTF-8 (checked once here).
    pub(crate) fn from_utf8(bytes: Bytes) -> Option<Self> {
        Utf8Bytes::try_from(bytes).ok().map(Self)
    }

    /// The frame's text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The frame's bytes (shared, not copied).
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(self.0.clone())
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server-to-client message in the reference protocol: `{"type", "action", "data"}`.
///
/// ```
/// use switchboard::Outgoing;
///
/// let frame = Outgoing::new("jobs", "completed", serde_json::json!({"id": 7})).to_frame();
/// assert_eq!(frame.as_str(), r#"{"type":"jobs","action":"completed","data":{"id":7}}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outgoing {
    #[serde(rename = "type")]
    kind: String,
    action: String,
    data: Value,
}

impl Outgoing {
    /// A frame of the given type and action; `data` is anything serializable (a value that fails to
    /// serialize becomes `null`, and is logged).
    pub fn new(kind: impl Into<String>, action: impl Into<String>, data: impl Serialize) -> Self {
        let data = serde_json::to_value(data).unwrap_or_else(|error| {
            tracing::error!(%error, "outgoing frame data did not serialize; sending null");
            Value::Null
        });
        Self {
            kind: kind.into(),
            action: action.into(),
            data,
        }
    }

    /// The frame's type.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The frame's action.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// The frame's data.
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// Serializes the frame once.
    pub fn to_frame(&self) -> Frame {
        Frame::json(self).expect("serializing strings and a JSON value cannot fail")
    }
}

impl From<&Outgoing> for Frame {
    fn from(o: &Outgoing) -> Self {
        o.to_frame()
    }
}

impl From<Outgoing> for Frame {
    fn from(o: Outgoing) -> Self {
        o.to_frame()
    }
}

impl From<&Frame> for Frame {
    fn from(f: &Frame) -> Self {
        f.clone()
    }
}

/// `{"type":"error","action":"message","data":{"error":<message>}}`.
pub(crate) fn error_frame(message: &str) -> Frame {
    coded_error_frame(message, None, None)
}

/// `{"type":"error","action":"message","data":{"error":<message>,"code":<code>,"id":<id>}}`: the
/// reference's error frame, with a stable code and, for an error the client is not shown, the id
/// of the server's log line.
pub(crate) fn coded_error_frame(message: &str, code: Option<&str>, id: Option<&str>) -> Frame {
    #[derive(Serialize)]
    struct Data<'a> {
        error: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct ErrorFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        action: &'static str,
        data: Data<'a>,
    }
    Frame::json(&ErrorFrame {
        kind: "error",
        action: "message",
        data: Data {
            error: message,
            code,
            id,
        },
    })
    .expect("serializing strings cannot fail")
}

/// `{"type":<kind>,"action":<action>,"response":<response>}`.
pub(crate) fn reply_frame(kind: &str, action: &str, response: &Value) -> Frame {
    #[derive(Serialize)]
    struct Reply<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        action: &'a str,
        response: &'a Value,
    }
    Frame::json(&Reply {
        kind,
        action,
        response,
    })
    .expect("serializing strings and a JSON value cannot fail")
}

/// An ISO 8601 UTC timestamp with milliseconds (`2024-05-01T12:00:00.000Z`), as JavaScript's
/// `toISOString`.
pub(crate) fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(
            error_frame("Failed to parse JSON").as_str(),
            r#"{"type":"error","action":"message","data":{"error":"Failed to parse JSON"}}"#
        );
        assert_eq!(
            reply_frame("hello", "greet", &serde_json::json!({"ok": true})).as_str(),
            r#"{"type":"hello","action":"greet","response":{"ok":true}}"#
        );
        let id = ClientId::generate();
        assert_eq!(id.as_str().len(), 32);
        assert!(id
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}
