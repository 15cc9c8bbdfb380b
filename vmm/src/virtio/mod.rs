//! Virtio devices over the virtio-mmio transport (virtio 1.x), on virtio-queue.
