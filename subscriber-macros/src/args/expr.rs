//! Looking inside a value expression: through invisible groups, at a plain path or a string
//! literal.

use syn::{Expr, ExprLit, Lit, LitStr, Path};

/// Looks through the invisible groups that `macro_rules!` wraps around `$x:expr` fragments.
pub(crate) fn ungroup(expr: Expr) -> Expr {
    match expr {
        Expr::Group(group) => ungroup(*group.expr),
        expr => expr,
    }
}

/// A plain path (no `<T as Trait>::` qualifier, no attributes).
pub(super) fn plain_path(expr: &Expr) -> Option<&Path> {
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
