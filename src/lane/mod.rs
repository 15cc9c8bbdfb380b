//! The nested lane: QEMU (TCG, SVM-capable CPU) running a Debian kernel with kvm_amd, so stock guests boot under real KVM on hosts whose own KVM cannot boot them (DESIGN.md §3, §8).
