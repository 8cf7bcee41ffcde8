//! Code generation of `#[websocket_route]`: the same wrapper and requirements as a subscriber, built
//! on the route side of the runtime, and a `RouteRegistration` descriptor.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::ItemFn;

use crate::expand::{
    block_attributes, description_or_default, handler, layers, name_or_default, requirements,
    timeout_field, AttributeArgs, Runtime,
};
use crate::route_args::RouteArgs;
use crate::{Errors, Kind};

impl AttributeArgs for RouteArgs {
    const KIND: Kind = Kind::Route;

    fn take_errors(&mut self) -> Errors {
        std::mem::take(&mut self.errors)
    }

    fn registration(&self, function: &ItemFn) -> TokenStream {
        registration(self, function)
    }
}

/// The `const _: () = { ... };` block for a validated route.
fn registration(args: &RouteArgs, function: &ItemFn) -> TokenStream {
    // Without errors, both are present.
    let (Some(kind), Some(action)) = (&args.kind, &args.action) else {
        return TokenStream::new();
    };
    let runtime = Runtime::new(Kind::Route, args.krate.as_ref());
    let private = &runtime.private;
    let (handler, types) = handler(&runtime, &function.sig);
    let requirements = requirements(&runtime, &types);
    let timeout = timeout_field(args.timeout);
    let (layer_fns, layers) = layers(&runtime, &args.layers);

    let name = name_or_default(args.name.as_ref(), function);
    let description = description_or_default(args.description.as_ref(), function);
    let static_ident = format_ident!(
        "__SWITCHBOARD_ROUTE_{}",
        function.sig.ident.unraw().to_string().to_uppercase()
    );
    let attributes = block_attributes();

    quote! {
        #attributes
        const _: () = {
            #handler

            #requirements

            #layer_fns

            #private::register_route! {
                #static_ident,
                #private::RouteRegistration {
                    kind: #kind,
                    action: #action,
                    name: #name,
                    description: #description,
                    module_path: ::core::module_path!(),
                    file: ::core::file!(),
                    line: ::core::line!(),
                    handler: __switchboard_handler,
                    requirements: __switchboard_requirements,
                    timeout: #timeout,
                    layers: #layers,
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expand::expand;

    #[test]
    fn expansion_shape() {
        let output = expand::<RouteArgs>(
            quote!(type = "chat", action = "send"),
            quote!(
                async fn send(client: Client, Data(m): Data<Message>) -> Result<Value, E> {}
            ),
        )
        .to_string();
        assert!(output.starts_with("async fn send"), "{output}");
        assert!(output.contains("__SWITCHBOARD_ROUTE_SEND"), "{output}");
        assert!(
            output.contains(":: switchboard :: __private :: FromContext < :: switchboard :: __private :: RouteContext >"),
            "{output}"
        );
        assert!(output.contains("IntoReply > :: into_reply"), "{output}");
        assert!(
            output.contains(":: switchboard :: __private :: RouteFuture"),
            "{output}"
        );
        assert!(output.contains("register_route"), "{output}");
        assert!(output.contains(". await"), "{output}");
        assert!(!output.contains("compile_error"), "{output}");

        // Errors: the function as written, beside them, and no registration.
        let output = expand::<RouteArgs>(
            quote!(type = "system", action = "joinRoom"),
            quote!(
                fn join() {}
            ),
        )
        .to_string();
        assert!(output.starts_with("fn join () { }"), "{output}");
        assert!(output.contains("compile_error"), "{output}");
        assert!(!output.contains("register_route"), "{output}");
    }

    #[test]
    fn shape_errors_name_the_route() {
        let output = expand::<RouteArgs>(
            quote!(type = "a", action = "b"),
            quote!(
                fn f<T>() {}
            ),
        )
        .to_string();
        assert!(
            output.contains("a route handler cannot have generic parameters"),
            "{output}"
        );
        let output = expand::<RouteArgs>(
            quote!(type = "a", action = "b"),
            quote!(
                struct S;
            ),
        )
        .to_string();
        assert!(
            output.contains("`#[websocket_route]` goes on a function"),
            "{output}"
        );
    }
}
