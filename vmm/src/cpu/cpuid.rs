//! CPUID for each vCPU, from KVM_GET_SUPPORTED_CPUID: APIC ids, topology
//! leaves (Intel 0x4/0xB/0x1F, AMD 0x8000_0008/0x8000_001E) describing
//! `n` single-threaded cores in one package, and the hypervisor bit/leaf.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_EXT_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

// Leaf 0xB/0x1F level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` items (ceil(log2 n)).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

fn topology_entries(function: u32, apic_id: u32, cpus: u32) -> Vec<kvm_cpuid_entry2> {
    let e = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: apic_id,
        ..Default::default()
    };
    vec![
        // SMT level: one thread per core.
        e(0, 0, 1, LEVEL_SMT << 8),
        // Core level: all vCPUs in the package.
        e(1, bits_for(cpus), cpus, (LEVEL_CORE << 8) | 1),
        // Terminator.
        e(2, 0, 0, 2),
    ]
}

/// The CPUID table of vCPU `cpu_index` (its APIC id) out of `cpus`.
pub fn normalize(supported: &CpuId, cpu_index: u8, cpus: u8) -> Vec<kvm_cpuid_entry2> {
    let apic_id = u32::from(cpu_index);
    let n = u32::from(cpus);
    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(supported.as_slice().len() + 4);
    let mut has_hv_leaf = false;
    let mut replace_topology = Vec::new();
    for entry in supported.as_slice() {
        let mut e = *entry;
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (n << 16);
                e.ecx |= ECX_HYPERVISOR;
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: logical
                // CPUs sharing the cache - 1 (only the L3, level 3, is shared).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((n - 1) & 0x3f) << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                if !replace_topology.contains(&e.function) {
                    replace_topology.push(e.function);
                    out.extend(topology_entries(e.function, apic_id, n));
                }
                continue;
            }
            LEAF_HYPERVISOR => {
                has_hv_leaf = true;
                e.ebx = KVM_SIGNATURE[0];
                e.ecx = KVM_SIGNATURE[1];
                e.edx = KVM_SIGNATURE[2];
            }
            LEAF_EXT_SIZES => {
                // ECX[15:12]: APIC id bits for cores; ECX[7:0]: cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (bits_for(n) << 12) | (n - 1);
            }
            LEAF_EXT_TOPOLOGY => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // core id, one thread per core
                e.ecx = 0; // node 0, one node
            }
            _ => {}
        }
        out.push(e);
    }
    if !has_hv_leaf {
        out.push(kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR,
            eax: LEAF_HYPERVISOR,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    fn fake_supported() -> CpuId {
        let e = |function, index, eax, ebx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ..Default::default()
        };
        CpuId::from_entries(&[
            e(0, 0, 0x1f, 0),
            e(1, 0, 0x806f0, 0x0000_0800),
            e(4, 0, 0x21, 0),
            e(4, 3, 0x63, 0),
            e(0xb, 0, 1, 2),
            e(0xb, 1, 4, 16),
            e(0x8000_0008, 0, 0x3030, 0),
            e(0x8000_001e, 0, 9, 9),
        ])
        .unwrap()
    }

    #[test]
    fn apic_ids_and_counts_per_vcpu() {
        let sup = fake_supported();
        for cpu in 0..3u8 {
            let v = normalize(&sup, cpu, 3);
            let l1 = find(&v, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(cpu));
            assert_eq!((l1.ebx >> 16) & 0xff, 3);
            assert_eq!(l1.ebx & 0xffff, 0x800, "CLFLUSH size kept");
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(l1.edx & EDX_HTT, 0);
            for i in 0..3 {
                assert_eq!(find(&v, 0xb, i).edx, u32::from(cpu));
            }
            assert_eq!(find(&v, 0xb, 1).ebx, 3);
            assert_eq!(find(&v, 0xb, 1).eax, 2);
            assert_eq!(v.iter().filter(|e| e.function == 0xb).count(), 3);
            assert_eq!(find(&v, 0x8000_001e, 0).eax, u32::from(cpu));
            assert_eq!(find(&v, 0x8000_0008, 0).ecx & 0xff, 2);
            assert_eq!(find(&v, 4, 0).eax >> 26, 2);
            assert_eq!((find(&v, 4, 3).eax >> 14) & 0xfff, 2);
            assert_eq!((find(&v, 4, 0).eax >> 14) & 0xfff, 0);
            let hv = find(&v, LEAF_HYPERVISOR, 0);
            assert_eq!([hv.ebx, hv.ecx, hv.edx], KVM_SIGNATURE);
        }
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let v = normalize(&fake_supported(), 0, 1);
        assert_eq!(find(&v, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&v, 0xb, 1).eax, 0);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }
}
