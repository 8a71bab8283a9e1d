//! Tap device (placeholder).
