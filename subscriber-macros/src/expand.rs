//! Code generation: the user's function unchanged, then one `const _: () = { ... };` block that
//! registers it. See the crate documentation for the shape of the block.
//!
//! [`expand`] and the wrapper/requirements generators are shared by both attributes; what differs
//! (the runtime items named, the descriptor) comes from [`AttributeArgs`] and [`Runtime`].

use proc_macro2::{Group, Ident, Literal, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::parse::Parse;
use syn::{
    Attribute, Expr, ExprLit, FnArg, Item, ItemFn, Lit, LitStr, Meta, Path, ReturnType, Signature,
    Type,
};

use crate::args::{Args, Matcher};
use crate::{check, Errors, Kind};

/// The parsed arguments of one attribute, and what it generates for a validated function.
pub(crate) trait AttributeArgs: Parse {
    /// Which attribute this is.
    const KIND: Kind;

    /// The non-fatal errors found while parsing.
    fn take_errors(&mut self) -> Errors;

    /// The `const _: () = { ... };` block for a validated function.
    fn registration(&self, function: &ItemFn) -> TokenStream;
}

impl AttributeArgs for Args {
    const KIND: Kind = Kind::Subscriber;

    fn take_errors(&mut self) -> Errors {
        std::mem::take(&mut self.errors)
    }

    fn registration(&self, function: &ItemFn) -> TokenStream {
        registration(self, function)
    }
}

/// The whole expansion of `#[attribute(args)] item`.
#[allow(clippy::needless_pass_by_value)] // mirrors the proc-macro entry point
pub(crate) fn expand<A: AttributeArgs>(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = match syn::parse2::<A>(args) {
        Ok(mut args) => {
            errors.append(args.take_errors());
            Some(args)
        }
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let parsed = errors.ok(syn::parse2::<Item>(item.clone()));
    let function = parsed
        .as_ref()
        .and_then(|parsed| check::function(A::KIND, parsed, &mut errors));
    match (args, function) {
        (Some(args), Some(function)) if errors.is_empty() => {
            let registration = args.registration(function);
            quote!(#item #registration)
        }
        // The function as written, beside the errors: no cascade of "cannot find function".
        _ => {
            let errors = errors.to_compile_errors();
            quote!(#item #errors)
        }
    }
}

/// The runtime items that generated code names, under `<crate>`.
///
/// Generated code checks every bound through a trait-qualified path spanned at the user's token
/// (`<T as FromContext<Context>>::from_context`), never through a helper function with bounds, so
/// that an error names the user's code and no file of the runtime.
pub(crate) struct Runtime {
    /// `<crate>::__private`.
    pub(crate) private: TokenStream,
    /// What the wrapper takes: `Context` or `RouteContext`.
    context: TokenStream,
    /// What the wrapper returns: `HandlerFuture` or `RouteFuture`.
    future: TokenStream,
    /// The trait of the return value: `IntoHandlerResult` or `IntoReply`.
    finish_trait: TokenStream,
    /// Its method: `into_handler_result` or `into_reply`.
    finish_method: TokenStream,
    /// The extractor trait: `FromContext<Context>` or `FromContext<RouteContext>`.
    extractor: TokenStream,
}

impl Runtime {
    /// The items for `kind`, under `krate` (by default `::switchboard`).
    pub(crate) fn new(kind: Kind, krate: Option<&Path>) -> Self {
        let krate = krate.map_or_else(|| quote!(::switchboard), ToTokens::to_token_stream);
        let private = quote!(#krate::__private);
        let (context, future, finish_trait, finish_method) = match kind {
            Kind::Subscriber => (
                quote!(#private::Context),
                quote!(#private::HandlerFuture),
                quote!(#private::IntoHandlerResult),
                quote!(into_handler_result),
            ),
            Kind::Route => (
                quote!(#private::RouteContext),
                quote!(#private::RouteFuture),
                quote!(#private::IntoReply),
                quote!(into_reply),
            ),
        };
        Self {
            extractor: quote!(#private::FromContext<#context>),
            context,
            future,
            finish_trait,
            finish_method,
            private,
        }
    }
}

/// The `name = "..."` literal, or the function's name without `r#`.
pub(crate) fn name_or_default(name: Option<&LitStr>, function: &ItemFn) -> LitStr {
    match name {
        Some(name) => name.clone(),
        None => LitStr::new(&function.sig.ident.unraw().to_string(), Span::call_site()),
    }
}

/// The `description = "..."` literal, or the function's doc comment.
pub(crate) fn description_or_default(description: Option<&LitStr>, function: &ItemFn) -> LitStr {
    match description {
        Some(description) => description.clone(),
        None => LitStr::new(&doc_comment(&function.attrs), Span::call_site()),
    }
}

/// The `#[allow]`s every generated `const _` block carries.
pub(crate) fn block_attributes() -> TokenStream {
    quote! {
        #[doc(hidden)]
        #[allow(
            non_upper_case_globals,
            non_snake_case,
            unused_qualifications,
            dead_code,
            clippy::all,
            clippy::pedantic
        )]
    }
}

/// The `const _: () = { ... };` block for a validated subscriber.
fn registration(args: &Args, function: &ItemFn) -> TokenStream {
    let runtime = Runtime::new(Kind::Subscriber, args.krate.as_ref());
    let private = &runtime.private;
    let (handler, types) = handler(&runtime, &function.sig);
    let requirements = requirements(&runtime, &types);
    let (assertions, matchers) = matchers(private, &args.matchers);

    let unraw = function.sig.ident.unraw().to_string();
    let name = name_or_default(args.name.as_ref(), function);
    let description = description_or_default(args.description.as_ref(), function);
    let priority = priority_tokens(args.priority);
    let timeout = timeout_field(args.timeout);
    let durable = args.durable;
    let once = args.once;
    let (layer_fns, layers) = layers(&runtime, &args.layers);
    let static_ident = format_ident!("__SWITCHBOARD_{}", unraw.to_uppercase());
    let attributes = block_attributes();

    quote! {
        #attributes
        const _: () = {
            #(#assertions)*

            #handler

            #requirements

            #layer_fns

            #private::register! {
                #static_ident,
                #private::Registration {
                    name: #name,
                    description: #description,
                    matchers: &[#(#matchers),*],
                    priority: #priority,
                    module_path: ::core::module_path!(),
                    file: ::core::file!(),
                    line: ::core::line!(),
                    handler: __switchboard_handler,
                    requirements: __switchboard_requirements,
                    timeout: #timeout,
                    layers: #layers,
                    durable: #durable,
                    once: #once,
                }
            }
        };
    }
}

/// `fn __switchboard_handler(Context) -> HandlerFuture` (or the route equivalent), which extracts
/// every argument, calls the function and maps its result; and the argument types.
pub(crate) fn handler<'a>(runtime: &Runtime, sig: &'a Signature) -> (TokenStream, Vec<&'a Type>) {
    let Runtime {
        private,
        context,
        future,
        extractor,
        finish_trait,
        finish_method,
    } = runtime;
    // One extraction per argument, spanned at its type: `x: u32` is reported at `u32`.
    let mut extractions = Vec::new();
    let mut types = Vec::new();
    let mut arguments = Vec::new();
    for (index, input) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(arg) = input else {
            continue; // receivers were rejected by `check`
        };
        let ty = &*arg.ty;
        let var = format_ident!("__arg{}", index);
        let (first, _) = first_last_spans(ty.to_token_stream());
        // `<T as FromContext<Cx>>::__extract` spanned at the type: an argument that is not an
        // extractor is reported there, once (the result's types name no projection).
        let extract = quote_spanned!(first=> <#ty as #extractor>::__extract);
        extractions.push(quote! {
            let #var: #ty = match #extract(&__cx) {
                #private::Ok(__value) => __value,
                #private::Err(__rejection) => {
                    return #private::Err(#private::HandlerFailure::Rejected(__rejection))
                }
            };
        });
        types.push(ty);
        arguments.push(var);
    }

    let ident = &sig.ident;
    let call = quote!(#ident(#(#arguments),*));
    // `<R as IntoHandlerResult>` spanned at the return type: `-> u32` is reported at `u32`.
    let finish = match &sig.output {
        ReturnType::Default => quote!(<() as #finish_trait>::#finish_method),
        ReturnType::Type(_, ty) => {
            let (first, _) = first_last_spans(ty.to_token_stream());
            quote_spanned!(first=> <#ty as #finish_trait>::#finish_method)
        }
    };
    let run = if sig.asyncness.is_some() {
        quote_spanned! {ident.span()=>
            match #finish(#call.await) {
                #private::Ok(__value) => #private::Ok(__value),
                #private::Err(__error) => #private::Err(#private::HandlerFailure::Failed(__error)),
            }
        }
    } else {
        // A plain function runs on the blocking pool, its arguments (extracted here) moved into
        // a closure that calls it and converts its result. The closure is boxed as `dyn FnOnce +
        // Send` here, spanned at the function's name: an argument that is not `Send` is reported
        // there, against a type written here (not a bound of the runtime's `run_blocking`).
        let closure = quote_spanned! {ident.span()=>
            ::std::boxed::Box::new(move || { #finish(#call) })
        };
        quote! {
            let __resources = ::core::clone::Clone::clone(
                <#context as #private::HandlerContext>::resources(&__cx),
            );
            ::core::mem::drop(__cx);
            let __run: ::std::boxed::Box<
                dyn ::core::ops::FnOnce() -> ::core::result::Result<_, _> + ::core::marker::Send,
            > = #closure;
            #private::run_blocking(__resources, __run).await
        }
    };
    // The coercion to the boxed `Send` future is spanned at the function's name: a future that is
    // not `Send` is reported there.
    let boxed = quote_spanned! {ident.span()=>
        ::std::boxed::Box::pin(async move {
            #(#extractions)*
            #run
        })
    };
    let handler = quote! {
        fn __switchboard_handler(__cx: #context) -> #future {
            #boxed
        }
    };
    (handler, types)
}

/// The descriptor's `timeout`: `Some(Duration::from_millis(N))` or `None`.
pub(crate) fn timeout_field(timeout: Option<u64>) -> TokenStream {
    match timeout {
        Some(millis) => {
            let millis = Literal::u64_suffixed(millis);
            quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#millis)))
        }
        None => quote!(::core::option::Option::None),
    }
}

/// One `fn() -> HandlerLayer<Cx>` per `layer = ...` expression, and the descriptor's `layers`
/// naming them, the first one outermost. The expression is evaluated each time the function is
/// called (when the application is built), and erased through `IntoHandlerLayer` spanned at the
/// expression: a value that is not a layer is reported there.
pub(crate) fn layers(runtime: &Runtime, layers: &[Expr]) -> (TokenStream, TokenStream) {
    let Runtime {
        private, context, ..
    } = runtime;
    let mut items = Vec::new();
    let mut names = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let ident = format_ident!("__switchboard_layer_{}", index);
        // `Trait::<Cx>::method(expr)`: rustc reports the unsatisfied bound at the argument, and
        // "required by a bound introduced by this call" at the path, which runs from the
        // expression's first token to its last so that both labels underline the expression.
        let (first, last) = first_last_spans(layer.to_token_stream());
        let method = Ident::new("into_handler_layer", last);
        let erase = respan(quote!(#private::IntoHandlerLayer::<#context>::), first);
        let erase = quote!(#erase #method);
        items.push(quote! {
            fn #ident() -> #private::HandlerLayer<#context> {
                #erase(#layer)
            }
        });
        names.push(quote!(#ident as fn() -> #private::HandlerLayer<#context>));
    }
    (quote!(#(#items)*), quote!(&[#(#names),*]))
}

/// The `MatcherSpec`s, and the const items that check channel constants.
fn matchers(private: &TokenStream, matchers: &[Matcher]) -> (Vec<TokenStream>, Vec<TokenStream>) {
    let mut assertions = Vec::new();
    let specs = matchers
        .iter()
        .map(|matcher| match matcher {
            Matcher::Channel(lit) => quote!(#private::MatcherSpec::Channel(#lit)),
            Matcher::Regex(lit) => quote!(#private::MatcherSpec::Regex(#lit)),
            Matcher::Pattern(lit) => quote!(#private::MatcherSpec::Pattern(#lit)),
            Matcher::ChannelConst(path) => {
                // Typed once, so a constant of the wrong type is reported once, at the path; an
                // invalid value then fails const evaluation of the assertion, reported there too.
                // The panics are here, spanned at the constant, so that the error names no file of
                // the runtime.
                let constant = format_ident!("__SWITCHBOARD_CHANNEL_{}", assertions.len());
                let (first, _) = first_last_spans(path.to_token_stream());
                assertions.push(quote_spanned! {first=>
                    const #constant: &'static str = #path;
                    const _: () = match #private::channel_problem(#constant) {
                        #private::CHANNEL_EMPTY => ::core::panic!(
                            "invalid channel constant: the channel name is empty; use a non-empty Redis channel name or \"*\""
                        ),
                        #private::CHANNEL_WHITESPACE => ::core::panic!(
                            "invalid channel constant: the channel name contains whitespace or a control character; remove it"
                        ),
                        _ => {}
                    };
                });
                quote!(#private::MatcherSpec::Channel(#constant))
            }
            Matcher::Predicate(path) => {
                // A function with the wrong signature is reported at the path, against a type
                // written here (not the runtime's variant).
                let (first, _) = first_last_spans(path.to_token_stream());
                quote_spanned! {first=>
                    #private::MatcherSpec::Predicate({
                        const __SWITCHBOARD_PREDICATE: for<'a, 'b> fn(&'a #private::MatchContext<'b>) -> bool = #path;
                        __SWITCHBOARD_PREDICATE
                    })
                }
            }
        })
        .collect();
    (assertions, specs)
}

/// The function that declares what the extractors need: `<T as FromContext>::requirements` (or
/// `FromRoute`) for each argument type `T`. It goes through autoref specialization so that a type
/// that is not an extractor is skipped here, silently: the handler already reports it, at the
/// argument's type, and a second identical error would only be noise.
pub(crate) fn requirements(runtime: &Runtime, types: &[&Type]) -> TokenStream {
    let Runtime {
        private, extractor, ..
    } = runtime;
    if types.is_empty() {
        return quote! {
            fn __switchboard_requirements(_: &mut #private::Requirements) {}
        };
    }
    quote! {
        struct __SwitchboardArgument<T>(::core::marker::PhantomData<T>);

        trait __SwitchboardExtractor {
            fn __switchboard_require(&self, requirements: &mut #private::Requirements);
        }

        impl<T: #extractor> __SwitchboardExtractor for __SwitchboardArgument<T> {
            fn __switchboard_require(&self, requirements: &mut #private::Requirements) {
                <T as #extractor>::requirements(requirements);
            }
        }

        trait __SwitchboardNotExtractor {
            fn __switchboard_require(&self, requirements: &mut #private::Requirements);
        }

        impl<T> __SwitchboardNotExtractor for &__SwitchboardArgument<T> {
            fn __switchboard_require(&self, _: &mut #private::Requirements) {}
        }

        fn __switchboard_requirements(__requirements: &mut #private::Requirements) {
            #(
                (&__SwitchboardArgument::<#types>(::core::marker::PhantomData))
                    .__switchboard_require(__requirements);
            )*
        }
    }
}

/// `tokens` with every token (and group) spanned at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            }
            token.set_span(span);
            token
        })
        .collect()
}

fn first_last_spans(tokens: TokenStream) -> (Span, Span) {
    let mut tokens = tokens.into_iter();
    let first = tokens
        .next()
        .map_or_else(Span::call_site, |token| token.span());
    let last = tokens.last().map_or(first, |token| token.span());
    (first, last)
}

/// `10` or `-10` (a negative literal token would not survive every round trip).
fn priority_tokens(priority: i32) -> TokenStream {
    let magnitude = Literal::u32_unsuffixed(priority.unsigned_abs());
    if priority < 0 {
        quote!(-#magnitude)
    } else {
        quote!(#magnitude)
    }
}

/// The doc comment: every `#[doc = "..."]` line trimmed, blank lines dropped, joined with spaces.
fn doc_comment(attrs: &[Attribute]) -> String {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .filter_map(|attr| match &attr.meta {
            Meta::NameValue(meta) => match &meta.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(lit), ..
                }) => Some(lit.value()),
                _ => None,
            },
            _ => None,
        })
        .flat_map(|doc| {
            doc.lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_comments() {
        let function: ItemFn = syn::parse_quote! {
            /// Relays job updates
            ///   to every client.
            ///
            /** More. */
            #[doc = include_str!("x")]
            fn f() {}
        };
        assert_eq!(
            doc_comment(&function.attrs),
            "Relays job updates to every client. More."
        );
        let function: ItemFn = syn::parse_quote!(
            fn f() {}
        );
        assert_eq!(doc_comment(&function.attrs), "");
    }

    #[test]
    fn priorities() {
        assert_eq!(priority_tokens(-10).to_string(), "- 10");
        assert_eq!(priority_tokens(i32::MIN).to_string(), "- 2147483648");
        assert_eq!(priority_tokens(5).to_string(), "5");
    }

    #[test]
    fn expansion_shape() {
        let output = expand::<Args>(
            quote!(channel = "a"),
            quote!(
                async fn f(Message(m): Message, c: Channel) -> HandlerResult {}
            ),
        )
        .to_string();
        assert!(output.starts_with("async fn f"), "{output}");
        assert!(output.contains("__SWITCHBOARD_F"), "{output}");
        assert!(output.contains(". await"), "{output}");
        assert!(output.contains("__arg0"), "{output}");
        assert!(output.contains("__arg1"), "{output}");
        assert!(!output.contains("compile_error"), "{output}");
        assert!(!output.contains("run_blocking"), "{output}");
        assert!(
            output.contains("timeout : :: core :: option :: Option :: None"),
            "{output}"
        );
        assert!(output.contains("layers : & []"), "{output}");

        // A plain function runs on the blocking pool; `timeout` and `layer` fill the descriptor.
        let output = expand::<Args>(
            quote!(channel = "a", timeout = "2m", layer = [outer(), Inner]),
            quote!(
                fn f(c: Channel) {}
            ),
        )
        .to_string();
        assert!(!output.contains("compile_error"), "{output}");
        assert!(
            output.contains("__private :: run_blocking (__resources , __run)"),
            "{output}"
        );
        assert!(output.contains("Box :: new (move || { < () as"), "{output}");
        assert!(!output.contains(". await ;"), "{output}");
        assert!(
            output.contains("Some (:: core :: time :: Duration :: from_millis (120000u64))"),
            "{output}"
        );
        assert!(output.contains("into_handler_layer (outer ())"), "{output}");
        assert!(output.contains("into_handler_layer (Inner)"), "{output}");
        assert!(
            output.contains("layers : & [__switchboard_layer_0 as fn () -> :: switchboard :: __private :: HandlerLayer < :: switchboard :: __private :: Context > , __switchboard_layer_1 as"),
            "{output}"
        );

        let output = expand::<Args>(
            quote!(priority = 1),
            quote!(
                fn f() {}
            ),
        )
        .to_string();
        assert!(output.starts_with("fn f () { }"), "{output}");
        assert!(output.contains("compile_error"), "{output}");
        assert!(!output.contains("__SWITCHBOARD_F"), "{output}");
    }
}
