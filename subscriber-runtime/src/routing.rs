//! Routing: which handlers a channel's messages go to.
//!
//! The channel-based part (exact names, `"*"`, regexes, globs) is computed once per distinct
//! channel and cached; predicates are evaluated per message, only for the handlers that have them.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use crate::matcher::Compiled;
use crate::registry::Entry;

/// A handler that may run for a channel's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Index into the sorted entries (so candidates are in priority order).
    pub(crate) handler: u32,
    /// True when no channel-based matcher matched: the handler runs only if a predicate does.
    pub(crate) conditional: bool,
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
    cache: RwLock<HashMap<Arc<str>, Arc<[Candidate]>>>,
}

impl Router {
    pub(crate) fn new(entries: &[Entry]) -> Self {
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
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The candidates for a channel, in priority order, each handler at most once.
    pub(crate) fn candidates(&self, channel: &str) -> Arc<[Candidate]> {
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(channel)
        {
            return hit.clone();
        }
        let computed: Arc<[Candidate]> = self.compute(channel).into();
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

    fn compute(&self, channel: &str) -> Vec<Candidate> {
        let mut matched: Vec<u32> = Vec::new();
        if let Some(list) = self.exact.get(channel) {
            matched.extend(list.as_slice());
        }
        matched.extend(&self.wildcard);
        matched.extend(
            self.regexes
                .iter()
                .filter(|r| r.is_match(channel))
                .map(|r| r.owner),
        );
        matched.extend(
            self.globs
                .iter()
                .filter(|(p, _)| subscriber_patterns::glob::matches(p, channel))
                .map(|(_, i)| *i),
        );
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
        out
    }
}
