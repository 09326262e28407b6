//! `llm-cli-gateway-standin [--catalogue FILE]`: the LLM CLI Gateway replica on stdio
//! (see `toolgate_standin::llm_cli_gateway`). `--catalogue` (or `STANDIN_CATALOGUE`) lists a
//! saved `tools/list` reply instead of the 2.10.0 catalogue compiled in.
use toolgate_standin::llm_cli_gateway::{read_catalogue, serve, serve_gateway, Gateway};

fn main() -> std::io::Result<()> {
    let (stdin, stdout) = (std::io::stdin().lock(), std::io::stdout().lock());
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => serve(stdin, stdout),
        [flag, file] if flag == "--catalogue" => {
            let (tools, version) = read_catalogue(std::path::Path::new(file))?;
            serve_gateway(stdin, stdout, Gateway::with_catalogue(tools, version))
        }
        _ => {
            eprintln!("usage: llm-cli-gateway-standin [--catalogue FILE]");
            std::process::exit(2)
        }
    }
}
