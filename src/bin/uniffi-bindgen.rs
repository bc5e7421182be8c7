//! The bindings generator for this crate's UniFFI interface, so the bindings always match the
//! library's UniFFI version. `bindings/generate.sh` drives it; by hand:
//! `cargo run --features bindgen --bin uniffi-bindgen -- generate --library <libcoven_group> --language swift --out-dir <dir>`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
