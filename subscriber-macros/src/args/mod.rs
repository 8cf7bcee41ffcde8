//! Parsing of `#[websocket_subscriber(key = value, ...)]`, and the key-parsing helpers that
//! `#[websocket_route(...)]` (see `route_args`) shares with it.
//!
//! Syntax errors (a missing `=`, an unparsable value) stop the parse. Every other mistake (a bad
//! value, an invalid channel, a repeated or unknown key, a forbidden combination) is recorded with
//! a span on the offending token and parsing goes on, so that all of them are reported at once.
//!
//! The submodules follow the steps of the parse:
//! - `keys`: the `key = value` loop helpers (assignment into slots, unknown keys and typo
//!   suggestions), shared with `route_args`;
//! - `expr`: looking inside a value expression (invisible groups, plain paths, string literals);
//! - `matching`: the values of `channel`, `channels` and `match`, and the duplicate check;
//! - `values`: the values of `priority`, `name`, `description` and `crate`;
//! - `running`: the values of `timeout` and `layer`, shared with `route_args`.

mod expr;
mod keys;
mod matching;
mod running;
mod values;

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Error, Expr, Ident, LitStr, Path, Token};

use crate::Errors;

pub(crate) use expr::{string_literal, ungroup};
pub(crate) use keys::{assign, closest_key, skip_value, unknown_key, value, Slot};
pub(crate) use running::{layers, timeout};
pub(crate) use values::{description, krate, name};

use matching::{channel, channels, check_duplicates, matchers};
use values::priority;

pub(crate) mod kw {
    syn::custom_keyword!(action);
    syn::custom_keyword!(channel);
    syn::custom_keyword!(channels);
    syn::custom_keyword!(priority);
    syn::custom_keyword!(name);
    syn::custom_keyword!(description);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(layer);
    syn::custom_keyword!(durable);
    syn::custom_keyword!(once);
}

/// Every key the attribute accepts, in the order the error messages list them.
pub(crate) const KEYS: &[&str] = &[
    "channel",
    "channels",
    "match",
    "priority",
    "timeout",
    "layer",
    "durable",
    "once",
    "name",
    "description",
    "crate",
];

/// One matcher, as written.
pub(crate) enum Matcher {
    /// `"name"`: an exact channel (`"*"`: every channel). Already validated.
    Channel(LitStr),
    /// `channel = some::CONST`: a `&'static str` constant, checked by a const assertion.
    ChannelConst(Path),
    /// `regex("...")`. Already validated.
    Regex(LitStr),
    /// `pattern("...")`, a Redis glob. Already validated.
    Pattern(LitStr),
    /// A path to a `fn(&MatchContext<'_>) -> bool`.
    Predicate(Path),
}

/// The parsed attribute arguments, with the errors found in them.
pub(crate) struct Args {
    /// Every matcher of `channel`, `channels` and `match`, in the order written.
    pub(crate) matchers: Vec<Matcher>,
    pub(crate) priority: i32,
    /// `timeout = "..."`, in milliseconds.
    pub(crate) timeout: Option<u64>,
    /// `layer = ...`: the layer expressions, the first one outermost.
    pub(crate) layers: Vec<Expr>,
    /// `durable`: the handler's channels are durable.
    pub(crate) durable: bool,
    /// `once`: the handler runs on one worker per message.
    pub(crate) once: bool,
    pub(crate) name: Option<LitStr>,
    pub(crate) description: Option<LitStr>,
    /// The path to the `switchboard` crate, when overridden.
    pub(crate) krate: Option<Path>,
    /// The non-fatal errors.
    pub(crate) errors: Errors,
}

#[derive(Default)]
struct Slots {
    channel: Slot<kw::channel, Matcher>,
    channels: Slot<kw::channels, Vec<Matcher>>,
    matchers: Slot<Token![match], Vec<Matcher>>,
    priority: Slot<kw::priority, i32>,
    timeout: Slot<kw::timeout, u64>,
    layers: Slot<kw::layer, Vec<Expr>>,
    durable: Option<kw::durable>,
    once: Option<kw::once>,
    name: Slot<kw::name, LitStr>,
    description: Slot<kw::description, LitStr>,
    krate: Slot<Token![crate], Path>,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut slots = Slots::default();
        let mut errors = Errors::default();
        let mut conflict_reported = false;
        // A misspelled `channel`, `channels` or `match` already has an error saying so.
        let mut misspelled_matcher_key = false;
        while !input.is_empty() {
            let key_span = input.span();
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::channel) {
                assign(input, &mut slots.channel, &mut errors, channel)?;
                if slots.channels.is_some() && !conflict_reported {
                    conflict_reported = true;
                    errors.push(channel_and_channels(key_span));
                }
            } else if lookahead.peek(kw::channels) {
                assign(input, &mut slots.channels, &mut errors, channels)?;
                if slots.channel.is_some() && !conflict_reported {
                    conflict_reported = true;
                    errors.push(channel_and_channels(key_span));
                }
            } else if lookahead.peek(Token![match]) {
                assign(input, &mut slots.matchers, &mut errors, matchers)?;
            } else if lookahead.peek(kw::priority) {
                assign(input, &mut slots.priority, &mut errors, priority)?;
            } else if lookahead.peek(kw::timeout) {
                assign(input, &mut slots.timeout, &mut errors, timeout)?;
            } else if lookahead.peek(kw::layer) {
                assign(input, &mut slots.layers, &mut errors, layers)?;
            } else if lookahead.peek(kw::durable) {
                let key: kw::durable = input.parse()?;
                flag(
                    input,
                    "durable",
                    key.span,
                    slots.durable.is_some(),
                    &mut errors,
                )?;
                slots.durable.get_or_insert(key);
            } else if lookahead.peek(kw::once) {
                let key: kw::once = input.parse()?;
                flag(input, "once", key.span, slots.once.is_some(), &mut errors)?;
                slots.once.get_or_insert(key);
            } else if lookahead.peek(kw::name) {
                assign(input, &mut slots.name, &mut errors, name)?;
            } else if lookahead.peek(kw::description) {
                assign(input, &mut slots.description, &mut errors, description)?;
            } else if lookahead.peek(Token![crate]) {
                assign(input, &mut slots.krate, &mut errors, krate)?;
            } else if input.peek(Ident::peek_any) {
                let key = input.call(Ident::parse_any)?;
                let suggestion = closest_key(&key.unraw().to_string(), KEYS);
                misspelled_matcher_key |=
                    matches!(suggestion, Some("channel" | "channels" | "match"));
                errors.push(unknown_key(&key, KEYS, suggestion));
                skip_value(input)?;
            } else {
                return Err(lookahead.error());
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }

        if slots.channel.is_none()
            && slots.channels.is_none()
            && slots.matchers.is_none()
            && !misspelled_matcher_key
        {
            errors.push(Error::new(
                Span::call_site(),
                "a subscriber needs at least one of `channel`, `channels` or `match`: \
                 write e.g. `#[websocket_subscriber(channel = \"queueJobCompleted\")]`, \
                 or `channel = \"*\"` for every channel",
            ));
        }

        let mut all = Vec::new();
        all.extend(value(slots.channel));
        all.extend(value(slots.channels).into_iter().flatten());
        all.extend(value(slots.matchers).into_iter().flatten());
        check_duplicates(&all, &mut errors);
        if let Some(key) = &slots.durable {
            check_durable(key.span, "durable", &all, &mut errors);
        }
        if let Some(key) = &slots.once {
            check_once(key.span, &all, &mut errors);
        }

        Ok(Args {
            matchers: all,
            priority: value(slots.priority).unwrap_or(0),
            timeout: value(slots.timeout),
            layers: value(slots.layers).unwrap_or_default(),
            durable: slots.durable.is_some(),
            once: slots.once.is_some(),
            name: value(slots.name),
            description: value(slots.description),
            krate: value(slots.krate),
            errors,
        })
    }
}

/// A flag key (`durable`, `once`): no value, given once.
fn flag(
    input: ParseStream<'_>,
    name: &str,
    span: Span,
    repeated: bool,
    errors: &mut Errors,
) -> syn::Result<()> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        let how = if name == "durable" {
            "the builder's `.durable(channel, Retention::new()...)` sets how much history is kept"
        } else {
            "the builder's `.once_claim_idle(...)` sets when a dead worker's messages are taken over"
        };
        errors.push(Error::new_spanned(
            value,
            format!("`{name}` is a flag and takes no value: write `{name}`; {how}"),
        ));
    } else if repeated {
        errors.push(Error::new(
            span,
            format!("`{name}` given more than once: keep only one"),
        ));
    }
    Ok(())
}

/// A durable handler needs a channel to keep a stream for: `"*"` would make every channel durable,
/// and a predicate names none.
fn check_durable(span: Span, name: &str, matchers: &[Matcher], errors: &mut Errors) {
    let every = matchers
        .iter()
        .any(|m| matches!(m, Matcher::Channel(c) if c.value() == "*"));
    let named = matchers.iter().any(|m| !matches!(m, Matcher::Predicate(_)));
    if every {
        errors.push(Error::new(
            span,
            format!(
                "a `{name}` subscriber cannot listen on `\"*\"`: that would keep a stream for \
                 every channel; name its channels, a `pattern(\"...\")` or a `regex(\"...\")`"
            ),
        ));
    } else if !named {
        errors.push(Error::new(
            span,
            format!(
                "a `{name}` subscriber needs a channel, a `pattern(\"...\")` or a \
                 `regex(\"...\")` whose messages are kept: a predicate alone names none"
            ),
        ));
    }
}

/// A run-once handler reads its channels' streams in a consumer group: it needs exact channels
/// (a pattern's or a regex's channels are not known in advance).
fn check_once(span: Span, matchers: &[Matcher], errors: &mut Errors) {
    let not_exact = matchers.iter().find_map(|m| match m {
        Matcher::Regex(_) => Some("a regex"),
        Matcher::Pattern(_) => Some("a pattern"),
        Matcher::Channel(c) if c.value() == "*" => Some("`\"*\"`"),
        _ => None,
    });
    if let Some(what) = not_exact {
        errors.push(Error::new(
            span,
            format!(
                "a `once` subscriber reads each of its channels' streams in a consumer group, so it \
                 needs exact channels, not {what}: list them in `channels = [\"...\"]`"
            ),
        ));
        return;
    }
    check_durable(span, "once", matchers, errors);
}

fn channel_and_channels(span: Span) -> Error {
    Error::new(
        span,
        "`channel` and `channels` cannot be used together: \
         put every channel in `channels = [\"a\", \"b\"]`",
    )
}

impl Matcher {
    /// The value's tokens (for tests and debugging).
    #[cfg(test)]
    fn describe(&self) -> String {
        let tokens: proc_macro2::TokenStream = match self {
            Matcher::Channel(lit) => quote::quote!(channel(#lit)),
            Matcher::ChannelConst(path) => quote::quote!(channel_const(#path)),
            Matcher::Regex(lit) => quote::quote!(regex(#lit)),
            Matcher::Pattern(lit) => quote::quote!(pattern(#lit)),
            Matcher::Predicate(path) => quote::quote!(predicate(#path)),
        };
        tokens.to_string().replace(' ', "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::TokenStream;
    use quote::{quote, ToTokens};

    fn parse(tokens: TokenStream) -> Args {
        syn::parse2(tokens).expect("no syntax error")
    }

    fn errors_of(tokens: TokenStream) -> Vec<String> {
        match parse(tokens).errors.into_result() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn every_key() {
        let args = parse(quote!(
            channel = "a",
            match = [regex("^b"), pattern("c*"), "*", is_admin],
            priority = -10,
            timeout = "250ms",
            layer = [a::b(1), c],
            name = "n",
            description = "d",
            crate = "sb"
        ));
        assert!(args.errors.is_empty());
        let matchers: Vec<String> = args.matchers.iter().map(Matcher::describe).collect();
        assert_eq!(
            matchers,
            [
                "channel(\"a\")",
                "regex(\"^b\")",
                "pattern(\"c*\")",
                "channel(\"*\")",
                "predicate(is_admin)"
            ]
        );
        assert_eq!(args.priority, -10);
        assert_eq!(args.timeout, Some(250));
        assert_eq!(args.layers.len(), 2);
        assert_eq!(args.name.unwrap().value(), "n");
        assert_eq!(args.description.unwrap().value(), "d");
        assert_eq!(args.krate.unwrap().to_token_stream().to_string(), "sb");
    }

    #[test]
    fn channel_paths() {
        let args = parse(quote!(channels = ["a", event::B, C]));
        let matchers: Vec<String> = args.matchers.iter().map(Matcher::describe).collect();
        assert_eq!(
            matchers,
            [
                "channel(\"a\")",
                "channel_const(event::B)",
                "channel_const(C)"
            ]
        );
    }

    #[test]
    fn priority_bounds() {
        assert_eq!(
            parse(quote!(channel = "a", priority = 2147483647)).priority,
            i32::MAX
        );
        assert_eq!(
            parse(quote!(channel = "a", priority = -2147483648)).priority,
            i32::MIN
        );
        assert_eq!(parse(quote!(channel = "a", priority = 7i32)).priority, 7);
        for bad in [
            quote!(priority = 2147483648),
            quote!(priority = -2147483649),
            quote!(priority = 99999999999999999999999),
        ] {
            let errors = errors_of(quote!(channel = "a", #bad));
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains("out of range"), "{errors:?}");
        }
        let errors = errors_of(quote!(channel = "a", priority = "5"));
        assert!(errors[0].contains("remove the quotes"), "{errors:?}");
        let errors = errors_of(quote!(channel = "a", priority = 5u8));
        assert!(errors[0].contains("remove the `u8` suffix"), "{errors:?}");
    }

    #[test]
    fn collects_several_errors() {
        let errors = errors_of(quote!(
            channel = "",
            channels = ["x y"],
            priority = 1.5,
            priority = 2,
            chanel = "x",
            name = ""
        ));
        assert_eq!(errors.len(), 7, "{errors:?}");
        assert!(errors[0].starts_with("channel name is empty"));
        assert!(errors[1].contains("contains a space"));
        assert!(errors[2].starts_with("`channel` and `channels` cannot be used together"));
        assert!(errors[3].starts_with("expected an integer"));
        assert!(errors[4].starts_with("`priority` given more than once"));
        assert!(errors[5].starts_with("unknown key `chanel`: did you mean `channel`?"));
        assert!(errors[6].starts_with("the handler name is empty"));
    }

    #[test]
    fn needs_a_matcher() {
        let errors = errors_of(quote!(priority = 1));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("at least one of `channel`, `channels` or `match`"));
        // An invalid channel still counts as given: no second, misleading error.
        assert_eq!(errors_of(quote!(channel = "")).len(), 1);
        // So does a misspelled key, which has its own error.
        assert_eq!(errors_of(quote!(chanels = ["a"])).len(), 1);
        assert_eq!(errors_of(quote!(retries = 5)).len(), 2);
    }

    #[test]
    fn matcher_errors_of() {
        let cases = [
            (quote!(match = regex("(")), "invalid regex"),
            (quote!(match = pattern("a[b")), "never closed"),
            (quote!(match = regex()), "takes one string literal"),
            (quote!(match = glob("a*")), "unknown matcher"),
            (quote!(match = []), "`match` is empty"),
            (quote!(match = event::FOO), "looks like a constant"),
            (quote!(match = |_| true), "closures are not supported"),
            (quote!(channels = []), "`channels` is empty"),
            (quote!(channels = "a"), "`channels` takes an array"),
            (quote!(channel = ["a"]), "for several, write `channels"),
            (quote!(channels = ["a", "a"]), "listed more than once"),
            (quote!(channel = "a", crate = "not a path"), "is not a path"),
            (
                quote!(channel = "a", description = 5),
                "`description` takes a string",
            ),
        ];
        for (tokens, expected) in cases {
            let errors = errors_of(tokens.clone());
            assert_eq!(errors.len(), 1, "{tokens}: {errors:?}");
            assert!(errors[0].contains(expected), "{tokens}: {errors:?}");
        }
    }

    #[test]
    fn durable_is_a_flag_on_named_channels() {
        assert!(parse(quote!(channel = "a", durable)).durable);
        assert!(parse(quote!(match = pattern("a:*"), durable, priority = 2)).durable);
        assert!(!parse(quote!(channel = "a")).durable);
        let cases = [
            (quote!(channel = "a", durable = true), "takes no value"),
            (
                quote!(channel = "a", durable, durable),
                "given more than once",
            ),
            (quote!(channel = "*", durable), "every channel"),
            (quote!(match = is_urgent, durable), "a predicate alone"),
            (quote!(channel = "a", durabel), "did you mean `durable`"),
            (
                quote!(channel = "*", once),
                "needs exact channels, not `\"*\"`",
            ),
            (quote!(match = regex("^a"), once), "not a regex"),
            (quote!(channel = "a", once = 1), "`once` is a flag"),
            (quote!(match = is_urgent, once), "a predicate alone"),
        ];
        for (tokens, expected) in cases {
            let errors = errors_of(tokens.clone());
            assert_eq!(errors.len(), 1, "{tokens}: {errors:?}");
            assert!(errors[0].contains(expected), "{tokens}: {errors:?}");
        }
    }

    #[test]
    fn timeout_and_layer() {
        let errors = errors_of(quote!(
            channel = "a",
            timeout = "5 seconds",
            timeout = "1s",
            layer = [],
            layer = x,
            layer = "y"
        ));
        // A repeated key's value is not checked: `"y"` only gets "given more than once".
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(
            errors[0].starts_with("invalid timeout `5 seconds`"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("`timeout` given more than once"),
            "{errors:?}"
        );
        assert!(errors[2].starts_with("`layer` is empty"), "{errors:?}");
        assert!(
            errors[3].starts_with("`layer` given more than once"),
            "{errors:?}"
        );
        assert!(
            errors[4].starts_with("`layer` given more than once"),
            "{errors:?}"
        );
        let args = parse(quote!(
            channel = "a",
            layer = tower::limit::ConcurrencyLimitLayer::new(2)
        ));
        assert!(args.errors.is_empty());
        assert_eq!(args.timeout, None);
        assert_eq!(args.layers.len(), 1);
        assert_eq!(closest_key("layers", KEYS), Some("layer"));
        assert_eq!(closest_key("timout", KEYS), Some("timeout"));
    }

    #[test]
    fn syntax_errors_are_fatal() {
        let error = syn::parse2::<Args>(quote!(channel "a")).err().unwrap();
        assert_eq!(
            error.to_string(),
            "expected `=` after `channel`: write `channel = ...`"
        );
        assert!(syn::parse2::<Args>(quote!("a")).is_err());
    }
}
