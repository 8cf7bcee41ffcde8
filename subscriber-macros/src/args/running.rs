//! The values of `timeout` and `layer`, shared by `#[websocket_subscriber]` and
//! `#[websocket_route]`: how a handler runs rather than what it matches.

use syn::{Error, Expr, ExprLit, Lit};

use super::expr::{string_literal, ungroup};
use crate::Errors;

/// What `timeout` accepts.
const TIMEOUT_FORM: &str = "a positive whole number followed by `ms`, `s` or `m`";

/// What a string given to `layer` gets told.
const LAYER_NOT_STRING: &str = "`layer` takes a tower layer expression such as \
     `tower::limit::ConcurrencyLimitLayer::new(4)`, not a string";

/// `timeout = "250ms"`, `"5s"` or `"2m"`: the timeout in milliseconds. Hours are not supported
/// (a handler running for hours is better written in minutes, if at all).
pub(crate) fn timeout(expr: Expr) -> syn::Result<u64> {
    let expr = ungroup(expr);
    if let Some(lit) = string_literal(&expr) {
        let text = lit.value();
        return parse_timeout(&text).map_err(|fix| {
            let example = fix.example.as_deref().unwrap_or("5s");
            let note = fix
                .note
                .map_or_else(String::new, |note| format!(" ({note})"));
            Error::new(
                lit.span(),
                format!(
                    "invalid timeout `{text}`: write {TIMEOUT_FORM}, \
                     e.g. `timeout = \"{example}\"`{note}"
                ),
            )
        });
    }
    let message = match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) if int.suffix().is_empty() && int.base10_parse::<u64>().is_ok_and(|n| n > 0) => {
            let digits = int.base10_digits();
            format!(
                "`timeout` needs a unit, in a string: write `timeout = \"{digits}s\"` or \
                 `timeout = \"{digits}ms\"` ({TIMEOUT_FORM})"
            )
        }
        _ => format!(
            "`timeout` takes a string literal: write {TIMEOUT_FORM}, e.g. `timeout = \"5s\"`"
        ),
    };
    Err(Error::new_spanned(expr, message))
}

/// How to fix a timeout string: a better example than `"5s"` when there is one, and what was
/// wrong when there is more to say than the accepted form.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fix {
    example: Option<String>,
    note: Option<&'static str>,
}

impl Fix {
    fn note(note: &'static str) -> Self {
        Self {
            example: None,
            note: Some(note),
        }
    }

    fn example(example: String, note: &'static str) -> Self {
        Self {
            example: Some(example),
            note: Some(note),
        }
    }
}

/// The milliseconds of `"<digits><unit>"`.
fn parse_timeout(text: &str) -> Result<u64, Fix> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.matches('.').count() > 1 {
        return Err(Fix::default());
    }
    let unit_millis: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => {
            return Err(
                match number
                    .parse::<u64>()
                    .ok()
                    .and_then(|hours| hours.checked_mul(60))
                    .filter(|minutes| *minutes > 0)
                {
                    Some(minutes) => Fix::example(format!("{minutes}m"), "hours are not supported"),
                    None => Fix::note("hours are not supported"),
                },
            );
        }
        "" if !number.is_empty() && !number.contains('.') => {
            return Err(Fix::example(format!("{number}s"), "the unit is missing"));
        }
        _ => return Err(Fix::default()),
    };
    if number.contains('.') {
        return Err(match fraction_millis(number, unit_millis) {
            Some(millis) if millis % 1_000 == 0 => {
                Fix::example(format!("{}s", millis / 1_000), "whole numbers only")
            }
            Some(millis) => Fix::example(format!("{millis}ms"), "whole numbers only"),
            None => Fix::note("whole numbers only"),
        });
    }
    if number.is_empty() {
        return Err(Fix::default());
    }
    let too_large = || Fix::note("too large");
    let count = number.parse::<u64>().map_err(|_| too_large())?;
    if count == 0 {
        return Err(Fix::note("zero would fail every call"));
    }
    count.checked_mul(unit_millis).ok_or_else(too_large)
}

/// `"1.5"` of a unit of `unit_millis`, in whole milliseconds, when it is positive and whole.
fn fraction_millis(number: &str, unit_millis: u64) -> Option<u64> {
    let (whole, fraction) = number.split_once('.')?;
    if fraction.is_empty() || fraction.len() > 6 {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let scale = 10_u64.pow(u32::try_from(fraction.len()).ok()?);
    let fraction: u64 = fraction.parse().ok()?;
    let scaled = fraction.checked_mul(unit_millis)?;
    let millis = whole
        .checked_mul(unit_millis)?
        .checked_add(scaled / scale)?;
    (scaled % scale == 0 && millis > 0).then_some(millis)
}

/// `layer = <expr>` or `layer = [<expr>, ...]`: the layer expressions, the first one outermost.
pub(crate) fn layers(expr: Expr) -> syn::Result<Vec<Expr>> {
    match ungroup(expr) {
        Expr::Array(array) if array.elems.is_empty() => Err(Error::new_spanned(
            array,
            "`layer` is empty: give at least one tower layer, e.g. \
             `layer = [tower::limit::ConcurrencyLimitLayer::new(4)]`, or remove `layer`",
        )),
        Expr::Array(array) => {
            let mut errors = Errors::default();
            let layers: Vec<Expr> = array
                .elems
                .into_iter()
                .filter_map(|elem| errors.ok(layer(elem)))
                .collect();
            match errors.0 {
                Some(error) => Err(error),
                None => Ok(layers),
            }
        }
        expr => layer(expr).map(|layer| vec![layer]),
    }
}

/// One layer expression; its type is left to rustc.
fn layer(expr: Expr) -> syn::Result<Expr> {
    let expr = ungroup(expr);
    match string_literal(&expr) {
        Some(lit) => Err(Error::new(lit.span(), LAYER_NOT_STRING)),
        None => Ok(expr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::{quote, ToTokens};

    fn timeout_of(tokens: proc_macro2::TokenStream) -> Result<u64, String> {
        timeout(syn::parse2(tokens).unwrap()).map_err(|error| error.to_string())
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout_of(quote!("250ms")), Ok(250));
        assert_eq!(timeout_of(quote!("5s")), Ok(5_000));
        assert_eq!(timeout_of(quote!("2m")), Ok(120_000));
        assert_eq!(timeout_of(quote!("007s")), Ok(7_000));
        let form = "write a positive whole number followed by `ms`, `s` or `m`, e.g.";
        for bad in [
            "5 seconds",
            "s",
            "1.5.5s",
            "",
            "-1s",
            "+1s",
            " 5s",
            "5S",
            "5sec",
            "1e3ms",
        ] {
            assert_eq!(
                timeout_of(quote!(#bad)),
                Err(format!(
                    "invalid timeout `{bad}`: {form} `timeout = \"5s\"`"
                )),
            );
        }
        let cases = [
            ("5", "5s", "the unit is missing"),
            ("0s", "5s", "zero would fail every call"),
            ("0ms", "5s", "zero would fail every call"),
            ("5h", "300m", "hours are not supported"),
            ("0h", "5s", "hours are not supported"),
            ("1.5s", "1500ms", "whole numbers only"),
            ("1.5m", "90s", "whole numbers only"),
            (".5s", "500ms", "whole numbers only"),
            ("1.5ms", "5s", "whole numbers only"),
            ("1.s", "5s", "whole numbers only"),
            ("99999999999999999999s", "5s", "too large"),
            ("18446744073709551615m", "5s", "too large"),
        ];
        for (bad, example, note) in cases {
            assert_eq!(
                timeout_of(quote!(#bad)),
                Err(format!(
                    "invalid timeout `{bad}`: {form} `timeout = \"{example}\"` ({note})"
                )),
            );
        }
        assert!(timeout_of(quote!(5))
            .unwrap_err()
            .contains("`timeout = \"5s\"` or `timeout = \"5ms\"`"));
        for bad in [quote!(TIMEOUT), quote!(0), quote!(5u64), quote!(-1)] {
            assert!(timeout_of(bad)
                .unwrap_err()
                .starts_with("`timeout` takes a string literal"));
        }
    }

    #[test]
    fn layer_values() {
        let layers_of = |tokens: proc_macro2::TokenStream| {
            layers(syn::parse2(tokens).unwrap()).map(|layers| {
                layers
                    .iter()
                    .map(|layer| layer.to_token_stream().to_string())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(layers_of(quote!(a::b(1))).unwrap(), ["a :: b (1)"]);
        assert_eq!(layers_of(quote!([a(), b])).unwrap(), ["a ()", "b"]);
        assert!(layers_of(quote!([]))
            .unwrap_err()
            .to_string()
            .starts_with("`layer` is empty"));
        let error = layers_of(quote!([a(), "x", "y"])).unwrap_err();
        assert_eq!(error.into_iter().count(), 2);
        assert!(layers_of(quote!("timeout"))
            .unwrap_err()
            .to_string()
            .ends_with("not a string"));
    }
}
