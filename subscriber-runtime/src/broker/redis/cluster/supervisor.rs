//! The supervisor: keeps every partition a worker needs subscribed on the primary that owns its
//! slot, through slot migrations, failovers, restarts and lost connections.
//!
//! It owns the slot map, one [`Node`] connection per primary that carries partitions, and where
//! each partition is subscribed. The map is read again every
//! [`topology_refresh`](super::RedisClusterBroker::topology_refresh), and at once (then with
//! backoff while it fails) when Redis unsubscribes a partition on its own (its slot moved, or its
//! node became a replica), refuses a subscription (`MOVED`, `CLUSTERDOWN`), or a connection is
//! lost. Each partition is subscribed with a `SSUBSCRIBE` of its own, so that no command spans
//! two slots (`CROSSSLOT`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::node::{Command, Deliver, Event, Node, Settings, Tls};
use super::topology::{self, SlotMap};
use super::RedisClusterBroker;
use crate::broker::Inbox;

/// Where a partition is subscribed.
#[derive(Debug, Clone)]
struct Place {
    node: Arc<str>,
    /// Confirmed by Redis.
    active: bool,
    /// Refreshes in a row whose map put this active partition on another node. Redis tells a
    /// node's subscribers when a slot leaves it, so an active subscription moves only when the
    /// maps agree twice: a node answering from a stale map cannot make it ping-pong.
    disputed: u8,
}

pub(super) struct Supervisor {
    pub(super) broker: RedisClusterBroker,
    /// The subscriber connections' TLS connector (`rediss://` seeds).
    pub(super) tls: Tls,
    /// The partitions this worker needs.
    pub(super) wanted: Vec<usize>,
    pub(super) deliver: Deliver,
    pub(super) inbox: Inbox,
    pub(super) shutdown: CancellationToken,
    pub(super) ready: Option<oneshot::Sender<()>>,
    /// The last reason the partitions could not all be subscribed, for the error at start.
    pub(super) last_error: Arc<Mutex<Option<String>>>,
}

struct State {
    map: SlotMap,
    nodes: HashMap<Arc<str>, Node>,
    placed: HashMap<usize, Place>,
    events: mpsc::UnboundedSender<Event>,
    /// Some partition lost its subscription since all were last active.
    degraded: bool,
    /// When it became degraded.
    degraded_since: Option<Instant>,
    /// Failed refreshes in a row (the backoff's attempt).
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

impl Supervisor {
    pub(super) async fn run(mut self) {
        let shutdown = self.shutdown.clone();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut state = State {
            map: SlotMap::default(),
            nodes: HashMap::new(),
            placed: HashMap::new(),
            events: events_tx,
            degraded: false,
            degraded_since: None,
            failures: 0,
            retry_at: None,
        };
        let period = self.broker.topology_refresh;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = self.refresh(&mut state) => {}
        }
        loop {
            let retry_at = state.retry_at;
            let retry = async move {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                Some(event) = events.recv() => self.on_event(&mut state, event),
                () = retry => {
                    state.retry_at = None;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = self.refresh(&mut state) => {}
                    }
                }
                _ = ticks.tick() => tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.refresh(&mut state) => {}
                },
            }
        }
    }

    fn settings(&self) -> Settings {
        let info = self.broker.seeds[0].redis_settings();
        Settings {
            username: info.username().map(str::to_owned),
            password: info.password().map(str::to_owned),
            connect_timeout: self.broker.connect_timeout,
            ping_interval: self.broker.ping_interval,
            tls: self.tls.clone(),
        }
    }

    /// Reads the slot map and moves every partition to its owner.
    async fn refresh(&mut self, state: &mut State) {
        // The nodes this worker knows answer first: a seed may be gone for good.
        let mut candidates: Vec<redis::ConnectionInfo> = state
            .map
            .primaries()
            .filter_map(|node| self.broker.info_for(node))
            .collect();
        candidates.extend(self.broker.seeds.iter().cloned());
        match topology::read(&candidates, self.broker.connect_timeout).await {
            Ok(map) => {
                if map != state.map {
                    tracing::debug!(urls = %self.broker.urls, primaries = map.primaries().count(), "redis cluster slot map read");
                }
                state.map = map;
                self.place_all(state);
            }
            Err(error) => {
                self.failed(
                    state,
                    format!("cannot read the cluster's slot map: {error}"),
                );
            }
        }
    }

    /// Subscribes every wanted partition on its owner, moving those whose owner changed.
    fn place_all(&mut self, state: &mut State) {
        let wanted = self.wanted.clone();
        let mut unowned = Vec::new();
        for partition in wanted {
            let slot = self.broker.partitions.slot(partition);
            match state.map.owner(slot).cloned() {
                Some(owner) => self.place_by_map(state, partition, owner),
                None => unowned.push(slot),
            }
        }
        if !unowned.is_empty() {
            self.failed(state, format!("slots {unowned:?} have no primary"));
        }
        // Connections that carry nothing any more are closed.
        let used: std::collections::HashSet<Arc<str>> =
            state.placed.values().map(|p| p.node.clone()).collect();
        state.nodes.retain(|node, _| used.contains(node));
    }

    /// Subscribes `partition` on `owner` as the slot map says; an active subscription elsewhere
    /// moves only when two maps in a row say so.
    fn place_by_map(&mut self, state: &mut State, partition: usize, owner: Arc<str>) {
        if let Some(place) = state.placed.get_mut(&partition) {
            if place.node == owner {
                place.disputed = 0;
                return;
            }
            if place.active && place.disputed == 0 {
                place.disputed = 1;
                return;
            }
        }
        self.place(state, partition, owner);
    }

    /// Subscribes `partition` on `owner`, leaving the node it was on.
    fn place(&mut self, state: &mut State, partition: usize, owner: Arc<str>) {
        let name = Bytes::copy_from_slice(self.broker.partitions.name(partition).as_bytes());
        if let Some(place) = state.placed.get(&partition) {
            if place.node == owner {
                return;
            }
            if let Some(old) = state.nodes.get(&place.node) {
                old.send(Command::Unsubscribe(name.clone()));
            }
            tracing::info!(partition = %self.broker.partitions.name(partition), from = %place.node, to = %owner, "redis cluster partition moves to another node");
            // Until the new owner confirms it, the partition is subscribed nowhere: a recovery,
            // counted once complete, whichever of the slot map, a `MOVED` or Redis's own
            // `sunsubscribe` showed the move first.
            self.degrade(state);
        }
        let node = state.nodes.entry(owner.clone()).or_insert_with(|| {
            Node::spawn(
                owner.clone(),
                self.settings(),
                self.deliver.clone(),
                state.events.clone(),
                self.shutdown.clone(),
            )
        });
        let sent = node.send(Command::Subscribe(name));
        state.placed.insert(
            partition,
            Place {
                node: owner.clone(),
                active: false,
                disputed: 0,
            },
        );
        if !sent {
            // Its task is gone: as lost as a closed connection.
            let id = node.id;
            self.on_event(
                state,
                Event::Lost {
                    node: owner,
                    id,
                    reason: "the connection's task has ended".to_owned(),
                },
            );
        }
    }

    fn partition_of(&self, channel: &[u8]) -> Option<usize> {
        self.broker.partitions.index_of(channel)
    }

    fn on_event(&mut self, state: &mut State, event: Event) {
        match event {
            Event::Subscribed { node, channel } => {
                let Some(partition) = self.partition_of(&channel) else {
                    return;
                };
                if let Some(place) = state.placed.get_mut(&partition) {
                    if place.node == node {
                        place.active = true;
                    }
                }
                self.check_complete(state);
            }
            Event::Unsubscribed {
                node,
                channel,
                solicited,
            } => {
                let Some(partition) = self.partition_of(&channel) else {
                    return;
                };
                // Our own SUNSUBSCRIBE (the partition moved on already) is not a loss.
                if !solicited && state.placed.get(&partition).is_some_and(|p| p.node == node) {
                    state.placed.remove(&partition);
                    tracing::info!(partition = %self.broker.partitions.name(partition), %node, "redis cluster unsubscribed a partition (its slot moved): subscribing it on its new owner");
                    self.degrade(state);
                    state.retry_at = Some(tokio::time::Instant::now());
                }
            }
            Event::Refused {
                node,
                channel,
                error,
            } => {
                let Some(partition) = self.partition_of(&channel) else {
                    return;
                };
                if state.placed.get(&partition).is_none_or(|p| p.node != node) {
                    return;
                }
                state.placed.remove(&partition);
                self.degrade(state);
                // `MOVED <slot> <host:port>`: subscribe there at once; the map is read again
                // later (it may still be stale on the node asked).
                let moved_to = error
                    .strip_prefix("MOVED ")
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    .map(Arc::<str>::from);
                match moved_to {
                    Some(owner) => {
                        tracing::info!(partition = %self.broker.partitions.name(partition), from = %node, to = %owner, "redis cluster answered MOVED");
                        self.place(state, partition, owner);
                        // Counted, so that nodes that disagree are asked ever less often.
                        state.failures = state.failures.saturating_add(1);
                        self.schedule_retry(state);
                    }
                    None => self.failed(state, format!("{node} refused SSUBSCRIBE: {error}")),
                }
            }
            Event::Lost { node, id, reason } => {
                if state.nodes.get(&node).is_none_or(|n| n.id != id) {
                    return;
                }
                state.nodes.remove(&node);
                let before = state.placed.len();
                state.placed.retain(|_, place| place.node != node);
                let lost = before - state.placed.len();
                if lost > 0 {
                    self.degrade(state);
                }
                self.failed(
                    state,
                    format!("connection to {node} lost ({lost} partitions): {reason}"),
                );
            }
        }
    }

    fn degrade(&self, state: &mut State) {
        if !state.degraded {
            state.degraded = true;
            state.degraded_since = Some(Instant::now());
        }
    }

    /// Records a failure and schedules the next refresh with backoff.
    fn failed(&self, state: &mut State, reason: String) {
        // A certificate the worker does not trust: say how to trust it.
        #[cfg(feature = "tls")]
        let reason = super::super::tls::explain(&reason);
        state.failures = state.failures.saturating_add(1);
        // The first failure of a series, then one in ten, so an outage does not flood the log.
        if state.failures == 1 || state.failures % 10 == 0 {
            tracing::warn!(urls = %self.broker.urls, failures = state.failures, %reason, "redis cluster subscription incomplete: retrying");
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.schedule_retry(state);
    }

    fn schedule_retry(&self, state: &mut State) {
        let delay = self.broker.backoff.delay(state.failures.max(1));
        let at = tokio::time::Instant::now() + delay;
        state.retry_at = Some(state.retry_at.map_or(at, |t| t.min(at)));
    }

    fn check_complete(&mut self, state: &mut State) {
        let complete = self
            .wanted
            .iter()
            .all(|p| state.placed.get(p).is_some_and(|place| place.active));
        if !complete {
            return;
        }
        state.failures = 0;
        if let Some(ready) = self.ready.take() {
            state.degraded = false;
            state.degraded_since = None;
            let _ = ready.send(());
            return;
        }
        if state.degraded {
            state.degraded = false;
            let downtime = state.degraded_since.take().map(|t| t.elapsed());
            self.inbox.count_reconnect();
            tracing::info!(
                urls = %self.broker.urls,
                partitions = self.wanted.len(),
                downtime_ms = downtime.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                "every redis cluster partition subscribed again"
            );
        }
    }
}
