//! voidbox-guest-image: guest kernel acquisition (Debian packages), initramfs builder, guest OCI image.
