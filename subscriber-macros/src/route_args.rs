//! Parsing of `#[websocket_route(type = "...", action = "...", ...)]`, with the key-parsing helpers
//! of `args` and the same error recovery: syntax errors stop the parse, every other mistake is
//! recorded with a span on the offending token and parsing goes on.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Error, Expr, Ident, LitStr, Path, Token};

use crate::args::{
    assign, closest_key, description, krate, kw, layers, name, skip_value, string_literal, timeout,
    ungroup, unknown_key, value, Slot,
};
use crate::Errors;

/// Every key the attribute accepts, in the order the error messages list them.
pub(crate) const KEYS: &[&str] = &[
    "type",
    "action",
    "timeout",
    "layer",
    "name",
    "description",
    "crate",
];

/// The `type:action` pairs the server answers itself.
const RESERVED: [(&str, &str); 2] = [("system", "joinRoom"), ("system", "leaveRoom")];

/// The parsed attribute arguments, with the errors found in them.
pub(crate) struct RouteArgs {
    /// The frame's `type`, validated (absent only when there are errors).
    pub(crate) kind: Option<LitStr>,
    /// The frame's `action`, validated (absent only when there are errors).
    pub(crate) action: Option<LitStr>,
    /// `timeout = "..."`, in milliseconds.
    pub(crate) timeout: Option<u64>,
    /// `layer = ...`: the layer expressions, the first one outermost.
    pub(crate) layers: Vec<Expr>,
    pub(crate) name: Option<LitStr>,
    pub(crate) description: Option<LitStr>,
    /// The path to the `switchboard` crate, when overridden.
    pub(crate) krate: Option<Path>,
    /// The non-fatal errors.
    pub(crate) errors: Errors,
}

#[derive(Default)]
struct Slots {
    kind: Slot<Token![type], LitStr>,
    action: Slot<kw::action, LitStr>,
    timeout: Slot<kw::timeout, u64>,
    layers: Slot<kw::layer, Vec<Expr>>,
    name: Slot<kw::name, LitStr>,
    description: Slot<kw::description, LitStr>,
    krate: Slot<Token![crate], Path>,
}

impl Parse for RouteArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut slots = Slots::default();
        let mut errors = Errors::default();
        // A misspelled `type` or `action` already has an error saying so.
        let mut misspelled_kind = false;
        let mut misspelled_action = false;
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(Token![type]) {
                assign(input, &mut slots.kind, &mut errors, kind)?;
            } else if lookahead.peek(kw::action) {
                assign(input, &mut slots.action, &mut errors, action)?;
            } else if lookahead.peek(kw::timeout) {
                assign(input, &mut slots.timeout, &mut errors, timeout)?;
            } else if lookahead.peek(kw::layer) {
                assign(input, &mut slots.layers, &mut errors, layers)?;
            } else if lookahead.peek(kw::name) {
                assign(input, &mut slots.name, &mut errors, name)?;
            } else if lookahead.peek(kw::description) {
                assign(input, &mut slots.description, &mut errors, description)?;
            } else if lookahead.peek(Token![crate]) {
                assign(input, &mut slots.krate, &mut errors, krate)?;
            } else if input.peek(Ident::peek_any) {
                let key = input.call(Ident::parse_any)?;
                let suggestion = closest_key(&key.unraw().to_string(), KEYS);
                misspelled_kind |= suggestion == Some("type");
                misspelled_action |= suggestion == Some("action");
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

        let missing_kind = slots.kind.is_none() && !misspelled_kind;
        let missing_action = slots.action.is_none() && !misspelled_action;
        let missing = match (missing_kind, missing_action) {
            (true, true) => Some("`type` and `action`"),
            (true, false) => Some("`type`"),
            (false, true) => Some("`action`"),
            (false, false) => None,
        };
        if let Some(missing) = missing {
            errors.push(Error::new(
                Span::call_site(),
                format!(
                    "a route needs {missing}: the frame `{{\"type\": \"chat\", \"action\": \
                     \"send\"}}` is routed by `#[websocket_route(type = \"chat\", action = \
                     \"send\")]`"
                ),
            ));
        }

        let kind = value(slots.kind);
        let action = value(slots.action);
        if let (Some(kind), Some(action)) = (&kind, &action) {
            let (kind_value, action_value) = (kind.value(), action.value());
            if RESERVED.contains(&(kind_value.as_str(), action_value.as_str())) {
                errors.push(Error::new(
                    action.span(),
                    format!(
                        "`{kind_value}:{action_value}` is reserved: the server handles it itself \
                         (room membership, limited by `RoomPolicy`), and `build()` would \
                         refuse a route for it; use another type or action"
                    ),
                ));
            }
        }

        Ok(RouteArgs {
            kind,
            action,
            timeout: value(slots.timeout),
            layers: value(slots.layers).unwrap_or_default(),
            name: value(slots.name),
            description: value(slots.description),
            krate: value(slots.krate),
            errors,
        })
    }
}

/// `type = "..."`.
fn kind(expr: Expr) -> syn::Result<LitStr> {
    route_part(expr, "type", "chat")
}

/// `action = "..."`.
fn action(expr: Expr) -> syn::Result<LitStr> {
    route_part(expr, "action", "send")
}

/// A string literal that clients send verbatim: not empty, no whitespace, no control characters.
fn route_part(expr: Expr, key: &str, example: &str) -> syn::Result<LitStr> {
    let expr = ungroup(expr);
    let Some(lit) = string_literal(&expr) else {
        return Err(Error::new_spanned(
            expr,
            format!("`{key}` takes a string literal, e.g. `{key} = \"{example}\"`"),
        ));
    };
    let text = lit.value();
    let problem = if text.is_empty() {
        Some(format!(
            "the route {key} is empty: give the frame's `{key}`, e.g. `{key} = \"{example}\"`"
        ))
    } else if let Some(c) = text.chars().find(|c| c.is_whitespace()) {
        Some(format!(
            "the route {key} {text:?} contains whitespace ({c:?}): clients send the {key} \
             verbatim, so remove it (e.g. `{key} = \"{}\"`)",
            text.split_whitespace().collect::<Vec<_>>().join("_"),
        ))
    } else {
        text.chars().find(|c| c.is_control()).map(|c| {
            format!(
                "the route {key} {text:?} contains the control character {c:?}: remove it \
                 (clients send the {key} verbatim)"
            )
        })
    };
    match problem {
        Some(message) => Err(Error::new(lit.span(), message)),
        None => Ok(lit.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::TokenStream;
    use quote::{quote, ToTokens};

    fn parse(tokens: TokenStream) -> RouteArgs {
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
            type = "chat",
            action = "send",
            timeout = "2m",
            layer = limit(),
            name = "n",
            description = "d",
            crate = "sb"
        ));
        assert!(args.errors.is_empty());
        assert_eq!(args.timeout, Some(120_000));
        assert_eq!(args.layers.len(), 1);
        assert_eq!(args.kind.unwrap().value(), "chat");
        assert_eq!(args.action.unwrap().value(), "send");
        assert_eq!(args.name.unwrap().value(), "n");
        assert_eq!(args.description.unwrap().value(), "d");
        assert_eq!(args.krate.unwrap().to_token_stream().to_string(), "sb");
        // Other `system` actions are fine.
        assert!(errors_of(quote!(type = "system", action = "status")).is_empty());
    }

    #[test]
    fn errors() {
        let cases = [
            (quote!(type = "", action = "a"), "the route type is empty"),
            (quote!(type = "a b", action = "a"), "contains whitespace"),
            (quote!(type = "a", action = "x\u{7}"), "control character"),
            (
                quote!(type = a, action = "a"),
                "`type` takes a string literal",
            ),
            (quote!(type = "system", action = "joinRoom"), "is reserved"),
            (quote!(type = "system", action = "leaveRoom"), "is reserved"),
            (quote!(action = "a"), "a route needs `type`:"),
            (quote!(type = "a"), "a route needs `action`:"),
            (quote!(name = "n"), "a route needs `type` and `action`"),
            (
                quote!(type = "a", action = "b", type = "c"),
                "given more than once",
            ),
            (quote!(typ = "a", action = "b"), "did you mean `type`?"),
            (quote!(type = "a", actoin = "b"), "did you mean `action`?"),
            (
                quote!(type = "a", action = "b", timeout = "0s"),
                "invalid timeout `0s`",
            ),
            (
                quote!(type = "a", action = "b", timeout = "1s", timeout = "2s"),
                "`timeout` given more than once",
            ),
            (
                quote!(type = "a", action = "b", layer = "timeout"),
                "not a string",
            ),
            (
                quote!(type = "a", action = "b", layer = []),
                "`layer` is empty",
            ),
        ];
        for (tokens, expected) in cases {
            let errors = errors_of(tokens.clone());
            assert_eq!(errors.len(), 1, "{tokens}: {errors:?}");
            assert!(errors[0].contains(expected), "{tokens}: {errors:?}");
        }
        let errors = errors_of(quote!(type = "a", action = "b", channel = "c"));
        assert_eq!(
            errors,
            ["unknown key `channel`: the keys are `type`, `action`, `timeout`, `layer`, `name`, \
             `description`, `crate`"]
        );
    }

    #[test]
    fn syntax_errors_are_fatal() {
        let error = syn::parse2::<RouteArgs>(quote!(type "a")).err().unwrap();
        assert_eq!(
            error.to_string(),
            "expected `=` after `type`: write `type = ...`"
        );
    }
}
