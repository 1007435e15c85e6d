//! Coverage-guided fuzzing of the JPEG path vaeflow runs on every file (decode + centre crop +
//! resize, with decoder panics turned into errors): on arbitrary bytes it must return an error or
//! fill the output — never crash, hang, corrupt memory (AddressSanitizer is on) or panic out.
//!
//!     cd native/fuzz && cargo +nightly fuzz run -O decode -- -max_total_time=60
//!
//! (-O: release settings, as shipped. Without it, debug assertions inside zune-jpeg fire on
//! inputs the release build handles.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = vec![0u8; 8 * 8 * 3];
    let _ = _native::decode::decode_bytes(data, Some(0), 8, &mut out);
    if let Ok(()) = _native::decode::decode_bytes(data, None, 5, &mut out[..5 * 5 * 3]) {
        // decoded twice, the same bytes give the same image
        let mut again = vec![0u8; 5 * 5 * 3];
        _native::decode::decode_bytes(data, None, 5, &mut again).unwrap();
        assert_eq!(&out[..5 * 5 * 3], &again[..]);
    }
});
