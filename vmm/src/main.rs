fn main() {
    eprintln!("voidbox-vmm: not built yet");
    std::process::exit(2);
}
