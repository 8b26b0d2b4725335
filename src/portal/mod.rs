//! portal (in progress).
