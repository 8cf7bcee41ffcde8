//! The slot map: which primary owns which slots, read with `CLUSTER SLOTS` from the first node
//! that answers.

use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, Value};

/// Which primary (`host:port`) owns each slot range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SlotMap {
    /// `(first slot, last slot, primary)`, sorted by first slot.
    ranges: Vec<(u16, u16, Arc<str>)>,
}

impl SlotMap {
    /// The primary that owns `slot`, if the map assigns it.
    pub(super) fn owner(&self, slot: u16) -> Option<&Arc<str>> {
        let i = self.ranges.partition_point(|(first, _, _)| *first <= slot);
        let (first, last, node) = self.ranges.get(i.checked_sub(1)?)?;
        (*first..=*last).contains(&slot).then_some(node)
    }

    /// Every primary in the map.
    pub(super) fn primaries(&self) -> impl Iterator<Item = &Arc<str>> {
        let mut seen = std::collections::BTreeSet::new();
        self.ranges
            .iter()
            .map(|(_, _, node)| node)
            .filter(move |node| seen.insert(Arc::clone(node)))
    }

    /// Parses the answer of `CLUSTER SLOTS` asked of `asked_host` (a node that announces no
    /// address, `""`, is on the host it was reached at).
    pub(super) fn parse(value: &Value, asked_host: &str) -> Result<Self, String> {
        let Value::Array(entries) = value else {
            return Err(format!("CLUSTER SLOTS answered {value:?}"));
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return Err(format!("unexpected CLUSTER SLOTS entry {entry:?}"));
            };
            let int = |v: Option<&Value>| match v {
                Some(Value::Int(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (Some(first), Some(last)) = (int(fields.first()), int(fields.get(1))) else {
                return Err(format!("unexpected CLUSTER SLOTS range {entry:?}"));
            };
            let Some(Value::Array(primary)) = fields.get(2) else {
                return Err(format!("CLUSTER SLOTS range without a primary: {entry:?}"));
            };
            let host = match primary.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => return Err(format!("CLUSTER SLOTS primary without a host: {entry:?}")),
            };
            let Some(port) = int(primary.get(1)) else {
                return Err(format!("CLUSTER SLOTS primary without a port: {entry:?}"));
            };
            let host = if host.is_empty() || host == "?" {
                asked_host.to_owned()
            } else {
                host
            };
            ranges.push((first, last, Arc::from(format!("{host}:{port}"))));
        }
        ranges.sort_by_key(|(first, _, _)| *first);
        Ok(Self { ranges })
    }
}

/// Reads the slot map from the first of `nodes` that answers within `timeout`.
pub(super) async fn read(nodes: &[ConnectionInfo], timeout: Duration) -> Result<SlotMap, String> {
    let mut errors = Vec::new();
    for info in nodes {
        let host = match info.addr() {
            ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
            other => {
                errors.push(format!("{other}: not a TCP address"));
                continue;
            }
        };
        let attempt = async {
            let client = redis::Client::open(info.clone())?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut connection)
                .await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(value)) => match SlotMap::parse(&value, &host) {
                Ok(map) if !map.ranges.is_empty() => return Ok(map),
                Ok(_) => errors.push(format!("{}: no slot assigned", info.addr())),
                Err(e) => errors.push(format!("{}: {e}", info.addr())),
            },
            Ok(Err(e)) => errors.push(format!("{}: {e}", info.addr())),
            Err(_) => errors.push(format!("{}: no answer within {timeout:?}", info.addr())),
        }
    }
    Err(errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_cluster_slots_and_finds_owners() {
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7001), bulk("id2")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7004), bulk("id5")]),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk(""), Value::Int(7000), bulk("id1")]),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                Value::Array(vec![bulk("10.0.0.3"), Value::Int(7002), bulk("id3")]),
            ]),
        ]);
        let map = SlotMap::parse(&answer, "10.0.0.9").unwrap();
        assert_eq!(map.owner(0).map(|n| &**n), Some("10.0.0.9:7000"));
        assert_eq!(map.owner(5460).map(|n| &**n), Some("10.0.0.9:7000"));
        assert_eq!(map.owner(5461).map(|n| &**n), Some("127.0.0.1:7001"));
        assert_eq!(map.owner(16383).map(|n| &**n), Some("10.0.0.3:7002"));
        assert_eq!(map.primaries().count(), 3);
        let partial = SlotMap::parse(&Value::Array(vec![]), "h").unwrap();
        assert_eq!(partial.owner(3), None);
        assert!(SlotMap::parse(&Value::Int(1), "h").is_err());
    }
}
