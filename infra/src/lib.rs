//! Shared plumbing for the services.
