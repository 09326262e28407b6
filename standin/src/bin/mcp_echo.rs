//! `mcp-echo`: the minimal MCP echo server on stdio (see `toolgate_standin::echo`).
fn main() -> std::io::Result<()> {
    toolgate_standin::echo::serve(std::io::stdin().lock(), std::io::stdout().lock())
}
