//! The runtime: plan a sandbox from a spec, launch the VM, run the steps, collect outputs, clean up.
