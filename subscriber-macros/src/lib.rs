//! The `#[websocket_subscriber]` attribute. Use it through the `switchboard` crate.
#![deny(missing_docs)]

use proc_macro::TokenStream;

/// See `switchboard::websocket_subscriber`.
#[proc_macro_attribute]
pub fn websocket_subscriber(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
