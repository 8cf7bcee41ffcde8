//! What kind of function can be a subscriber handler or a client route handler. Each unsupported
//! shape gets its own error, spanned on the offending token; all of them are reported at once.

use quote::quote;
use syn::{
    Error, FnArg, GenericArgument, Item, ItemFn, PathArguments, ReturnType, Type, TypeParamBound,
};

use crate::{Errors, Kind};

/// The function under the attribute, or `None` (with an error) when the item is not a function.
pub(crate) fn function<'a>(kind: Kind, item: &'a Item, errors: &mut Errors) -> Option<&'a ItemFn> {
    if let Item::Fn(function) = item {
        check_fn(kind, function, errors);
        return Some(function);
    }
    let message = format!(
        "`#[{}]` goes on a function (`fn` or `async fn`) whose arguments are extractors; \
         it cannot be used on this item",
        kind.attribute()
    );
    // Span the error on the item's keyword and name, e.g. `pub struct Foo`.
    macro_rules! head {
        ($item:ident, $token:ident) => {{
            let (vis, token, ident) = (&$item.vis, &$item.$token, &$item.ident);
            quote!(#vis #token #ident)
        }};
    }
    let head = match item {
        Item::Struct(item) => head!(item, struct_token),
        Item::Enum(item) => head!(item, enum_token),
        Item::Union(item) => head!(item, union_token),
        Item::Trait(item) => head!(item, trait_token),
        Item::Mod(item) => head!(item, mod_token),
        Item::Const(item) => head!(item, const_token),
        Item::Static(item) => head!(item, static_token),
        Item::Type(item) => head!(item, type_token),
        Item::Impl(item) => {
            let (impl_token, self_ty) = (&item.impl_token, &item.self_ty);
            quote!(#impl_token #self_ty)
        }
        other => quote!(#other),
    };
    errors.push(Error::new_spanned(head, message));
    None
}

fn check_fn(kind: Kind, function: &ItemFn, errors: &mut Errors) {
    let sig = &function.sig;
    let handler = kind.handler();
    if let Some(token) = &sig.constness {
        errors.push(Error::new_spanned(
            token,
            format!("a {handler} cannot be a `const fn`: remove `const`"),
        ));
    }
    if let Some(token) = &sig.unsafety {
        errors.push(Error::new_spanned(
            token,
            format!(
                "a {handler} cannot be `unsafe`: remove `unsafe` \
                 (and use an `unsafe` block inside the function if you must)"
            ),
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(Error::new_spanned(
            abi,
            format!(
                "a {handler} cannot have an `extern` ABI: remove it; \
                 the handler is called from Rust"
            ),
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(Error::new_spanned(
            variadic,
            format!("a {handler} cannot be variadic: every argument is an extractor"),
        ));
    }
    if !sig.generics.params.is_empty() {
        let generics = &sig.generics;
        let (lt, params, gt) = (&generics.lt_token, &generics.params, &generics.gt_token);
        errors.push(Error::new_spanned(
            quote!(#lt #params #gt),
            format!(
                "a {handler} cannot have generic parameters: the attribute registers one \
                 concrete function, so use concrete types (take shared things as `State<T>`)"
            ),
        ));
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        errors.push(Error::new_spanned(
            where_clause,
            format!(
                "a {handler} cannot have a `where` clause: the attribute registers one \
                 concrete function, so use concrete types and remove the `where` clause"
            ),
        ));
    }
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(Error::new_spanned(
                receiver,
                format!(
                    "a {handler} is a free function and cannot take `self`: move it out of \
                     the `impl` block, and take what it needs as extractors (e.g. `State<T>`)"
                ),
            )),
            FnArg::Typed(arg) => {
                if let Some(attr) = arg.attrs.first() {
                    errors.push(Error::new_spanned(
                        attr,
                        format!(
                            "attributes on the arguments of a {handler} are not supported: \
                             remove it"
                        ),
                    ));
                }
                if let Type::ImplTrait(ty) = &*arg.ty {
                    errors.push(Error::new_spanned(
                        ty,
                        format!(
                            "`impl Trait` makes the handler generic: use a concrete extractor \
                             type, e.g. {}",
                            kind.extractor_examples()
                        ),
                    ));
                }
            }
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        if let Some(boxed) = non_send_sync_box_error(ty) {
            errors.push(Error::new_spanned(
                boxed,
                format!(
                    "a handler's error must be `Send + Sync` to cross threads: write \
                     `Box<dyn std::error::Error + Send + Sync>`, or return {}",
                    kind.boxed_result()
                ),
            ));
        }
        if let Type::ImplTrait(ty) = &**ty {
            let returns = kind.return_types();
            let fix = if sig.asyncness.is_some() {
                format!("return {returns}")
            } else {
                format!("write `async fn` and return {returns} instead of `impl Future`")
            };
            errors.push(Error::new_spanned(
                ty,
                format!("a {handler} cannot return `impl Trait`: {fix}"),
            ));
        }
    }
}

/// In `Result<(), Box<dyn ...>>`, the `Box<dyn ...>` when its bounds lack `Send` or `Sync`: such an
/// error never converts into `BoxError`, and rustc explains it with three separate errors.
fn non_send_sync_box_error(ty: &Type) -> Option<&Type> {
    let error = last_segment_args(ty, "Result")?.nth(1)?;
    let mut inner = last_segment_args(error, "Box")?;
    let Some(Type::TraitObject(object)) = inner.next() else {
        return None;
    };
    let has = |name: &str| {
        object.bounds.iter().any(|bound| match bound {
            TypeParamBound::Trait(bound) => {
                bound.path.segments.last().is_some_and(|s| s.ident == name)
            }
            _ => false,
        })
    };
    (!has("Send") || !has("Sync")).then_some(error)
}

/// The type arguments of `ty` when it is a path whose last segment is `name`.
fn last_segment_args<'a>(ty: &'a Type, name: &str) -> Option<impl Iterator<Item = &'a Type>> {
    let Type::Path(path) = ty else { return None };
    let segment = path.path.segments.last()?;
    if segment.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    Some(args.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(item: proc_macro2::TokenStream) -> Vec<String> {
        let item: Item = syn::parse2(item).unwrap();
        let mut errors = Errors::default();
        function(Kind::Subscriber, &item, &mut errors);
        match errors.into_result() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_handlers() {
        assert!(messages(quote!(
            async fn f(Message(m): Message, mut c: Channel) -> HandlerResult {}
        ))
        .is_empty());
        assert!(messages(quote!(
            pub(crate) fn f() {}
        ))
        .is_empty());
    }

    #[test]
    fn rejects_shapes() {
        let all = messages(quote!(
            const unsafe extern "C" fn f<T>(&self, x: impl Sized) -> impl Sized
            where
                T: Copy,
            {
            }
        ));
        assert_eq!(all.len(), 8, "{all:?}");
        assert!(messages(quote!(
            struct S;
        ))[0]
            .contains("goes on a function"));
        for bad in [
            quote!(
                fn f() -> Result<(), Box<dyn std::error::Error>> {}
            ),
            quote!(
                fn f() -> std::result::Result<(), Box<dyn Error + Send>> {}
            ),
        ] {
            assert!(messages(bad)[0].contains("must be `Send + Sync`"));
        }
        for good in [
            quote!(
                fn f() -> Result<(), Box<dyn Error + Send + Sync + 'static>> {}
            ),
            quote!(
                fn f() -> Result<(), std::io::Error> {}
            ),
            quote!(
                fn f() -> Result<(), Box<std::io::Error>> {}
            ),
        ] {
            assert!(messages(good).is_empty());
        }
    }
}
