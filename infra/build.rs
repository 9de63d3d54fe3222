//! `sqlx::migrate!` embeds `migrations/` at compile time but, on stable Rust, does not tell
//! cargo to watch the directory: without this a new migration file is missing from the
//! binaries until something else in the crate changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
