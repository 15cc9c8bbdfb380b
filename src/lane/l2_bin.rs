//! `voidbox-lane`: the L2 side of the nested lane (command server, relay) as its own small
//! binary, until the `voidbox` CLI exposes `voidbox lane-l2 ...` itself.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(voidbox::lane::l2_main(&args));
}
