//! `byte-relay -- CMD [ARGS...]`: a bare byte relay (see `toolgate_standin::relay`).
fn main() {
    let command: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    match toolgate_standin::relay::run(&command) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("byte-relay: {e}; usage: byte-relay -- CMD [ARGS...]");
            std::process::exit(2);
        }
    }
}
