// The real `Client` of `@upstash/qstash`, calling runner's QStash API as an application would,
// so runner's tests prove that the Client's requests are understood and its answers parsed.
//
//   QSTASH_URL=http://127.0.0.1:8080 QSTASH_TOKEN=… node tests/qstash/client.mjs '<calls>'
//
// <calls> is a JSON array of [method, ...args], e.g. [["publishJSON", {"url": "…", "body": {}}],
// ["messages.get", "<id>"]]; a method names a function of the Client (`dlq.listMessages`). The
// calls run in order and one JSON line is printed: an array with, for each call, {"ok": answer}
// or {"error": message, "status": HTTP status} (the Client's QstashError: its message is the
// response body). An argument {"$": N} is replaced by the answer of call N (0-based), and
// {"$": N, "at": "messageId"} by that field of it.
import process from "node:process";
import { Client } from "@upstash/qstash";

const client = new Client({
  baseUrl: process.env.QSTASH_URL,
  token: process.env.QSTASH_TOKEN ?? "",
  retry: false,
  enableTelemetry: true,
});

function resolve(arg, answers) {
  if (arg && typeof arg === "object" && !Array.isArray(arg)) {
    if ("$" in arg && Object.keys(arg).every((k) => k === "$" || k === "at")) {
      const a = answers[arg.$];
      return arg.at ? a?.[arg.at] : a;
    }
    return Object.fromEntries(Object.entries(arg).map(([k, v]) => [k, resolve(v, answers)]));
  }
  if (Array.isArray(arg)) return arg.map((v) => resolve(v, answers));
  return arg;
}

const calls = JSON.parse(process.argv[2] ?? "[]");
const answers = [];
const results = [];
for (const [method, ...args] of calls) {
  const path = method.split(".");
  let target = client;
  for (const p of path.slice(0, -1)) target = target[p];
  const fn = target[path.at(-1)];
  try {
    const answer = await fn.apply(target, resolve(args, answers));
    answers.push(answer);
    results.push({ ok: answer === undefined ? null : answer });
  } catch (e) {
    answers.push(undefined);
    results.push({ error: String(e?.message ?? e), status: e?.status ?? null, name: e?.name ?? null });
  }
}
console.log(JSON.stringify(results));
