// A deliberately naive MCP server, read the way Go servers read JSON: every message is decoded
// with encoding/json into structs, so keys match case-insensitively (`Method` is `method`, `ID`
// is `id`), `ſ` (U+017F) folds to `s` and the Kelvin sign `K` (U+212A) to `k`, and when several
// keys match one field the last one wins. That is what mark3labs/mcp-go and the Go SDK before
// v1.3.1 do (CVE-2026-27896). The integrity tests (tests/e2e/integrity.rs) put it behind toolgate
// to show that what the gateway decided is what this server ran.
//
// Like most Go servers it runs a request whose id is `null`; to make a forwarded notification
// visible it also runs a `tools/call` that has no id at all (without replying).
//
// Every tool execution is appended as one JSON line to the file named by STANDIN_LOG, so a test
// can count what ran even across crashes and restarts. STANDIN_CREATE_MS delays session_create's
// reply (after it has started, i.e. been logged); STANDIN_LIST_MS delays tools/list replies, and
// STANDIN_UNKNOWN_MS the "method not found" errors.
//
// stdio (the default): newline-delimited JSON-RPC on stdin/stdout. `--http ADDR`: a minimal
// Streamable HTTP server (POST /mcp, JSON replies, 202 for notifications) that prints
// "listening on http://ADDR/mcp" on stderr.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The envelope, as a Go server reads it: case-insensitive, last match wins.
type message struct {
	Jsonrpc string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
}

type callParams struct {
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments"`
}

type createArgs struct {
	Cli         string  `json:"cli"`
	Description *string `json:"description,omitempty"`
}

// echo_args reads typed arguments, as a Go tool handler bound to a struct does.
type echoArgs struct {
	SessionID *string `json:"sessionId,omitempty"`
	Workdir   *string `json:"workdir,omitempty"`
	Cli       *string `json:"cli,omitempty"`
	Message   *string `json:"message,omitempty"`
}

type slowArgs struct {
	Ms int `json:"ms"`
}

var (
	logMu  sync.Mutex
	counts = map[string]int{}
)

// record appends one execution to STANDIN_LOG (synchronously, before the tool's reply can be
// sent and before the next message is read) and counts it.
func record(tool string, id json.RawMessage, args interface{}) {
	logMu.Lock()
	defer logMu.Unlock()
	counts[tool]++
	path := os.Getenv("STANDIN_LOG")
	if path == "" {
		return
	}
	if len(id) == 0 {
		id = json.RawMessage("\"<absent>\"")
	}
	line, _ := json.Marshal(map[string]interface{}{
		"server": "go", "pid": os.Getpid(), "tool": tool, "id": id, "arguments": args,
	})
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "standin-go: cannot open STANDIN_LOG:", err)
		return
	}
	f.Write(append(line, '\n'))
	f.Close()
}

func envMs(name string) time.Duration {
	ms, _ := strconv.Atoi(os.Getenv(name))
	return time.Duration(ms) * time.Millisecond
}

func uuid() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func reply(id json.RawMessage, result interface{}) []byte {
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	out, _ := json.Marshal(map[string]interface{}{"jsonrpc": "2.0", "id": id, "result": result})
	return out
}

func replyError(id json.RawMessage, code int, text string) []byte {
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	out, _ := json.Marshal(map[string]interface{}{
		"jsonrpc": "2.0", "id": id, "error": map[string]interface{}{"code": code, "message": text},
	})
	return out
}

func textResult(text string, isError bool) map[string]interface{} {
	return map[string]interface{}{
		"content": []interface{}{map[string]interface{}{"type": "text", "text": text}},
		"isError": isError,
	}
}

func toolsList() []interface{} {
	open := map[string]interface{}{"type": "object"}
	tool := func(name, description string, schema interface{}) map[string]interface{} {
		return map[string]interface{}{"name": name, "description": description, "inputSchema": schema}
	}
	return []interface{}{
		tool("session_create", "Create a session (counted)", map[string]interface{}{
			"type": "object",
			"properties": map[string]interface{}{
				"cli":         map[string]interface{}{"type": "string", "enum": []string{"claude", "codex", "gemini"}},
				"description": map[string]interface{}{"type": "string"},
			},
			"required":             []string{"cli"},
			"additionalProperties": false,
		}),
		tool("session_clear_all", "Delete every session (counted)", map[string]interface{}{"type": "object"}),
		tool("echo_args", "The method, tool and arguments as this server read them", open),
		tool("slow", "Answers after `ms` milliseconds", map[string]interface{}{
			"type": "object", "properties": map[string]interface{}{"ms": map[string]interface{}{"type": "integer"}},
		}),
		tool("never", "Never answers", open),
		tool("crash", "Exits the process", open),
		tool("stats", "Executions per tool, as JSON", open),
	}
}

// outcome is what a message leads to: a reply (nil for none), sent after `wait`, or never.
type outcome struct {
	reply []byte
	wait  time.Duration
	never bool
}

// answer is the outcome of a message that is answered at once (if it is a request).
func answer(isRequest bool, b []byte) outcome {
	if !isRequest {
		return outcome{}
	}
	return outcome{reply: b}
}

// later is the outcome of a message answered after `wait`.
func later(isRequest bool, b []byte, wait time.Duration) outcome {
	o := answer(isRequest, b)
	o.wait = wait
	return o
}

// prepare reads one message and does everything that must happen in order, before the next
// message is read: decoding, logging the execution, crashing.
func prepare(line []byte) outcome {
	var m message
	if err := json.Unmarshal(line, &m); err != nil {
		return outcome{reply: replyError(nil, -32700, "parse error: "+err.Error())}
	}
	isRequest := len(m.ID) > 0 // `"id": null` too: a Go server runs it
	ans := func(b []byte) outcome { return answer(isRequest, b) }
	switch m.Method {
	case "initialize":
		var p struct {
			ProtocolVersion string `json:"protocolVersion"`
		}
		json.Unmarshal(m.Params, &p)
		if p.ProtocolVersion == "" {
			p.ProtocolVersion = "2025-11-25"
		}
		return ans(reply(m.ID, map[string]interface{}{
			"protocolVersion": p.ProtocolVersion,
			"capabilities":    map[string]interface{}{"tools": map[string]interface{}{}},
			"serverInfo":      map[string]interface{}{"name": "standin-go", "version": "1"},
		}))
	case "ping":
		return ans(reply(m.ID, map[string]interface{}{}))
	case "tools/list":
		b := reply(m.ID, map[string]interface{}{"tools": toolsList()})
		return later(isRequest, b, envMs("STANDIN_LIST_MS"))
	case "tools/call":
		return call(m, isRequest)
	}
	if !isRequest || strings.HasPrefix(m.Method, "notifications/") {
		return ans(nil)
	}
	return later(isRequest, replyError(m.ID, -32601, "Method not found: "+m.Method), envMs("STANDIN_UNKNOWN_MS"))
}

func call(m message, isRequest bool) outcome {
	var p callParams
	if err := json.Unmarshal(m.Params, &p); err != nil {
		return answer(isRequest, replyError(m.ID, -32602, "invalid params: "+err.Error()))
	}
	args := p.Arguments
	if len(args) == 0 || string(args) == "null" {
		args = json.RawMessage("{}")
	}
	switch p.Name {
	case "session_create":
		var a createArgs
		if err := json.Unmarshal(args, &a); err != nil {
			return answer(isRequest, replyError(m.ID, -32602, "invalid arguments: "+err.Error()))
		}
		// `description: "error:CODE"` makes the call fail with that JSON-RPC error: after
		// running for any code but the four that mean "not executed".
		if a.Description != nil && strings.HasPrefix(*a.Description, "error:") {
			code, _ := strconv.Atoi(strings.TrimPrefix(*a.Description, "error:"))
			switch code {
			case -32600, -32601, -32602, -32700:
			default:
				record(p.Name, m.ID, a)
			}
			return answer(isRequest, replyError(m.ID, code, "session_create failed as asked"))
		}
		record(p.Name, m.ID, a)
		session, _ := json.Marshal(map[string]interface{}{"success": true, "session": map[string]interface{}{
			"id": uuid(), "cli": a.Cli, "description": a.Description, "isActive": true,
		}})
		b := reply(m.ID, textResult(string(session), false))
		return later(isRequest, b, envMs("STANDIN_CREATE_MS"))
	case "session_clear_all":
		record(p.Name, m.ID, map[string]interface{}{})
		return answer(isRequest, reply(m.ID, textResult(`{"success":true,"cleared":"all"}`, false)))
	case "echo_args":
		var a echoArgs
		if err := json.Unmarshal(args, &a); err != nil {
			return answer(isRequest, replyError(m.ID, -32602, "invalid arguments: "+err.Error()))
		}
		record(p.Name, m.ID, a)
		read, _ := json.Marshal(map[string]interface{}{"method": m.Method, "tool": p.Name, "arguments": a})
		return answer(isRequest, reply(m.ID, textResult(string(read), false)))
	case "slow":
		var a slowArgs
		json.Unmarshal(args, &a)
		record(p.Name, m.ID, a)
		b := reply(m.ID, textResult(fmt.Sprintf("slept %d ms", a.Ms), false))
		return later(isRequest, b, time.Duration(a.Ms)*time.Millisecond)
	case "never":
		record(p.Name, m.ID, json.RawMessage(args))
		return outcome{never: true}
	case "crash":
		record(p.Name, m.ID, json.RawMessage(args))
		fmt.Fprintln(os.Stderr, "standin-go: crashing as asked")
		os.Exit(3)
	case "stats":
		record(p.Name, m.ID, json.RawMessage(args))
		logMu.Lock()
		text, _ := json.Marshal(counts)
		logMu.Unlock()
		return answer(isRequest, reply(m.ID, textResult(string(text), false)))
	}
	return answer(isRequest, replyError(m.ID, -32602, "unknown tool: "+p.Name))
}

func serveStdio() {
	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	for {
		line, err := in.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			o := prepare(line)
			write := func() {
				outMu.Lock()
				out.Write(append(o.reply, '\n'))
				out.Flush()
				outMu.Unlock()
			}
			switch {
			case o.never || o.reply == nil:
			case o.wait == 0:
				write() // in order: a reply never overtakes an earlier one without a wait
			default:
				go func() { time.Sleep(o.wait); write() }()
			}
		}
		if err != nil {
			return // EOF: the client is gone
		}
	}
}

func serveHTTP(addr string) {
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "standin-go:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "listening on http://%s/mcp\n", listener.Addr())
	http.HandleFunc("/mcp", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		body := make([]byte, 0, 1024)
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			body = append(body, buf[:n]...)
			if err != nil {
				break
			}
		}
		o := prepare(body)
		if o.never {
			<-r.Context().Done()
			return
		}
		time.Sleep(o.wait)
		b := o.reply
		if b == nil {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Mcp-Session-Id", "standin-go-session")
		w.Write(b)
	})
	http.Serve(listener, nil)
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "--http" {
		serveHTTP(os.Args[2])
		return
	}
	serveStdio()
}
