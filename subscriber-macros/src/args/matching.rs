//! The values of `channel`, `channels` and `match`: exact channels (validated like the runtime
//! validates them), channel constants, `regex(...)`, `pattern(...)` and predicate paths; and the
//! check for a matcher listed twice.

use quote::ToTokens;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Error, Expr, Ident, LitStr, Path};

use super::expr::{plain_path, string_literal, ungroup};
use super::Matcher;
use crate::Errors;

/// `"name"`, validated like the runtime validates channel names.
fn channel_literal(lit: LitStr) -> syn::Result<Matcher> {
    match subscriber_patterns::validate_channel(&lit.value()) {
        Ok(()) => Ok(Matcher::Channel(lit)),
        Err(problem) => Err(Error::new(lit.span(), problem.message())),
    }
}

/// `channel = "name"` or `channel = path::TO_CONST`.
pub(super) fn channel(expr: Expr) -> syn::Result<Matcher> {
    let expr = ungroup(expr);
    if let Some(lit) = string_literal(&expr) {
        return channel_literal(lit.clone());
    }
    if let Some(path) = plain_path(&expr) {
        return Ok(Matcher::ChannelConst(path.clone()));
    }
    let message = match &expr {
        Expr::Array(_) => {
            "`channel` takes a single channel: for several, write `channels = [\"a\", \"b\"]`"
        }
        Expr::Call(_) => {
            "`channel` takes an exact channel name: for a regex or a glob, \
             write `match = regex(\"...\")` or `match = pattern(\"...\")`"
        }
        _ => {
            "expected a channel name as a string literal (e.g. `channel = \"queueJobCompleted\"`) \
             or a path to a `&'static str` constant (e.g. `channel = event::QUEUE_JOB_COMPLETED`)"
        }
    };
    Err(Error::new_spanned(expr, message))
}

/// `channels = ["a", path::B, ...]`.
pub(super) fn channels(expr: Expr) -> syn::Result<Vec<Matcher>> {
    let array = match ungroup(expr) {
        Expr::Array(array) => array,
        other => {
            return Err(Error::new_spanned(
                other,
                "`channels` takes an array, e.g. `channels = [\"a\", \"b\"]`; \
                 for a single channel write `channel = \"a\"`",
            ))
        }
    };
    if array.elems.is_empty() {
        return Err(Error::new_spanned(
            array,
            "`channels` is empty: list at least one channel, e.g. `channels = [\"a\", \"b\"]`",
        ));
    }
    collect(array.elems, channel)
}

/// `match = <matcher>` or `match = [<matcher>, ...]`.
pub(super) fn matchers(expr: Expr) -> syn::Result<Vec<Matcher>> {
    match ungroup(expr) {
        Expr::Array(array) if array.elems.is_empty() => Err(Error::new_spanned(
            array,
            "`match` is empty: give at least one matcher, e.g. `match = [regex(\"^a:\"), \"b\"]`",
        )),
        Expr::Array(array) => collect(array.elems, matcher),
        expr => matcher(expr).map(|matcher| vec![matcher]),
    }
}

/// Converts every element, recording all errors.
fn collect(
    elems: impl IntoIterator<Item = Expr>,
    convert: fn(Expr) -> syn::Result<Matcher>,
) -> syn::Result<Vec<Matcher>> {
    let mut errors = Errors::default();
    let converted: Vec<Matcher> = elems
        .into_iter()
        .filter_map(|elem| errors.ok(convert(elem)))
        .collect();
    match errors.0 {
        Some(error) => Err(error),
        None => Ok(converted),
    }
}

const MATCHER_FORMS: &str = "write `\"channel\"` (`\"*\"` for every channel), `regex(\"...\")`, \
     `pattern(\"glob*\")`, or a path to a `fn(&MatchContext<'_>) -> bool`";

/// One matcher of `match`.
fn matcher(expr: Expr) -> syn::Result<Matcher> {
    let expr = ungroup(expr);
    if let Some(lit) = string_literal(&expr) {
        return channel_literal(lit.clone());
    }
    if let Some(path) = plain_path(&expr) {
        if let Some(last) = path.segments.last() {
            if looks_like_constant(&last.ident) {
                return Err(Error::new_spanned(
                    path,
                    format!(
                        "a path in `match` is a predicate `fn(&MatchContext<'_>) -> bool`, \
                         but `{}` looks like a constant: for a channel constant write \
                         `channel = {}` (or list it in `channels = [...]`)",
                        last.ident,
                        path.to_token_stream().to_string().replace(' ', ""),
                    ),
                ));
            }
        }
        return Ok(Matcher::Predicate(path.clone()));
    }
    let Expr::Call(call) = expr else {
        let message = match &expr {
            Expr::Closure(_) => "closures are not supported as matchers: define a \
                 `fn(&MatchContext<'_>) -> bool` and pass its path"
                .to_owned(),
            _ => format!("expected a matcher: {MATCHER_FORMS}"),
        };
        return Err(Error::new_spanned(expr, message));
    };
    let function = match plain_path(&call.func).and_then(Path::get_ident) {
        Some(ident) if ident == "regex" || ident == "pattern" => ident.to_string(),
        _ => {
            return Err(Error::new_spanned(
                &call.func,
                format!("unknown matcher: {MATCHER_FORMS}"),
            ))
        }
    };
    let example = if function == "regex" {
        "regex(\"^analytics:\")"
    } else {
        "pattern(\"analytics:*\")"
    };
    let lit = match call.args.first().and_then(string_literal) {
        Some(lit) if call.args.len() == 1 => lit.clone(),
        _ => {
            return Err(Error::new(
                if call.args.is_empty() {
                    call.paren_token.span.join()
                } else {
                    call.args.span()
                },
                format!("`{function}(...)` takes one string literal, e.g. `{example}`"),
            ))
        }
    };
    let checked = if function == "regex" {
        subscriber_patterns::validate_regex(&lit.value()).map(|()| Matcher::Regex(lit.clone()))
    } else {
        subscriber_patterns::glob::validate(&lit.value()).map(|()| Matcher::Pattern(lit.clone()))
    };
    checked.map_err(|problem| Error::new(lit.span(), problem.message()))
}

/// `FOO_BAR`: by naming convention a constant, not a function.
fn looks_like_constant(ident: &Ident) -> bool {
    let name = ident.unraw().to_string();
    name.len() > 1
        && name.chars().any(|c| c.is_ascii_uppercase())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The same exact channel twice is almost certainly a mistake.
pub(super) fn check_duplicates(matchers: &[Matcher], errors: &mut Errors) {
    let mut seen: Vec<String> = Vec::new();
    for matcher in matchers {
        let (kind, lit) = match matcher {
            Matcher::Channel(lit) => ("channel", lit),
            Matcher::Regex(lit) => ("regex", lit),
            Matcher::Pattern(lit) => ("pattern", lit),
            Matcher::ChannelConst(_) | Matcher::Predicate(_) => continue,
        };
        let key = format!("{kind}:{}", lit.value());
        if seen.contains(&key) {
            errors.push(Error::new(
                lit.span(),
                format!(
                    "{kind} {:?} is listed more than once: remove one",
                    lit.value()
                ),
            ));
        } else {
            seen.push(key);
        }
    }
}
