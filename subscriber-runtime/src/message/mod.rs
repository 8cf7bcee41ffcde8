//! What a message is and how it is matched: the envelope (the fields every worker adds and
//! strips), the framework's channel names, and the matchers that select handlers.

pub mod envelope;
pub mod event;
pub(crate) mod matcher;
