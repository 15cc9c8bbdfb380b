fn main() {
    println!("voidbox {}", env!("CARGO_PKG_VERSION"));
}
