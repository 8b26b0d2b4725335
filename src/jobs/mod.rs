//! jobs (in progress).
