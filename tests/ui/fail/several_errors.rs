use switchboard::prelude::*;

// Every mistake the macro can see is reported at once, and the function is still emitted:
// `main` can call it without a "cannot find function" error.
#[websocket_subscriber(chanel = "a", channel = "b c", priority = 1.5, match = regex("["))]
unsafe fn everything_wrong<T>(_: T)
where
    T: Copy,
{
}

fn main() {
    unsafe { everything_wrong(1) };
}
