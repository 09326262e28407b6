//! `llm-cli-gateway-standin`: the LLM CLI Gateway replica on stdio
//! (see `toolgate_standin::llm_cli_gateway`).
fn main() -> std::io::Result<()> {
    toolgate_standin::llm_cli_gateway::serve(std::io::stdin().lock(), std::io::stdout().lock())
}
