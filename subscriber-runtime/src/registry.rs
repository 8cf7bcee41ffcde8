//! The registry: every handler linked into the binary plus the inline ones, validated, sorted
//! and indexed once at `build()`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::context::{Context, StateMap};
use crate::error::{BuildError, Location};
use crate::handler::HandlerFuture;
use crate::matcher::{Compiled, MatcherKind};
use crate::registration::{self, MatcherSpec, Registration, Requirements};
use crate::subscriber::{DynCall, InlineSubscriber};
use crate::telemetry::HandlerMetrics;

/// How a handler was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerSource {
    /// With `#[websocket_subscriber]`.
    Attribute,
    /// With the builder's `.subscriber(...)`.
    Inline,
}

/// What the startup table shows about one handler.
#[derive(Debug, Clone)]
pub struct HandlerInfo {
    pub(crate) name: Cow<'static, str>,
    pub(crate) description: Cow<'static, str>,
    pub(crate) priority: i32,
    pub(crate) matchers: Vec<String>,
    pub(crate) location: Location,
    pub(crate) source: HandlerSource,
}

impl HandlerInfo {
    /// The handler's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The handler's description (its doc comment by default).
    pub fn description(&self) -> &str {
        &self.description
    }
    /// Its priority (higher runs first).
    pub fn priority(&self) -> i32 {
        self.priority
    }
    /// Its matchers, as written.
    pub fn matchers(&self) -> &[String] {
        &self.matchers
    }
    /// Where it was defined.
    pub fn location(&self) -> &Location {
        &self.location
    }
    /// How it was registered.
    pub fn source(&self) -> HandlerSource {
        self.source
    }
}

impl fmt::Display for HandlerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>6}  {:<28} {:<40} {}",
            self.priority,
            self.name,
            self.matchers.join(" | "),
            self.location
        )?;
        if !self.description.is_empty() {
            write!(f, "  -- {}", self.description)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
pub(crate) enum Call {
    Static(fn(Context) -> HandlerFuture),
    Dyn(DynCall),
}

impl Call {
    pub(crate) fn call(&self, cx: Context) -> HandlerFuture {
        match self {
            Self::Static(f) => f(cx),
            Self::Dyn(f) => f(cx),
        }
    }
}

/// One handler, ready to dispatch to.
pub(crate) struct Entry {
    pub(crate) info: HandlerInfo,
    pub(crate) call: Call,
    pub(crate) matchers: Vec<Compiled>,
    pub(crate) timeout: Option<Duration>,
    /// Its metric handles (no-ops until resolved at `build()`, once a recorder is installed).
    pub(crate) metrics: HandlerMetrics,
}

impl Entry {
    pub(crate) fn has_predicate(&self) -> bool {
        self.matchers
            .iter()
            .any(|m| matches!(m, Compiled::Predicate(_)))
    }
}

struct Candidate {
    info: HandlerInfo,
    call: Call,
    kinds: Vec<MatcherKind>,
    timeout: Option<Duration>,
    requirements: Requirements,
}

fn from_registration(r: &'static Registration) -> Candidate {
    let kinds = r
        .matchers
        .iter()
        .map(|m| match *m {
            MatcherSpec::Channel(c) => MatcherKind::Channel(c.into()),
            MatcherSpec::Regex(re) => MatcherKind::Regex(re.into()),
            MatcherSpec::Pattern(p) => MatcherKind::Pattern(p.into()),
            MatcherSpec::Predicate(f) => MatcherKind::Predicate(std::sync::Arc::new(f)),
        })
        .collect::<Vec<_>>();
    let mut requirements = Requirements::default();
    (r.requirements)(&mut requirements);
    Candidate {
        info: HandlerInfo {
            name: Cow::Borrowed(r.name),
            description: Cow::Borrowed(r.description),
            priority: r.priority,
            matchers: kinds.iter().map(ToString::to_string).collect(),
            location: Location {
                module_path: r.module_path.to_owned(),
                file: r.file.to_owned(),
                line: r.line,
            },
            source: HandlerSource::Attribute,
        },
        call: Call::Static(r.handler),
        kinds,
        timeout: None,
        requirements,
    }
}

fn from_inline(s: InlineSubscriber, index: usize) -> Result<Candidate, BuildError> {
    let name = s.spec.name.unwrap_or_else(|| format!("inline#{index}"));
    if name.trim().is_empty() {
        return Err(BuildError::EmptyName);
    }
    let kinds: Vec<MatcherKind> = s.spec.matchers.into_iter().map(|m| m.0).collect();
    Ok(Candidate {
        info: HandlerInfo {
            name: Cow::Owned(name),
            description: Cow::Owned(s.spec.description),
            priority: s.spec.priority,
            matchers: kinds.iter().map(ToString::to_string).collect(),
            location: Location {
                module_path: "<inline>".to_owned(),
                file: String::new(),
                line: 0,
            },
            source: HandlerSource::Inline,
        },
        call: Call::Dyn(s.call),
        kinds,
        timeout: s.spec.timeout,
        requirements: s.requirements,
    })
}

/// Options for building the registry.
#[derive(Default)]
pub(crate) struct RegistryOptions {
    /// Keep only these handlers (by name); all when `None`.
    pub(crate) only: Option<Vec<String>>,
    /// Leave out the handlers linked into the binary (inline ones only).
    pub(crate) without_linked: bool,
    /// Per-handler timeouts by name.
    pub(crate) timeouts: HashMap<String, Duration>,
}

/// Collects, validates and sorts every handler.
pub(crate) fn build(
    inline: Vec<InlineSubscriber>,
    states: &StateMap,
    options: RegistryOptions,
) -> Result<Vec<Entry>, BuildError> {
    let mut candidates: Vec<Candidate> = if options.without_linked {
        Vec::new()
    } else {
        registration::linked()
            .into_iter()
            .map(from_registration)
            .collect()
    };
    for (i, s) in inline.into_iter().enumerate() {
        candidates.push(from_inline(s, i)?);
    }

    // Deterministic order: priority (higher first), then name, then module path. Never link order.
    // Sorting indices keeps the (large) candidates in place.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&candidates[a].info, &candidates[b].info);
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.location.module_path.cmp(&b.location.module_path))
            .then_with(|| a.location.line.cmp(&b.location.line))
    });
    let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
    let mut candidates: Vec<Candidate> = order
        .into_iter()
        .map(|i| slots[i].take().expect("each index once"))
        .collect();

    // Duplicate names, reported with both places (looked up over all handlers, before `only`).
    let mut seen: HashMap<&str, &Location> = HashMap::new();
    for c in &candidates {
        if let Some(first) = seen.insert(&c.info.name, &c.info.location) {
            let (first, second) = order_locations(first, &c.info.location);
            return Err(BuildError::DuplicateName {
                name: c.info.name.to_string(),
                first: Box::new(first),
                second: Box::new(second),
            });
        }
    }

    if let Some(only) = &options.only {
        for name in only {
            if !candidates.iter().any(|c| c.info.name == name.as_str()) {
                let mut known: Vec<_> = candidates.iter().map(|c| c.info.name.as_ref()).collect();
                known.sort_unstable();
                return Err(BuildError::UnknownHandler {
                    name: name.clone(),
                    known: known.join(", "),
                });
            }
        }
        candidates.retain(|c| only.iter().any(|n| c.info.name == n.as_str()));
    }

    let mut entries = Vec::with_capacity(candidates.len());
    for c in candidates {
        if c.kinds.is_empty() {
            return Err(BuildError::NoMatchers {
                handler: c.info.name.to_string(),
            });
        }
        for (id, type_name) in &c.requirements.states {
            if !states.contains(*id) {
                return Err(BuildError::MissingState {
                    handler: c.info.name.to_string(),
                    type_name,
                });
            }
        }
        let matchers = c
            .kinds
            .iter()
            .map(|k| Compiled::compile(k, &c.info.name))
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = options
            .timeouts
            .get(c.info.name.as_ref())
            .copied()
            .or(c.timeout);
        entries.push(Entry {
            info: c.info,
            call: c.call,
            matchers,
            timeout,
            metrics: HandlerMetrics::default(),
        });
    }
    Ok(entries)
}

fn order_locations(a: &Location, b: &Location) -> (Location, Location) {
    let key = |l: &Location| (l.file.clone(), l.line, l.module_path.clone());
    if key(a) <= key(b) {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

/// Logs the startup table, one line per handler, at info level.
pub(crate) fn log_table(entries: &[Entry], worker_id: &str) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let mut table = String::new();
    for e in entries {
        table.push_str("\n  ");
        table.push_str(&e.info.to_string());
    }
    tracing::info!(
        worker_id,
        handlers = entries.len(),
        backend = registration::BACKEND,
        "subscriber handlers (priority, name, matchers, location):{table}"
    );
}
