// The entry module of a pooled Deno worker (docs/jit.md, "The pool"): the same runner,
// waiting for the one tool it will serve. JavaScript, so nothing is transpiled at start.
// @ts-check
import { servePooled } from "./runner.js";

await servePooled();
