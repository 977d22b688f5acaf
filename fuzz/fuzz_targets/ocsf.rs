#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fim_fuzz::ocsf::check(data));
