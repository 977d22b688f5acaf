#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fim_fuzz::config::check(data));
