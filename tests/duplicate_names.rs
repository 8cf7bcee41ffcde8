//! Two attributed handlers with the same name fail `build()` with both locations.

use switchboard::prelude::*;
use switchboard::{BuildError, Error};

mod billing {
    use switchboard::prelude::*;

    #[websocket_subscriber(channel = "invoices")]
    fn notify() {}
}

mod shipping {
    use switchboard::prelude::*;

    #[websocket_subscriber(channel = "parcels")]
    fn notify() {}
}

#[test]
fn duplicate_attribute_names_fail_build_with_both_locations() {
    let err = Switchboard::builder().build().unwrap_err();
    let Error::Build(BuildError::DuplicateName {
        name,
        first,
        second,
    }) = &err
    else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(name, "notify");
    let mut modules = [first.module_path.as_str(), second.module_path.as_str()];
    modules.sort_unstable();
    assert_eq!(
        modules,
        ["duplicate_names::billing", "duplicate_names::shipping"]
    );
    assert!(first.file.ends_with("duplicate_names.rs") && first.line > 0);
    let text = err.to_string();
    assert!(
        text.contains("name = \\\"...\\\"") || text.contains("name = \"...\""),
        "{text}"
    );
}
