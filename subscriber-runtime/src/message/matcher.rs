//! Matchers: which messages a handler receives.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::error::BuildError;

/// What a predicate matcher sees: the channel and the parsed payload (envelope fields removed).
#[derive(Debug, Clone, Copy)]
pub struct MatchContext<'a> {
    pub(crate) channel: &'a str,
    pub(crate) message: &'a Value,
}

impl<'a> MatchContext<'a> {
    /// Builds a context, e.g. to unit-test a predicate.
    pub fn new(channel: &'a str, message: &'a Value) -> Self {
        Self { channel, message }
    }

    /// The channel the message arrived on.
    pub fn channel(&self) -> &'a str {
        self.channel
    }

    /// The parsed payload.
    pub fn message(&self) -> &'a Value {
        self.message
    }

    /// A property of the payload by a dotted path: `"type"`, `"user.id"`, `"items.0.name"`
    /// (a number indexes an array). `None` when a step is missing, or `null`.
    ///
    /// ```
    /// use switchboard::MatchContext;
    /// use switchboard::serde_json::json;
    ///
    /// let message = json!({"type": "analytics", "nested": {"deep": {"value": "test"}}});
    /// let m = MatchContext::new("events", &message);
    /// assert_eq!(m.property("nested.deep.value"), Some(&json!("test")));
    /// assert_eq!(m.property("nested.missing.value"), None);
    /// ```
    pub fn property(&self, path: &str) -> Option<&'a Value> {
        property(self.message, path)
    }
}

/// The value at a dotted path (the reference's `getNestedProperty`).
pub(crate) fn property<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(value, |value, step| match value {
            Value::Object(map) => map.get(step),
            Value::Array(items) => step.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
        .filter(|value| !value.is_null())
}

pub(crate) type PredicateFn = Arc<dyn Fn(&MatchContext<'_>) -> bool + Send + Sync>;

/// One way for an inline subscriber to select messages. A subscriber runs for a message when any
/// of its matchers matches.
///
/// Strings, regexes and globs are checked by `build()`, which reports a bad one as an error naming
/// the subscriber.
#[derive(Clone)]
pub struct Matcher(pub(crate) MatcherKind);

#[derive(Clone)]
pub(crate) enum MatcherKind {
    Channel(Arc<str>),
    Regex(Arc<str>),
    Pattern(Arc<str>),
    Predicate(PredicateFn),
}

impl Matcher {
    /// An exact channel name; `"*"` matches every channel.
    pub fn channel(name: impl Into<String>) -> Self {
        Self(MatcherKind::Channel(name.into().into()))
    }

    /// A regex tested against the channel name, e.g. `"^analytics:"`.
    pub fn regex(regex: impl Into<String>) -> Self {
        Self(MatcherKind::Regex(regex.into().into()))
    }

    /// A Redis glob tested against the channel name, e.g. `"analytics:*"`.
    pub fn pattern(glob: impl Into<String>) -> Self {
        Self(MatcherKind::Pattern(glob.into().into()))
    }

    /// A predicate over the channel and the parsed payload. A predicate that panics counts as
    /// no match (and is logged).
    pub fn predicate(f: impl Fn(&MatchContext<'_>) -> bool + Send + Sync + 'static) -> Self {
        Self(MatcherKind::Predicate(Arc::new(f)))
    }

    /// Matches when the payload property at a dotted path ([`MatchContext::property`]) equals
    /// `value` (JSON equality: `1` and `1.0` differ, as `===` would have them).
    ///
    /// ```
    /// use switchboard::prelude::*;
    /// use switchboard::serde_json::json;
    ///
    /// let analytics = Subscriber::matching([Matcher::property("type", json!("analytics"))])
    ///     .name("analytics")
    ///     .handle(|Message(m): Message| async move { tracing::info!(%m, "tracked") });
    /// # let _ = analytics;
    /// ```
    pub fn property(path: impl Into<String>, value: impl Into<Value>) -> Self {
        let (path, value) = (path.into(), value.into());
        Self::predicate(move |m| m.property(&path) == Some(&value))
    }

    /// Matches when the payload property at a dotted path exists and `test` accepts it.
    ///
    /// ```
    /// use switchboard::Matcher;
    ///
    /// let urgent = Matcher::property_where("priority", |p| p.as_i64().is_some_and(|p| p > 3));
    /// # let _ = urgent;
    /// ```
    pub fn property_where(
        path: impl Into<String>,
        test: impl Fn(&Value) -> bool + Send + Sync + 'static,
    ) -> Self {
        let path = path.into();
        Self::predicate(move |m| m.property(&path).is_some_and(&test))
    }
}

impl From<&str> for Matcher {
    fn from(channel: &str) -> Self {
        Self::channel(channel)
    }
}

impl From<String> for Matcher {
    fn from(channel: String) -> Self {
        Self::channel(channel)
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for MatcherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(c) => write!(f, "{c:?}"),
            Self::Regex(r) => write!(f, "regex({r:?})"),
            Self::Pattern(p) => write!(f, "pattern({p:?})"),
            Self::Predicate(_) => f.write_str("predicate"),
        }
    }
}

/// A matcher validated and ready to use.
#[derive(Clone)]
pub(crate) enum Compiled {
    Any,
    Channel(Arc<str>),
    /// The source, and the Redis pattern and literal prefix that cover it.
    Regex(Arc<str>, Arc<subscriber_patterns::RegexSubscription>),
    Pattern(Arc<str>),
    Predicate(PredicateFn),
}

/// The analysis of each distinct regex source seen by one `build()`, so that a regex shared by
/// several handlers is parsed once.
pub(crate) type RegexCache =
    std::collections::HashMap<Arc<str>, Arc<subscriber_patterns::RegexSubscription>>;

impl Compiled {
    pub(crate) fn compile(
        kind: MatcherKind,
        handler: &str,
        regexes: &mut RegexCache,
    ) -> Result<Self, BuildError> {
        let invalid = |matcher: &MatcherKind, reason: String| BuildError::InvalidMatcher {
            handler: handler.to_owned(),
            matcher: matcher.to_string(),
            reason,
        };
        Ok(match kind {
            MatcherKind::Channel(c) if &*c == subscriber_patterns::ANY_CHANNEL => Self::Any,
            MatcherKind::Channel(c) => match subscriber_patterns::validate_channel(&c) {
                Ok(()) => Self::Channel(c),
                Err(e) => return Err(invalid(&MatcherKind::Channel(c), e.to_string())),
            },
            MatcherKind::Regex(r) => {
                // Syntax and reach here, with at most one parse per distinct regex; the router
                // compiles it on first use.
                let subscription = match regexes.get(&r) {
                    Some(known) => known.clone(),
                    None => match subscriber_patterns::analyze_regex(&r) {
                        Ok(analyzed) => {
                            let analyzed = Arc::new(analyzed);
                            regexes.insert(r.clone(), analyzed.clone());
                            analyzed
                        }
                        Err(e) => return Err(invalid(&MatcherKind::Regex(r), e.to_string())),
                    },
                };
                Self::Regex(r, subscription)
            }
            MatcherKind::Pattern(p) => match subscriber_patterns::glob::validate(&p) {
                Ok(()) => Self::Pattern(p),
                Err(e) => return Err(invalid(&MatcherKind::Pattern(p), e.to_string())),
            },
            MatcherKind::Predicate(f) => Self::Predicate(f),
        })
    }
}

impl fmt::Display for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("\"*\""),
            Self::Channel(c) => write!(f, "{c:?}"),
            Self::Regex(r, _) => write!(f, "regex({r:?})"),
            Self::Pattern(p) => write!(f, "pattern({p:?})"),
            Self::Predicate(_) => f.write_str("predicate"),
        }
    }
}
