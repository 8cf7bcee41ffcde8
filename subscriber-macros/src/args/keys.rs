//! The `key = value` loop: assigning a key's value into its slot, skipping and reporting unknown
//! keys with a typo suggestion. Shared by `#[websocket_subscriber]` and `#[websocket_route]`.

use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Error, Expr, Ident, Token};

use crate::Errors;

/// A key that was given: its tokens, and its value unless the value was invalid.
pub(crate) type Slot<K, V> = Option<(K, Option<V>)>;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::KEYS;

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
