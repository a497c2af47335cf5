// A test endpoint that checks every request with the real `Receiver` of `@upstash/qstash`, exactly as an
// application would, so runner's tests can prove that its signatures are accepted unchanged.
//
//   npm ci --prefix tests/qstash
//   QSTASH_CURRENT_SIGNING_KEY=sig_… QSTASH_NEXT_SIGNING_KEY=sig_… node tests/qstash/receiver.mjs
//
// Listens on 127.0.0.1, port $PORT or a free one, and prints one JSON line `{"port": N}` to stdout when
// ready (nothing else goes to stdout). With `--exit-with-stdin` it exits when its stdin closes, so a test
// that dies without killing it does not leave it behind.
//
// Every request except the control paths `/__log` and `/__reset` is verified with
// `Receiver.verify({ signature, body, url })`, the URL being `http://127.0.0.1:<port>` + the request target
// (query string included), and recorded. An invalid one is answered 401 `{"error": …}`; a valid one by path:
//
//   /ok                  200 {"ok": true, "n": <valid requests to /ok so far>}
//   /flaky/<k>           500 for the first k valid requests with the same Upstash-Message-Id, then 200
//   /retry-after/<secs>  429 with `Retry-After: <secs>` for the first valid request per message id, then 200
//   /nonretryable        489 with `Upstash-NonRetryable-Error: true`
//   /slow/<ms>           200 after <ms> milliseconds
//   /echo                200 {"received": <the JSON body, or the body as a string when it is not JSON>}
//   /big/<bytes>         200 JSON `{"data":"xxx…"}` of exactly <bytes> bytes (at least 11), for response limits
//   anything else        200 {}
//
//   GET  /__log    the records, oldest first: [{method, url, path, headers (lower-case names), body, valid,
//                  error, status, time (ms since the epoch, on arrival), answered (ms, when the answer
//                  was sent), in_flight (requests arrived and not yet answered, this one included, on
//                  its arrival), aborted (the client closed the connection before the answer was sent)}]
//   POST /__reset  forgets the records and all counters

import http from "node:http";
import process from "node:process";
import { Receiver } from "@upstash/qstash";

const currentSigningKey = process.env.QSTASH_CURRENT_SIGNING_KEY;
const nextSigningKey = process.env.QSTASH_NEXT_SIGNING_KEY;
if (!currentSigningKey || !nextSigningKey) {
  // The Receiver itself refuses to verify unless it has both keys.
  console.error("receiver.mjs: set QSTASH_CURRENT_SIGNING_KEY and QSTASH_NEXT_SIGNING_KEY");
  process.exit(2);
}

// devMode: false, so that a QSTASH_DEV variable in the environment cannot swap in the dev server's keys.
// clockTolerance is left at its default, 0 seconds, as in applications.
const receiver = new Receiver({ currentSigningKey, nextSigningKey, devMode: false });

let records = [];
let counters = new Map();

function bump(key) {
  const n = (counters.get(key) ?? 0) + 1;
  counters.set(key, n);
  return n;
}

// Requests arrived and not yet answered, over all paths (a record's `in_flight` is this count on
// its arrival, itself included).
let inFlight = 0;

function send(res, record, status, body, headers = {}) {
  if (record) {
    record.status = status;
    record.answered = Date.now();
  }
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function handle(req, res, port) {
  const raw = await readBody(req);
  const path = new URL(req.url, "http://127.0.0.1").pathname;

  if (path === "/__log" && req.method === "GET") return send(res, null, 200, records);
  if (path === "/__reset" && req.method === "POST") {
    records = [];
    counters = new Map();
    return send(res, null, 200, {});
  }

  // Applications hand the Receiver the body as text (`await req.text()`); it hashes that string's UTF-8
  // encoding, so only UTF-8 bodies can verify.
  const body = raw.toString("utf8");
  const record = {
    method: req.method,
    url: req.url,
    path,
    headers: { ...req.headers },
    body,
    valid: false,
    error: null,
    status: null,
    time: Date.now(),
    answered: null,
    in_flight: ++inFlight,
    aborted: false,
  };
  records.push(record);
  res.on("close", () => {
    inFlight -= 1;
  });
  // The client gave up (closed the connection) before the answer was sent: a cancelled call.
  res.on("close", () => {
    if (!res.writableFinished) record.aborted = true;
  });

  try {
    await receiver.verify({
      signature: req.headers["upstash-signature"],
      body,
      url: `http://127.0.0.1:${port}${req.url}`,
    });
    record.valid = true;
  } catch (error) {
    record.error = String(error?.message ?? error);
    return send(res, record, 401, { error: record.error });
  }

  const messageId = req.headers["upstash-message-id"] ?? "";
  let match;
  if (path === "/ok") {
    return send(res, record, 200, { ok: true, n: bump(path) });
  }
  if ((match = path.match(/^\/flaky\/(\d+)$/))) {
    const attempt = bump(`${path}\u0000${messageId}`);
    if (attempt <= Number(match[1])) return send(res, record, 500, { error: "flaky", attempt });
    return send(res, record, 200, { ok: true, attempt });
  }
  if ((match = path.match(/^\/retry-after\/([^/]+)$/))) {
    const attempt = bump(`${path}\u0000${messageId}`);
    if (attempt === 1) {
      const secs = decodeURIComponent(match[1]);
      return send(res, record, 429, { error: "slow down", attempt }, { "retry-after": secs });
    }
    return send(res, record, 200, { ok: true, attempt });
  }
  if (path === "/nonretryable") {
    return send(res, record, 489, { error: "not retryable" }, { "upstash-nonretryable-error": "true" });
  }
  if ((match = path.match(/^\/slow\/(\d+)$/))) {
    await new Promise((resolve) => setTimeout(resolve, Number(match[1])));
    return send(res, record, 200, { ok: true });
  }
  if ((match = path.match(/^\/big\/(\d+)$/))) {
    const text = JSON.stringify({ data: "x".repeat(Math.max(0, Number(match[1]) - 11)) });
    record.status = 200;
    record.answered = Date.now();
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    return res.end(text);
  }
  if (path === "/echo") {
    let received;
    try {
      received = JSON.parse(body);
    } catch {
      received = body;
    }
    return send(res, record, 200, { received });
  }
  return send(res, record, 200, {});
}

const server = http.createServer((req, res) => {
  handle(req, res, server.address().port).catch((error) => {
    console.error("receiver.mjs:", error);
    if (!res.headersSent) send(res, null, 500, { error: String(error?.message ?? error) });
    else res.destroy();
  });
});

server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});

if (process.argv.includes("--exit-with-stdin")) {
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("error", () => process.exit(0));
  process.stdin.resume();
}
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
