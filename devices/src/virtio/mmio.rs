//! virtio-mmio transport (placeholder).
