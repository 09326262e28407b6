#!/usr/bin/env node
// A deliberately naive MCP server, read the way JavaScript servers read JSON: `JSON.parse`
// (case-sensitive keys, the last duplicate wins) and ids as JavaScript numbers, so a request
// with id `7.0` is answered with id `7` and 9007199254740993 comes back as 9007199254740992.
// That is what the official TypeScript SDK (and the LLM CLI Gateway on top of it) does. The
// integrity tests (tests/e2e/integrity.rs) put it behind toolgate.
//
// It runs a request whose id is `null`, and, to make a forwarded notification visible, a
// `tools/call` that has no id at all (without replying).
//
// Every tool execution is appended as one JSON line to the file named by STANDIN_LOG (before
// the next message is read), so a test can count what ran even across crashes and restarts.
// STANDIN_CREATE_MS delays session_create's reply (after it has started, i.e. been logged);
// STANDIN_LIST_MS delays tools/list replies, and STANDIN_UNKNOWN_MS the "method not found" errors.
//
// stdio only: newline-delimited JSON-RPC on stdin/stdout.
"use strict";

const fs = require("fs");
const crypto = require("crypto");
const readline = require("readline");

const counts = {};
const envMs = (name) => Number.parseInt(process.env[name] || "0", 10) || 0;

function record(tool, id, args) {
  counts[tool] = (counts[tool] || 0) + 1;
  const path = process.env.STANDIN_LOG;
  if (!path) return;
  const line = JSON.stringify({
    server: "node",
    pid: process.pid,
    tool,
    id: id === undefined ? "<absent>" : id,
    arguments: args,
  });
  fs.appendFileSync(path, line + "\n");
}

function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

const reply = (id, result) => ({ jsonrpc: "2.0", id: id === undefined ? null : id, result });
const replyError = (id, code, message) => ({
  jsonrpc: "2.0",
  id: id === undefined ? null : id,
  error: { code, message },
});
const textResult = (text, isError = false) => ({ content: [{ type: "text", text }], isError });

const open = { type: "object" };
const TOOLS = [
  {
    name: "session_create",
    description: "Create a session (counted)",
    inputSchema: {
      type: "object",
      properties: {
        cli: { type: "string", enum: ["claude", "codex", "gemini"] },
        description: { type: "string" },
      },
      required: ["cli"],
      additionalProperties: false,
    },
  },
  { name: "session_clear_all", description: "Delete every session (counted)", inputSchema: open },
  {
    name: "echo_args",
    description: "The method, tool and arguments as this server read them",
    inputSchema: open,
  },
  {
    name: "slow",
    description: "Answers after `ms` milliseconds",
    inputSchema: { type: "object", properties: { ms: { type: "integer" } } },
  },
  { name: "never", description: "Never answers", inputSchema: open },
  { name: "crash", description: "Exits the process", inputSchema: open },
  { name: "stats", description: "Executions per tool, as JSON", inputSchema: open },
];

// Handles one message; `answer` is called at most once, now or later.
function handle(m, answer) {
  const isRequest = Object.prototype.hasOwnProperty.call(m, "id"); // `"id": null` too
  const respond = (message, delay = 0) => {
    if (!isRequest) return;
    if (delay > 0) setTimeout(() => answer(message), delay);
    else answer(message);
  };
  switch (m.method) {
    case "initialize":
      return respond(
        reply(m.id, {
          protocolVersion: (m.params && m.params.protocolVersion) || "2025-11-25",
          capabilities: { tools: {} },
          serverInfo: { name: "standin-node", version: "1" },
        }),
      );
    case "ping":
      return respond(reply(m.id, {}));
    case "tools/list":
      return respond(reply(m.id, { tools: TOOLS }), envMs("STANDIN_LIST_MS"));
    case "tools/call":
      return call(m, respond);
  }
  if (typeof m.method === "string" && !m.method.startsWith("notifications/")) {
    respond(replyError(m.id, -32601, `Method not found: ${m.method}`), envMs("STANDIN_UNKNOWN_MS"));
  }
}

function call(m, respond) {
  const params = m.params || {};
  const args = params.arguments || {};
  switch (params.name) {
    case "session_create": {
      // `description: "error:CODE"` makes the call fail with that JSON-RPC error: after
      // running for any code but the four that mean "not executed".
      const d = args.description;
      if (typeof d === "string" && d.startsWith("error:")) {
        const code = Number.parseInt(d.slice(6), 10);
        if (![-32600, -32601, -32602, -32700].includes(code)) record(params.name, m.id, args);
        return respond(replyError(m.id, code, "session_create failed as asked"));
      }
      record(params.name, m.id, args);
      const session = { id: crypto.randomUUID(), cli: args.cli, description: d, isActive: true };
      return respond(
        reply(m.id, textResult(JSON.stringify({ success: true, session }))),
        envMs("STANDIN_CREATE_MS"),
      );
    }
    case "session_clear_all":
      record(params.name, m.id, args);
      return respond(reply(m.id, textResult('{"success":true,"cleared":"all"}')));
    case "echo_args":
      record(params.name, m.id, args);
      return respond(
        reply(m.id, textResult(JSON.stringify({ method: m.method, tool: params.name, arguments: args }))),
      );
    case "slow":
      record(params.name, m.id, args);
      return respond(reply(m.id, textResult(`slept ${args.ms} ms`)), Number(args.ms) || 0);
    case "never":
      record(params.name, m.id, args);
      return;
    case "crash":
      record(params.name, m.id, args);
      process.stderr.write("standin-node: crashing as asked\n");
      process.exit(3);
    // falls through: exit does not return
    case "stats":
      record(params.name, m.id, args);
      return respond(reply(m.id, textResult(JSON.stringify(counts))));
  }
  respond(replyError(m.id, -32602, `unknown tool: ${params.name}`));
}

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on("line", (line) => {
  if (!line.trim()) return;
  let m;
  try {
    m = JSON.parse(line);
  } catch (e) {
    return send(replyError(null, -32700, `parse error: ${e.message}`));
  }
  if (m === null || typeof m !== "object" || Array.isArray(m)) {
    return send(replyError(null, -32600, "invalid request"));
  }
  handle(m, send);
});
lines.on("close", () => process.exit(0));
