//! `Config::parse` on any text: no panic, and every error renders.
#![no_main]

use std::path::Path;

use cachegate::config::{Config, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|source: &str| {
    match Config::parse(source, Path::new("fuzz.yaml"), &Overrides::default()) {
        Ok(c) => {
            for w in &c.warnings {
                let _ = w.to_string();
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
