//! engine library.
