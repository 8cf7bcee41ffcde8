//! The registry: every handler linked into the binary plus the inline ones, validated, sorted
//! and indexed once at `build()`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{BuildError, Location};
use crate::handler::context::{Context, StateMap};
use crate::handler::extract::Requirements;
use crate::handler::layer::{self, HandlerLayer, HandlerService};
use crate::handler::registration::{self, MatcherSpec, Registration};
use crate::handler::subscriber::{DynCall, InlineSubscriber};
use crate::handler::HandlerFuture;
use crate::message::matcher::{Compiled, MatcherKind, RegexCache};
use crate::observe::telemetry::HandlerMetrics;

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

/// What the registry keeps about a handler for logs, errors and [`HandlerInfo`]. Everything an
/// attributed handler's descriptor holds is `'static` and borrowed as it is, so collecting a
/// handler allocates nothing here; the display strings of [`HandlerInfo`] (matchers, location)
/// are made only when asked for.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) name: Cow<'static, str>,
    pub(crate) description: Cow<'static, str>,
    pub(crate) priority: i32,
    pub(crate) module_path: &'static str,
    pub(crate) file: &'static str,
    pub(crate) line: u32,
    pub(crate) source: HandlerSource,
}

impl Meta {
    pub(crate) fn location(&self) -> Location {
        Location {
            module_path: self.module_path.to_owned(),
            file: self.file.to_owned(),
            line: self.line,
        }
    }
}

#[derive(Clone)]
pub(crate) enum Call {
    Static(fn(Context) -> HandlerFuture),
    Dyn(DynCall),
    /// A handler in its layers.
    Layered(HandlerService<Context>),
}

impl Call {
    pub(crate) fn call(&self, cx: Context) -> HandlerFuture {
        match self {
            Self::Static(f) => f(cx),
            Self::Dyn(f) => f(cx),
            Self::Layered(service) => service.run(cx),
        }
    }

    /// The handler wrapped in `layers` (the first one outermost).
    fn layered(self, layers: &[HandlerLayer]) -> Self {
        if layers.is_empty() {
            return self;
        }
        let base = match self {
            Self::Static(f) => HandlerService::from_handler(Arc::new(f)),
            Self::Dyn(f) => HandlerService::from_handler(f),
            Self::Layered(service) => service,
        };
        Self::Layered(layer::stack(base, layers))
    }
}

/// One handler, ready to dispatch to.
pub(crate) struct Entry {
    pub(crate) info: Meta,
    pub(crate) call: Call,
    pub(crate) matchers: Vec<Compiled>,
    pub(crate) timeout: Option<Duration>,
    /// Its metric handles: resolved at `build()` when the app installs the Prometheus recorder,
    /// else on the handler's first run (so that building 10,000 handlers costs no metric keys).
    /// Boxed, so that an `Entry` stays small: registry building moves entries around.
    pub(crate) metrics: std::sync::OnceLock<Box<HandlerMetrics>>,
    /// A plugin's internal subscriber: runs first, and is neither listed nor counted.
    pub(crate) internal: bool,
    /// Its channels are durable (the attribute's `durable`, `Subscriber::durable`).
    pub(crate) durable: bool,
    /// It runs on one worker per message, reading its channels' streams in a consumer group (the
    /// attribute's `once`, `Subscriber::once`): not routed from the broker's live messages.
    pub(crate) once: bool,
}

impl Entry {
    /// The handler's metric handles, resolved from the current recorder on first use.
    pub(crate) fn metrics(&self) -> &HandlerMetrics {
        self.metrics
            .get_or_init(|| Box::new(HandlerMetrics::resolve(&self.info.name)))
    }
}

impl Entry {
    /// What the startup table and `handlers()` show about this handler.
    pub(crate) fn handler_info(&self) -> HandlerInfo {
        HandlerInfo {
            name: self.info.name.clone(),
            description: self.info.description.clone(),
            priority: self.info.priority,
            matchers: self.matchers.iter().map(ToString::to_string).collect(),
            location: self.info.location(),
            source: self.info.source,
        }
    }

    pub(crate) fn has_predicate(&self) -> bool {
        self.matchers
            .iter()
            .any(|m| matches!(m, Compiled::Predicate(_)))
    }
}

struct Candidate {
    info: Meta,
    call: Call,
    kinds: Vec<MatcherKind>,
    timeout: Option<Duration>,
    /// The handler's own layers (the attribute's `layer = ...`, `Subscriber::layer`).
    layers: Vec<HandlerLayer>,
    requirements: Requirements,
    durable: bool,
    once: bool,
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
        info: Meta {
            name: Cow::Borrowed(r.name),
            description: Cow::Borrowed(r.description),
            priority: r.priority,
            module_path: r.module_path,
            file: r.file,
            line: r.line,
            source: HandlerSource::Attribute,
        },
        call: Call::Static(r.handler),
        kinds,
        timeout: r.timeout,
        layers: r.layers.iter().map(|layer| layer()).collect(),
        requirements,
        durable: r.durable,
        once: r.once,
    }
}

fn from_inline(s: InlineSubscriber, index: usize) -> Result<Candidate, BuildError> {
    let name = s.spec.name.unwrap_or_else(|| format!("inline#{index}"));
    if name.trim().is_empty() {
        return Err(BuildError::EmptyName);
    }
    let kinds: Vec<MatcherKind> = s.spec.matchers.into_iter().map(|m| m.0).collect();
    Ok(Candidate {
        info: Meta {
            name: Cow::Owned(name),
            description: Cow::Owned(s.spec.description),
            priority: s.spec.priority,
            module_path: "<inline>",
            file: "",
            line: 0,
            source: HandlerSource::Inline,
        },
        call: Call::Dyn(s.call),
        kinds,
        timeout: s.spec.timeout,
        layers: s.spec.layers,
        requirements: s.requirements,
        durable: s.spec.durable,
        once: s.spec.once,
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
    /// The application's layers, each for every handler (`None`) or the handlers a selector picks;
    /// the first one outermost.
    pub(crate) layers: Vec<(Option<Selector>, HandlerLayer)>,
}

/// Picks the handlers a group layer applies to.
pub(crate) type Selector = Arc<dyn Fn(&HandlerInfo) -> bool + Send + Sync>;

/// Collects, validates and sorts every handler.
pub(crate) fn build(
    inline: Vec<InlineSubscriber>,
    states: &StateMap,
    options: RegistryOptions,
) -> Result<Vec<Entry>, BuildError> {
    let linked = if options.without_linked {
        Vec::new()
    } else {
        registration::linked()
    };
    let mut candidates: Vec<Candidate> = Vec::with_capacity(linked.len() + inline.len());
    candidates.extend(linked.into_iter().map(from_registration));
    for (i, s) in inline.into_iter().enumerate() {
        candidates.push(from_inline(s, i)?);
    }

    // Deterministic order: priority (higher first), then name, then module path. Never link order.
    // Sorting small keys keeps the (large) candidates in place; the first eight bytes of the name
    // decide most comparisons without reading the name. Handlers equal in all four keys share
    // their name, which is an error below, so an unstable sort orders them all the same.
    let mut order: Vec<(i32, u64, usize)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (c.info.priority, name_prefix(&c.info.name), i))
        .collect();
    order.sort_unstable_by(|a, b| {
        b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then_with(|| {
            let (a, b) = (&candidates[a.2].info, &candidates[b.2].info);
            a.name
                .cmp(&b.name)
                .then_with(|| a.module_path.cmp(b.module_path))
                .then_with(|| a.line.cmp(&b.line))
        })
    });
    let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
    let mut candidates: Vec<Candidate> = order
        .into_iter()
        .map(|(_, _, i)| slots[i].take().expect("each index once"))
        .collect();

    // Duplicate names, reported with both places (looked up over all handlers, before `only`).
    let mut seen: HashMap<&str, &Meta> = HashMap::with_capacity(candidates.len());
    for c in &candidates {
        if let Some(first) = seen.insert(&c.info.name, &c.info) {
            let (first, second) = order_locations(first.location(), c.info.location());
            return Err(BuildError::DuplicateName {
                name: c.info.name.to_string(),
                first: Box::new(first),
                second: Box::new(second),
            });
        }
    }
    drop(seen);

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
    let mut regexes = RegexCache::new();
    for c in candidates {
        if c.kinds.is_empty() {
            return Err(BuildError::NoMatchers {
                handler: c.info.name.to_string(),
            });
        }
        c.requirements
            .check(&c.info.name, Some(&c.info.location()), states)?;
        let matchers = c
            .kinds
            .into_iter()
            .map(|k| Compiled::compile(k, &c.info.name, &mut regexes))
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = if options.timeouts.is_empty() {
            c.timeout
        } else {
            options
                .timeouts
                .get(c.info.name.as_ref())
                .copied()
                .or(c.timeout)
        };
        let mut entry = Entry {
            info: c.info,
            call: c.call,
            matchers,
            timeout,
            metrics: std::sync::OnceLock::new(),
            internal: false,
            durable: c.durable,
            once: c.once,
        };
        // The application's layers, then the group layers that pick it, then its own.
        if !options.layers.is_empty() || !c.layers.is_empty() {
            let info = options
                .layers
                .iter()
                .any(|(selector, _)| selector.is_some())
                .then(|| entry.handler_info());
            let mut layers: Vec<HandlerLayer> = options
                .layers
                .iter()
                .filter(|(selector, _)| match (selector, &info) {
                    (None, _) => true,
                    (Some(select), Some(info)) => select(info),
                    (Some(_), None) => false,
                })
                .map(|(_, layer)| layer.clone())
                .collect();
            layers.extend(c.layers);
            entry.call = entry.call.layered(&layers);
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Plugins' internal subscribers, in the order they were added (so before every application
/// handler). Their requirements are the plugins' business.
pub(crate) fn build_internal(subscribers: Vec<InlineSubscriber>) -> Result<Vec<Entry>, BuildError> {
    let mut regexes = RegexCache::new();
    let mut entries = Vec::with_capacity(subscribers.len());
    for (i, s) in subscribers.into_iter().enumerate() {
        let c = from_inline(s, i)?;
        let matchers = c
            .kinds
            .into_iter()
            .map(|k| Compiled::compile(k, &c.info.name, &mut regexes))
            .collect::<Result<Vec<_>, _>>()?;
        entries.push(Entry {
            info: c.info,
            call: c.call,
            matchers,
            timeout: c.timeout,
            metrics: std::sync::OnceLock::new(),
            internal: true,
            durable: false,
            once: false,
        });
    }
    Ok(entries)
}

/// The first eight bytes of a name, zero-padded, as a big-endian number: when two of these differ
/// they order the names as the names themselves do (a shorter name pads with the lowest byte).
fn name_prefix(name: &str) -> u64 {
    let mut bytes = [0_u8; 8];
    let n = name.len().min(8);
    bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
    u64::from_be_bytes(bytes)
}

fn order_locations(a: Location, b: Location) -> (Location, Location) {
    let key = |l: &Location| (l.file.clone(), l.line, l.module_path.clone());
    if key(&a) <= key(&b) {
        (a, b)
    } else {
        (b, a)
    }
}

/// Logs the startup table, one line per handler, at info level. The lines are formatted here,
/// only when the log is enabled (the same text as [`HandlerInfo`]'s `Display`).
pub(crate) fn log_table(entries: &[Entry], worker_id: &str) {
    use std::fmt::Write as _;
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let mut table = String::new();
    let mut matchers = String::new();
    let entries: Vec<&Entry> = entries.iter().filter(|e| !e.internal).collect();
    for e in &entries {
        matchers.clear();
        for (i, m) in e.matchers.iter().enumerate() {
            if i > 0 {
                matchers.push_str(" | ");
            }
            let _ = write!(matchers, "{m}");
        }
        if e.once {
            matchers.push_str(" [once]");
        } else if e.durable {
            matchers.push_str(" [durable]");
        }
        let location = LocationDisplay(&e.info);
        let _ = write!(
            table,
            "\n  {:>6}  {:<28} {:<40} {}",
            e.info.priority, e.info.name, matchers, location
        );
        if !e.info.description.is_empty() {
            let _ = write!(table, "  -- {}", e.info.description);
        }
    }
    tracing::info!(
        worker_id,
        handlers = entries.len(),
        backend = registration::BACKEND,
        "subscriber handlers (priority, name, matchers, location):{table}"
    );
}

/// A [`Meta`]'s location, displayed as [`Location`] is, without making one.
struct LocationDisplay<'a>(&'a Meta);

impl fmt::Display for LocationDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        if m.line == 0 {
            write!(f, "{} (given to the builder)", m.module_path)
        } else {
            write!(f, "{}:{} ({})", m.file, m.line, m.module_path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::name_prefix;

    #[test]
    fn name_prefixes_order_as_names() {
        let names = [
            "",
            "a",
            "a\0",
            "a\0b",
            "ab",
            "abcdefgh",
            "abcdefgh0",
            "abcdefgi",
            "b",
            "h10",
            "h9",
            "é",
            "zzzzzzzzzzzz",
        ];
        for a in names {
            for b in names {
                let (pa, pb) = (name_prefix(a), name_prefix(b));
                if pa != pb {
                    assert_eq!(pa.cmp(&pb), a.cmp(b), "{a:?} {b:?}");
                }
            }
        }
    }
}
