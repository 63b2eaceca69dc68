//! `canonical::path` on any input: no panic; the canonical form is a fixed point and
//! holds no dot-segments.
#![no_main]

use cachegate::proxy::canonical;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let Ok(p) = canonical::path(raw) else { return };
    assert_eq!(canonical::path(&p).ok().as_deref(), Some(p.as_str()), "{raw:?}");
    if p.starts_with('/') {
        let dots = p[1..].split('/').any(|s| s == "." || s == "..");
        assert!(!dots, "dot-segment left in {p:?} from {raw:?}");
    }
});
