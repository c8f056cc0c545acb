//! Every request-body parser and validator of the HTTP layer, reached the way a client
//! reaches it: each input is a short scenario of requests to a fresh in-process Keel (see
//! `keel_fuzz::http` for the input format and the properties checked on every answer).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel_fuzz::http::run(data));
