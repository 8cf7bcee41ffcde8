//! The envelope: parsing a received payload once, enforcing limits, skipping this worker's own
//! messages, and stripping the envelope fields (`workerId`, `includeSender`).

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

/// The payload field naming the publishing worker (the reference framework's name).
pub const WORKER_ID_FIELD: &str = "workerId";
/// The payload field asking the publishing worker to handle its own message too.
pub const INCLUDE_SENDER_FIELD: &str = "includeSender";

/// Limits on received payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Largest payload accepted, in bytes (default 1 MiB).
    pub max_bytes: usize,
    /// Deepest nesting of arrays and objects accepted (default 64, at most 128).
    pub max_depth: usize,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InvalidPayload {
    #[error("payload of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("payload nests deeper than the limit of {limit} levels")]
    TooDeep { limit: usize },
    #[error("payload is not JSON: {0}")]
    NotJson(serde_json::Error),
}

impl InvalidPayload {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::TooDeep { .. } => "too_deep",
            Self::NotJson(_) => "not_json",
        }
    }
}

/// A parsed payload.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) message: Value,
    pub(crate) worker_id: Option<Arc<str>>,
    pub(crate) include_sender: bool,
    pub(crate) stripped: bool,
}

impl Parsed {
    /// True when this worker published the message and did not ask to receive it.
    pub(crate) fn is_own(&self, instance_id: &str) -> bool {
        !self.include_sender && self.worker_id.as_deref() == Some(instance_id)
    }
}

/// Where a message came from and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub(crate) worker_id: Option<Arc<str>>,
    pub(crate) include_sender: bool,
    pub(crate) received_at: SystemTime,
}

impl Envelope {
    /// The instance id of the worker that published the message, when it said.
    pub fn worker_id(&self) -> Option<&str> {
        self.worker_id.as_deref()
    }

    /// Whether the publisher asked for its own worker to handle the message too.
    pub fn include_sender(&self) -> bool {
        self.include_sender
    }

    /// When this worker received the message.
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }
}

/// Parses a payload once, within the limits, and takes the envelope fields out.
pub(crate) fn parse(payload: &[u8], limits: &PayloadLimits) -> Result<Parsed, InvalidPayload> {
    if payload.len() > limits.max_bytes {
        return Err(InvalidPayload::TooLarge {
            size: payload.len(),
            limit: limits.max_bytes,
        });
    }
    let max_depth = limits.max_depth.min(128);
    if nesting_depth(payload) > max_depth {
        return Err(InvalidPayload::TooDeep { limit: max_depth });
    }
    let mut message: Value = serde_json::from_slice(payload).map_err(InvalidPayload::NotJson)?;
    let mut worker_id = None;
    let mut include_sender = false;
    let mut stripped = false;
    if let Value::Object(map) = &mut message {
        if let Some(w) = map.remove(WORKER_ID_FIELD) {
            stripped = true;
            worker_id = match w {
                Value::String(s) => Some(Arc::from(s)),
                Value::Number(n) => Some(Arc::from(n.to_string())),
                _ => None,
            };
        }
        if let Some(i) = map.remove(INCLUDE_SENDER_FIELD) {
            stripped = true;
            // Strictly the boolean `true`, as in the reference framework.
            include_sender = i == Value::Bool(true);
        }
    }
    Ok(Parsed {
        message,
        worker_id,
        include_sender,
        stripped,
    })
}

/// The deepest nesting of `[` / `{` outside strings. Cheap, and it runs before the parser so a
/// hostile payload cannot make the parser recurse deeply.
fn nesting_depth(payload: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in payload {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A short, printable preview of a payload for logs.
pub(crate) fn preview(payload: &[u8]) -> String {
    const MAX: usize = 80;
    let text = String::from_utf8_lossy(&payload[..payload.len().min(MAX)]);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    if payload.len() > MAX {
        out.push('…');
    }
    out
}

/// Adds the envelope to a serialized JSON object: `{"workerId":"…",["includeSender":true,]…}`.
/// Returns `None` when `json` is not an object.
pub(crate) fn wrap(json: &[u8], worker_id: &str, include_sender: bool) -> Option<Vec<u8>> {
    let start = json.iter().position(|b| !b.is_ascii_whitespace())?;
    if json[start] != b'{' {
        return None;
    }
    let rest = &json[start + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(json.len() + worker_id.len() + 40);
    out.extend_from_slice(b"{\"workerId\":");
    serde_json::to_writer(&mut out, worker_id).expect("writing to a Vec cannot fail");
    if include_sender {
        out.extend_from_slice(b",\"includeSender\":true");
    }
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The payload without its envelope fields, given the parsed message (which never has them): the
/// publisher's own bytes when the fields come first as [`wrap`] writes them (so its key order and
/// formatting reach browsers unchanged); else the top-level entries in the publisher's order, each
/// value's bytes as published (a reference worker writes `workerId` last); else the parsed message
/// serialized again.
pub(crate) fn stripped_payload(raw: &[u8], message: &Value) -> bytes::Bytes {
    without_envelope_prefix(raw)
        .or_else(|| without_envelope_keys(raw).map(bytes::Bytes::from))
        .unwrap_or_else(|| {
            bytes::Bytes::from(
                serde_json::to_vec(message).expect("serializing a serde_json::Value cannot fail"),
            )
        })
}

/// The object in `raw` without its top-level `workerId` and `includeSender` entries, wherever they
/// are: the other entries in their order, each value's bytes untouched (keys are written again,
/// escaped the standard way). `None` when `raw` is not a JSON object.
pub(crate) fn without_envelope_keys(raw: &[u8]) -> Option<Vec<u8>> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;

    struct Entries<'a>(Vec<(String, &'a RawValue)>);

    impl<'de> serde::Deserialize<'de> for Entries<'de> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct EntriesVisitor;
            impl<'de> Visitor<'de> for EntriesVisitor {
                type Value = Entries<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Entries<'de>, A::Error> {
                    let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                    while let Some(key) = map.next_key::<String>()? {
                        let value: &'de RawValue = map.next_value()?;
                        entries.push((key, value));
                    }
                    Ok(Entries(entries))
                }
            }
            deserializer.deserialize_map(EntriesVisitor)
        }
    }

    let Entries(entries) = serde_json::from_slice(raw).ok()?;
    let mut out = Vec::with_capacity(raw.len());
    out.push(b'{');
    for (key, value) in entries
        .iter()
        .filter(|(key, _)| key != WORKER_ID_FIELD && key != INCLUDE_SENDER_FIELD)
    {
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).ok()?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Some(out)
}

/// The payload without the envelope fields that [`wrap`] puts first
/// (`{"workerId":"…",["includeSender":true|false,]…}`), keeping the publisher's bytes and key
/// order. `None` when the payload does not start that way, or when an envelope key appears again
/// further on (a duplicate, or a publisher that wrote them elsewhere): the caller then serializes
/// the parsed payload, which never has them.
pub(crate) fn without_envelope_prefix(raw: &[u8]) -> Option<bytes::Bytes> {
    let start = raw.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = raw[start..].strip_prefix(b"{\"workerId\":\"")?;
    let mut i = 0;
    loop {
        match *rest.get(i)? {
            b'\\' => i += 2,
            b'"' => break,
            _ => i += 1,
        }
    }
    let mut rest = &rest[i + 1..];
    for flag in [&b",\"includeSender\":true"[..], b",\"includeSender\":false"] {
        if let Some(r) = rest.strip_prefix(flag) {
            rest = r;
            break;
        }
    }
    let body = match rest.first()? {
        b',' => &rest[1..],
        b'}' => rest,
        _ => return None,
    };
    let mentions = |key: &[u8]| body.windows(key.len()).any(|w| w == key);
    if mentions(b"\"workerId\"") || mentions(b"\"includeSender\"") {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(b'{');
    out.extend_from_slice(body);
    Some(bytes::Bytes::from(out))
}

#[cfg(test)]
mod tests {

    /// Random objects (envelope keys anywhere, duplicated, nested, with whitespace, as key
    /// prefixes and in string values): what handlers and browsers get has no envelope field at
    /// the top level and means exactly the parsed message.
    #[test]
    fn stripping_holds_whatever_the_key_order_duplicates_and_whitespace() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let keys = [
            "workerId",
            "includeSender",
            "type",
            "action",
            "data",
            "workerIdX",
            "x",
        ];
        let values = [
            r#""w1""#,
            "true",
            "false",
            "1",
            r#"{"workerId":"nested","includeSender":true}"#,
            r#""contains \"workerId\" text""#,
            "[1,2]",
            "null",
        ];
        let limits = PayloadLimits::default();
        let mut fast = 0;
        for _ in 0..5_000 {
            let space = |next: &mut dyn FnMut(u64) -> u64| if next(4) == 0 { " " } else { "" };
            // A third in the publisher's own layout (the fast path), the others anything.
            let mut raw = String::from("{");
            let mut first = true;
            if next(3) == 0 {
                raw.push_str(r#""workerId":"w\"1""#);
                if next(2) == 0 {
                    raw.push_str(r#","includeSender":true"#);
                }
                first = false;
            }
            let fields = next(6);
            for _ in 0..fields {
                if !first {
                    raw.push(',');
                }
                first = false;
                raw.push_str(space(&mut next));
                raw.push_str(&format!("\"{}\"", keys[next(keys.len() as u64) as usize]));
                raw.push_str(space(&mut next));
                raw.push(':');
                raw.push_str(space(&mut next));
                raw.push_str(values[next(values.len() as u64) as usize]);
            }
            raw.push('}');
            let parsed = parse(raw.as_bytes(), &limits).expect("valid JSON");
            let out = stripped_payload(raw.as_bytes(), &parsed.message);
            if without_envelope_prefix(raw.as_bytes()).is_some() {
                fast += 1;
            }
            let again: Value = serde_json::from_slice(&out).expect("the output is JSON");
            assert_eq!(again, parsed.message, "{raw} became {out:?}");
            let map = again.as_object().expect("an object");
            assert!(
                !map.contains_key(WORKER_ID_FIELD) && !map.contains_key(INCLUDE_SENDER_FIELD),
                "{raw} became {out:?}"
            );
        }
        assert!(fast > 500, "the fast path was taken {fast} times");
    }

    /// A reference worker writes the envelope last (`{...msg, workerId}`): the other entries
    /// keep their order and bytes all the same.
    #[test]
    fn envelope_keys_anywhere_are_removed_without_reordering() {
        let cut =
            |raw: &str| String::from_utf8(without_envelope_keys(raw.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            cut(r#"{"type":"t","z":1, "a" : [2, 1],"workerId":"w"}"#),
            r#"{"type":"t","z":1,"a":[2, 1]}"#
        );
        assert_eq!(
            cut(r#"{"includeSender":true,"b\u0041":{"y":1,"x":2},"workerId":null}"#),
            r#"{"bA":{"y":1,"x":2}}"#
        );
        assert_eq!(cut(r#"{"workerId":"w"}"#), "{}");
        assert!(without_envelope_keys(b"[1]").is_none());
        let parsed = parse(
            br#"{"z":1,"a":2,"workerId":"w"}"#,
            &PayloadLimits::default(),
        )
        .unwrap();
        assert_eq!(
            &stripped_payload(br#"{"z":1,"a":2,"workerId":"w"}"#, &parsed.message)[..],
            br#"{"z":1,"a":2}"#
        );
    }

    #[test]
    fn envelope_prefix_is_cut_without_reordering() {
        let cut = |raw: &str| {
            without_envelope_prefix(raw.as_bytes()).map(|b| String::from_utf8(b.to_vec()).unwrap())
        };
        assert_eq!(
            cut(r#"{"workerId":"w","z":1,"a":2}"#).as_deref(),
            Some(r#"{"z":1,"a":2}"#)
        );
        assert_eq!(
            cut(r#"{"workerId":"w\"x","includeSender":true,"z":1}"#).as_deref(),
            Some(r#"{"z":1}"#)
        );
        assert_eq!(
            cut(r#"{"workerId":"w","includeSender":false,"type":"acc"}"#).as_deref(),
            Some(r#"{"type":"acc"}"#)
        );
        assert_eq!(cut(r#"{"workerId":"w"}"#).as_deref(), Some("{}"));
        // Not the publisher's layout, or an envelope key further on: parse instead.
        assert_eq!(cut(r#"{"type":"acc","workerId":"w"}"#), None);
        assert_eq!(cut(r#"{"workerId":"a","workerId":"b","x":1}"#), None);
        assert_eq!(cut(r#"{"workerId":"a","x":1,"includeSender":false}"#), None);
        assert_eq!(cut(r#"{"workerId": "a","x":1}"#), None);
    }
    use super::*;

    #[test]
    fn strips_envelope_fields() {
        let p = parse(
            br#"{"workerId":"w1","includeSender":true,"a":1}"#,
            &PayloadLimits::default(),
        )
        .unwrap();
        assert_eq!(p.message, serde_json::json!({"a": 1}));
        assert_eq!(p.worker_id.as_deref(), Some("w1"));
        assert!(p.include_sender);
        assert!(p.stripped);
        assert!(!p.is_own("w1"));
    }

    #[test]
    fn include_sender_must_be_the_boolean_true() {
        let p = parse(
            br#"{"workerId":"w1","includeSender":"yes"}"#,
            &PayloadLimits::default(),
        )
        .unwrap();
        assert!(!p.include_sender);
        assert!(p.is_own("w1"));
        assert!(!p.is_own("w2"));
    }

    #[test]
    fn limits() {
        let limits = PayloadLimits {
            max_bytes: 10,
            max_depth: 2,
        };
        assert!(matches!(
            parse(b"[1,2,3,4,5,6,7]", &limits),
            Err(InvalidPayload::TooLarge { .. })
        ));
        assert!(matches!(
            parse(b"[[[1]]]", &limits),
            Err(InvalidPayload::TooDeep { .. })
        ));
        assert!(parse(b"[\"[[[[\"]", &limits).is_ok());
        assert!(matches!(
            parse(b"nope", &limits),
            Err(InvalidPayload::NotJson(_))
        ));
        assert!(matches!(parse(b"null", &limits), Ok(p) if p.message.is_null()));
    }

    #[test]
    fn wraps_objects_only() {
        let w = wrap(br#"{"a":1}"#, "id", false).unwrap();
        assert_eq!(w, br#"{"workerId":"id","a":1}"#);
        let w = wrap(b" { } ", "id", true).unwrap();
        let v: Value = serde_json::from_slice(&w).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"workerId": "id", "includeSender": true})
        );
        assert!(wrap(b"[1]", "id", false).is_none());
    }
}
