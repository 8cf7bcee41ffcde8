//! Routing: which handlers a channel's messages go to.
//!
//! The channel-based part (exact names, `"*"`, regexes, globs) is computed once per distinct
//! channel and cached; predicates are evaluated per message, only for the handlers that have them.
//!
//! The cache also holds each channel's `switchboard_messages_received_total` handle. Its `channel`
//! label keeps cardinality bounded by the application, whatever channels arrive:
//!
//! 1. a channel the application names (an exact handler channel, a `listen` channel, a framework
//!    channel) is labelled with its name;
//! 2. any other channel is labelled by the pattern (`analytics:*`) or regex (`regex:^analytics:`)
//!    of the highest-priority handler whose pattern or regex matches it;
//! 3. failing that, `*` when a `"*"` handler receives it;
//! 4. failing that, `other`.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};

use metrics::Counter;

use crate::dispatch::registry::Entry;
use crate::message::matcher::Compiled;
use crate::observe::telemetry;

/// A handler that may run for a channel's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Index into the sorted entries (so candidates are in priority order).
    pub(crate) handler: u32,
    /// True when no channel-based matcher matched: the handler runs only if a predicate does.
    pub(crate) conditional: bool,
}

/// What the router knows about one channel: its candidates, and its metric handle.
#[derive(Debug)]
pub(crate) struct Route {
    /// The candidates, in priority order, each handler at most once.
    pub(crate) candidates: Box<[Candidate]>,
    /// `switchboard_messages_received_total` for the channel's label.
    pub(crate) received: Counter,
}

/// The most distinct channels whose candidate lists are cached; past it the cache starts over, so
/// a flood of one-off channel names cannot grow memory without bound.
const CACHE_LIMIT: usize = 16_384;

/// A regex matcher, compiled on first use: the first channel that starts with its anchored
/// literal prefix (or any channel, without one). Routing results are cached per channel, so a
/// regex runs once per distinct channel at most, and building a registry of thousands of
/// handlers compiles nothing up front (the syntax was checked by the macro and at `build()`).
struct LazyRegex {
    src: Arc<str>,
    subscription: Arc<subscriber_patterns::RegexSubscription>,
    compiled: OnceLock<Option<regex::Regex>>,
    owner: u32,
}

impl LazyRegex {
    fn is_match(&self, channel: &str) -> bool {
        if !channel.starts_with(&self.subscription.prefix) {
            return false;
        }
        self.compiled
            .get_or_init(|| match regex::Regex::new(&self.src) {
                Ok(regex) => Some(regex),
                Err(error) => {
                    tracing::error!(regex = %self.src, %error, "regex matcher cannot be compiled; it matches nothing");
                    None
                }
            })
            .as_ref()
            .is_some_and(|r| r.is_match(channel))
    }
}

/// The handlers of one exact channel: nearly always one, kept without an allocation.
enum Handlers {
    One([u32; 1]),
    Many(Vec<u32>),
}

impl Handlers {
    fn push(&mut self, handler: u32) {
        match self {
            Self::One([first]) => *self = Self::Many(vec![*first, handler]),
            Self::Many(list) => list.push(handler),
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Self::One(one) => one,
            Self::Many(list) => list,
        }
    }
}

pub(crate) struct Router {
    exact: HashMap<Arc<str>, Handlers>,
    wildcard: Vec<u32>,
    regexes: Vec<LazyRegex>,
    globs: Vec<(Arc<str>, u32)>,
    predicated: Vec<u32>,
    /// Which entries are plugins' internal subscribers (the only ones for internal channels).
    internal: Vec<bool>,
    /// Channels that are labelled with their own name besides the exact handler channels.
    named: HashSet<String>,
    cache: RwLock<HashMap<Arc<str>, Arc<Route>>>,
}

impl Router {
    /// The router of `entries`; `named` are further channels the application names (`listen`,
    /// framework channels), labelled with their own name in metrics.
    pub(crate) fn new(entries: &[Entry], named: impl IntoIterator<Item = String>) -> Self {
        let channels = entries
            .iter()
            .flat_map(|e| &e.matchers)
            .filter(|m| matches!(m, Compiled::Channel(_)))
            .count();
        let mut exact: HashMap<Arc<str>, Handlers> = HashMap::with_capacity(channels);
        let mut wildcard = Vec::new();
        let mut regexes = Vec::new();
        let mut globs = Vec::new();
        let mut predicated = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 handlers");
            // A run-once handler reads its stream in a consumer group, not live messages.
            if e.once {
                continue;
            }
            for m in &e.matchers {
                match m {
                    Compiled::Any => wildcard.push(i),
                    Compiled::Channel(c) => match exact.entry(c.clone()) {
                        Slot::Occupied(mut list) => list.get_mut().push(i),
                        Slot::Vacant(slot) => {
                            slot.insert(Handlers::One([i]));
                        }
                    },
                    Compiled::Regex(src, subscription) => {
                        regexes.push(LazyRegex {
                            src: src.clone(),
                            subscription: subscription.clone(),
                            compiled: OnceLock::new(),
                            owner: i,
                        });
                    }
                    Compiled::Pattern(p) => globs.push((p.clone(), i)),
                    Compiled::Predicate(_) => {}
                }
            }
            if e.has_predicate() {
                predicated.push(i);
            }
        }
        Self {
            exact,
            wildcard,
            regexes,
            globs,
            predicated,
            internal: entries.iter().map(|e| e.internal).collect(),
            named: named.into_iter().collect(),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The route of a channel: its candidates, in priority order, and its metric handle.
    pub(crate) fn route(&self, channel: &str) -> Arc<Route> {
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(channel)
        {
            return hit.clone();
        }
        let computed = Arc::new(self.compute(channel));
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(channel.into(), computed.clone());
        computed
    }

    fn compute(&self, channel: &str) -> Route {
        let mut matched: Vec<u32> = Vec::new();
        let exact = self.exact.get(channel);
        if let Some(list) = exact {
            matched.extend(list.as_slice());
        }
        matched.extend(&self.wildcard);
        // The pattern or regex of the highest-priority (lowest index) handler it matches.
        let mut by_pattern: Option<(u32, String)> = None;
        let mut keep = |owner: u32, label: &dyn Fn() -> String| {
            if by_pattern.as_ref().is_none_or(|(best, _)| owner < *best) {
                by_pattern = Some((owner, label()));
            }
        };
        for r in self.regexes.iter().filter(|r| r.is_match(channel)) {
            matched.push(r.owner);
            keep(r.owner, &|| format!("regex:{}", r.src));
        }
        for (p, i) in &self.globs {
            if subscriber_patterns::glob::matches(p, channel) {
                matched.push(*i);
                keep(*i, &|| p.to_string());
            }
        }
        let label = if exact.is_some() || self.named.contains(channel) {
            channel.to_owned()
        } else if let Some((_, label)) = by_pattern {
            label
        } else if !self.wildcard.is_empty() {
            subscriber_patterns::ANY_CHANNEL.to_owned()
        } else {
            telemetry::OTHER_CHANNEL.to_owned()
        };
        matched.sort_unstable();
        matched.dedup();
        let mut out: Vec<Candidate> = matched
            .iter()
            .map(|&handler| Candidate {
                handler,
                conditional: false,
            })
            .collect();
        for &p in &self.predicated {
            if matched.binary_search(&p).is_err() {
                out.push(Candidate {
                    handler: p,
                    conditional: true,
                });
            }
        }
        out.sort_unstable_by_key(|c| c.handler);
        if crate::message::event::is_internal(channel) {
            out.retain(|c| self.internal[c.handler as usize]);
        }
        Route {
            candidates: out.into(),
            received: telemetry::channel_received(label),
        }
    }
}
