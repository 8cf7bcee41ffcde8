//! Parsing of `#[websocket_subscriber(key = value, ...)]`, and the key-parsing helpers that
//! `#[websocket_route(...)]` (see `route_args`) shares with it.
//!
//! Syntax errors (a missing `=`, an unparsable value) stop the parse. Every other mistake (a bad
//! value, an invalid channel, a repeated or unknown key, a forbidden combination) is recorded with
//! a span on the offending token and parsing goes on, so that all of them are reported at once.

use proc_macro2::Span;
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Error, Expr, ExprLit, Ident, Lit, LitInt, LitStr, Path, Token};

use crate::Errors;

pub(crate) mod kw {
    syn::custom_keyword!(action);
    syn::custom_keyword!(channel);
    syn::custom_keyword!(channels);
    syn::custom_keyword!(priority);
    syn::custom_keyword!(name);
    syn::custom_keyword!(description);
}

/// Every key the attribute accepts, in the order the error messages list them.
pub(crate) const KEYS: &[&str] = &[
    "channel",
    "channels",
    "match",
    "priority",
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
    pub(crate) name: Option<LitStr>,
    pub(crate) description: Option<LitStr>,
    /// The path to the `switchboard` crate, when overridden.
    pub(crate) krate: Option<Path>,
    /// The non-fatal errors.
    pub(crate) errors: Errors,
}

/// A key that was given: its tokens, and its value unless the value was invalid.
pub(crate) type Slot<K, V> = Option<(K, Option<V>)>;

#[derive(Default)]
struct Slots {
    channel: Slot<kw::channel, Matcher>,
    channels: Slot<kw::channels, Vec<Matcher>>,
    matchers: Slot<Token![match], Vec<Matcher>>,
    priority: Slot<kw::priority, i32>,
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

        Ok(Args {
            matchers: all,
            priority: value(slots.priority).unwrap_or(0),
            name: value(slots.name),
            description: value(slots.description),
            krate: value(slots.krate),
            errors,
        })
    }
}

/// Skips the `= value` of an unknown key, so that the keys after it are still checked.
pub(crate) fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    if input.parse::<Option<Token![=]>>()?.is_some() {
        input.parse::<Expr>()?;
    }
    Ok(())
}

/// The value of a key that was given with a valid value.
pub(crate) fn value<K, V>(slot: Slot<K, V>) -> Option<V> {
    slot.and_then(|(_, value)| value)
}

/// Parses `key = value` into `slot`. The value is parsed as an expression (a syntax error is fatal)
/// and then converted by `convert`, whose errors are recorded. A key given twice is an error on the
/// second key.
pub(crate) fn assign<K, V>(
    input: ParseStream<'_>,
    slot: &mut Slot<K, V>,
    errors: &mut Errors,
    convert: fn(Expr) -> syn::Result<V>,
) -> syn::Result<()>
where
    K: Parse + ToTokens,
{
    let key: K = input.parse()?;
    let name = key.to_token_stream().to_string();
    if !input.peek(Token![=]) {
        return Err(input.error(format!("expected `=` after `{name}`: write `{name} = ...`")));
    }
    input.parse::<Token![=]>()?;
    let value: Expr = input.parse()?;
    if slot.is_some() {
        errors.push(Error::new_spanned(
            &key,
            format!("`{name}` given more than once: keep only one `{name} = ...`"),
        ));
        return Ok(());
    }
    let value = errors.ok(convert(value));
    *slot = Some((key, value));
    Ok(())
}

fn channel_and_channels(span: Span) -> Error {
    Error::new(
        span,
        "`channel` and `channels` cannot be used together: \
         put every channel in `channels = [\"a\", \"b\"]`",
    )
}

/// `unknown key ...`, listing the valid `keys`.
pub(crate) fn unknown_key(key: &Ident, keys: &[&str], suggestion: Option<&str>) -> Error {
    let given = key.unraw().to_string();
    let valid = keys
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let hint = match suggestion {
        Some(close) => format!("did you mean `{close}`? "),
        None => String::new(),
    };
    Error::new(
        key.span(),
        format!("unknown key `{given}`: {hint}the keys are {valid}"),
    )
}

/// The key of `keys` closest to `given`, if it is close enough to be a typo.
pub(crate) fn closest_key(given: &str, keys: &[&'static str]) -> Option<&'static str> {
    keys.iter()
        .map(|key| (edit_distance(given, key), *key))
        .filter(|(distance, key)| *distance <= (key.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, key)| key)
}

/// Levenshtein distance, ASCII-case-insensitive.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Looks through the invisible groups that `macro_rules!` wraps around `$x:expr` fragments.
pub(crate) fn ungroup(expr: Expr) -> Expr {
    match expr {
        Expr::Group(group) => ungroup(*group.expr),
        expr => expr,
    }
}

/// A plain path (no `<T as Trait>::` qualifier, no attributes).
fn plain_path(expr: &Expr) -> Option<&Path> {
    match expr {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => Some(&path.path),
        _ => None,
    }
}

pub(crate) fn string_literal(expr: &Expr) -> Option<&LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Some(lit),
        _ => None,
    }
}

/// `"name"`, validated like the runtime validates channel names.
fn channel_literal(lit: LitStr) -> syn::Result<Matcher> {
    match subscriber_patterns::validate_channel(&lit.value()) {
        Ok(()) => Ok(Matcher::Channel(lit)),
        Err(problem) => Err(Error::new(lit.span(), problem.message())),
    }
}

/// `channel = "name"` or `channel = path::TO_CONST`.
fn channel(expr: Expr) -> syn::Result<Matcher> {
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
fn channels(expr: Expr) -> syn::Result<Vec<Matcher>> {
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
fn matchers(expr: Expr) -> syn::Result<Vec<Matcher>> {
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

const PRIORITY_FORM: &str =
    "the priority is an `i32` integer literal such as `10` or `-5` (higher runs first)";

/// `priority = 10` or `priority = -10`.
fn priority(expr: Expr) -> syn::Result<i32> {
    let expr = ungroup(expr);
    let (negative, lit) = match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => (false, lit),
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr: inner,
            ..
        }) => match &**inner {
            Expr::Lit(ExprLit {
                lit: Lit::Int(lit), ..
            }) => (true, lit),
            _ => return Err(Error::new_spanned(&expr, PRIORITY_FORM)),
        },
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) if lit.value().trim().parse::<i64>().is_ok() => {
            return Err(Error::new(
                lit.span(),
                format!(
                    "{PRIORITY_FORM}: remove the quotes, `priority = {}`",
                    lit.value().trim()
                ),
            ))
        }
        Expr::Path(_) => {
            return Err(Error::new_spanned(
                &expr,
                format!("constants are not supported here: {PRIORITY_FORM}"),
            ))
        }
        _ => {
            return Err(Error::new_spanned(
                &expr,
                format!("expected an integer: {PRIORITY_FORM}"),
            ))
        }
    };
    integer(negative, lit, &expr)
}

fn integer(negative: bool, lit: &LitInt, expr: &Expr) -> syn::Result<i32> {
    if !matches!(lit.suffix(), "" | "i32") {
        return Err(Error::new(
            lit.span(),
            format!(
                "the priority is an `i32`: remove the `{}` suffix",
                lit.suffix()
            ),
        ));
    }
    let out_of_range = || {
        Error::new_spanned(
            expr,
            format!(
                "priority {}{} is out of range: it must fit in an `i32` ({}..={})",
                if negative { "-" } else { "" },
                lit.base10_digits(),
                i32::MIN,
                i32::MAX,
            ),
        )
    };
    let magnitude = lit.base10_parse::<u64>().map_err(|_| out_of_range())?;
    let value = if negative {
        -i64::try_from(magnitude).map_err(|_| out_of_range())?
    } else {
        i64::try_from(magnitude).map_err(|_| out_of_range())?
    };
    i32::try_from(value).map_err(|_| out_of_range())
}

/// `name = "..."`: not empty.
pub(crate) fn name(expr: Expr) -> syn::Result<LitStr> {
    let expr = ungroup(expr);
    match string_literal(&expr) {
        Some(lit) if lit.value().trim().is_empty() => Err(Error::new(
            lit.span(),
            "the handler name is empty: give a name, or remove `name` to use the function's name",
        )),
        Some(lit) => Ok(lit.clone()),
        None => Err(Error::new_spanned(
            expr,
            "`name` takes a string literal, e.g. `name = \"jobNotifications\"`",
        )),
    }
}

/// `description = "..."`.
pub(crate) fn description(expr: Expr) -> syn::Result<LitStr> {
    let expr = ungroup(expr);
    match string_literal(&expr) {
        Some(lit) => Ok(lit.clone()),
        None => Err(Error::new_spanned(
            expr,
            "`description` takes a string literal, e.g. `description = \"Relays job updates\"`; \
             without it, the function's doc comment is used",
        )),
    }
}

/// `crate = "path::to::switchboard"` (a bare path is accepted too).
pub(crate) fn krate(expr: Expr) -> syn::Result<Path> {
    let expr = ungroup(expr);
    if let Some(lit) = string_literal(&expr) {
        return lit.parse_with(Path::parse_mod_style).map_err(|_| {
            Error::new(
                lit.span(),
                format!(
                    "`crate` takes the path to the `switchboard` crate, e.g. `crate = \"sb\"`; \
                     {:?} is not a path",
                    lit.value()
                ),
            )
        });
    }
    if let Some(path) = plain_path(&expr) {
        return Ok(path.clone());
    }
    Err(Error::new_spanned(
        expr,
        "`crate` takes the path to the `switchboard` crate as a string, e.g. `crate = \"sb\"`",
    ))
}

/// The same exact channel twice is almost certainly a mistake.
fn check_duplicates(matchers: &[Matcher], errors: &mut Errors) {
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
    use quote::quote;

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
        assert_eq!(errors_of(quote!(timeout = 5)).len(), 2);
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
    fn syntax_errors_are_fatal() {
        let error = syn::parse2::<Args>(quote!(channel "a")).err().unwrap();
        assert_eq!(
            error.to_string(),
            "expected `=` after `channel`: write `channel = ...`"
        );
        assert!(syn::parse2::<Args>(quote!("a")).is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest_key("chanel", KEYS), Some("channel"));
        assert_eq!(closest_key("Channels", KEYS), Some("channels"));
        assert_eq!(closest_key("prio", KEYS), None);
        assert_eq!(closest_key("priorty", KEYS), Some("priority"));
        assert_eq!(closest_key("matches", KEYS), None);
        assert_eq!(closest_key("desc", KEYS), None);
        assert_eq!(closest_key("krate", KEYS), Some("crate"));
    }
}
