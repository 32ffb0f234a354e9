// The Deno side of a JIT tool (plain JavaScript with JSDoc types, so Deno starts it without
// transpiling; `deno check` type-checks it in the tests): serves calls from the supervisor over stdin/stdout.
//
// Deno runs with no permissions at all (no --allow-* flag) inside the same OS sandbox
// as agents; the only way this process can affect anything is `libos.syscall`, which
// the supervisor executes as the AgentProcess that called the tool, checked, narrowed
// to the tool's declared capabilities and audited with the tool's name.
//
// Protocol: one JSON object per line, both ways.
//   supervisor -> runner   {"op":"call","id":n,"args":{...}}
//                          {"op":"result","id":m,"ok":true,"result":...,"blobs":["<b64>"]}
//                          {"op":"result","id":m,"ok":false,"error":{type,code,message}}
//   runner -> supervisor   {"op":"ready"} | {"op":"load-error","error":{...}}
//                          {"op":"syscall","id":m,"name":"fs.read","params":{...},"blobs":[]}
//                          {"op":"return","id":n,"value":...}
//                          {"op":"error","id":n,"error":{type,code,message,details}}

// @ts-check
/// <reference path="./libos.d.ts" />

/** A refused or failed syscall, with the broker's typed error name and stable code. */
export class LibosError extends Error {
  /**
   * @param {string} type
   * @param {string} code
   * @param {string} message
   * @param {Record<string, unknown>} details
   */
  constructor(type, code, message, details) {
    super(message);
    this.name = type;
    this.type = type;
    this.code = code;
    this.details = details;
  }
}

/** @typedef {(args: Record<string, unknown>, libos: Libos) => unknown} Tool */

const enc = new TextEncoder();
const dec = new TextDecoder();

/** @param {Uint8Array} data @returns {string} */
function b64encode(data) {
  let s = "";
  for (let i = 0; i < data.length; i += 0x8000) {
    s += String.fromCharCode(...data.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** @param {string} s @returns {Uint8Array} */
function b64decode(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** @param {Record<string, unknown>} msg */
function send(msg) {
  const data = enc.encode(JSON.stringify(msg) + "\n");
  let off = 0;
  while (off < data.length) off += Deno.stdout.writeSync(data.subarray(off));
}

// The tool's console goes to stderr (the process log): stdout is the protocol.
/** @param {...unknown} parts */
function toStderr(...parts) {
  const text = parts.map((p) => (typeof p === "string" ? p : Deno.inspect(p))).join(" ");
  const data = enc.encode(text + "\n");
  let off = 0;
  while (off < data.length) off += Deno.stderr.writeSync(data.subarray(off));
}
for (const k of ["log", "info", "debug", "warn", "error", "trace"]) {
  /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (console))[k] = toStderr;
}

/** @type {Map<number, {resolve: (r: LibosSyscallReply) => void, reject: (e: Error) => void}>} */
const waiting = new Map();
let nextId = 1;

/**
 * @param {string} name
 * @param {Record<string, unknown>} [params]
 * @param {Uint8Array[]} [blobs]
 * @returns {Promise<LibosSyscallReply>}
 */
function syscallRaw(name, params = {}, blobs = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    waiting.set(id, { resolve, reject });
    send({ op: "syscall", id, name, params, blobs: blobs.map(b64encode) });
    poke(); // an answer will come: the reader must read
  });
}

// How the reader waits (lines(), below). The supervisor sends a worker one call at a
// time, and while it runs nothing but the answers to its syscalls; so:
//   no call running, no answer due  -> a blocking read (Deno.stdin.readSync): the kernel
//                                      wakes this thread itself when the next call comes,
//                                      ~65 us sooner than an async read, whose bytes pass
//                                      through a blocking-pool thread first;
//   a call running, no answer due   -> no read at all: nothing can come until the tool
//                                      asks the broker (poke) or its call ends (poke);
//   an answer due                   -> an async read, so the tool's own timers and
//                                      promises run while the broker works (an answer
//                                      may wait for a human).
// So a warm tool's timers fire only while one of its calls runs: between calls the
// process waits in read(2), as a tool that does nothing between calls should.
let running = 0;
/** @type {(() => void) | null} */
let wake = null;
function poke() {
  const w = wake;
  wake = null;
  if (w) w();
}

/** @type {Libos} */
export const libos = {
  async syscall(name, params = {}) {
    return (await syscallRaw(name, params)).result;
  },
  syscallRaw,
  fs: {
    async readBytes(path) {
      const r = await syscallRaw("fs.read", { path });
      return r.blobs[0] ?? new Uint8Array();
    },
    async readText(path) {
      return dec.decode(await libos.fs.readBytes(path));
    },
    async writeBytes(path, data) {
      const r = await syscallRaw("fs.write", { path }, [data]);
      return /** @type {{size: number}} */ (r.result).size;
    },
    async writeText(path, text) {
      return await libos.fs.writeBytes(path, enc.encode(text));
    },
    async list(path = ".") {
      return /** @type {Array<Record<string, unknown>>} */ (await libos.syscall("fs.list", { path }));
    },
    async stat(path) {
      return /** @type {Record<string, unknown>} */ (await libos.syscall("fs.stat", { path }));
    },
  },
  obj: {
    async get(name, ns = "self") {
      return /** @type {{value: unknown}} */ (await libos.syscall("obj.get", { name, ns })).value;
    },
    async put(name, value, opts = {}) {
      return await libos.syscall("obj.put", {
        name,
        value,
        type: opts.type ?? "json",
        ns: opts.ns ?? "self",
      });
    },
  },
};

/** @param {unknown} e @returns {Record<string, unknown>} */
function describe(e) {
  if (e instanceof LibosError) {
    return { type: e.type, code: e.code, message: e.message, details: e.details, syscall: true };
  }
  if (e instanceof Error) {
    return { type: e.name, message: e.message, stack: (e.stack ?? "").slice(0, 4000) };
  }
  return { type: typeof e, message: String(e) };
}

/** @param {Tool} tool @param {number} id @param {Record<string, unknown>} args */
async function call(tool, id, args) {
  let value;
  try {
    value = await tool(args, libos);
  } catch (e) {
    send({ op: "error", id, error: describe(e) });
    return;
  }
  let text;
  try {
    text = JSON.stringify(value === undefined ? null : value);
  } catch (e) {
    send({ op: "error", id, error: { type: "MalformedOutput", message: String(e) } });
    return;
  }
  if (text === undefined) {
    // JSON.stringify gives undefined, not an error, for a function or a symbol.
    const message = `the tool returned a ${typeof value}, which is not a JSON value`;
    send({ op: "error", id, error: { type: "MalformedOutput", message } });
    return;
  }
  // Built by hand so the value is serialised once, with the error above if it cannot be.
  const line = enc.encode(`{"op":"return","id":${id},"value":${text}}\n`);
  let off = 0;
  while (off < line.length) off += Deno.stdout.writeSync(line.subarray(off));
}

/** @param {Tool} tool @param {Record<string, any>} msg */
function dispatch(tool, msg) {
  if (msg.op === "call") {
    running++;
    void call(tool, msg.id, msg.args ?? {}).finally(() => {
      running--;
      poke();
    });
  } else if (msg.op === "result") {
    const w = waiting.get(msg.id);
    if (!w) return;
    waiting.delete(msg.id);
    if (msg.ok) {
      /** @type {string[]} */
      const blobs = msg.blobs ?? [];
      w.resolve({ result: msg.result, blobs: blobs.map(b64decode) });
    } else {
      const err = msg.error ?? {};
      w.reject(
        new LibosError(
          String(err.type ?? "LibOSError"),
          String(err.code ?? "EIO"),
          String(err.message ?? "syscall failed"),
          err.details ?? {},
        ),
      );
    }
  } else if (msg.op === "load") {
    // A worker serves the one tool it started or was loaded with, never another.
    throw new Error("this worker already serves a tool");
  }
}

/**
 * The protocol's lines from stdin, as they come. A worker reads stdin through exactly
 * one of these: a pooled worker's load message and the calls after it share the buffer.
 * @returns {AsyncGenerator<string, void, void>}
 */
async function* lines() {
  // Deno.stdin.read into one buffer rather than Deno.stdin.readable: a stream hands each
  // chunk through a reader, a queue and a promise more per call on the warm path.
  // One read at a time, ever: a blocking read is made only when no async read is pending
  // (this generator is the only reader, and it awaits each read it starts).
  const chunk = new Uint8Array(1 << 16);
  let buf = "";
  for (;;) {
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line) yield line;
    }
    if (running > 0 && waiting.size === 0) {
      await new Promise((resolve) => {
        wake = () => resolve(undefined);
      });
      continue;
    }
    const n = running === 0 && waiting.size === 0
      ? Deno.stdin.readSync(chunk)
      : await Deno.stdin.read(chunk);
    if (n === null) return;
    buf += dec.decode(chunk.subarray(0, n), { stream: true });
  }
}

/**
 * @param {unknown} tool
 * @param {AsyncGenerator<string, void, void>} input
 */
async function serveLines(tool, input) {
  if (typeof tool !== "function") {
    send({
      op: "load-error",
      error: { type: "TypeError", message: "the tool module's default export is not a function" },
    });
    return;
  }
  send({ op: "ready" });
  for await (const line of input) dispatch(/** @type {Tool} */ (tool), JSON.parse(line));
}

/** Serve calls to `tool` until stdin closes. Called by the generated entry module. */
/** @param {unknown} tool */
export async function serve(tool) {
  await serveLines(tool, lines());
}

/** @param {string} source @returns {string} */
function moduleUrl(source) {
  return "data:application/typescript;base64," + b64encode(enc.encode(source));
}

/**
 * A pooled worker (docs/jit.md, "The pool"): started before anyone needs it, in a
 * sandbox holding Deno and this directory only -- no tool's files at all. It warms the
 * TypeScript transpiler and the module loader, says `{"op":"pooled"}`, and waits for
 * exactly one `{"op":"load","source":...}`: the tool's own text, which the supervisor
 * read and checked against what passed `deno check`. The tool is imported from a data:
 * URL (no file, so no read permission, is involved) and served like any other; a
 * second load ends the process (dispatch). It serves that one (process, tool) until it ends.
 */
export async function servePooled() {
  await import(moduleUrl("export default (n: number): number => n;"));
  send({ op: "pooled" });
  const input = lines();
  const first = await input.next();
  if (first.done) return; // retired unused
  const msg = JSON.parse(first.value);
  if (msg.op !== "load" || typeof msg.source !== "string") {
    send({ op: "load-error", error: { type: "ProtocolError", message: "expected a load" } });
    return;
  }
  let tool;
  try {
    tool = (await import(moduleUrl(msg.source))).default;
  } catch (e) {
    send({ op: "load-error", error: describe(e) });
    return;
  }
  await serveLines(tool, input);
}
