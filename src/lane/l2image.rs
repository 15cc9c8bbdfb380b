//! The L2 initramfs: busybox, the lane modules (virtio PCI, 9p, virtio-serial, kvm_amd,
//! vhost_vsock) in load order, and an init that mounts the host's `/` (read-only 9p), the
//! lane's writable shares, then starts the command server chrooted into the host root.

use std::path::Path;

use voidbox_guest_image::initramfs::Initramfs;
use voidbox_guest_image::kernel::{GuestKernel, LANE_MODULES};

use super::error::LaneError;

/// The L2 `/init` (busybox sh). `l2.env` in the lane work dir defines `SHARES` (space-separated
/// `tag:path`) and `SERVER` (the command server's command line inside the host root).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "LANE-L2-INIT"
while read -r m; do insmod "/lib/modules/$m" || echo "LANE-L2-ERR insmod $m"; done < /modules.load
W=$(sed -n 's/.*voidbox_lane.work=\([^ ]*\).*/\1/p' /proc/cmdline)
O=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $O,ro,cache=loose hostroot /host || echo "LANE-L2-ERR mount hostroot"
mkdir -p /dev/shm /dev/pts
mount --bind /dev /host/dev; mount -t proc proc /host/proc; mount -t sysfs sys /host/sys
mount -t tmpfs shm /host/dev/shm; mount -t devpts pts /host/dev/pts
mount -t tmpfs run /host/run
# The host's /tmp, writable: checkouts, target dirs and homes often live there. Unix sockets
# cannot live on 9p, so they go in /run (a private tmpfs).
mount -t 9p -o $O,rw hosttmp /host/tmp || echo "LANE-L2-ERR mount hosttmp"
mkdir -p "/host$W"
mount -t 9p -o $O,rw lanework "/host$W" || echo "LANE-L2-ERR mount lanework $W"
. "/host$W/l2.env"
for s in $SHARES; do
  tag=${s%%:*}; p=${s#*:}
  mkdir -p "/host$p"; mount -t 9p -o $O,rw "$tag" "/host$p" || echo "LANE-L2-ERR mount $tag $p"
done
if [ -c /dev/kvm ]; then echo "LANE-L2-KVM"; else echo "LANE-L2-NOKVM"; dmesg | grep -iE 'kvm|svm' | tail -5; fi
eval "env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb chroot /host $SERVER"
echo "LANE-L2-SERVER-EXIT rc=$?"
sync; poweroff -f
"#;

/// Writes the L2 initramfs (uncompressed newc: no decompression under TCG) to `dest`.
pub fn build(kernel: &GuestKernel, busybox: &Path, dest: &Path) -> Result<(), LaneError> {
    if !busybox.is_file() {
        return Err(LaneError::Missing {
            what: format!("static busybox at {}", busybox.display()),
            fix: "apt-get install -y busybox-static",
        });
    }
    let mut img = Initramfs::new();
    img.add_file_from("bin/busybox", 0o755, busybox)?;
    for d in ["proc", "sys", "dev", "host", "tmp", "run"] {
        img.add_dir(d, 0o755)?;
    }
    img.add_char_device("dev/console", 0o600, 5, 1)?;
    let mut load = String::new();
    for m in kernel.modules(LANE_MODULES)? {
        let rel = m.rel_path.to_string_lossy().into_owned();
        img.add_file_from(&format!("lib/modules/{rel}"), 0o644, &m.path)?;
        load.push_str(&rel);
        load.push('\n');
    }
    img.add_file("modules.load", 0o644, load.into_bytes())?;
    img.add_file("init", 0o755, INIT.as_bytes().to_vec())?;
    img.write_to(dest, voidbox_guest_image::initramfs::Compression::None)?;
    Ok(())
}
