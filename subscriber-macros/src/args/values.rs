//! The values of `priority`, `name`, `description` and `crate` (the last three shared with
//! `#[websocket_route]`).

use syn::{Error, Expr, ExprLit, Lit, LitInt, LitStr, Path};

use super::expr::{plain_path, string_literal, ungroup};

const PRIORITY_FORM: &str =
    "the priority is an `i32` integer literal such as `10` or `-5` (higher runs first)";

/// `priority = 10` or `priority = -10`.
pub(super) fn priority(expr: Expr) -> syn::Result<i32> {
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
