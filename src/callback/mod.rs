//! callback (in progress).
