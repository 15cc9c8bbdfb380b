//! voidbox-oci: registries, the local content-addressed image store, safe layer unpacking, ext4 rootfs disks.
