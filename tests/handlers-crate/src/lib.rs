//! Subscriber handlers defined in a separate crate, to prove they are discovered at link time.
