//! An argument that is not `Send`: a plain function's arguments move to the blocking pool, an
//! async function's live in its future; both are reported at the function's name.
use std::rc::Rc;
use switchboard::prelude::*;
use switchboard::FromContext;

struct Local(Rc<u8>);

impl FromContext for Local {
    type Rejection = std::convert::Infallible;
    fn from_context(_: &Context) -> Result<Self, Self::Rejection> {
        Ok(Local(Rc::new(1)))
    }
}

#[websocket_subscriber(channel = "a")]
fn plain(_: Local) {}

#[websocket_subscriber(channel = "a")]
async fn not_plain(_: Local) {}

fn main() {}
